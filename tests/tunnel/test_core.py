"""The tunnel protocol core, deterministically: no reactor, no sockets, time passed in."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bbenroll.tunnel import core
from bbenroll.tunnel.core import Event, Frame, Settings, TunnelCore

SMALL = Settings(window=64, chunk=16, ack_every=32, ack_delay=0.02, high_water=128, low_water=32,
                 ping_interval=5, dead_after=15, resume_deadline=60)


class Pair:
    """A worker core and a master core joined by an in-memory link that can be cut."""

    def __init__(self, settings: Settings = SMALL, worker_settings: Settings | None = None):
        self.now = 0.0
        self.worker = TunnelCore(is_worker=True, now=0, settings=worker_settings or settings)
        self.master = TunnelCore(is_worker=False, now=0, settings=settings)
        self.up = False
        self.delivered = {"worker": {}, "master": {}}  # side -> stream -> bytes
        self.events = {"worker": [], "master": []}
        self.in_flight: list[tuple[str, Frame]] = []  # frames on the wire, in order

    def connect(self):
        self.up = True
        self.in_flight.clear()
        w_recv, m_recv = self.worker.received(), self.master.received()
        self.master.link_up(self.now, w_recv)
        self.worker.link_up(self.now, m_recv)
        self.collect()

    def cut(self, lose_in_flight=True):
        self.up = False
        if lose_in_flight:
            self.in_flight.clear()
        self.worker.link_down(self.now)
        self.master.link_down(self.now)
        self.collect()

    def collect(self):
        for name, side in (("worker", self.worker), ("master", self.master)):
            frames, events = side.take()
            if self.up:
                self.in_flight.extend((name, f) for f in frames)
            for event in events:
                self.events[name].append(event)
                if event.kind == core.DELIVER:
                    got = self.delivered[name]
                    got[event.stream] = got.get(event.stream, b"") + event.data

    def deliver(self, count=None):
        """Move frames across the link (all, or the first ``count``)."""
        n = 0
        while self.in_flight and (count is None or n < count):
            sender, frame = self.in_flight.pop(0)
            target = self.master if sender == "worker" else self.worker
            target.receive(frame, self.now)
            self.collect()
            n += 1

    def advance(self, seconds):
        self.now += seconds
        self.worker.tick(self.now)
        self.master.tick(self.now)
        self.collect()

    def settle(self):
        for _ in range(1000):
            self.deliver()
            self.advance(0.05)
            if not self.in_flight:
                return
        raise AssertionError("did not settle")


def kinds(events):
    return [(e.kind, e.stream) for e in events]


def test_open_write_deliver_both_ways_and_close():
    p = Pair()
    p.connect()
    s = p.worker.open_stream(p.now)
    p.collect()
    p.worker.write(s, b"hello master", p.now)
    p.collect()
    p.deliver()
    assert kinds(p.events["master"]) == [(core.OPENED, s), (core.DELIVER, s)]
    p.master.write(s, b"hello worker", p.now)
    p.collect()
    p.settle()
    assert p.delivered == {"worker": {s: b"hello worker"}, "master": {s: b"hello master"}}
    p.worker.close(s, p.now)
    p.collect()
    p.settle()
    closed = {side: [e.reason for e in p.events[side] if e.kind == core.CLOSED] for side in p.events}
    assert closed == {"master": [core.CLOSED_BY_PEER], "worker": [core.CLOSED_CLEANLY]}
    assert p.worker.streams == {} and p.master.streams == {}


def test_window_bounds_bytes_in_flight():
    p = Pair()
    p.connect()
    s = p.worker.open_stream(p.now)
    p.worker.write(s, bytes(1000), p.now)
    p.collect()
    data = [f for _, f in p.in_flight if f.kind == core.DATA]
    assert sum(len(f.payload) for f in data) == SMALL.window
    assert max(len(f.payload) for f in data) == SMALL.chunk
    p.settle()
    assert p.delivered["master"][s] == bytes(1000)


def test_pause_and_resume_on_backpressure():
    p = Pair()
    p.connect()
    s = p.worker.open_stream(p.now)
    p.collect()
    p.deliver()
    p.master.write(s, bytes(SMALL.high_water + 1), p.now)
    p.collect()
    assert kinds(p.events["master"])[-1] == (core.PAUSE, s)
    p.settle()
    assert (core.RESUME, s) in kinds(p.events["master"])
    assert len(p.delivered["worker"][s]) == SMALL.high_water + 1


def test_worker_buffer_bound_resets_the_stream():
    p = Pair(worker_settings=Settings(**{**SMALL.__dict__, "max_buffer": 100}))
    p.connect()
    s = p.worker.open_stream(p.now)
    p.collect()
    p.deliver()
    p.cut()
    p.worker.write(s, bytes(101), p.now)
    p.collect()
    assert p.events["worker"][-1].kind == core.CLOSED
    assert "more than 100 bytes" in p.events["worker"][-1].reason
    assert s not in p.worker.streams


def test_resume_after_cut_loses_and_duplicates_nothing():
    p = Pair()
    p.connect()
    s = p.worker.open_stream(p.now)
    p.collect()
    payload = bytes(range(256)) * 4
    p.worker.write(s, payload, p.now)
    p.collect()
    p.deliver(3)  # part of it arrives, the rest is lost with the link
    p.cut()
    p.advance(30)  # a long outage, shorter than the resume deadline
    assert p.worker.streams and not p.worker.expired
    p.connect()
    p.settle()
    assert p.delivered["master"][s] == payload


def test_duplicates_are_trimmed():
    m = TunnelCore(is_worker=False, now=0, settings=SMALL)
    m.link_up(0, {})
    m.receive(Frame(core.OPEN, 1), 0)
    m.receive(Frame(core.DATA, 1, 0, b"abcdef"), 0)
    m.receive(Frame(core.DATA, 1, 3, b"defghi"), 0)
    m.receive(Frame(core.DATA, 1, 0, b"abc"), 0)
    delivered = b"".join(e.data for e in m.take()[1] if e.kind == core.DELIVER)
    assert delivered == b"abcdefghi"


def test_gap_is_a_protocol_error():
    m = TunnelCore(is_worker=False, now=0, settings=SMALL)
    m.link_up(0, {})
    m.receive(Frame(core.OPEN, 1), 0)
    with pytest.raises(core.ProtocolError):
        m.receive(Frame(core.DATA, 1, 5, b"x"), 0)


def test_pings_when_idle_and_dead_link_detection():
    p = Pair()
    p.connect()
    p.advance(SMALL.ping_interval)
    assert [f.kind for _, f in p.in_flight] == [core.PING, core.PING]
    p.deliver()
    # the master goes silent: the worker notices after dead_after
    p.up = False
    p.in_flight.clear()
    p.advance(SMALL.dead_after - 1)
    p.master.take()
    assert all(e.kind != core.LINK_DEAD for e in p.events["worker"])
    p.advance(1)
    assert p.events["worker"][-1].kind == core.LINK_DEAD
    assert not p.worker.link


def test_resume_deadline_closes_every_stream():
    p = Pair()
    p.connect()
    s = p.worker.open_stream(p.now)
    p.collect()
    p.deliver()
    p.cut()
    assert p.worker.next_wakeup() == p.now + SMALL.resume_deadline
    p.advance(SMALL.resume_deadline)
    for side in ("worker", "master"):
        assert kinds(p.events[side])[-2:] == [(core.CLOSED, s), (core.EXPIRED, 0)]
    assert p.worker.expired and p.worker.next_wakeup() is None


def test_master_forgot_the_stream():
    """A resume where the master no longer knows an acknowledged stream closes it."""
    p = Pair()
    p.connect()
    s = p.worker.open_stream(p.now)
    p.collect()
    p.settle()
    p.cut()
    p.master = TunnelCore(is_worker=False, now=p.now, settings=SMALL)
    p.connect()
    assert (core.CLOSED, s) in kinds(p.events["worker"])


def test_stream_opened_during_outage_is_opened_on_resume():
    p = Pair()
    p.connect()
    p.cut()
    s = p.worker.open_stream(p.now)
    p.worker.write(s, b"queued", p.now)
    p.collect()
    p.connect()
    p.settle()
    assert p.delivered["master"][s] == b"queued"


def test_reset_from_peer_closes():
    p = Pair()
    p.connect()
    s = p.worker.open_stream(p.now)
    p.collect()
    p.settle()
    p.master.reset(s, p.now)
    p.collect()
    p.settle()
    assert kinds(p.events["worker"])[-1] == (core.CLOSED, s)
    assert p.worker.streams == {} and p.master.streams == {}


def test_only_the_worker_opens():
    w = TunnelCore(is_worker=True, now=0)
    w.link_up(0, {})
    with pytest.raises(core.ProtocolError):
        w.receive(Frame(core.OPEN, 1), 0)
    with pytest.raises(ValueError):
        TunnelCore(is_worker=False, now=0).open_stream(0)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_random_cuts_never_lose_or_duplicate_bytes(data):
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    p = Pair()
    p.connect()
    streams = [p.worker.open_stream(p.now) for _ in range(data.draw(st.integers(1, 3)))]
    p.collect()
    sent = {"worker": {s: b"" for s in streams}, "master": {s: b"" for s in streams}}
    p.deliver()
    for _ in range(data.draw(st.integers(1, 40))):
        action = rng.random()
        s = rng.choice(streams)
        if action < 0.35:
            chunk = rng.randbytes(rng.randint(1, 100))
            side = rng.choice(["worker", "master"])
            (p.worker if side == "worker" else p.master).write(s, chunk, p.now)
            sent[side][s] += chunk
            p.collect()
        elif action < 0.7:
            p.deliver(rng.randint(0, 5))
        elif action < 0.8:
            p.advance(rng.random())
        elif p.up:
            p.cut(lose_in_flight=rng.random() < 0.8)
        else:
            p.connect()
    if not p.up:
        p.connect()
    p.settle()
    for side, other in (("worker", "master"), ("master", "worker")):
        for s in streams:
            assert p.delivered[other].get(s, b"") == sent[side][s]
    assert all(e.kind != core.CLOSED for e in p.events["worker"] + p.events["master"])


def test_events_and_frames_are_plain_values():
    assert Event(core.DELIVER, 1, b"x") == Event(core.DELIVER, 1, b"x")
    assert Frame(core.DATA, 1, 0, b"x") != Frame(core.DATA, 1, 1, b"x")
