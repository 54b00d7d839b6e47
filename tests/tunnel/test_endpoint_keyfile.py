"""``keyfile=`` of the endpoint string: the tunnel gets the worker's key (docs/security.md)."""

from __future__ import annotations

import stat

import pytest
from twisted.internet import error
from twisted.internet.testing import MemoryReactorClock

from bbenroll.fileio import atomic_write
from bbenroll.identity import make_identity_pem, tubid_from_pem
from bbenroll.tunnel.endpoint import TunnelTable, endpoint_from_string
from bbenroll.worker.setup import connection_string, worker_key
from tests.tunnel.test_endpoint import FURL, CountingFactory, FakeTunnel


@pytest.fixture(scope="module")
def pem() -> bytes:
    return make_identity_pem("bbenroll worker")


@pytest.fixture
def files(tmp_path, pem):
    furl_file, key_file = tmp_path / "bbenroll.furl", tmp_path / "bbenroll.pem"
    furl_file.write_text(FURL + "\n")
    atomic_write(key_file, pem)  # 0600, as `worker create` writes it
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
    table = TunnelTable(make_tunnel=FakeTunnel)
    ep = endpoint_from_string(table, reactor, furlfile=str(furl_file), keyfile=str(key_file))
    assert ep.keyfile == key_file
    ep.connect(CountingFactory())
    (tunnel,) = table._tunnels.values()
    assert tunnel.key == pem


def test_a_missing_or_bad_key_file_fails_the_connect_with_one_line(files, tmp_path):
    furl_file, key_file = files
    reactor = MemoryReactorClock()
    table = TunnelTable(make_tunnel=FakeTunnel)
    missing = endpoint_from_string(table, reactor, furlfile=str(furl_file), keyfile=str(tmp_path / "no.pem"))
    assert "cannot read the worker's key" in connect_failure(missing)
    key_file.write_text("not a key\n")
    bad = endpoint_from_string(table, reactor, furlfile=str(furl_file), keyfile=str(key_file))
    assert "no PEM private key" in connect_failure(bad)
    assert len(table) == 0  # no tunnel was started


def one_tunnel_key(furl_file, **options) -> bytes:
    """The key the tunnel of a fresh table (a new worker process) is started with."""
    table = TunnelTable(make_tunnel=FakeTunnel)
    endpoint = endpoint_from_string(table, MemoryReactorClock(), furlfile=str(furl_file), **options)
    endpoint.connect(CountingFactory())
    (tunnel,) = table._tunnels.values()
    return tunnel.key


def test_without_keyfile_the_basedir_gets_one_key_on_first_start_and_keeps_it(tmp_path):
    # a tac written before binding names no keyfile=: its key is made once, beside the FURL file
    furl_file = tmp_path / "bbenroll.furl"
    furl_file.write_text(FURL + "\n")
    first = one_tunnel_key(furl_file)
    key_file = tmp_path / "bbenroll.pem"
    assert key_file.read_bytes() == first and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert one_tunnel_key(furl_file) == first  # the next start (process) reuses it
    # and it is the key a later `worker create --force` binds (the basedir's key, one file)
    assert worker_key(tmp_path) == first and tubid_from_pem(first)


def test_a_wrong_mode_or_corrupt_key_is_one_line_and_never_replaced(files, pem, tmp_path):
    furl_file, key_file = files
    key_file.chmod(0o644)
    for options in ({"keyfile": str(key_file)}, {}):  # named or found beside the FURL file
        table = TunnelTable(make_tunnel=FakeTunnel)
        ep = endpoint_from_string(table, MemoryReactorClock(), furlfile=str(furl_file), **options)
        why = connect_failure(ep)
        assert "accessible by group or others (mode 0644); run: chmod 600" in why and "\n" not in why
        assert len(table) == 0 and key_file.read_bytes() == pem
    key_file.chmod(0o600)
    truncated = pem.replace(pem[40:200], b"")  # the key's body cut: not a key Foolscap could load
    key_file.write_bytes(truncated)
    table = TunnelTable(make_tunnel=FakeTunnel)
    why = connect_failure(endpoint_from_string(table, MemoryReactorClock(), furlfile=str(furl_file)))
    assert "the key or certificate is corrupt; move it away" in why
    assert key_file.read_bytes() == truncated


def test_worker_creates_connection_string_round_trips(files):
    furl_file, key_file = files
    text = connection_string(furl_file, 600, key_file)
    assert text.endswith(":keyfile=" + str(key_file).replace(":", "\\:"))
    assert ":keyfile=" not in connection_string(furl_file, 600)  # old basedirs: unchanged
