"""Hostile frames against the tunnel's adapters, as property tests: the master's
:class:`MasterSession` (its PB legs on StringTransports) and the worker's
:class:`WorkerTunnel` (fake Foolscap references), both on ``task.Clock``.

Properties: a frame never makes an adapter raise; a protocol error drops the
link (the master calls ``on_link_dead``; the worker's link is down and a
reconnect is scheduled); what a session holds stays within its bounds
(streams, PB connections, bytes waiting for a PB connection, bytes queued per
stream); and once the session is terminated or the tunnel stopped, no timer is
left (``clock.getDelayedCalls() == []``). Clock steps are multiples of 1/4 s,
which keeps the examples readable (the core's wake-up rounding, which once made
``task.Clock.advance`` spin, is tested in test_tunnel_fuzz.py).
"""

from __future__ import annotations

import dataclasses

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, task

from bbenroll.tunnel.core import Settings
from bbenroll.tunnel.frames import Data, Open
from bbenroll.tunnel.master_side import (
    MASTER_MAX_BUFFER,
    MAX_PENDING_BYTES,
    MAX_STREAMS_PER_SESSION,
    MasterSession,
    master_settings,
)
from bbenroll.tunnel.wire import MAX_PAYLOAD
from bbenroll.tunnel.worker_side import WorkerTunnel
from tests.helpers.frames import frames, payloads, received_maps, stream_ids, wire_values
from tests.helpers.pb import login_bytes
from tests.tunnel.test_master_side import FakePBEndpoint, FakePeer
from tests.tunnel.test_worker_side import FURL, FakeRef, Recorder

FUZZ = settings(max_examples=100, deadline=None)
quarter_seconds = st.integers(0, 80).map(lambda n: n / 4)


class DiscardingPeer:
    """The worker's receiver, keeping no payloads (examples push megabytes)."""

    def __init__(self) -> None:
        self.sent = 0

    def callRemoteOnly(self, name, *args) -> None:
        self.sent += 1


class SlowPBEndpoint(FakePBEndpoint):
    """A PB port whose connections complete only when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[tuple[object, defer.Deferred]] = []

    def connect(self, factory):
        d: defer.Deferred = defer.Deferred()
        self.waiting.append((factory, d))
        return d

    def complete(self) -> None:
        waiting, self.waiting = self.waiting, []
        for factory, d in waiting:
            if d.called:  # cancelled by the session, as a real endpoint's connect is: no connection
                continue
            super().connect(factory).chainDeferred(d)


LOGIN = login_bytes("w1")  # master_session() is worker w1's


def master_session(clock, endpoint) -> tuple[MasterSession, list, list]:
    """A session with the master's real bounds; returns it, its link-dead calls and its protocol errors."""
    dead: list = []
    session = MasterSession(
        worker="w1", session_id="s1", pb_endpoint=endpoint, clock=clock,
        settings=master_settings(30.0), on_expired=lambda s: None, on_link_dead=dead.append,
    )
    errors: list = []
    handle = session.on_protocol_error
    session.on_protocol_error = lambda e: (errors.append(e), handle(e))  # type: ignore[method-assign]
    return session, dead, errors


def check_master_bounds(session: MasterSession) -> None:
    streams = session.core.streams
    assert len(streams) <= MAX_STREAMS_PER_SESSION
    # one PB connection (made or being made) per stream, never more than the cap
    assert len(session.legs) + len(session.pending) <= MAX_STREAMS_PER_SESSION
    assert set(session.legs) <= set(streams) and set(session.pending) <= set(streams)
    assert all(len(early) <= MAX_PENDING_BYTES for early in session.pending.values())
    assert all(len(s.send_buffer) <= MASTER_MAX_BUFFER for s in streams.values())


master_frames = st.tuples(st.just("frame"), frames(stream_ids((1, 2, 3, 4, 5))))
master_steps = st.lists(
    st.one_of(
        master_frames,
        master_frames,  # twice: hostile frames are what this test is about
        master_frames,
        st.tuples(st.just("opens"), st.integers(1, 50)),
        st.tuples(st.just("worker_data"), st.integers(0, 7), st.sampled_from([1, 4096, MAX_PAYLOAD])),
        st.tuples(
            st.just("pb_writes"), st.integers(0, 7), st.sampled_from([1, 4096, 2**22, MASTER_MAX_BUFFER + 1])
        ),
        st.tuples(st.just("pb_connects")),
        st.tuples(st.just("reconnect")),
        st.tuples(st.just("advance"), quarter_seconds),
    ),
    min_size=5,
    max_size=30,
)


@FUZZ
@given(slow_pb=st.booleans(), steps=master_steps)
def test_the_master_session_survives_hostile_frames_within_its_bounds(slow_pb, steps):
    clock = task.Clock()
    endpoint = SlowPBEndpoint() if slow_pb else FakePBEndpoint()
    session, dead, errors = master_session(clock, endpoint)
    session.attach(DiscardingPeer(), {})
    for stream in (1, 2, 3):
        session.receive(Open(stream))
    for kind, *args in steps:
        errors_before, dead_before = len(errors), len(dead)
        if kind == "frame":
            session.receive(args[0])
        elif kind == "worker_data" and session.core.streams:  # in order: it reaches the PB leg
            stream = list(session.core.streams.values())[args[0] % len(session.core.streams)]
            session.receive(Data(stream.id, stream.recv_next, b"d" * args[1]))
        elif kind == "opens":  # a flood of opens, ids the worker never used
            for stream in range(100, 100 + args[0]):
                session.receive(Open(stream))
        elif kind == "pb_writes" and session.legs:  # Buildbot writing, ignoring any pause
            legs = list(session.legs.values())
            legs[args[0] % len(legs)].dataReceived(b"p" * args[1])
        elif kind == "pb_connects" and slow_pb:
            endpoint.complete()
        elif kind == "reconnect":  # the worker comes back, resuming from where the master's data was acked
            session.detach(session.peer)
            session.attach(DiscardingPeer(), {s.id: s.send_base for s in session.core.streams.values()})
        elif kind == "advance":
            clock.advance(args[0])
        if len(errors) > errors_before:
            assert len(dead) == dead_before + 1 and dead[-1] is session and not session.link_up
        check_master_bounds(session)
    session.terminate("test over")
    if slow_pb:
        endpoint.complete()  # connections that complete after the end are closed at once
    assert session.legs == {} and session.pending == {} and session.core.streams == {}
    assert all(t.disconnecting for t in endpoint.transports)
    assert clock.getDelayedCalls() == []


@FUZZ
@given(
    data=st.lists(
        st.tuples(st.integers(1, 3), st.sampled_from([1, 4096, 2**18, MAX_PAYLOAD])), min_size=1, max_size=12
    )
)
def test_bytes_waiting_for_a_pb_connection_stay_within_max_pending(data):
    clock = task.Clock()
    endpoint = SlowPBEndpoint()
    session, dead, errors = master_session(clock, endpoint)
    peer = FakePeer()
    session.attach(peer, {})
    sent = {1: 0, 2: 0, 3: 0}
    for stream in sent:
        session.receive(Open(stream))
        session.receive(Data(stream, 0, LOGIN))  # held bytes count towards max_pending too
        sent[stream] = len(LOGIN)
    for stream, size in data:  # in order, so legitimate, but faster than the PB port connects
        known = session.core.streams.get(stream)
        if known is None:
            continue  # reset already
        session.receive(Data(stream, known.recv_next, b"d" * size))
        sent[stream] += size
        check_master_bounds(session)
        if sent[stream] > MAX_PENDING_BYTES:
            assert stream not in session.core.streams and ("frame_reset", stream) in peer.calls
    endpoint.complete()
    assert errors == [] and dead == []
    # the legs connect in the order of the opens; a reset stream's dial was cancelled: no connection
    live = [stream for stream in sent if stream in session.core.streams]
    for stream, transport in zip(live, endpoint.transports, strict=True):
        assert transport.value() == LOGIN + b"d" * (sent[stream] - len(LOGIN))
        assert not transport.disconnecting
    session.terminate("test over")
    assert clock.getDelayedCalls() == []


@settings(max_examples=20, deadline=None)
@given(received=received_maps((1,)))
def test_a_hostile_resume_drops_the_masters_link_instead_of_raising(received):
    clock = task.Clock()
    session, dead, _ = master_session(clock, FakePBEndpoint())
    peer = DiscardingPeer()
    session.attach(peer, {})
    session.receive(Open(1))
    session.legs[1].dataReceived(b"hello")  # 5 bytes the worker has not acknowledged
    session.detach(peer)
    received = {**received, 1: 10**9}  # more than the master ever sent on stream 1
    session.attach(DiscardingPeer(), received)
    assert dead == [session] and not session.link_up
    session.terminate("test over")
    assert clock.getDelayedCalls() == []


# -- the worker ------------------------------------------------------------------------

WORKER_SMALL = Settings(window=64, chunk=16, ack_every=32, high_water=128, low_water=32, max_buffer=256,
                        resume_deadline=60)


class ResumingTub:
    """A Tub whose every getReference reaches the master; the master resumes the worker's
    session with ``lies.pop(0)`` as its ``received`` if there is one, else with the truth."""

    def __init__(self, tunnel: WorkerTunnel) -> None:
        self.tunnel = tunnel
        self.refs: list[FakeRef] = []
        self.lies: list[dict[int, int]] = []

    def getReference(self, furl):
        if self.lies:
            received = self.lies.pop(0)
        else:
            received = {s.id: s.send_base for s in self.tunnel.core.streams.values()}
        ref = FakeRef([{"status": "resumed", "received": received}])
        ref.answers = [{"status": "resumed", "received": received}] * 2  # an "unknown" retry asks twice
        self.refs.append(ref)
        return defer.succeed(ref)

    def stopService(self):
        return defer.succeed(None)


def worker_tunnel(clock) -> tuple[WorkerTunnel, ResumingTub, list]:
    tunnel = WorkerTunnel(FURL, reactor=clock, clock=clock, settings=dataclasses.replace(WORKER_SMALL))
    tub = ResumingTub(tunnel)
    tunnel.tub = tub
    errors: list = []
    handle = tunnel.on_protocol_error
    tunnel.on_protocol_error = lambda e: (errors.append(e), handle(e))  # type: ignore[method-assign]
    return tunnel, tub, errors


def reconnect_scheduled(clock, tunnel: WorkerTunnel) -> bool:
    return any(c.func == tunnel._connect and c.active() for c in clock.getDelayedCalls())


worker_frames = st.tuples(st.just("frame"), frames(stream_ids((1, 2, 3)), payload=payloads(300)))
worker_steps = st.lists(
    st.one_of(
        worker_frames,
        worker_frames,
        worker_frames,
        st.tuples(st.just("open")),
        st.tuples(st.just("write"), st.integers(0, 7), st.integers(1, 300)),
        st.tuples(st.just("close"), st.integers(0, 7)),
        st.tuples(st.just("drop")),
        st.tuples(st.just("lie"), received_maps((1, 2, 3))),
        st.tuples(st.just("advance"), quarter_seconds),
    ),
    min_size=5,
    max_size=30,
)


@FUZZ
@given(steps=worker_steps)
def test_the_worker_tunnel_survives_hostile_frames_and_reconnects(steps):
    clock = task.Clock()
    tunnel, tub, errors = worker_tunnel(clock)
    tunnel._connect()
    assert tunnel.link_up
    apps = [Recorder() for _ in range(3)]
    for app in apps:
        tunnel.open_stream(app)
    for kind, *args in steps:
        errors_before = len(errors)
        if kind == "frame":
            tunnel.receive(args[0])
        elif kind == "open" and len(apps) < 6:
            apps.append(Recorder())
            tunnel.open_stream(apps[-1])
        elif kind in ("write", "close") and apps:
            transport = apps[args[0] % len(apps)].transport
            transport.write(b"w" * args[1]) if kind == "write" else transport.loseConnection()
        elif kind == "drop" and tunnel.peer is not None:
            tunnel.peer.disconnect()
        elif kind == "lie":
            tub.lies.append(args[0])
        elif kind == "advance":
            clock.advance(args[0])
        if len(errors) > errors_before:
            assert not tunnel.link_up and reconnect_scheduled(clock, tunnel)
        assert tunnel.link_up or reconnect_scheduled(clock, tunnel)  # never down for good
        assert all(len(s.send_buffer) <= WORKER_SMALL.max_buffer for s in tunnel.core.streams.values())
        assert set(tunnel.streams) <= set(tunnel.core.streams)  # no transport outlives its stream
    tunnel.stop()
    assert all(app.lost is not None for app in apps)
    assert clock.getDelayedCalls() == []


@settings(max_examples=30, deadline=None)
@example(received={"x": 1})
@given(received=wire_values)
def test_an_ill_typed_answer_from_the_master_is_a_clean_reconnect(received):
    clock = task.Clock()
    tunnel, tub, _ = worker_tunnel(clock)
    tub.lies.append(received)
    tunnel._connect()
    assert tunnel.link_up or (tunnel.peer is None and reconnect_scheduled(clock, tunnel))
    tunnel.stop()
    assert clock.getDelayedCalls() == []


@settings(max_examples=200, deadline=None)
@given(chunks=st.lists(st.binary(max_size=4096), max_size=8), name=st.sampled_from(["w1", "w2", "wörker"]))
@example(chunks=[login_bytes("w2")], name="w2")
def test_random_bytes_before_a_login_get_a_verdict_never_an_exception(chunks, name):
    from bbenroll.tunnel.pblogin import MAX_LOGIN_BYTES, LoginCheck, Verdict

    check = LoginCheck(name)
    for chunk in chunks:
        outcome = check.feed(chunk)  # never raises
        assert outcome.verdict is Verdict.PENDING or outcome.reason is not None or outcome is check.outcome
    if sum(map(len, chunks)) > MAX_LOGIN_BYTES:
        assert check.outcome.verdict is not Verdict.PENDING  # the bound holds whatever the bytes
