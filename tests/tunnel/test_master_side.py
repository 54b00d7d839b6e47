"""The master's tunnel adapter, deterministically: task.Clock, StringTransport, no reactor."""

from __future__ import annotations

from foolscap.api import DeadReferenceError
from twisted.internet import defer, error, task
from twisted.internet.testing import StringTransport

from bbenroll.tunnel.core import Settings
from bbenroll.tunnel.frames import Ack, Close, Data, Open, Ping
from bbenroll.tunnel.master_side import MasterSession


class FakePeer:
    """The worker's receiver: records what the master sends."""

    def __init__(self):
        self.calls = []

    def callRemoteOnly(self, name, *args):
        self.calls.append((name, *args))


class FakePBEndpoint:
    """Connects each stream's leg to a StringTransport standing in for Buildbot's PB port."""

    def __init__(self):
        self.transports = []

    def connect(self, factory):
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.transports.append(transport)
        return defer.succeed(protocol)


def make_session(clock, deadline=30.0):
    ended = []
    dead = []
    endpoint = FakePBEndpoint()
    session = MasterSession(
        worker="w1", session_id="s1", pb_endpoint=endpoint, clock=clock,
        settings=Settings(resume_deadline=deadline, ack_delay=0.01),
        on_expired=ended.append, on_link_dead=dead.append,
    )
    return session, endpoint, ended, dead


def test_stream_carries_bytes_both_ways_and_resumes_after_a_drop():
    clock = task.Clock()
    session, endpoint, ended, _ = make_session(clock)
    peer = FakePeer()
    assert session.attach(peer, {}) == {}
    session.receive(Open(1))
    session.receive(Data(1, 0, b"hello pb"))
    (pb,) = endpoint.transports
    assert pb.value() == b"hello pb"
    # Buildbot answers; the master sends it to the worker
    leg = session.legs[1]
    leg.dataReceived(b"hello worker")
    assert ("frame_data", 1, 0, b"hello worker") in peer.calls
    # the link drops before the worker acknowledged: nothing is lost on resume
    session.detach(peer)
    leg.dataReceived(b" and more")
    clock.advance(10)
    assert not ended and not pb.disconnecting  # Buildbot's PB connection stays up during the outage
    peer2 = FakePeer()
    ours = session.attach(peer2, {1: 0})  # the worker got nothing
    assert ours == {1: len(b"hello pb")}
    assert ("frame_data", 1, 0, b"hello worker and more") in peer2.calls
    session.terminate("test over")
    assert ended == [session] and pb.disconnecting
    assert clock.getDelayedCalls() == []


def test_link_down_past_the_deadline_closes_the_pb_connections():
    clock = task.Clock()
    session, endpoint, ended, _ = make_session(clock, deadline=30)
    peer = FakePeer()
    session.attach(peer, {})
    session.receive(Open(1))
    (pb,) = endpoint.transports
    session.detach(peer)
    clock.advance(29)
    assert not ended and not pb.disconnecting
    clock.advance(1)
    assert ended == [session]
    assert pb.disconnecting  # Buildbot sees an ordinary disconnect
    assert clock.getDelayedCalls() == []


def test_silence_is_a_dead_link_and_pings_keep_it_alive():
    clock = task.Clock()
    session, _, _, dead = make_session(clock)
    peer = FakePeer()
    session.attach(peer, {})
    clock.advance(5)
    assert ("frame_ping",) in peer.calls
    session.receive(Ping())
    clock.advance(14)
    assert dead == []
    clock.advance(1)
    assert dead == [session]
    session.terminate("test over")
    assert clock.getDelayedCalls() == []


def test_protocol_error_drops_the_link_but_keeps_the_session():
    clock = task.Clock()
    session, _, ended, dead = make_session(clock)
    session.attach(FakePeer(), {})
    session.receive(Open(1))
    session.receive(Data(1, 99, b"gap"))
    assert dead == [session] and not ended and 1 in session.core.streams
    session.terminate("test over")
    assert clock.getDelayedCalls() == []


def test_backpressure_pauses_and_resumes_the_pb_leg():
    clock = task.Clock()
    session, endpoint, _, _ = make_session(clock)
    peer = FakePeer()
    session.attach(peer, {})
    session.receive(Open(1))
    (pb,) = endpoint.transports
    session.legs[1].dataReceived(b"x" * (session.core.settings.high_water + 1))
    assert pb.producerState == "paused"
    session.receive(Ack(1, session.core.settings.high_water + 1))
    assert pb.producerState == "producing"
    session.terminate("test over")
    assert clock.getDelayedCalls() == []


class FailingPBEndpoint:
    """Buildbot's PB port is not listening."""

    def connect(self, factory):
        return defer.fail(error.ConnectionRefusedError())


def test_unreachable_pb_port_resets_the_stream_but_keeps_the_session():
    clock = task.Clock()
    session, _, ended, dead = make_session(clock)
    session.pb_endpoint = FailingPBEndpoint()
    peer = FakePeer()
    session.attach(peer, {})
    session.receive(Open(1))
    assert ("frame_reset", 1) in peer.calls
    assert session.core.streams == {} and not ended and not dead
    session.terminate("test over")
    assert clock.getDelayedCalls() == []


def test_closes_travel_both_ways():
    clock = task.Clock()
    session, endpoint, _, _ = make_session(clock)
    peer = FakePeer()
    session.attach(peer, {})
    session.receive(Open(1))
    session.receive(Open(2))
    _, pb2 = endpoint.transports
    # Buildbot closes the first PB connection: the worker is told, at the final offset
    session.legs[1].transport.loseConnection()
    session.legs[1].connectionLost(None)
    assert ("frame_close", 1, 0) in peer.calls
    # the worker closes the second: Buildbot's PB connection is closed
    session.receive(Close(2, 0))
    assert pb2.disconnecting and 2 not in session.legs
    assert ("frame_ack", 2, 1) in peer.calls  # final+1: the close is acknowledged
    session.terminate("test over")
    assert clock.getDelayedCalls() == []


class DeadPeer(FakePeer):
    """A worker reference whose connection is already gone."""

    def callRemoteOnly(self, name, *args):
        raise DeadReferenceError("gone")


def test_frames_to_a_dead_reference_are_resent_on_resume():
    clock = task.Clock()
    session, _, _, _ = make_session(clock)
    session.attach(DeadPeer(), {})
    session.receive(Open(1))
    session.legs[1].dataReceived(b"lost on the way")  # no exception: the disconnect is on its way
    peer = FakePeer()
    session.attach(peer, {1: 0})
    assert ("frame_data", 1, 0, b"lost on the way") in peer.calls
    session.terminate("test over")
    assert clock.getDelayedCalls() == []
