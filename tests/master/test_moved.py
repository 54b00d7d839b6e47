"""A legacy worker becomes moved at its first accepted FURL connection (real Foolscap service)."""

from __future__ import annotations

from dataclasses import replace

import pytest_twisted
from twisted.internet import defer, reactor, task

from bbenroll.registry import audit, store


def set_worker(path, name, **fields):
    with store.edit(path) as editor:
        editor.update(replace(editor.worker(name), **fields))


def set_master(path, **fields):
    with store.edit(path) as editor:
        editor.set_master(replace(editor.master, **fields))


async def until(predicate, timeout=5.0):
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await task.deferLater(reactor, 0.05, lambda: None)
    raise AssertionError("timed out")


def by_master(record, name):
    return record["worker"] == name and record["action"] == "moved" and (
        record["actor"].get("by") == "master"
    )


def on_disk(path, name):
    return store.load(path).registry.workers[name]


@pytest_twisted.ensureDeferred
async def test_the_first_furl_connection_of_a_legacy_worker_marks_it_moved(master):
    furl = master.cli("add", "old1")
    master.cli("add", "native")
    set_worker(master.path, "old1", legacy=True)
    master.service.startService()
    await master.service.when_listening()
    assert on_disk(master.path, "old1").moved is None
    await master.connect(furl)
    await until(lambda: on_disk(master.path, "old1").moved is not None)
    moved = on_disk(master.path, "old1")
    assert moved.legacy  # still an imported worker; moved says since when it uses its FURL
    records = audit.read_records(audit.log_path(master.path))
    # one "moved" record, by the master
    moves = [r for r in records if by_master(r, "old1")]
    assert len(moves) == 1
    # a second connection does not move it again
    first = moved.moved
    await master.connect(furl)
    await task.deferLater(reactor, 0.5, lambda: None)
    assert on_disk(master.path, "old1").moved == first
    records = audit.read_records(audit.log_path(master.path))
    assert len([r for r in records if by_master(r, "old1")]) == 1


@pytest_twisted.ensureDeferred
async def test_a_worker_that_was_never_legacy_is_not_marked(master):
    furl = master.cli("add", "native")
    master.service.startService()
    await master.service.when_listening()
    before = master.path.read_text()
    await master.connect(furl)
    await task.deferLater(reactor, 0.5, lambda: None)
    assert on_disk(master.path, "native").moved is None
    assert "moved" not in master.path.read_text().replace(before, "")


@pytest_twisted.ensureDeferred
async def test_the_tunnels_dial_legacy_pb_on_loopback_and_a_change_reconfigures_buildbot(master):
    master.cli("add", "w1")
    changes: list = []
    master.service.on_workers_changed = changes.append
    master.service.startService()
    await master.service.when_listening()
    pb = store.load(master.path).registry.master.pb
    assert master.service._pb_endpoint() == pb
    set_master(master.path, legacy_pb="tcp:45678")
    await until(lambda: len(changes) == 1)
    assert master.service._pb_endpoint() == "tcp:45678:interface=127.0.0.1"
    assert set(changes[0]) == {"w1"}  # the same workers: it is the port that changed
    set_master(master.path, legacy_pb=None)  # finish-migration
    await until(lambda: len(changes) == 2)
    assert master.service._pb_endpoint() == pb
    await task.deferLater(reactor, 0.3, lambda: None)
    assert len(changes) == 2  # once per change


@pytest_twisted.ensureDeferred
async def test_a_pb_login_through_a_real_tunnel_leg_is_told_from_a_direct_one(master):
    """The leg's local address is what the PB port sees as the peer; a direct client's is not."""
    from twisted.internet import protocol
    from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString

    from bbenroll.master import legacy

    seen: list = []

    class Server(protocol.Protocol):
        def connectionMade(self):
            seen.append(legacy.address(self.transport.getPeer()))

    from tests.helpers.net import free_port

    port_number = free_port()
    port = await serverFromString(reactor, f"tcp:{port_number}:interface=127.0.0.1").listen(
        protocol.Factory.forProtocol(Server)
    )
    try:
        fake_session = type("S", (), {})()
        leg = await TCP4ClientEndpoint(reactor, "127.0.0.1", port_number).connect(
            protocol.Factory.forProtocol(protocol.Protocol)
        )
        fake_session.legs = {1: leg}
        direct = await TCP4ClientEndpoint(reactor, "127.0.0.1", port_number).connect(
            protocol.Factory.forProtocol(protocol.Protocol)
        )
        await until(lambda: len(seen) == 2)
        tunnels = legacy.leg_addresses([fake_session])
        assert seen[0] in tunnels
        assert seen[1] not in tunnels
        leg.transport.loseConnection()
        direct.transport.loseConnection()
    finally:
        await defer.maybeDeferred(port.stopListening)
