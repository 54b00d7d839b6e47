"""The tunnel core under any reordering of frames within a connection, and random cuts.

Foolscap 24.9 sends the calls that queued behind a busy transport last-in, first-out
(``RootSlicer`` pops its ``sendQueue`` from the end), so a connection may deliver a
session's frames in any order. Whatever the order, and wherever the link is cut and
resumed, each side must deliver every byte the other wrote exactly once and in order,
and never call the other's frames a protocol error.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from bbenroll.tunnel.frames import Closed, LinkDead
from tests.tunnel.test_core import SMALL, Pair

STREAMS = 2

step = st.one_of(
    st.tuples(st.just("write"), st.sampled_from(["worker", "master"]), st.integers(0, STREAMS - 1),
              st.integers(1, 40)),
    st.tuples(st.just("deliver"), st.integers(1, 6)),
    st.tuples(st.just("tick"), st.floats(0, 0.5)),
    st.tuples(st.just("cut"), st.booleans()),
    st.tuples(st.just("connect")),
    st.tuples(st.just("close"), st.sampled_from(["worker", "master"]), st.integers(0, STREAMS - 1)),
)


class Reordering(Pair):
    """A :class:`Pair` whose link delivers in-flight frames in a random order."""

    def __init__(self, seed: int) -> None:
        super().__init__(SMALL)
        self.rng = random.Random(seed)
        self.written: dict[str, dict[int, bytes]] = {"worker": {}, "master": {}}
        self.counter = 0

    def deliver_shuffled(self, count: int) -> None:
        for _ in range(count):
            if not self.in_flight:
                return
            sender, frame = self.in_flight.pop(self.rng.randrange(len(self.in_flight)))
            target = self.master if sender == "worker" else self.worker
            target.receive(frame, self.now)  # a ProtocolError fails the test
            self.collect()
            self.cut_if_dead()

    def cut_if_dead(self) -> None:
        """What the adapters do on LinkDead: drop the connection (its frames are lost)."""
        if self.up and any(isinstance(e, LinkDead) for side in self.events.values() for e in side):
            for side in self.events.values():
                side[:] = [e for e in side if not isinstance(e, LinkDead)]
            self.cut()

    def write(self, side: str, stream: int, size: int) -> None:
        core = self.worker if side == "worker" else self.master
        known = core.streams.get(stream)
        if known is None or known.sending.value != "open":
            return  # closed, or the master has not heard of it yet
        data = bytes((self.counter + i) % 251 for i in range(size))
        self.counter += size
        core.write(stream, data, self.now)
        self.written[side][stream] = self.written[side].get(stream, b"") + data
        self.collect()

    def check_prefixes(self) -> None:
        for side, other in (("worker", "master"), ("master", "worker")):
            for stream, got in self.delivered[other].items():
                assert self.written[side].get(stream, b"").startswith(got), (side, stream)


@settings(max_examples=400, deadline=None)
@given(seed=st.integers(0, 2**32), steps=st.lists(step, max_size=80))
def test_bytes_arrive_exactly_once_in_order_whatever_the_order_of_frames(seed, steps):
    p = Reordering(seed)
    p.connect()
    streams = [p.worker.open_stream(p.now) for _ in range(STREAMS)]
    p.collect()
    for action, *args in steps:
        if action == "write":
            side, index, size = args
            p.write(side, streams[index], size)
        elif action == "deliver":
            p.deliver_shuffled(args[0])
        elif action == "tick":
            p.advance(args[0])
            p.cut_if_dead()
        elif action == "cut" and p.up:
            p.cut(lose_in_flight=True)
        elif action == "connect" and not p.up:
            p.connect()
        elif action == "close":
            side, index = args
            core = p.worker if side == "worker" else p.master
            core.close(streams[index], p.now)
            p.collect()
        p.check_prefixes()
    # then a link that stays up (still reordering) until everything is across
    for _ in range(2000):
        if not p.up:
            p.connect()
        p.deliver_shuffled(len(p.in_flight))
        p.advance(0.05)
        p.cut_if_dead()
        unacked = any(len(s.send_buffer) for core in (p.worker, p.master) for s in core.streams.values())
        if p.up and not p.in_flight and not unacked:
            break
    else:
        raise AssertionError("did not settle")
    for side, other in (("worker", "master"), ("master", "worker")):
        for stream in streams:
            assert p.delivered[other].get(stream, b"") == p.written[side].get(stream, b""), (side, stream)
    for side in ("worker", "master"):
        unclean = [e for e in p.events[side] if isinstance(e, Closed) and not e.clean]
        assert unclean == [], unclean
    for core in (p.worker, p.master):
        for s in core.streams.values():
            assert s.early == {} and s.early_bytes == 0


def test_foolscaps_last_in_first_out_burst_is_delivered_in_order():
    """The soak's case: small frames queued behind a large one arrive reversed."""
    p, s = _stream_pair()
    p.worker.write(s, b"L" * 16, p.now)  # one full frame (SMALL.chunk)
    for i in range(7):
        p.worker.write(s, bytes([48 + i]) * 6, p.now)
    p.collect()
    p.in_flight.reverse()
    p.deliver()
    p.settle()
    assert p.delivered["master"][s] == b"L" * 16 + b"".join(bytes([48 + i]) * 6 for i in range(7))


def _stream_pair() -> tuple[Pair, int]:
    p = Pair(SMALL)
    p.connect()
    s = p.worker.open_stream(p.now)
    p.collect()
    p.settle()
    return p, s
