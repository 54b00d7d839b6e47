"""The master's tunnel adapter, deterministically: task.Clock, StringTransport, no reactor."""

from __future__ import annotations

import dataclasses

from foolscap.api import DeadReferenceError
from twisted.internet import defer, error, task
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, globalLogPublisher

from bbenroll.tunnel.frames import Ack, Close, Data, Open, Ping
from bbenroll.tunnel.master_side import (
    MASTER_MAX_BUFFER,
    MAX_PENDING_BYTES,
    MAX_STREAMS_PER_SESSION,
    MasterSession,
    master_settings,
)
from tests.helpers.pb import login_bytes

LOGIN = login_bytes("w1")  # the sessions below are worker w1's


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


def make_session(clock, deadline=30.0, greeting_timeout=3600.0, pb_server_factory=None):
    """A session of worker w1. Its fake PB ports never greet, so the greeting timeout is
    long unless a test is about it (tests/tunnel/test_pb_leg.py)."""
    ended = []
    dead = []
    endpoint = FakePBEndpoint()
    session = MasterSession(
        worker="w1", session_id="s1", pb_endpoint=endpoint, clock=clock,
        settings=dataclasses.replace(master_settings(deadline), ack_delay=0.01),
        on_expired=ended.append, on_link_dead=dead.append, pb_server_factory=pb_server_factory,
    )
    session.pb_greeting_timeout = greeting_timeout
    return session, endpoint, ended, dead


def test_stream_carries_bytes_both_ways_and_resumes_after_a_drop():
    clock = task.Clock()
    session, endpoint, ended, _ = make_session(clock)
    peer = FakePeer()
    assert session.attach(peer, {}) == {}
    session.receive(Open(1))
    session.receive(Data(1, 0, LOGIN + b"hello pb"))
    (pb,) = endpoint.transports
    assert pb.value() == LOGIN + b"hello pb"
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
    assert ours == {1: len(LOGIN + b"hello pb")}
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
    settings = session.core.settings
    peer = FakePeer()
    session.attach(peer, {})
    clock.advance(settings.ping_interval)
    assert peer.calls == []  # the master never starts a ping: the worker does
    session.receive(Ping())
    assert peer.calls == [("frame_ping",)]  # it answers one
    clock.advance(settings.idle_dead_after - 1)
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
    session.receive(Data(1, session.core.settings.window, b"beyond the window"))
    assert dead == [session] and not ended and 1 in session.core.streams
    session.terminate("test over")
    assert clock.getDelayedCalls() == []


def with_one_stream(clock, deadline=30.0):
    """A session whose worker is attached and opened stream 1: (session, peer, its PB transport, dead)."""
    session, endpoint, _, dead = make_session(clock, deadline)
    peer = FakePeer()
    session.attach(peer, {})
    session.receive(Open(1))
    (pb,) = endpoint.transports
    return session, peer, pb, dead


def test_backpressure_pauses_and_resumes_the_pb_leg_even_across_an_outage():
    clock = task.Clock()
    session, peer, pb, _ = with_one_stream(clock)
    high = session.core.settings.high_water
    session.legs[1].dataReceived(b"x" * (high + 1))  # the worker acknowledges nothing
    assert pb.producerState == "paused"
    session.detach(peer)
    session.attach(FakePeer(), {1: 0})  # back, but the window is still full
    assert pb.producerState == "paused"
    session.receive(Ack(1, high + 1))
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


def warnings_during(action):
    """Run ``action``; the formats of the warnings it logged."""
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        action()
    finally:
        globalLogPublisher.removeObserver(events.append)
    return [e["log_format"] for e in events if e.get("log_level") is LogLevel.warn]


def test_opens_past_the_stream_cap_are_reset_never_connected_and_warned_once():
    clock = task.Clock()
    session, endpoint, ended, dead = make_session(clock)
    peer = FakePeer()
    session.attach(peer, {})
    warned = warnings_during(lambda: [session.receive(Open(i)) for i in range(1, 201)])
    assert len(endpoint.transports) == MAX_STREAMS_PER_SESSION  # no PB connection past the cap
    resets = [call[1] for call in peer.calls if call[0] == "frame_reset"]
    assert resets == list(range(MAX_STREAMS_PER_SESSION + 1, 201))
    assert len(warned) == 1 and session.refused_streams == 200 - MAX_STREAMS_PER_SESSION
    assert set(session.core.streams) == set(range(1, MAX_STREAMS_PER_SESSION + 1))
    assert not ended and not dead  # the session itself goes on
    # the cap is on streams at once: one that ends makes room for the next
    session.receive(Close(1, 0))
    session.receive(Ack(1, 1))
    assert 1 not in session.core.streams
    session.receive(Open(201))
    assert len(endpoint.transports) == MAX_STREAMS_PER_SESSION + 1 and 201 in session.legs
    session.terminate("test over")
    assert all(t.disconnecting for t in endpoint.transports)
    assert clock.getDelayedCalls() == []


class SlowPBEndpoint:
    """Buildbot's PB port accepts only when the test says so."""

    def __init__(self):
        self.waiting = []

    def connect(self, factory):
        d = defer.Deferred()
        self.waiting.append((factory, d))
        return d

    def accept(self):
        """The oldest dial's transport; None if the session cancelled that dial."""
        factory, d = self.waiting.pop(0)
        if d.called:  # cancelled (a Deferred without a canceller fails with CancelledError)
            d.addErrback(lambda f: f.trap(defer.CancelledError))
            return None
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        d.callback(protocol)
        return transport


def test_data_held_for_a_pb_connection_being_made_is_bounded():
    clock = task.Clock()
    session, _, _, _ = make_session(clock)
    session.pb_endpoint = slow = SlowPBEndpoint()
    peer = FakePeer()
    session.attach(peer, {})
    session.receive(Open(1))
    session.receive(Data(1, 0, LOGIN))
    chunk = b"x" * (256 * 1024)
    offset = len(LOGIN)
    while ("frame_reset", 1) not in peer.calls:
        assert offset <= MAX_PENDING_BYTES, "the data before the PB connection was never bounded"
        session.receive(Data(1, offset, chunk))
        offset += len(chunk)
    assert offset > MAX_PENDING_BYTES and session.pending == {} and session.core.streams == {}
    assert slow.accept() is None  # the reset cancelled the dial: no PB connection is made
    session.terminate("test over")
    assert clock.getDelayedCalls() == []


class KeepsProducing:
    """Buildbot's end of a PB leg: sends ``chunk`` bytes every ``every`` seconds unless paused."""

    def __init__(self, clock, leg, chunk=64 * 1024, every=0.1):
        self.leg = leg
        self.chunk = b"p" * chunk
        self.sent = 0
        self.loop = task.LoopingCall(self._send)
        self.loop.clock = clock
        self.loop.start(every, now=False)

    def _send(self):
        if self.leg.transport.producerState == "producing":
            self.leg.dataReceived(self.chunk)
            self.sent += len(self.chunk)

    def stop(self):
        self.loop.stop()


def queued(session, stream):
    return len(session.core.streams[stream].send_buffer)


def test_a_down_link_stops_reading_the_pb_legs_until_it_is_back():
    clock = task.Clock()
    session, peer, pb, _ = with_one_stream(clock, deadline=600)
    buildbot = KeepsProducing(clock, session.legs[1])
    clock.advance(1)
    session.receive(Ack(1, buildbot.sent))  # the worker keeps up while the link is up
    assert buildbot.sent > 0 and queued(session, 1) == 0
    session.detach(peer)
    assert pb.producerState == "paused"
    sent_before = buildbot.sent
    clock.advance(300)  # a long outage: Buildbot's data stays in its socket, not in our memory
    assert buildbot.sent == sent_before and queued(session, 1) == 0
    peer2 = FakePeer()
    session.attach(peer2, {1: 0})
    assert pb.producerState == "producing"
    clock.advance(1)
    assert buildbot.sent > sent_before and any(c[0] == "frame_data" for c in peer2.calls)
    buildbot.stop()
    session.terminate("test over")
    assert clock.getDelayedCalls() == []


def test_a_dead_link_or_a_protocol_error_stops_reading_too():
    clock = task.Clock()
    session, _, pb, dead = with_one_stream(clock)
    clock.advance(session.core.settings.idle_dead_after)  # silence: the core declares the link dead
    assert dead == [session] and pb.producerState == "paused"
    session.attach(FakePeer(), {1: 0})
    assert pb.producerState == "producing"
    session.receive(Data(1, session.core.settings.window, b"beyond the window"))
    assert dead == [session, session] and pb.producerState == "paused"
    session.terminate("test over")
    assert clock.getDelayedCalls() == []


def test_a_leg_that_ignores_the_pause_is_reset_past_the_master_buffer():
    clock = task.Clock()
    session, peer, pb, _ = with_one_stream(clock)
    session.detach(peer)
    leg = session.legs[1]
    chunk = b"x" * (1024 * 1024)
    for _ in range(MASTER_MAX_BUFFER // len(chunk) + 1):  # a StringTransport ignores pauseProducing
        leg.dataReceived(chunk)
    assert 1 not in session.core.streams and pb.disconnecting
    session.terminate("test over")
    assert clock.getDelayedCalls() == []


def test_a_login_as_another_worker_never_reaches_buildbot():
    clock = task.Clock()
    session, endpoint, _, _ = make_session(clock)
    peer = FakePeer()
    session.attach(peer, {})
    messages = []
    globalLogPublisher.addObserver(messages.append)
    try:
        session.receive(Open(1))
        session.receive(Data(1, 0, login_bytes("w2")))
    finally:
        globalLogPublisher.removeObserver(messages.append)
    (pb,) = endpoint.transports
    assert pb.value() == b""  # not one byte of the login for w2 reached the PB port
    assert pb.disconnecting and ("frame_reset", 1) in peer.calls
    (warning,) = [m for m in messages if m.get("log_level") == LogLevel.warn]
    assert warning["worker"] == "w1" and warning["name"] == "w2"  # both names in the master's log
    assert session.core.streams == {}  # reset: the worker's buildbot-worker reconnects, and cools down
    session.terminate("test over")
    assert clock.getDelayedCalls() == []


def test_bytes_are_held_until_the_login_is_seen_then_pass_unchanged():
    clock = task.Clock()
    session, endpoint, _, _ = make_session(clock)
    peer = FakePeer()
    session.attach(peer, {})
    session.receive(Open(1))
    half = len(LOGIN) // 2
    session.receive(Data(1, 0, LOGIN[:half]))
    (pb,) = endpoint.transports
    assert pb.value() == b""  # held: the name is not known yet
    session.receive(Data(1, half, LOGIN[half:] + b"respond..."))
    assert pb.value() == LOGIN + b"respond..."
    assert session.logins == {} and session.held == {}  # nothing more is inspected or kept
    session.terminate("test over")
    assert clock.getDelayedCalls() == []
