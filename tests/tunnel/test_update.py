"""Pushed rotation, the worker's side (docs/rotation.md): real Foolscap on 127.0.0.1.

The master is tests/helpers/fake_master.py: Tubs whose FURLs share one session
table, so a session opened over the old FURL can move to a new one (another
TubID, another port). Each test waits on what the master records, never on time.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import globalLogPublisher

from bbenroll.furl import new_swissnum
from bbenroll.tunnel.endpoint import TunnelEndpoint, TunnelTable
from bbenroll.tunnel.furlfile import FurlFile, read_furl_file, write_furl_file
from bbenroll.tunnel.updater import State
from bbenroll.tunnel.worker_side import WorkerTunnel
from tests.helpers.fake_master import FakeMaster, read_only_directory, wait_until
from tests.helpers.net import free_port

pytestmark = pytest.mark.network


class Recorder(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.lost = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason=None) -> None:
        self.lost = reason


@pytest.fixture
def master():
    fake = FakeMaster(reactor)
    yield fake
    pytest_twisted.blockon(fake.stop())


@pytest.fixture
def furl_path(tmp_path: Path) -> Path:
    return tmp_path / "bbenroll.furl"


@pytest.fixture
def tunnels():
    started: list[WorkerTunnel] = []
    yield started
    for tunnel in started:
        pytest_twisted.blockon(tunnel.stop())


async def connected(
    master: FakeMaster, tunnels: list, path: Path, furl: str, serial: int = 0
) -> WorkerTunnel:
    """A tunnel started from the FURL file ``path`` (written with ``furl``, ``serial``), up and subscribed."""
    write_furl_file(path, furl, serial)
    held = read_furl_file(path)
    tunnel = WorkerTunnel(held.furl, reactor=reactor, resume_deadline=60, furlfile=path, serial=held.serial)
    tunnels.append(tunnel)
    tunnel.start()
    await tunnel.when_ready(10)
    await wait_until(reactor, lambda: master.updater is not None, what="subscribe_updates")
    return tunnel


async def settled(tunnel: WorkerTunnel, outcomes: int) -> None:
    updater = tunnel.updater
    await wait_until(
        reactor, lambda: len(updater.outcomes) >= outcomes and updater.state is State.IDLE, what="the update"
    )


async def reported(master: FakeMaster, failures: int) -> list[tuple]:
    """The master's furl_update_failed records, once there are ``failures`` of them."""
    await wait_until(reactor, lambda: len(master.named("furl_update_failed")) >= failures, what="the report")
    return master.named("furl_update_failed")


def unreachable_furl() -> str:
    return f"pb://{'a' * 32}@tcp:127.0.0.1:{free_port()}/{new_swissnum()}"


@pytest_twisted.ensureDeferred
async def test_the_session_moves_to_a_new_tub_with_data_in_flight_both_ways(master, tunnels, furl_path):
    old = master.furl(master.new_tub(), "old")
    tunnel = await connected(master, tunnels, furl_path, old)
    assert master.named("subscribe_updates") == [("old", 0)]
    app = Recorder()
    tunnel.open_stream(app)
    sent, echoed = bytearray(), bytearray()
    counter = iter(range(10**6))

    def traffic() -> None:  # both ends keep writing, numbered, all through the update
        n = next(counter)
        chunk = f"w{n:06d};".encode() * 50
        sent.extend(chunk)
        app.transport.write(chunk)
        if master.session is not None and 1 in master.session.core.streams:  # the master knows the stream
            back = f"m{n:06d};".encode() * 50
            echoed.extend(back)
            master.session.write(1, back)

    loop = task.LoopingCall(traffic)
    loop.start(0.002)
    await wait_until(reactor, lambda: len(master.delivered()) > 10_000, what="traffic on the old link")
    old_client_tub = tunnel.tub
    new_tub = master.new_tub()
    new = master.furl(new_tub, "new")
    await master.offer(1, new)
    await settled(tunnel, 1)
    moved_at = len(sent)
    more = moved_at + 10_000
    await wait_until(reactor, lambda: len(master.delivered()) > more, what="traffic on the new link")
    loop.stop()
    await wait_until(
        reactor, lambda: len(master.delivered()) >= len(sent) and len(app.data) >= len(echoed), what="all"
    )
    assert master.delivered() == bytes(sent)  # every byte, once, in order
    assert app.data == bytes(echoed)
    assert tunnel.updater.outcomes == [(1, "moved")]
    # the new FURL (another TubID, another port) really carries the session, and it was confirmed there
    assert master.session.via.label == "new" and master.session.errors == []
    assert master.named("confirm_furl") == [("new", 1)]
    assert ("new", 1) in master.named("subscribe_updates")
    assert master.named("furl_update_failed") == []
    assert ("open_session", "new", True) in master.calls
    assert (tunnel.furl, tunnel.serial) == (new, 1)
    assert tunnel.tub is not old_client_tub and not old_client_tub.running
    await wait_until(reactor, lambda: "old" in master.lost, what="the old connection's end")
    assert app.lost is None and tunnel.link_up  # buildbot-worker noticed nothing
    # the file: written atomically, private, with the serial, and what a restart reads
    assert furl_path.read_text() == f"# serial 1\n{new}\n"
    assert read_furl_file(furl_path) == FurlFile(new, 1)
    if os.name == "posix":
        assert stat.S_IMODE(furl_path.stat().st_mode) == 0o600
    assert sorted(p.name for p in furl_path.parent.iterdir()) == ["bbenroll.furl"]


@pytest_twisted.ensureDeferred
async def test_serials_only_go_up_and_a_repeated_push_is_harmless(master, tunnels, furl_path):
    tub = master.new_tub()
    old = master.furl(tub, "old")
    tunnel = await connected(master, tunnels, furl_path, old, serial=5)
    assert master.named("subscribe_updates") == [("old", 5)]
    new = master.furl(tub, "new")  # the same Tub, a new swissnum: a plain rotation
    await master.offer(5, new)
    await master.offer(3, new)
    assert tunnel.updater.state is State.IDLE and tunnel.updater.outcomes == []
    assert (tunnel.furl, tunnel.serial) == (old, 5) and read_furl_file(furl_path) == FurlFile(old, 5)
    await master.offer(6, new)
    await settled(tunnel, 1)
    assert read_furl_file(furl_path) == FurlFile(new, 6)
    await master.offer(6, new)  # the same push again, and a late one
    await master.offer(4, old)
    assert tunnel.updater.outcomes == [(6, "moved")] and tunnel.updater.state is State.IDLE
    assert master.named("confirm_furl") == [("new", 6)] and master.named("furl_update_failed") == []
    assert (tunnel.furl, tunnel.serial) == (new, 6)


@pytest_twisted.ensureDeferred
async def test_an_unwritable_furl_file_keeps_the_old_furl_and_connection(master, tunnels, furl_path):
    tub = master.new_tub()
    old = master.furl(tub, "old")
    tunnel = await connected(master, tunnels, furl_path, old)
    app = Recorder()
    tunnel.open_stream(app)
    new = master.furl(master.new_tub(), "new")
    with read_only_directory(furl_path.parent):
        await master.offer(1, new)
        await settled(tunnel, 1)
    ((label, serial, reason),) = await reported(master, 1)
    assert (label, serial) == ("old", 1)  # reported over the old connection
    assert "cannot write FURL file" in reason
    assert read_furl_file(furl_path) == FurlFile(old, 0) and furl_path.read_text() == old + "\n"
    assert (tunnel.furl, tunnel.serial) == (old, 0) and tunnel.updater.tub is None
    assert master.named("confirm_furl") == [] and ("open_session", "new", True) not in master.calls
    app.transport.write(b"still here")
    await wait_until(reactor, lambda: master.delivered() == b"still here", what="data on the old link")
    assert master.session.via.label == "old" and app.lost is None


@pytest_twisted.ensureDeferred
async def test_an_unreachable_or_malformed_furl_changes_nothing(master, tunnels, furl_path):
    old = master.furl(master.new_tub(), "old")
    tunnel = await connected(master, tunnels, furl_path, old)
    client_tub = tunnel.tub
    await master.offer(1, unreachable_furl())
    await settled(tunnel, 1)
    await master.offer(2, "pb://not-a-furl")
    await settled(tunnel, 2)
    failures = await reported(master, 2)
    assert [(label, serial) for label, serial, _ in failures] == [("old", 1), ("old", 2)]
    assert "the new FURL does not work" in failures[0][2]
    assert "malformed" in failures[1][2]
    assert read_furl_file(furl_path) == FurlFile(old, 0)
    assert (tunnel.furl, tunnel.serial, tunnel.tub) == (old, 0, client_tub) and tunnel.link_up
    # the master may offer again (OFFER_RETRY): a failed serial is not "held"
    new = master.furl(master.new_tub(), "new")
    await master.offer(1, new)
    await settled(tunnel, 3)
    assert master.named("confirm_furl") == [("new", 1)]


@pytest_twisted.ensureDeferred
async def test_an_offer_during_an_update_is_done_after_it(master, tunnels, furl_path):
    old = master.furl(master.new_tub(), "old")
    tunnel = await connected(master, tunnels, furl_path, old)
    first = master.furl(master.new_tub(), "first")
    second = master.furl(master.new_tub(), "second")
    # sent back to back: the second (and a stale one) come while the first is being tried
    offers = [master.offer(1, first), master.offer(2, second), master.offer(1, old)]
    for offer in offers:
        await offer
    await settled(tunnel, 2)
    assert tunnel.updater.outcomes == [(1, "moved"), (2, "moved")]
    assert master.named("confirm_furl") == [("first", 1), ("second", 2)]
    assert read_furl_file(furl_path) == FurlFile(second, 2)
    assert master.session.via.label == "second" and tunnel.serial == 2


@pytest_twisted.ensureDeferred
async def test_a_master_without_pushed_rotation_still_serves_the_worker(master, tunnels, furl_path):
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        old = master.furl(master.new_tub(), "old", old=True)
        write_furl_file(furl_path, old)
        tunnel = WorkerTunnel(old, reactor=reactor, resume_deadline=60, furlfile=furl_path)
        tunnels.append(tunnel)
        tunnel.start()
        await tunnel.when_ready(10)
        app = Recorder()
        tunnel.open_stream(app)
        app.transport.write(b"hello")
        await wait_until(reactor, lambda: master.delivered() == b"hello", what="data")
        await wait_until(reactor, lambda: tunnel._told_no_updates, what="the failed subscribe")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert master.updater is None and tunnel.link_up and app.lost is None
    told = [e for e in events if "does not push FURL updates" in str(e.get("log_format", ""))]
    assert len(told) == 1


class Streams(Factory):
    protocol = Recorder


@pytest_twisted.ensureDeferred
async def test_the_endpoint_keeps_using_a_tunnel_that_moved(master, furl_path):
    old = master.furl(master.new_tub(), "old")
    write_furl_file(furl_path, old)
    table = TunnelTable()
    endpoint = TunnelEndpoint(reactor, str(furl_path), resume=60, tunnels=table)
    try:
        first = await endpoint.connect(Streams())
        await wait_until(reactor, lambda: master.updater is not None, what="subscribe_updates")
        (tunnel,) = table._tunnels.values()
        new = master.furl(master.new_tub(), "new")
        await master.offer(1, new)
        await settled(tunnel, 1)
        second = await endpoint.connect(Streams())  # buildbot-worker reconnects: the file holds `new`
        assert len(table) == 1 and second.transport.tunnel is tunnel and first.lost is None
        second.transport.write(b"over the new FURL")
        await wait_until(reactor, lambda: master.delivered(2) == b"over the new FURL", what="stream 2")
        assert master.session.via.label == "new"
    finally:
        await table.shutdown()
