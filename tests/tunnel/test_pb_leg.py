"""The PB leg of a master session: in-process into a PB server factory, and the greeting timeout.

The in-process tests use Twisted's real PB server (``pb.PBServerFactory`` with a
portal) on task.Clock; the greeting timeout is tested against a real TCP server
on 127.0.0.1 that accepts and never says a word.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import pytest_twisted
from twisted.cred import checkers, portal
from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.testing import StringTransport
from twisted.spread import pb
from zope.interface import implementer

from bbenroll.master.hook import pb_login_refusal
from bbenroll.tunnel.frames import Ack, Close, Data, Open
from bbenroll.tunnel.inprocess import MAX_QUEUED, PipeAddress, connect_in_process, is_in_process, pipe
from bbenroll.tunnel.master_side import PB_GREETING_TIMEOUT
from tests.helpers.pb import login_bytes
from tests.tunnel.test_master_side import FakePeer, make_session

WORKER_ADDRESS = IPv4Address("TCP", "198.51.100.7", 40123)


class AddressedPeer(FakePeer):
    """The worker's receiver, with the address of its Foolscap connection."""

    def getPeer(self):
        return WORKER_ADDRESS


class Recorder(protocol.Protocol):
    """One end's protocol: records what it gets; greets on connect if told to."""

    def __init__(self, greeting=b""):
        self.greeting = greeting
        self.received = []
        self.lost = []

    def connectionMade(self):
        if self.greeting:
            self.transport.write(self.greeting)

    def dataReceived(self, data):
        self.received.append(data)

    def connectionLost(self, reason=None):
        self.lost.append(reason)


class RecordingFactory(protocol.Factory):
    """Buildbot's PB factory stand-in: greets like a PB server, records each protocol made."""

    def __init__(self):
        self.made = []
        self.addresses = []

    def buildProtocol(self, addr):
        self.addresses.append(addr)
        proto = Recorder(greeting=b"hello from buildbot")
        self.made.append(proto)
        return proto


def joined():
    a, b = Recorder(), Recorder()
    a_end, b_end = pipe("w1", WORKER_ADDRESS)
    a_end.protocol, b_end.protocol = a, b
    a.makeConnection(a_end)
    b.makeConnection(b_end)
    return a, b


# -- the pipe itself --------------------------------------------------------------------


def test_bytes_cross_at_once_in_order_and_a_paused_end_queues_them():
    a, b = joined()
    a.transport.write(b"one")
    assert b.received == [b"one"]
    b.transport.pauseProducing()  # b's protocol stops reading, like a TCP transport that stops reading
    a.transport.write(b"two")
    a.transport.writeSequence([b"thr", b"ee"])
    assert b.received == [b"one"]
    b.transport.resumeProducing()
    assert b.received == [b"one", b"two", b"three"]


def test_a_write_from_inside_data_received_is_queued_not_reentrant():
    a, b = joined()
    depth = []

    def echo_twice(data):
        depth.append(data)
        if data == b"ping":
            b.transport.write(b"pong")  # into a, which answers into b while b is still here
        b.received.append(data)

    def answer(data):
        a.received.append(data)
        a.transport.write(b"again")

    b.dataReceived = echo_twice
    a.dataReceived = answer
    a.transport.write(b"ping")
    assert b.received == [b"ping", b"again"] and a.received == [b"pong"]


def test_a_queue_past_the_writers_high_water_pauses_its_producer_and_drains_resume_it():
    a, b = joined()
    events = []

    @implementer(protocol.interfaces.IPushProducer)
    class Producer:
        def pauseProducing(self):
            events.append("pause")

        def resumeProducing(self):
            events.append("resume")

        def stopProducing(self):
            events.append("stop")

    a.transport.registerProducer(Producer(), True)
    b.transport.pauseProducing()
    chunk = b"x" * (256 * 1024)
    for _ in range(5):  # 1.25 MiB queued at b: past the 1 MiB high-water mark
        a.transport.write(chunk)
    assert events == ["pause"]
    b.transport.resumeProducing()
    assert events == ["pause", "resume"] and sum(map(len, b.received)) == 5 * len(chunk)


def test_a_paused_end_that_never_reads_is_aborted_past_its_bound():
    a, b = joined()
    b.transport.pauseProducing()
    chunk = b"x" * (1024 * 1024)
    for _ in range(MAX_QUEUED // len(chunk) + 1):
        a.transport.write(chunk)
    assert len(a.lost) == len(b.lost) == 1 and b.received == []
    a.transport.write(b"late")  # ignored, like a TCP transport after the connection is gone
    assert b.received == []


def test_lose_connection_delivers_what_is_queued_first_then_both_ends_hear_it_once():
    a, b = joined()
    b.transport.pauseProducing()
    a.transport.write(b"last words")
    a.transport.loseConnection()
    assert a.lost == b.lost == []  # b has not read them yet
    b.transport.resumeProducing()
    assert b.received == [b"last words"]
    assert len(a.lost) == len(b.lost) == 1
    assert "ConnectionDone" in repr(a.lost[0].value)
    a.transport.abortConnection()
    assert len(a.lost) == 1


def test_addresses_the_leg_and_buildbot_see():
    a, b = joined()
    assert b.transport.getPeer() == WORKER_ADDRESS  # what Buildbot logs and shows for the worker
    assert a.transport.getHost() == b.transport.getHost() == a.transport.getPeer() == PipeAddress("w1")
    assert not hasattr(a.transport.getHost(), "port")  # never counted as a TCP leg's address
    assert is_in_process(b.transport) and not is_in_process(object())


# -- a session's in-process legs --------------------------------------------------------------


def in_process_session(clock):
    factory = RecordingFactory()
    session, endpoint, _, _ = make_session(
        clock, greeting_timeout=PB_GREETING_TIMEOUT, pb_server_factory=lambda: factory
    )
    peer = AddressedPeer()
    session.attach(peer, {})
    return session, endpoint, factory, peer


def test_a_stream_is_joined_to_the_factorys_protocol_without_dialling_and_greeted_first():
    clock = task.Clock()
    session, endpoint, factory, peer = in_process_session(clock)
    session.receive(Open(1))
    (buildbot,) = factory.made
    assert endpoint.transports == []  # the TCP fallback was never used
    assert factory.addresses == [WORKER_ADDRESS] and buildbot.transport.getPeer() == WORKER_ADDRESS
    assert ("frame_data", 1, 0, b"hello from buildbot") in peer.calls  # a PB server speaks first
    login = login_bytes("w1")
    session.receive(Data(1, 0, login + b"more"))
    assert b"".join(buildbot.received) == login + b"more"
    clock.advance(PB_GREETING_TIMEOUT * 2)  # it greeted: no timeout
    assert 1 in session.legs
    session.receive(Close(1, len(login) + 4))
    assert len(buildbot.lost) == 1 and session.legs == {}
    session.terminate("test over")
    assert clock.getDelayedCalls() == []


def test_a_login_as_another_worker_never_reaches_the_in_process_protocol():
    clock = task.Clock()
    session, _, factory, peer = in_process_session(clock)
    session.receive(Open(1))
    (buildbot,) = factory.made
    session.receive(Data(1, 0, login_bytes("spare")))
    assert buildbot.received == [] and len(buildbot.lost) == 1
    assert ("frame_reset", 1) in peer.calls
    session.terminate("test over")
    assert clock.getDelayedCalls() == []


def test_backpressure_both_ways_on_an_in_process_leg():
    clock = task.Clock()
    session, _, factory, peer = in_process_session(clock)
    session.receive(Open(1))
    (buildbot,) = factory.made
    session.receive(Data(1, 0, login_bytes("w1")))
    high = session.core.settings.high_water
    # Buildbot writes faster than the worker acknowledges: past the high-water mark the
    # leg's end stops delivering, and what Buildbot writes waits in the pipe, not in the core
    chunk = b"y" * (1024 * 1024)
    for _ in range(high // len(chunk) + 1):
        buildbot.transport.write(chunk)
    leg_end = session.legs[1].transport
    assert leg_end.paused
    buildbot.transport.write(b"waits in the pipe")
    queued_in_core = len(session.core.streams[1].send_buffer)
    assert queued_in_core <= high + len(chunk)
    # the worker catches up: the leg reads again and the waiting bytes move on
    sent = sum(len(c[3]) for c in peer.calls if c[0] == "frame_data")
    session.receive(Ack(1, sent))
    clock.advance(1)
    sent = sum(len(c[3]) for c in peer.calls if c[0] == "frame_data")
    session.receive(Ack(1, sent))
    assert not leg_end.paused
    assert any(c[0] == "frame_data" and c[3].endswith(b"waits in the pipe") for c in peer.calls)
    # the other way: Buildbot's end paused (its protocol asked), the tunnel's bytes wait for it
    buildbot.transport.pauseProducing()
    session.receive(Data(1, len(login_bytes("w1")), b"for buildbot"))
    assert not any(b"for buildbot" in r for r in buildbot.received)
    buildbot.transport.resumeProducing()
    assert buildbot.received[-1] == b"for buildbot"
    session.terminate("test over")
    assert clock.getDelayedCalls() == []


def test_without_a_factory_now_the_leg_falls_back_to_tcp():
    clock = task.Clock()
    session, endpoint, _, _ = make_session(clock, pb_server_factory=lambda: None)
    session.attach(AddressedPeer(), {})
    session.receive(Open(1))
    assert len(endpoint.transports) == 1 and not is_in_process(session.legs[1].transport)
    session.terminate("test over")
    assert clock.getDelayedCalls() == []


def test_a_factory_that_refuses_resets_the_stream():
    class Refusing(protocol.Factory):
        def buildProtocol(self, addr):
            return None

    clock = task.Clock()
    session, _, _, _ = make_session(clock, pb_server_factory=Refusing)
    peer = AddressedPeer()
    session.attach(peer, {})
    session.receive(Open(1))
    assert ("frame_reset", 1) in peer.calls and session.legs == {}
    session.terminate("test over")
    assert clock.getDelayedCalls() == []


class Realm:
    """A PB realm that accepts w1 (Buildbot's dispatcher is one of these)."""

    def requestAvatar(self, avatar_id, mind, *interfaces):
        return pb.IPerspective, pb.Avatar(), lambda: None


def test_a_real_pb_login_succeeds_through_an_in_process_leg_and_counts_as_a_tunnel():
    checker = checkers.InMemoryUsernamePasswordDatabaseDontUse(w1=b"pw")
    server_factory = pb.PBServerFactory(portal.Portal(implementer(portal.IRealm)(Realm)(), [checker]))
    client_factory = pb.PBClientFactory()
    client = client_factory.buildProtocol(None)
    leg_end = connect_in_process(server_factory, client, "w1", WORKER_ADDRESS)
    results = []
    client_factory.login(UsernamePassword(b"w1", b"pw")).addBoth(results.append)
    assert results and isinstance(results[0], pb.RemoteReference), results  # synchronous: no socket
    server_broker = leg_end.other.protocol
    assert server_broker.transport.getPeer() == WORKER_ADDRESS
    # the hook's direct-login guard (master/legacy.py): a moved worker logs in only through its
    # tunnel; an in-process leg is one by construction, a socket from 127.0.0.1 is not
    moved = SimpleNamespace(moved="2026-01-01", legacy=True)
    registry = SimpleNamespace(workers={"w1": moved}, master=SimpleNamespace(legacy_pb="tcp:9989"))
    enrollment = SimpleNamespace(gate=SimpleNamespace(registry=registry), tunnel_addresses=set)
    master = SimpleNamespace(
        service_manager=SimpleNamespace(namedServices={"bbenroll": SimpleNamespace(enrollment=enrollment)})
    )
    assert pb_login_refusal(master, SimpleNamespace(username=b"w1", broker=server_broker)) is None
    direct = SimpleNamespace(transport=StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5555)))
    assert pb_login_refusal(master, SimpleNamespace(username=b"w1", broker=direct)) is not None
    client.transport.loseConnection()
    assert server_broker.disconnected


# -- the greeting timeout, against a real silent TCP server ---------------------------------------


class Silent(protocol.Protocol):
    def __init__(self, accepted, lost):
        self.accepted, self.lost = accepted, lost

    def connectionMade(self):
        self.accepted.append(self)

    def connectionLost(self, reason=None):
        self.lost.append(self)


async def until(predicate, what):
    for _ in range(500):
        if predicate():
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.network
@pytest_twisted.ensureDeferred
async def test_a_leg_that_hears_nothing_from_the_pb_port_is_reset_and_the_next_open_retries():
    accepted, lost = [], []
    factory = protocol.Factory.forProtocol(lambda: Silent(accepted, lost))
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    try:
        clock = task.Clock()  # the session's timers; the TCP connection is real
        session, _, _, _ = make_session(clock, greeting_timeout=PB_GREETING_TIMEOUT)
        session.pb_endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        peer = AddressedPeer()
        session.attach(peer, {})
        session.receive(Open(1))
        await until(lambda: accepted and 1 in session.legs, "the silent server to accept")
        clock.advance(PB_GREETING_TIMEOUT - 1)
        assert 1 in session.legs and ("frame_reset", 1) not in peer.calls
        clock.advance(1)
        assert ("frame_reset", 1) in peer.calls and session.legs == {}
        await until(lambda: lost, "the silent connection to be closed")
        assert session.short_legs == 0  # a silent leg carried no login: no cool-down
        # buildbot-worker retries: a new stream dials again
        session.receive(Open(2))
        await until(lambda: len(accepted) == 2 and 2 in session.legs, "the retry to connect")
        session.terminate("test over")
        await until(lambda: len(lost) == 2, "the retry's connection to be closed")
        assert clock.getDelayedCalls() == []
    finally:
        await port.stopListening()


def test_a_dial_that_never_completes_is_cancelled_by_the_greeting_timeout():
    dials = []

    class Hanging:
        def connect(self, factory):
            d = defer.Deferred(lambda d: dials.append("cancelled"))
            dials.append(d)
            return d

    clock = task.Clock()
    session, _, _, _ = make_session(clock, greeting_timeout=PB_GREETING_TIMEOUT)
    session.pb_endpoint = Hanging()
    peer = AddressedPeer()
    session.attach(peer, {})
    session.receive(Open(1))
    clock.advance(PB_GREETING_TIMEOUT)
    assert dials[-1] == "cancelled" and ("frame_reset", 1) in peer.calls and session.pending == {}
    session.terminate("test over")
    assert clock.getDelayedCalls() == []


def test_a_stream_that_ends_while_buildbot_greets_closes_its_in_process_leg():
    class Overflowing(protocol.Protocol):
        """Greets with more than the core may hold for the stream: the core resets it at once."""

        def connectionMade(self):
            self.transport.write(b"z" * (session.core.settings.max_buffer + 1))

        def connectionLost(self, reason=None):
            lost.append(reason)

    lost = []
    factory = protocol.Factory.forProtocol(Overflowing)
    clock = task.Clock()
    session, _, _, _ = make_session(clock, pb_server_factory=lambda: factory)
    peer = AddressedPeer()
    session.attach(peer, {})
    session.receive(Open(1))
    assert ("frame_reset", 1) in peer.calls and 1 not in session.core.streams
    assert session.legs == {} and len(lost) == 1  # Buildbot's protocol is not left orphaned
    session.terminate("test over")
    assert clock.getDelayedCalls() == []
