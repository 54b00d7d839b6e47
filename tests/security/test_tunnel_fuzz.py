"""Hostile input to the tunnel core and to the wire's schemas, as property tests.

A hostile peer (an enrolled worker, or whatever sits at the master's end of a
worker's link) can send any well-typed frame: huge or negative offsets, frames
for streams that never existed or are closed, repeated and reordered frames,
acks of bytes never sent, closes at the wrong offset, and any ``received`` map
on a resume. The core must answer each with a frame, silence, or a
:class:`ProtocolError` (the adapters drop the link on it: test_adapter_fuzz.py),
never another exception, and must never deliver a byte that breaks a stream's
order. Everything is deterministic: the core takes ``now``, nothing sleeps.
"""

from __future__ import annotations

import dataclasses

import pytest
from foolscap.api import Violation
from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet import task

from bbenroll.master.sessions import MASTER_MAX_RESUME_DEADLINE, SessionTable
from bbenroll.tunnel.core import RESUME_DEADLINE_MIN, TunnelCore
from bbenroll.tunnel.frames import (
    EVENT_TYPES,
    FRAME_TYPES,
    Closed,
    Deliver,
    Open,
    Opened,
    Ping,
    ProtocolError,
    Role,
)
from bbenroll.tunnel.stream import SendState
from bbenroll.tunnel.wire import MAX_PAYLOAD, FrameSink, Received, RIEnrolledWorker, RITunnelPeer
from bbenroll.tunnel.worker_side import Receiver
from tests.helpers.frames import frames, offsets, payloads, received_maps, stream_ids, wire_keys, wire_values
from tests.tunnel.test_core import SMALL, Pair

FUZZ = settings(max_examples=150, deadline=None)
HOSTILE = dataclasses.replace(SMALL, max_buffer=256)  # small bounds, so that examples reach them
KNOWN = (1, 2, 3)


class Tracker:
    """What the application did and saw on each stream: bytes written, bytes delivered, closes."""

    def __init__(self) -> None:
        self.written: dict[int, int] = {}
        self.delivered: dict[int, int] = {}
        self.closed: set[int] = set()

    def write(self, core: TunnelCore, stream: int, data: bytes, now: float) -> None:
        if stream in core.streams and core.streams[stream].sending is SendState.OPEN:
            self.written[stream] = self.written.get(stream, 0) + len(data)
        core.write(stream, data, now)

    def see(self, core: TunnelCore) -> None:
        frames_out, events = core.take()
        assert all(type(f) in FRAME_TYPES for f in frames_out)
        for event in events:
            assert type(event) in EVENT_TYPES
            stream = getattr(event, "stream", None)
            if isinstance(event, Opened):  # a new incarnation of that id
                self.delivered[stream] = self.written[stream] = 0
                self.closed.discard(stream)
            elif isinstance(event, Deliver):
                assert stream not in self.closed, f"data delivered after stream {stream} was closed"
                self.delivered[stream] = self.delivered.get(stream, 0) + len(event.data)
            elif isinstance(event, Closed):
                assert stream not in self.closed, f"stream {stream} closed twice"
                self.closed.add(stream)
        self.check(core)

    def check(self, core: TunnelCore) -> None:
        limit = core.settings.max_buffer
        for stream in core.streams.values():
            # bytes reach the application in order, exactly once: as many as the core has received
            assert self.delivered.get(stream.id, 0) == stream.recv_next
            # no frame of the peer moves where our bytes end (an ack past them would lose some)
            assert stream.send_end == self.written.get(stream.id, 0)
            assert 0 <= stream.send_base <= stream.send_next <= stream.send_end
            assert stream.send_next - stream.send_base <= core.settings.window
            assert len(stream.send_buffer) <= limit


def core_with_streams(role: Role) -> tuple[TunnelCore, Tracker]:
    """A core whose link is up, with streams 1-3 known to both sides and data in flight."""
    core = TunnelCore(role=role, now=0, settings=HOSTILE)
    core.link_up(0, {})
    tracker = Tracker()
    for stream in KNOWN:
        if role is Role.WORKER:
            assert core.open_stream(0) == stream
        else:
            core.receive(Open(stream), 0)
        tracker.see(core)
        tracker.write(core, stream, bytes([stream]) * 40, 0)
    tracker.see(core)
    return core, tracker


steps = st.lists(
    st.one_of(
        st.tuples(st.just("frame"), frames(stream_ids(KNOWN), payload=payloads(largest=300))),
        st.tuples(st.just("resume"), received_maps(KNOWN)),
        st.tuples(st.just("write"), st.sampled_from(KNOWN), st.integers(0, 300)),
        st.tuples(st.just("tick"), st.floats(0, 20)),
    ),
    max_size=40,
)


# pytest-twisted wraps a hypothesis test's inner function once per item: a parametrized
# one would be wrapped twice (and fail), so the role is drawn instead
@FUZZ
@given(role=st.sampled_from(Role), steps=steps)
def test_hostile_frames_raise_only_protocol_errors_and_keep_streams_consistent(role, steps):
    core, tracker = core_with_streams(role)
    now = 0.0
    for step in steps:
        kind, *args = step
        try:
            if kind == "frame":
                core.receive(args[0], now)
            elif kind == "resume":  # what the adapters do on a reconnect
                core.link_down(now)
                core.link_up(now, args[0])
            elif kind == "write":
                tracker.write(core, args[0], b"w" * args[1], now)
            else:
                now += args[0]
                core.tick(now)
        except ProtocolError:
            core.link_down(now)  # what the adapters do; the session's state is kept
        tracker.see(core)
    # the session ends: past the resume deadline every stream is gone and no timer is left
    core.link_down(now)
    core.tick(now + core.settings.resume_deadline + 1)  # + 1: see the test of next_wakeup below
    tracker.see(core)
    assert core.streams == {} and core.expired and core.next_wakeup() is None


HOSTILE_IDS = stream_ids().filter(lambda s: s != 1)  # never the legitimate stream


@FUZZ
@given(
    plan=st.lists(
        st.one_of(
            st.tuples(st.sampled_from(["to_master", "to_worker"]), frames(HOSTILE_IDS, payload=payloads(64))),
            st.tuples(
                st.sampled_from(["worker_writes", "master_writes"]), st.binary(min_size=1, max_size=80)
            ),
            st.tuples(st.just("deliver"), st.integers(1, 5)),
            st.tuples(st.just("cut"), st.booleans()),
        ),
        max_size=40,
    )
)
def test_hostile_frames_on_other_streams_never_corrupt_a_legitimate_one(plan):
    pair = Pair()
    pair.connect()
    legit = pair.worker.open_stream(pair.now)
    assert legit == 1
    pair.collect()
    sent = {"worker": b"", "master": b""}
    for kind, arg in plan:
        if kind in ("to_master", "to_worker"):
            target = pair.master if kind == "to_master" else pair.worker
            try:
                target.receive(arg, pair.now)
            except ProtocolError:
                pair.cut()  # the adapter drops the link; the worker reconnects
                pair.connect()
            pair.collect()
        elif kind == "worker_writes":
            pair.worker.write(legit, arg, pair.now)
            sent["worker"] += arg
            pair.collect()
        elif kind == "master_writes" and legit in pair.master.streams:
            pair.master.write(legit, arg, pair.now)
            sent["master"] += arg
            pair.collect()
        elif kind == "deliver":
            pair.deliver(arg)
        elif kind == "cut":
            pair.cut(lose_in_flight=arg)
            pair.connect()
    pair.settle()
    assert pair.delivered["master"].get(legit, b"") == sent["worker"]
    assert pair.delivered["worker"].get(legit, b"") == sent["master"]
    assert not [e for e in pair.events["worker"] if isinstance(e, Closed)]  # the stream survived


class CoreSink(FrameSink):
    """The wire's way in (``remote_frame_*``), straight into a core."""

    def __init__(self, core: TunnelCore) -> None:
        self.core = core

    def receive_frame(self, frame) -> None:
        self.core.receive(frame, 0)


FRAME_METHOD_NAMES = sorted(name for name in RITunnelPeer.names() if name.startswith("frame_"))


@FUZZ
@given(
    role=st.sampled_from(Role),
    name=st.sampled_from(FRAME_METHOD_NAMES),
    arguments=st.lists(st.one_of(wire_values, offsets(), payloads(16)), max_size=4),
)
def test_the_wire_schemas_let_through_only_what_the_core_handles(role, name, arguments):
    core, tracker = core_with_streams(role)
    try:
        RITunnelPeer[name].checkAllArgs(tuple(arguments), {}, True)
    except Violation:
        return  # refused at the network edge: the sink never sees it
    assert all(isinstance(a, (int, bytes)) for a in arguments)
    try:
        getattr(CoreSink(core), "remote_" + name)(*arguments)
    except ProtocolError:
        core.link_down(0)
    tracker.see(core)


def test_the_schemas_refuse_what_the_core_cannot_take():
    data = RITunnelPeer["frame_data"]
    for bad in [("1", 0, b""), (1, 0.5, b""), (1, 0, "text"), (1, 0, b"x" * (MAX_PAYLOAD + 1)),
                (1, 2**64, b""), (1, -(2**64), b""), (2**31, 0, b""), (1, None, b""), (1, 0)]:
        with pytest.raises(Violation):
            data.checkAllArgs(bad, {}, True)
    data.checkAllArgs((2**31 - 1, 2**64 - 1, b"x" * MAX_PAYLOAD), {}, True)  # the largest legal frame
    assert RIEnrolledWorker["frame_data"] is not None  # the master's object takes frames too
    with pytest.raises(Violation):
        RITunnelPeer["frame_ping"].checkAllArgs((1,), {}, True)
    with pytest.raises(Violation):
        Received.checkObject({i: 0 for i in range(4097)}, True)
    with pytest.raises(Violation):
        Received.checkObject({"1": 0}, True)


@FUZZ
@given(
    received=st.one_of(
        received_maps(KNOWN),
        st.dictionaries(wire_keys, wire_values, max_size=4),
        wire_values,
    )
)
def test_a_received_map_the_schema_accepts_resumes_or_is_a_protocol_error(received):
    try:
        Received.checkObject(received, True)
    except Violation:
        return
    core, tracker = core_with_streams(Role.MASTER)
    core.link_down(0)
    try:
        core.link_up(0, received)
    except ProtocolError:
        core.link_down(0)
    tracker.see(core)


@FUZZ
@example(changed_at=4.85248349761725, deadline=60.0, link_up=False)
@given(changed_at=st.floats(0, 1e6), deadline=st.sampled_from([5.0, 60.0, 900.0]), link_up=st.booleans())
def test_a_tick_at_the_wakeup_time_always_moves_the_wakeup_time(changed_at, deadline, link_up):
    core = TunnelCore(role=Role.WORKER, now=0, settings=dataclasses.replace(SMALL, resume_deadline=deadline))
    core.link_up(0, {})
    core.open_stream(0)
    if link_up:
        core.receive(Ping(), changed_at)  # what the dead-link timer counts from
        core.tick(changed_at)  # pings (last_sent = changed_at)
    else:
        core.link_down(changed_at)
    for _ in range(3):
        wake = core.next_wakeup()
        if wake is None:  # expired: nothing left to wake up for
            break
        core.tick(wake)
        core.take()
        assert core.next_wakeup() != wake, f"tick({wake!r}) left the wake-up time where it was"


@FUZZ
@example(deadline=2**31 - 1, resume=True)
@example(deadline=-(2**31), resume=False)
@given(deadline=st.one_of(wire_values, st.integers(-(2**31), 2**31 - 1)), resume=wire_values)
def test_any_deadline_the_schema_accepts_is_granted_within_the_masters_bounds(deadline, resume):
    arguments = {"session": "s", "received": {}, "resume": resume, "deadline": deadline,
                 "receiver": Receiver(None)}
    try:
        # outbound: inbound, the receiver must be a RemoteReference; the other checks are the same
        RIEnrolledWorker["open_session"].checkAllArgs((), arguments, False)
    except Violation:
        return
    assert isinstance(deadline, int) and isinstance(resume, bool)
    granted = SessionTable(None, task.Clock(), lambda: None).granted_deadline(deadline)
    assert RESUME_DEADLINE_MIN <= granted <= MASTER_MAX_RESUME_DEADLINE
