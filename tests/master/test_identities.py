"""Two master identities on one port (bbenroll/master/identities.py), with real Foolscap on 127.0.0.1.

The second identity comes the way it does in production: a roll written to the
registry (``[master] previous``), which the running service picks up by polling.
"""

from __future__ import annotations

import socket
import tomllib
from datetime import UTC, datetime, timedelta

import pytest
import pytest_twisted
from foolscap.api import Tub
from twisted.internet import defer, reactor, task, tcp

from bbenroll.fileio import atomic_write
from bbenroll.identity import load_identity, make_identity_pem, tubid_from_pem
from bbenroll.master import gate
from bbenroll.master.identities import RETIRED, ServedIdentities
from bbenroll.master.service import EnrollmentService
from bbenroll.master.tub import TUB_OPTIONS, EnrollmentBroker, ListenError
from bbenroll.registry import model, store
from tests.helpers.cli import run_cli

pytestmark = pytest.mark.network


@pytest.fixture(scope="session")
def pems() -> list[bytes]:
    """Two more identities (RSA key generation is slow): the next one, and one never served."""
    return [make_identity_pem(), make_identity_pem()]


def sockets() -> set[object]:
    """The reactor's listening ports and TCP connections (not its own wakers)."""
    selectables = reactor.getReaders() + reactor.getWriters()
    return {r for r in selectables if isinstance(r, tcp.Port | tcp.Connection)}


def roll(path, pem: bytes, grace: timedelta = model.DEFAULT_GRACE) -> str:
    """What ``master roll-identity`` writes, with an identity made beforehand (key generation is slow)."""
    tubid = tubid_from_pem(pem)
    name = f"master-{tubid[:8]}.pem"
    atomic_write(path.parent / name, pem, exclusive=True)
    with store.edit(path) as editor:
        now = datetime.now(UTC).replace(microsecond=0)
        editor.set_master(model.roll_identity(editor.master, name, tubid, now, grace))
        for worker in list(editor.workers.values()):
            if worker.revoked is None:
                editor.update(model.change_location(worker, now))
    return tubid


async def until(predicate, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if predicate():
            return
        await task.deferLater(reactor, 0.02, lambda: None)
    assert predicate()


class Master:
    """An EnrollmentService on the real reactor, its registry's CLI, and client Tubs."""

    def __init__(self, path):
        self.path = path
        self.service = EnrollmentService(path, reactor=reactor, poll_interval=0.1)
        self.clients: list[Tub] = []
        self.sockets = sockets()  # before we open anything

    async def serve_also(self, pem: bytes) -> str:
        """Roll to ``pem``'s identity: the service serves it beside the one it had; its TubID."""
        tubid = roll(self.path, pem)
        await until(lambda: tubid in self.service.identities.tubs)
        return tubid

    async def retire(self, tubid: str) -> None:
        """End the overlap in the registry, as the master does itself once all workers confirmed."""
        with store.edit(self.path) as editor:
            assert editor.master.previous is not None and editor.master.previous.tubid == tubid
            editor.set_master(model.retire_identity(editor.master))
        await until(lambda: tubid not in self.service.identities.tubs)

    def cli(self, *args):
        result = run_cli(["--registry", str(self.path), *args], clock=lambda: datetime.now(UTC))
        assert result.code == 0, result.err
        return result.out.strip()

    @property
    def port(self) -> int:
        listen = tomllib.loads(self.path.read_text())["master"]["listen"]
        return int(listen.split(":")[1])

    @property
    def tubid(self) -> str:
        return load_identity(self.service.loaded.identity_path).tubid

    def furl(self, tubid: str, swissnum: str) -> str:
        return f"pb://{tubid}@tcp:127.0.0.1:{self.port}/{swissnum}"

    async def start(self):
        self.service.startService()
        await self.service.when_listening()

    async def connect(self, furl):
        tub = Tub()
        tub.setOption("expose-remote-exception-types", False)
        tub.startService()
        self.clients.append(tub)
        return await tub.getReference(furl)

    async def stop(self):
        for tub in self.clients:
            await tub.stopService()
        if self.service.running:
            await self.service.stopService()
        # clean shutdown: every socket we opened is closed again (a few turns for TLS to end)
        for _ in range(100):
            if sockets() <= self.sockets:
                break
            await task.deferLater(reactor, 0.02, lambda: None)
        assert sockets() <= self.sockets


async def closed_by_peer(sock: socket.socket, seconds: float = 5.0) -> bool:
    """Whether the master closed or aborted ``sock`` within ``seconds`` (without blocking the reactor)."""
    sock.setblocking(False)
    for _ in range(int(seconds / 0.02)):
        try:
            if sock.recv(1) == b"":
                return True
        except BlockingIOError:
            pass
        except ConnectionResetError:
            return True
        await task.deferLater(reactor, 0.02, lambda: None)
    return False


def swissnum_of(furl: str) -> str:
    return furl.rsplit("/", 1)[1]


def broker_of(master: Master, name: str) -> EnrollmentBroker:
    (obj,) = [o for o in master.service.connections.values() if o.name == name]
    return obj.broker


@pytest.fixture
def master(served_reg_path):
    m = Master(served_reg_path)
    yield m
    pytest_twisted.blockon(defer.ensureDeferred(m.stop()))


@pytest_twisted.ensureDeferred
async def test_both_identities_answer_on_one_port(master, pems):
    first = swissnum_of(master.cli("add", "w1"))
    second = swissnum_of(master.cli("add", "w2"))
    await master.start()
    old = master.tubid
    new = await master.serve_also(pems[0])
    assert new == tubid_from_pem(pems[0]) != old

    ref1 = await master.connect(master.furl(old, first))
    ref2 = await master.connect(master.furl(new, second))
    assert (await ref1.callRemote("get_worker_config"))["name"] == "w1"
    assert (await ref2.callRemote("get_worker_config"))["name"] == "w2"
    # each connection was negotiated with the Tub whose TubID its FURL names
    assert broker_of(master, "w1").tub.tubID == old
    assert broker_of(master, "w2").tub.tubID == new
    assert ref1.getSturdyRef().getTubRef().getTubID() == old
    assert ref2.getSturdyRef().getTubRef().getTubID() == new


@pytest_twisted.ensureDeferred
async def test_a_master_started_during_an_overlap_serves_both_from_the_start(served_reg_path, pems):
    m = Master(served_reg_path)
    try:
        secret = swissnum_of(m.cli("add", "w1"))
        old = m.tubid
        new = roll(served_reg_path, pems[0])
        await m.start()
        assert m.service.identities.tubids() == [new, old]
        for tubid in m.service.identities.tubids():
            ref = await m.connect(m.furl(tubid, secret))
            assert (await ref.callRemote("get_worker_config"))["name"] == "w1"
    finally:
        await m.stop()


@pytest_twisted.ensureDeferred
async def test_the_same_secret_works_under_either_identity(master, pems):
    """A rollover changes the TubID only: the worker's swissnum is good under both."""
    secret = swissnum_of(master.cli("add", "w1"))
    await master.start()
    old = master.tubid
    new = await master.serve_also(pems[0])
    for tubid in (old, new):
        ref = await master.connect(master.furl(tubid, secret))
        assert (await ref.callRemote("get_worker_config"))["name"] == "w1"
    tubs = {o.broker.tub.tubID for o in master.service.connections.values()}
    assert tubs == {old, new}
    # the object is named by the worker's secret in the Tub that answered, never a random name
    for obj in master.service.connections.values():
        assert obj.broker.tub.referenceToName[obj] == secret
        assert secret not in obj.broker.tub.nameToReference


@pytest_twisted.ensureDeferred
async def test_an_unknown_tubid_is_refused_in_negotiation(master, pems):
    secret = swissnum_of(master.cli("add", "w1"))
    await master.start()
    await master.serve_also(pems[0])
    stranger = tubid_from_pem(pems[1])
    with pytest.raises(Exception) as info:
        await master.connect(master.furl(stranger, secret))
    # Foolscap's own refusal, before TLS: the client never sees a certificate
    assert f"unknown TubID {stranger}" in str(info.value)
    assert master.service.connections == {}
    ref = await master.connect(master.furl(master.tubid, secret))  # the port still serves (the new one)
    assert (await ref.callRemote("get_worker_config"))["name"] == "w1"


@pytest_twisted.ensureDeferred
async def test_the_gate_answers_for_the_second_identity_too(master, pems):
    master.cli("add", "w1")
    await master.start()
    new = await master.serve_also(pems[0])
    with pytest.raises(Exception) as info:
        await master.connect(master.furl(new, "a" * 32))
    copied = getattr(info.value, "failure", None)
    assert copied is not None, repr(info.value)
    assert str(copied.value) == gate.UNKNOWN
    assert "File " not in copied.getTraceback()  # no server traceback, as on the first identity


@pytest_twisted.ensureDeferred
async def test_every_identity_has_the_same_tub_options_and_one_doorkeeper(master, pems):
    master.cli("add", "w1")  # not confirmed: the old identity stays served
    await master.start()
    await master.serve_also(pems[0])
    identities = master.service.identities
    assert isinstance(identities, ServedIdentities)
    assert len(identities.tubs) == 2
    for tub in identities.tubs.values():
        assert tub.brokerClass is EnrollmentBroker
        assert tub.keepaliveTimeout == TUB_OPTIONS["keepaliveTimeout"]
        assert tub.disconnectTimeout == TUB_OPTIONS["disconnectTimeout"]
        assert tub.unsafeTracebacks is False
        assert tub.enrollment is master.service
        assert tub.doorkeeper is identities.doorkeeper  # shared: caps hold across both
        assert tub.owns_doorkeeper is False


@pytest_twisted.ensureDeferred
async def test_an_unauthenticated_connection_is_counted_once_and_timed_on_either_identity(master, pems):
    master.cli("add", "w1")
    await master.start()
    await master.serve_also(pems[0])
    keeper = master.service.identities.doorkeeper
    raw = socket.create_connection(("127.0.0.1", master.port))
    try:
        for _ in range(100):
            if keeper.waiting() == 1:
                break
            await task.deferLater(reactor, 0.02, lambda: None)
        assert keeper.waiting() == 1
        assert master.service.tub.doorkeeper.waiting() == 1  # the service's view is the shared one
    finally:
        raw.close()
    for _ in range(100):
        if keeper.waiting() == 0:
            break
        await task.deferLater(reactor, 0.02, lambda: None)
    assert keeper.waiting() == 0


@pytest_twisted.ensureDeferred
async def test_retiring_the_old_identity_keeps_the_port_and_the_new_connections(master, pems):
    secret = swissnum_of(master.cli("add", "w1"))
    other = swissnum_of(master.cli("add", "w2"))
    await master.start()
    old = master.tubid
    new = await master.serve_also(pems[0])
    on_old = await master.connect(master.furl(old, secret))
    on_new = await master.connect(master.furl(new, other))
    dropped = defer.Deferred()
    on_old.notifyOnDisconnect(dropped.callback, None)
    # a connection still negotiating (no TubID named yet) belongs to the port, not to a Tub
    raw = socket.create_connection(("127.0.0.1", master.port))
    keeper = master.service.identities.doorkeeper
    try:
        for _ in range(100):
            if keeper.waiting() == 1:
                break
            await task.deferLater(reactor, 0.02, lambda: None)
        assert keeper.waiting() == 1

        await master.retire(old)
        await dropped  # the old identity's connection ended
        assert master.service.identities.tubids() == [new]
        assert master.service.tub.tubID == new
        assert keeper.waiting() == 1  # not aborted by the retired Tub
        assert (await on_new.callRemote("get_worker_config"))["name"] == "w2"
        with pytest.raises(Exception, match=f"unknown TubID {old}: {RETIRED}"):
            await master.connect(master.furl(old, secret))
        again = await master.connect(master.furl(new, secret))
        assert (await again.callRemote("get_worker_config"))["name"] == "w1"

        await master.service.stopService()
        assert await closed_by_peer(raw)  # the whole port stopped: the waiting one was dropped too
    finally:
        raw.close()


@pytest_twisted.ensureDeferred
async def test_the_last_identity_cannot_be_retired(master):
    await master.start()
    with pytest.raises(ValueError, match="last identity"):
        master.service.identities.retire(master.tubid)
    assert master.service.identities.tubids() == [master.tubid]


@pytest_twisted.ensureDeferred
async def test_an_identity_served_twice_is_refused(master):
    await master.start()
    pem = load_identity(master.service.loaded.identity_path).pem
    with pytest.raises(ValueError, match="already served"):
        master.service.identities.add(pem, ["tcp:127.0.0.1:1"])


@pytest_twisted.ensureDeferred
async def test_a_taken_port_is_one_listen_error(master, pems):
    await master.start()
    identities = ServedIdentities(master.service, reactor)
    identities.add(pems[0], ["tcp:127.0.0.1:1"])
    listening = identities.listen(reactor, f"tcp:{master.port}:interface=127.0.0.1")
    identities.startService()
    try:
        with pytest.raises(ListenError, match=f"cannot listen on tcp:{master.port}"):
            await listening
    finally:
        await identities.stopService()


@pytest_twisted.ensureDeferred
async def test_a_negotiation_that_picked_the_old_identity_before_it_retired_is_ended(master, pems):
    """The race of a retirement: the client named the old TubID, and its negotiation finishes after."""
    secret = swissnum_of(master.cli("add", "w1"))
    await master.start()
    old = master.tubid
    new = await master.serve_also(pems[0])
    paused: list[defer.Deferred[None]] = []
    # Foolscap's own test hook: the server holds its hello (TLS has started) until released
    master.service.identities.tubs[old]._test_options = {"debug_pause_sendHello": paused.append}
    attempt = defer.ensureDeferred(master.connect(master.furl(old, secret)))
    for _ in range(250):
        if paused:
            break
        await task.deferLater(reactor, 0.02, lambda: None)
    assert paused, "the negotiation never reached the old Tub"
    await master.retire(old)
    paused[0].callback(None)
    attempt.addTimeout(10, reactor)
    with pytest.raises(Exception) as info:
        await attempt
    assert not isinstance(info.value, defer.TimeoutError), "the connection was left hanging"
    assert master.service.connections == {}
    assert master.service.identities.tubs[new].brokers == {}
