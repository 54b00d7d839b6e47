"""The worker's key (docs/security.md) over real Foolscap on 127.0.0.1, against the real service:
the tunnel connects with the basedir's key, so the master sees one TubID across restarts and
pushed updates, which is what a FURL bound to that key needs."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, error, reactor, task
from twisted.logger import globalLogPublisher

from bbenroll.fileio import atomic_write
from bbenroll.identity import make_identity_pem, tubid_from_pem
from bbenroll.master import gate
from bbenroll.tunnel.endpoint import TunnelTable, endpoint_from_string
from bbenroll.tunnel.furlfile import read_furl_file, write_furl_file
from bbenroll.tunnel.updater import State
from bbenroll.worker.setup import WorkerSetupError, bind_worker_key, fetch_worker_config
from tests.helpers.binding import bound_of
from tests.helpers.fake_master import wait_until
from tests.helpers.registry_stub import delivered_of
from tests.master.test_service import Master

pytestmark = pytest.mark.network


@pytest.fixture
def table():
    tunnels = TunnelTable()
    yield tunnels
    pytest_twisted.blockon(defer.gatherResults([t.stop() for t in list(tunnels._tunnels.values())]))


@pytest.fixture(scope="module")
def pem() -> bytes:
    return make_identity_pem("bbenroll worker")


def basedir_files(tmp_path: Path, furl: str, pem: bytes | None) -> tuple[Path, Path]:
    furlfile, keyfile = tmp_path / "bbenroll.furl", tmp_path / "bbenroll.pem"
    write_furl_file(furlfile, furl, 0)
    if pem is not None:
        atomic_write(keyfile, pem)  # 0600, as `worker create` writes it
    return furlfile, keyfile


async def tunnel_up(table: TunnelTable, furlfile: Path, keyfile: Path | None, timeout: float = 10):
    """The table's tunnel for ``furlfile``, as buildbot-worker's connect() makes it (the endpoint
    string with ``keyfile=``), once its link is up."""
    options = {"furlfile": str(furlfile)} | ({"keyfile": str(keyfile)} if keyfile else {})
    endpoint = endpoint_from_string(table, reactor, **options)
    tunnel = table.get(endpoint.furlfile, read_furl_file(furlfile), reactor, endpoint.resume, endpoint._key())
    await tunnel.when_ready(timeout)
    return tunnel


def keys_seen(master: Master) -> list[str | None]:
    return [obj.key for obj in master.service.connections.values()]


async def serving(master: Master, name: str = "w1") -> str:
    furl = master.cli("add", name)
    master.service.startService()
    await master.service.when_listening()
    return furl


@pytest_twisted.ensureDeferred
async def test_the_tunnel_uses_the_basedir_key_across_tunnel_restarts(master, table, tmp_path, pem):
    furl = await serving(master)
    furlfile, keyfile = basedir_files(tmp_path, furl, pem)
    tubid = tubid_from_pem(pem)
    tunnel = await tunnel_up(table, furlfile, keyfile)
    assert tunnel.tub.getTubID() == tubid
    await wait_until(reactor, lambda: keys_seen(master) == [tubid], what="the master seeing the key")
    await tunnel.stop()
    await wait_until(reactor, lambda: keys_seen(master) == [], what="the disconnect")
    again = await tunnel_up(table, furlfile, keyfile)  # a fresh tunnel, as after a worker restart
    assert again is not tunnel and again.tub.getTubID() == tubid
    await wait_until(reactor, lambda: keys_seen(master) == [tubid], what="the same key again")


@pytest_twisted.ensureDeferred
async def test_worker_create_binds_and_only_that_key_gets_in_afterwards(master, table, tmp_path, pem):
    furl = await serving(master)
    config = await fetch_worker_config(furl, reactor=reactor, key=pem)
    assert config["name"] == "w1" and bound_of(master.path, "w1") is None  # fetching binds nothing
    tubid = tubid_from_pem(pem)
    assert await bind_worker_key(furl, reactor=reactor, key=pem) == {"status": "bound", "fingerprint": tubid}
    assert bound_of(master.path, "w1")["tubid"] == tubid
    again = await bind_worker_key(furl, reactor=reactor, key=pem)  # worker create --force, same basedir
    assert again == {"status": "already", "fingerprint": tubid}
    # another key cannot bind it (nor even connect): one line for the worker admin
    with pytest.raises(WorkerSetupError, match="bound to another worker key"):
        await bind_worker_key(furl, reactor=reactor, key=make_identity_pem("bbenroll worker"))
    # the tunnel of that basedir gets in; a copy of the FURL without the key (a random one) does not
    furlfile, keyfile = basedir_files(tmp_path, furl, pem)
    await tunnel_up(table, furlfile, keyfile)
    copy = tmp_path / "copy"
    copy.mkdir()
    other_furlfile, _ = basedir_files(copy, furl, None)
    with pytest.raises(error.ConnectError) as info:
        await tunnel_up(table, other_furlfile, None, timeout=3)
    assert str(gate.Reason.WRONG_KEY) in str(info.value) and "rebind" in str(info.value)
    assert (await master.refusal(furl)).startswith(str(gate.Reason.WRONG_KEY))


@pytest_twisted.ensureDeferred
async def test_a_rotation_pushed_to_a_bound_worker_moves_it_with_the_same_key(master, table, tmp_path, pem):
    """The update's fresh Tub has the tunnel's key, so the master sees a new connection of the
    same TubID and drops the old one (Foolscap: a new incarnation of the same client) while the
    update is under way; the session still moves and the binding stays."""
    furl = await serving(master)
    await bind_worker_key(furl, reactor=reactor, key=pem)
    tubid = tubid_from_pem(pem)
    furlfile, keyfile = basedir_files(tmp_path, furl, pem)
    tunnel = await tunnel_up(table, furlfile, keyfile)
    old_tub, session_id = tunnel.tub, tunnel.session_id
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    master.cli("rotate", "w1")
    await wait_until(
        reactor,
        lambda: tunnel.updater.outcomes and tunnel.updater.state is State.IDLE,
        what="the pushed update",
    )
    assert tunnel.updater.outcomes == [(1, "moved")]
    await wait_until(reactor, lambda: delivered_of(master.path, "w1") == 1, what="the confirmation on disk")
    assert read_furl_file(furlfile).serial == 1
    assert tunnel.tub is not old_tub and tunnel.tub.getTubID() == tubid
    assert bound_of(master.path, "w1")["tubid"] == tubid
    await wait_until(reactor, lambda: keys_seen(master) == [tubid], what="one connection, the new one")
    await task.deferLater(reactor, 1.0, lambda: None)  # past the reconnect the lost old link scheduled
    globalLogPublisher.removeObserver(events.append)
    logged = [str(e.get("log_format", "")) for e in events]
    assert any("tunnel link lost" in text for text in logged)  # the old link really went mid-update
    # ... and the tunnel did not reconnect once the update had moved it: one session, the same one
    assert tunnel.link_up and not tunnel.connecting and tunnel.session_id == session_id
    assert keys_seen(master) == [tubid]
    assert not any("starting afresh" in text for text in logged)
    assert sum("tunnel to the master is up" in text for text in logged) == 1  # the move's, no reconnect
