"""The master's tunnel adapter, deterministically: task.Clock, StringTransport, no reactor."""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.internet.testing import StringTransport

from bbenroll.tunnel.core import Settings
from bbenroll.tunnel.frames import Ack, Data, Open, Ping
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
