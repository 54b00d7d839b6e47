"""``keyfile=`` of the endpoint string: the tunnel gets the worker's key (docs/security.md)."""

from __future__ import annotations

import pytest
from twisted.internet import error
from twisted.internet.testing import MemoryReactorClock

from bbenroll.identity import make_identity_pem
from bbenroll.tunnel.endpoint import TunnelTable, endpoint_from_string
from bbenroll.worker.setup import connection_string
from tests.tunnel.test_endpoint import FURL, CountingFactory, FakeTunnel


class KeyedTunnel(FakeTunnel):
    def __init__(self, *args, key=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.key = key


@pytest.fixture(scope="module")
def pem() -> bytes:
    return make_identity_pem("bbenroll worker")


@pytest.fixture
def files(tmp_path, pem):
    furl_file, key_file = tmp_path / "bbenroll.furl", tmp_path / "bbenroll.pem"
    furl_file.write_text(FURL + "\n")
    key_file.write_bytes(pem)
    return furl_file, key_file


def connect_failure(ep) -> str:
    failures = []
    factory = CountingFactory()
    ep.connect(factory).addErrback(failures.append)
    (failure,) = failures
    assert failure.check(error.ConnectError) and (factory.starts, factory.stops) == (1, 1)
    return failure.getErrorMessage()


def test_the_tunnel_is_made_with_the_key_file(files, pem):
    furl_file, key_file = files
    reactor = MemoryReactorClock()
    table = TunnelTable(make_tunnel=KeyedTunnel)
    ep = endpoint_from_string(table, reactor, furlfile=str(furl_file), keyfile=str(key_file))
    assert ep.keyfile == key_file
    ep.connect(CountingFactory())
    (tunnel,) = table._tunnels.values()
    assert tunnel.key == pem
    # without keyfile= the tunnel is made as before (a random key): nothing is passed
    other = TunnelTable(make_tunnel=FakeTunnel)
    endpoint_from_string(other, reactor, furlfile=str(furl_file)).connect(CountingFactory())
    assert len(other) == 1


def test_a_missing_or_bad_key_file_fails_the_connect_with_one_line(files, tmp_path):
    furl_file, key_file = files
    reactor = MemoryReactorClock()
    table = TunnelTable(make_tunnel=KeyedTunnel)
    missing = endpoint_from_string(table, reactor, furlfile=str(furl_file), keyfile=str(tmp_path / "no.pem"))
    assert "cannot read the worker's key" in connect_failure(missing)
    key_file.write_text("not a key\n")
    bad = endpoint_from_string(table, reactor, furlfile=str(furl_file), keyfile=str(key_file))
    assert "no PEM private key" in connect_failure(bad)
    assert len(table) == 0  # no tunnel was started


def test_worker_creates_connection_string_round_trips(files):
    furl_file, key_file = files
    text = connection_string(furl_file, 600, key_file)
    assert text.endswith(":keyfile=" + str(key_file).replace(":", "\\:"))
    assert ":keyfile=" not in connection_string(furl_file, 600)  # old basedirs: unchanged
