"""The tunnel protocol core, deterministically: no reactor, no sockets, time passed in."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bbenroll.tunnel import core
from bbenroll.tunnel.core import Settings, TunnelCore
from bbenroll.tunnel.frames import (
    EVENT_TYPES,
    FRAME_TYPES,
    Ack,
    Close,
    Closed,
    Data,
    Deliver,
    Expired,
    LinkDead,
    Open,
    Opened,
    Pause,
    Ping,
    Reset,
    Resume,
    Role,
)
from bbenroll.tunnel.stream import RECV_MOVES, SEND_MOVES, RecvState, SendState, Stream

SMALL = Settings(window=64, chunk=16, ack_every=32, ack_delay=0.02, high_water=128, low_water=32,
                 ping_interval=5, dead_after=15, idle_dead_after=20, answer_hold=2, resume_deadline=60)


class Pair:
    """A worker core and a master core joined by an in-memory link that can be cut."""

    def __init__(self, settings: Settings = SMALL, worker_settings: Settings | None = None):
        self.now = 0.0
        self.worker = TunnelCore(role=Role.WORKER, now=0, settings=worker_settings or settings)
        self.master = TunnelCore(role=Role.MASTER, now=0, settings=settings)
        self.up = False
        self.delivered = {"worker": {}, "master": {}}  # side -> stream -> bytes
        self.events = {"worker": [], "master": []}
        self.in_flight: list[tuple[str, object]] = []  # frames on the wire, in order

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
                if isinstance(event, Deliver):
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


def settled_stream() -> tuple[Pair, int]:
    """A connected pair with one stream both sides know."""
    p = Pair()
    p.connect()
    s = p.worker.open_stream(p.now)
    p.collect()
    p.settle()
    return p, s


def kinds(events):
    return [(type(e), getattr(e, "stream", 0)) for e in events]


def test_open_write_deliver_both_ways_and_close():
    p = Pair()
    p.connect()
    s = p.worker.open_stream(p.now)
    p.collect()
    p.worker.write(s, b"hello master", p.now)
    p.collect()
    p.deliver()
    assert kinds(p.events["master"]) == [(Opened, s), (Deliver, s)]
    p.master.write(s, b"hello worker", p.now)
    p.collect()
    p.settle()
    assert p.delivered == {"worker": {s: b"hello worker"}, "master": {s: b"hello master"}}
    p.worker.close(s, p.now)
    p.collect()
    p.settle()
    closed = {side: [e.reason for e in p.events[side] if isinstance(e, Closed)] for side in p.events}
    assert closed == {"master": [core.CLOSED_BY_PEER], "worker": [core.CLOSED_CLEANLY]}
    assert p.worker.streams == {} and p.master.streams == {}


def test_window_bounds_bytes_in_flight():
    p = Pair()
    p.connect()
    s = p.worker.open_stream(p.now)
    p.worker.write(s, bytes(1000), p.now)
    p.collect()
    data = [f for _, f in p.in_flight if isinstance(f, Data)]
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
    assert kinds(p.events["master"])[-1] == (Pause, s)
    p.settle()
    assert (Resume, s) in kinds(p.events["master"])
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
    assert isinstance(p.events["worker"][-1], Closed)
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
    m = TunnelCore(role=Role.MASTER, now=0, settings=SMALL)
    m.link_up(0, {})
    m.receive(Open(1), 0)
    m.receive(Data(1, 0, b"abcdef"), 0)
    m.receive(Data(1, 3, b"defghi"), 0)
    m.receive(Data(1, 0, b"abc"), 0)
    delivered = b"".join(e.data for e in m.take()[1] if isinstance(e, Deliver))
    assert delivered == b"abcdefghi"


def test_data_ahead_is_held_until_the_gap_fills():
    m = TunnelCore(role=Role.MASTER, now=0, settings=SMALL)
    m.link_up(0, {})
    m.receive(Open(1), 0)
    m.take()
    m.receive(Data(1, 6, b"ghi"), 0)
    m.receive(Data(1, 3, b"def"), 0)
    assert [e for e in m.take()[1] if isinstance(e, Deliver)] == []
    m.receive(Data(1, 0, b"abc"), 0)
    delivered = b"".join(e.data for e in m.take()[1] if isinstance(e, Deliver))
    assert delivered == b"abcdefghi"
    assert m.streams[1].early == {} and m.streams[1].early_bytes == 0


def test_data_more_than_a_window_ahead_is_a_protocol_error():
    m = TunnelCore(role=Role.MASTER, now=0, settings=SMALL)
    m.link_up(0, {})
    m.receive(Open(1), 0)
    m.receive(Data(1, SMALL.window - 1, b"x"), 0)  # the window's last byte: held
    with pytest.raises(core.ProtocolError, match="more than a window ahead"):
        m.receive(Data(1, SMALL.window, b"x"), 0)


def test_held_data_is_bounded_in_bytes_and_frames(monkeypatch):
    m = TunnelCore(role=Role.MASTER, now=0, settings=SMALL)
    m.link_up(0, {})
    m.receive(Open(1), 0)
    m.receive(Data(1, 1, bytes(40)), 0)
    with pytest.raises(core.ProtocolError, match="bytes held ahead"):
        m.receive(Data(1, 2, bytes(40)), 0)  # overlapping copies must not add up past a window
    monkeypatch.setattr(core, "MAX_EARLY_FRAMES", 3)
    m = TunnelCore(role=Role.MASTER, now=0, settings=SMALL)
    m.link_up(0, {})
    m.receive(Open(1), 0)
    for offset in (10, 8, 6):
        m.receive(Data(1, offset, b"x"), 0)
    with pytest.raises(core.ProtocolError, match="3 frames ahead"):
        m.receive(Data(1, 4, b"x"), 0)


def test_only_the_worker_pings_an_idle_link_and_the_master_answers():
    p = Pair()
    p.connect()
    assert p.worker.next_wakeup() == SMALL.ping_interval
    assert p.master.next_wakeup() == SMALL.idle_dead_after
    p.advance(SMALL.ping_interval)
    assert p.in_flight == [("worker", Ping())]
    p.deliver(1)
    assert [f for _, f in p.in_flight] == [Ping()]  # the master's answer
    p.deliver()
    assert p.in_flight == []  # the worker does not answer the answer
    # a whole hour of idleness: one ping and one answer per ping_interval, no link lost
    pings = 0
    for _ in range(int(3600 / SMALL.ping_interval)):
        p.advance(SMALL.ping_interval)
        pings += len(p.in_flight)
        p.deliver(1)
        pings += len(p.in_flight)
        p.deliver()
    assert pings == 2 * int(3600 / SMALL.ping_interval)
    assert p.worker.link and p.master.link


def test_a_ping_is_not_answered_right_after_sending_something():
    m = master_with_stream()
    m.write(1, b"x", 0)
    m.take()
    m.receive(Ping(), SMALL.answer_hold - 1)
    assert m.take()[0] == []
    m.receive(Ping(), SMALL.answer_hold)
    assert m.take()[0] == [Ping()]


def test_an_older_peer_that_pings_every_5s_keeps_its_link():
    # bbenroll before 0.13 pinged from both sides every 5 s and gave up after 15 s
    m = TunnelCore(role=Role.MASTER, now=0, settings=Settings())
    m.link_up(0, {})
    heard = [0.0]
    for t in range(5, 300, 5):
        m.receive(Ping(), t)
        if m.take()[0]:
            heard.append(t)
    assert max(b - a for a, b in itertools.pairwise(heard)) < 15


def test_a_waiting_side_gives_up_after_dead_after_an_idle_one_after_idle_dead_after():
    p, s = settled_stream()
    p.up = False
    p.worker.write(s, b"x", p.now)  # unacknowledged: the worker waits for an answer
    p.collect()
    p.advance(SMALL.dead_after - 0.1)
    assert p.worker.link
    p.advance(0.1)
    assert not p.worker.link and isinstance(p.events["worker"][-1], LinkDead)
    assert p.master.link  # nothing outstanding there: it waits idle_dead_after
    p.advance(SMALL.idle_dead_after - SMALL.dead_after - 0.1)
    assert p.master.link
    p.advance(0.1)
    assert not p.master.link


def test_pings_when_idle_and_dead_link_detection():
    p = Pair()
    p.connect()
    p.advance(SMALL.ping_interval)
    assert [f for _, f in p.in_flight] == [Ping()]
    p.deliver()
    # the master goes silent: the worker pings after ping_interval, and gives up
    # dead_after after that ping
    p.up = False
    p.in_flight.clear()
    p.advance(SMALL.ping_interval)  # the ping (lost)
    p.advance(SMALL.dead_after - 1)
    p.master.take()
    assert not any(isinstance(e, LinkDead) for e in p.events["worker"])
    p.advance(1)
    assert isinstance(p.events["worker"][-1], LinkDead)
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
        assert kinds(p.events[side])[-2:] == [(Closed, s), (Expired, 0)]
    assert p.worker.expired and p.worker.next_wakeup() is None


def test_master_forgot_the_stream():
    """A resume where the master no longer knows an acknowledged stream closes it."""
    p, s = settled_stream()
    p.cut()
    p.master = TunnelCore(role=Role.MASTER, now=p.now, settings=SMALL)
    p.connect()
    assert (Closed, s) in kinds(p.events["worker"])


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
    p, s = settled_stream()
    p.master.reset(s, p.now)
    p.collect()
    p.settle()
    assert kinds(p.events["worker"])[-1] == (Closed, s)
    assert p.worker.streams == {} and p.master.streams == {}


def test_only_the_worker_opens():
    w = TunnelCore(role=Role.WORKER, now=0)
    w.link_up(0, {})
    with pytest.raises(core.ProtocolError):
        w.receive(Open(1), 0)
    with pytest.raises(ValueError):
        TunnelCore(role=Role.MASTER, now=0).open_stream(0)


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
    assert not any(isinstance(e, Closed) for e in p.events["worker"] + p.events["master"])


def test_events_and_frames_are_plain_values():
    assert Deliver(1, b"x") == Deliver(1, b"x")
    assert Data(1, 0, b"x") != Data(1, 1, b"x")
    assert Close(1, 5) != Ack(1, 5)  # the type is the kind


def test_orderly_closes_are_clean_and_failures_are_not():
    p, s = settled_stream()
    p.master.close(s, p.now)
    p.collect()
    p.settle()
    (closed,) = [e for e in p.events["worker"] if isinstance(e, Closed)]
    assert closed.clean and closed.reason == core.CLOSED_BY_PEER
    t = p.worker.open_stream(p.now)
    p.collect()
    p.settle()
    p.worker.reset(t, p.now)
    p.collect()
    p.settle()
    reset = [e for e in p.events["master"] if isinstance(e, Closed) and e.stream == t]
    assert reset == [Closed(t, "reset by the other side", clean=False)]


# -- illegal transitions are protocol errors ---------------------------------------


def master_with_stream(data: bytes = b"") -> TunnelCore:
    m = TunnelCore(role=Role.MASTER, now=0, settings=SMALL)
    m.link_up(0, {})
    m.receive(Open(1), 0)
    if data:
        m.receive(Data(1, 0, data), 0)
    m.take()
    return m


def test_data_beyond_the_peers_close_is_a_protocol_error():
    m = master_with_stream(b"abc")
    m.receive(Close(1, 3), 0)
    with pytest.raises(core.ProtocolError, match="after the close"):
        m.receive(Data(1, 3, b"more"), 0)


def test_data_beyond_a_pending_close_is_a_protocol_error():
    m = master_with_stream(b"abc")
    m.receive(Close(1, 5), 0)  # two bytes still to come
    assert m.streams[1].receiving is RecvState.FINISHING
    with pytest.raises(core.ProtocolError, match="after the close"):
        m.receive(Data(1, 3, b"xyz"), 0)


def test_a_close_that_moves_is_a_protocol_error():
    m = master_with_stream(b"abc")
    m.receive(Close(1, 5), 0)
    m.receive(Close(1, 5), 0)  # a repeat is fine
    with pytest.raises(core.ProtocolError, match="close moved"):
        m.receive(Close(1, 6), 0)


def test_close_before_received_data_is_a_protocol_error():
    m = master_with_stream(b"abc")
    with pytest.raises(core.ProtocolError, match="close at 2"):
        m.receive(Close(1, 2), 0)


def test_ack_of_a_close_never_sent_is_a_protocol_error():
    m = master_with_stream()
    m.write(1, b"abc", 0)
    m.receive(Ack(1, 3), 0)
    assert m.streams[1].sending is SendState.OPEN
    with pytest.raises(core.ProtocolError, match="ack 4 beyond 3"):
        m.receive(Ack(1, 4), 0)  # final+1 acks a close, but we did not close


def test_ack_of_our_close_completes_it_and_may_repeat():
    m = master_with_stream()
    m.close(1, 0)
    assert m.streams[1].sending is SendState.CLOSE_SENT
    m.receive(Ack(1, 1), 0)
    assert m.streams[1].sending is SendState.CLOSED
    m.receive(Ack(1, 1), 0)  # repeated after a reconnect: harmless
    with pytest.raises(core.ProtocolError, match="ack 2 beyond 0"):
        m.receive(Ack(1, 2), 0)


def test_stream_moves_follow_the_tables():
    stream = Stream(7)
    with pytest.raises(core.ProtocolError, match="sending open to closed"):
        stream.move_send(SendState.CLOSED)
    stream.move_send(SendState.CLOSING)
    with pytest.raises(core.ProtocolError, match="sending closing to open"):
        stream.move_send(SendState.OPEN)
    stream.move_recv(RecvState.FINISHED)
    with pytest.raises(core.ProtocolError, match="receiving finished to finishing"):
        stream.move_recv(RecvState.FINISHING)
    # every state has an entry, and nothing leads back to OPEN
    assert set(SEND_MOVES) == set(SendState) and set(RECV_MOVES) == set(RecvState)
    assert all(SendState.OPEN not in moves for moves in SEND_MOVES.values())
    assert all(RecvState.OPEN not in moves for moves in RECV_MOVES.values())


def test_an_unknown_frame_type_is_a_protocol_error():
    m = master_with_stream()
    with pytest.raises(core.ProtocolError, match="not a tunnel frame: Deliver"):
        m.receive(Deliver(1, b"x"), 0)  # an event is not a frame


def test_frames_for_gone_streams_are_answered_with_a_reset():
    m = master_with_stream()
    m.receive(Reset(1), 0)  # stream 1 is gone: the master saw it opened, then reset
    m.take()
    m.receive(Data(1, 0, b"x"), 0)
    m.receive(Close(1, 0), 0)
    m.receive(Ack(1, 0), 0)
    m.receive(Reset(1), 0)
    m.receive(Open(1), 0)  # late: ignored, the stream is not opened again
    frames, events = m.take()
    assert frames == [Reset(1), Reset(1)] and events == [] and m.streams == {}


def test_the_worker_answers_frames_for_streams_it_does_not_know_with_a_reset():
    w = TunnelCore(role=Role.WORKER, now=0, settings=SMALL)
    w.link_up(0, {})
    w.receive(Data(9, 0, b"x"), 0)
    w.receive(Close(9, 0), 0)
    assert w.take()[0] == [Reset(9), Reset(9)] and w.streams == {}


def test_data_that_overtakes_its_open_opens_the_stream_once():
    m = TunnelCore(role=Role.MASTER, now=0, settings=SMALL)
    m.link_up(0, {})
    m.receive(Data(2, 3, b"def"), 0)  # stream 2's frames, last-in first-out
    m.receive(Data(2, 0, b"abc"), 0)
    m.receive(Open(2), 0)
    m.receive(Close(1, 0), 0)  # stream 1: opened and closed at once, reversed
    m.receive(Open(1), 0)
    events = m.take()[1]
    assert kinds(events) == [(Opened, 2), (Deliver, 2), (Deliver, 2), (Opened, 1), (Closed, 1)]
    assert b"".join(e.data for e in events if isinstance(e, Deliver)) == b"abcdef"


def test_a_reset_that_overtakes_its_stream_voids_it():
    m = TunnelCore(role=Role.MASTER, now=0, settings=SMALL)
    m.link_up(0, {})
    m.receive(Reset(3), 0)
    m.receive(Data(3, 0, b"x"), 0)
    m.receive(Open(3), 0)
    frames, events = m.take()
    assert events == [] and m.streams == {} and frames == [Reset(3)]


def test_the_master_forgets_ids_skipped_for_good():
    m = TunnelCore(role=Role.MASTER, now=0, settings=SMALL)
    m.link_up(0, {})
    for stream in range(2, core.MAX_IDS_AHEAD + 3):  # stream 1 never reached the master
        m.receive(Open(stream), 0)
        m.receive(Reset(stream), 0)
    assert len(m._seen_ahead) <= core.MAX_IDS_AHEAD
    m.receive(Open(1), 0)  # taken as late: ids below the horizon count as seen
    assert 1 not in m.streams


def test_acks_out_of_order_count_as_the_highest():
    p, s = settled_stream()
    p.worker.write(s, b"abcdefgh" * 4, p.now)
    p.collect()
    p.in_flight.clear()
    p.worker.receive(Ack(s, 32), p.now)
    p.worker.receive(Ack(s, 16), p.now)  # an older ack, overtaken
    assert len(p.worker.streams[s].send_buffer) == 0


def test_a_close_that_overtakes_data_waits_for_it():
    m = master_with_stream()
    m.receive(Close(1, 6), 0)
    m.receive(Data(1, 3, b"def"), 0)
    assert not any(isinstance(e, Closed) for e in m.take()[1])
    m.receive(Data(1, 0, b"abc"), 0)
    events = m.take()[1]
    assert kinds(events) == [(Deliver, 1), (Deliver, 1), (Closed, 1)]
    assert b"".join(e.data for e in events if isinstance(e, Deliver)) == b"abcdef"


def test_held_data_is_dropped_on_resume_and_the_resend_fills_the_stream():
    p, s = settled_stream()
    p.worker.write(s, b"0123456789abcdef", p.now)  # one frame: SMALL.chunk is 16
    p.worker.write(s, b"ghij", p.now)
    p.collect()
    p.in_flight.reverse()  # the second frame first: held at the master
    p.deliver(1)
    assert p.master.streams[s].early_bytes == 4
    p.cut()
    p.connect()
    assert p.master.streams[s].early == {}
    p.settle()
    assert p.delivered["master"][s] == b"0123456789abcdefghij"


def test_every_frame_and_event_type_has_its_handler():
    from bbenroll.tunnel.adapter import EVENT_METHODS
    from bbenroll.tunnel.wire import FRAME_METHODS, FrameSink

    assert len(FRAME_TYPES) == 6 and len(EVENT_TYPES) == 7
    assert set(TunnelCore(role=Role.MASTER, now=0)._receivers) == set(FRAME_TYPES)
    assert set(FRAME_METHODS) == set(FRAME_TYPES)
    assert all(hasattr(FrameSink, "remote_" + method) for method, _ in FRAME_METHODS.values())
    assert set(EVENT_METHODS) == set(EVENT_TYPES)
