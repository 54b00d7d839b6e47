"""The tunnel protocol, without I/O: streams, offsets, acks, windows, timers.

Each side of a tunnel session runs one :class:`TunnelCore`. The application
(a PB connection) writes bytes into a stream; the core turns them into frames
for the link (the worker's Foolscap connection) and turns frames from the link
back into bytes for the application, in order, exactly once:

- every byte of a stream has an offset; :class:`Data` frames carry their offset,
  :class:`Ack` frames carry the receiver's next expected offset (cumulative);
- frames may arrive in any order within a connection (Foolscap sends calls that
  queued behind a busy transport last-in, first-out): data ahead of ``recv_next`` is
  held until the bytes before it arrive, acks count as the highest seen, a close
  waits for the data before it, and the master treats data or a close for a stream
  it has not seen opened as its open (docs/architecture.md, "What the tunnel assumes
  of Foolscap");
- the sender keeps unacknowledged bytes; at most ``window`` bytes are in flight;
- when the link drops, nothing is lost: after a reconnect both sides exchange
  what they have received (:meth:`TunnelCore.received`) and each resends from
  there (:meth:`TunnelCore.link_up`); duplicates are trimmed by offset;
- a side that waits for an answer (unacknowledged data, or a ping) and hears nothing
  for ``dead_after`` seconds declares the link dead; with nothing outstanding the bound
  is ``idle_dead_after``. Only the worker pings, when it has heard nothing for
  ``ping_interval``; either side answers a ping unless it sent something within
  ``answer_hold``. So an idle link costs two small calls every ``ping_interval``, and
  a busy one none;
- a session whose link stays down past ``resume_deadline`` closes every stream,
  so the application sees an ordinary disconnect.

Only the worker opens streams (:class:`Role`). Closing is a :class:`Close` frame
at the final offset (it takes one virtual byte, so its ack is final+1); :class:`Reset`
drops a stream at once. Each stream's lifecycle is explicit (``stream.py``); frames
that would make an illegal move raise :class:`ProtocolError`.

Inputs are method calls with ``now`` (seconds, any monotonic origin); outputs are
collected in :attr:`TunnelCore.frames` (to send) and :attr:`TunnelCore.events`
(for the application), which the adapter drains with :meth:`TunnelCore.take`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from heapq import heappop, heappush

from bbenroll.tunnel.frames import (
    Ack,
    Close,
    Closed,
    Data,
    Deliver,
    Event,
    Expired,
    Frame,
    LinkDead,
    Open,
    Opened,
    Pause,
    Ping,
    ProtocolError,
    Reset,
    Resume,
    Role,
)
from bbenroll.tunnel.stream import OpenState, RecvState, SendState, Stream

# reasons of the Closed events of an orderly end (their ``clean`` is True)
CLOSED_BY_PEER = "closed by the other side"
CLOSED_CLEANLY = "closed"

# How long a session outlives a lost link (seconds): the worker asks for a value
# in this range (`worker create --resume`, the endpoint's `resume=`), the master
# clamps what it is asked for to it.
RESUME_DEADLINE_DEFAULT = 600
RESUME_DEADLINE_MIN = 5
RESUME_DEADLINE_MAX = 3600

# Data that overtook earlier data is held per stream up to a window's bytes and at most
# this many frames (a sender of one-byte frames in reverse would otherwise cost a dict
# entry per byte); past either, the peer broke the protocol. Foolscap reorders only the
# calls that queued while its transport was paused, far fewer than this.
MAX_EARLY_FRAMES = 8192
# Stream ids the master remembers having seen above the lowest one it has not (ids come
# in order, so this holds only the few a reordering let jump ahead).
MAX_IDS_AHEAD = 64


# The states the per-frame paths (write, data frames, the pump) test, looked up once:
# each ``SendState.X`` costs ~60 ns on Python 3.11, as much as the rest of a check.
_KNOWN, _UNSENT, _SENDING, _CLOSING = OpenState.KNOWN, OpenState.UNSENT, SendState.OPEN, SendState.CLOSING


def clamp_resume_deadline(seconds: float) -> float:
    return float(min(max(seconds, RESUME_DEADLINE_MIN), RESUME_DEADLINE_MAX))


@dataclass
class Settings:
    window: int = 4 * 1024 * 1024  # bytes in flight per stream
    chunk: int = 256 * 1024  # largest data frame
    ack_every: int = 1024 * 1024  # ack at once after this many bytes; else on the next tick
    ack_delay: float = 0.02
    high_water: int = 8 * 1024 * 1024  # unacked + unsent bytes: pause the application
    low_water: int = 2 * 1024 * 1024  # resume it
    max_buffer: int | None = None  # past this, reset the stream instead of pausing (worker side)
    ping_interval: float = 30.0  # the worker pings a link it has heard nothing on for this long
    dead_after: float = 15.0  # waiting for an answer (data or a ping) and nothing heard: dead
    idle_dead_after: float = 60.0  # nothing outstanding and nothing heard: dead (the master's bound)
    answer_hold: float = 10.0  # answer a ping unless we sent something this recently
    resume_deadline: float = float(RESUME_DEADLINE_DEFAULT)


class TunnelCore:
    def __init__(self, *, role: Role, now: float, settings: Settings | None = None) -> None:
        self.role = role
        self.settings = settings or Settings()
        self.streams: dict[int, Stream] = {}
        self.frames: list[Frame] = []
        self.events: list[Event] = []
        self.link = False
        self.link_changed = now
        self.last_received = now
        self.last_sent = now
        self.expired = False
        self._next_id = 1
        self._ack_due: float | None = None
        # since when we wait for the peer to answer something (data, a close, an open, a
        # ping); None: nothing outstanding, so silence is normal (idle_dead_after)
        self._waiting_since: float | None = None
        # the master's record of the worker's stream ids: every id <= _seen_through, and
        # those in _seen_ahead, have been opened (a late or repeated open is ignored)
        self._seen_through = 0
        self._seen_ahead: set[int] = set()
        # one handler per frame type: receive() is in the hot path
        self._receivers: dict[type, Callable[[Frame, float], None]] = {
            Data: self._on_data,
            Ack: self._on_ack,
            Open: self._on_open,
            Close: self._on_close,
            Reset: self._on_reset,
            Ping: self._on_ping,
        }

    # -- draining -------------------------------------------------------------

    def take(self) -> tuple[list[Frame], list[Event]]:
        frames, events = self.frames, self.events
        self.frames, self.events = [], []
        return frames, events

    # -- the application side ---------------------------------------------------

    def open_stream(self, now: float) -> int:
        if self.role is not Role.WORKER:
            raise ValueError("only the worker opens streams")
        if self.expired:
            raise ValueError("session expired")
        stream_id = self._next_id
        self._next_id += 1
        self.streams[stream_id] = Stream(stream_id)
        self._pump(now)
        return stream_id

    def write(self, stream_id: int, data: bytes, now: float) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.sending is not _SENDING or not data:
            return  # like a TCP transport after loseConnection: ignored
        if type(data) is not bytes:
            data = bytes(data)  # the buffer keeps what it is given: never a caller's mutable buffer
        buffer = stream.send_buffer
        buffer.append(data)
        pending = buffer.end - buffer.base
        limit = self.settings.max_buffer
        if limit is not None and pending > limit:
            self._reset(stream, f"more than {limit} bytes waiting for the link")
            return
        if not stream.paused and pending > self.settings.high_water:
            stream.paused = True
            self.events.append(Pause(stream_id))
        self._pump(now)

    def close(self, stream_id: int, now: float) -> None:
        """The application closed its end: send what is buffered, then close."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.sending is not _SENDING:
            return
        stream.move_send(SendState.CLOSING)
        self._pump(now)

    def reset(self, stream_id: int, now: float, reason: str = "reset") -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            self._reset(stream, reason)
            self._pump(now)

    # -- the link ------------------------------------------------------------------

    def received(self) -> dict[int, int]:
        """What we have received, per stream: the peer resends from here on resume."""
        return {s.id: s.recv_next for s in self.streams.values()}

    def link_up(self, now: float, peer_received: dict[int, int]) -> None:
        """The link is (re)established; ``peer_received`` is the peer's :meth:`received`."""
        self.link = True
        self.link_changed = now
        self.last_received = now
        self._waiting_since = None
        for stream in list(self.streams.values()):
            if stream.early:
                # the peer resends from our recv_next on this link, in frames of its own
                stream.early.clear()
                stream.early_heap.clear()
                stream.early_bytes = 0
            got = peer_received.get(stream.id)
            if got is None:
                if self.role is Role.WORKER and stream.opened is not OpenState.KNOWN:
                    stream.opened = OpenState.UNSENT  # the master never saw it: open again
                    stream.send_next = stream.send_base
                    if stream.sending is SendState.CLOSE_SENT:
                        stream.move_send(SendState.CLOSING)
                    continue
                # the peer lost this stream (it expired there): it is gone
                self._drop(stream, "the other side no longer knows this stream")
                continue
            stream.opened = OpenState.KNOWN
            self._acked(stream, got)
            stream.send_next = max(stream.send_base, min(got, stream.send_end))
            if stream.sending is SendState.CLOSE_SENT:
                stream.move_send(SendState.CLOSING)  # it may have been lost: send it again
            stream.recv_acked = None  # tell the peer where we are again
        self._pump(now)

    def link_down(self, now: float) -> None:
        if self.link:
            self.link = False
            self.link_changed = now

    def receive(self, frame: Frame, now: float) -> None:
        self.last_received = now
        try:
            handler = self._receivers[type(frame)]
        except KeyError:
            raise ProtocolError(f"not a tunnel frame: {type(frame).__name__}") from None
        handler(frame, now)
        if self._waiting_since is not None and not self._outstanding():
            self._waiting_since = None  # answered: silence is normal again

    def tick(self, now: float) -> None:
        """Timers: delayed acks, pings, dead links, the resume deadline."""
        if self.expired:
            return
        if not self.link:
            # sums, as next_wakeup() computes them: a difference can round below the
            # deadline at the very wake-up time, and the timer would spin at delay 0
            if now >= self.link_changed + self.settings.resume_deadline:
                self.expired = True
                for stream in list(self.streams.values()):
                    self._drop(stream, "the link stayed down past the resume deadline")
                self.events.append(Expired())
            return
        if now >= self._dead_at():
            heard = now - self.last_received
            self.link = False
            self.link_changed = now
            self.events.append(LinkDead(f"nothing heard for {heard:.0f}s"))
            return
        if self._ack_due is not None and now >= self._ack_due:
            self._ack_due = None
            for stream in self.streams.values():
                self._ack(stream)
        if self._ping_at() is not None and now >= self.last_received + self.settings.ping_interval:
            self._send(Ping(), now, expects_answer=True)
        self._pump(now)

    def next_wakeup(self) -> float | None:
        """When :meth:`tick` must run next (absolute), or None."""
        if self.expired:
            return None
        if not self.link:
            return self.link_changed + self.settings.resume_deadline
        when = self._dead_at()
        ping = self._ping_at()
        if ping is not None and ping < when:
            when = ping
        if self._ack_due is not None and self._ack_due < when:
            when = self._ack_due
        return when

    def _dead_at(self) -> float:
        waiting = self._waiting_since
        if waiting is None:
            return self.last_received + self.settings.idle_dead_after
        return max(self.last_received, waiting) + self.settings.dead_after

    def _ping_at(self) -> float | None:
        """When the worker pings (it alone starts pings, and only with nothing outstanding)."""
        if self.role is not Role.WORKER or self._waiting_since is not None:
            return None
        return self.last_received + self.settings.ping_interval

    def _outstanding(self) -> bool:
        """Is something we sent still unanswered: unacknowledged data, a close, an open?"""
        for stream in self.streams.values():
            if (
                stream.send_next > stream.send_buffer.base
                or stream.sending is SendState.CLOSE_SENT
                or stream.opened is OpenState.SENT
            ):
                return True
        return False

    # -- frames from the peer ----------------------------------------------------------

    def _on_ping(self, frame: Ping, now: float) -> None:
        # last_received is most of what a ping is for; the answer keeps the pinger alive.
        # Not when we sent something lately: that is on its way, and it stops two new
        # sides from answering each other's answers (older sides ping every 5 s on their own).
        if self.link and now >= self.last_sent + self.settings.answer_hold:
            self._send(Ping(), now)

    def _on_open(self, frame: Open, now: float) -> None:
        if self.role is Role.WORKER:
            raise ProtocolError("the master may not open streams")
        if frame.stream in self.streams or self._seen(frame.stream):
            # repeated (the worker did not hear from us before a reconnect), or late: its
            # data or close overtook it and the stream may be over already
            return
        self._open_from_peer(frame.stream, now)
        self._pump(now)

    def _open_from_peer(self, stream_id: int, now: float) -> Stream:
        self._mark_seen(stream_id)
        stream = self.streams[stream_id] = Stream(stream_id, opened=OpenState.KNOWN)
        self.events.append(Opened(stream_id))
        self._ack(stream, force=True)
        return stream

    def _seen(self, stream_id: int) -> bool:
        return stream_id <= self._seen_through or stream_id in self._seen_ahead

    def _mark_seen(self, stream_id: int) -> None:
        ahead = self._seen_ahead
        ahead.add(stream_id)
        if len(ahead) > MAX_IDS_AHEAD:
            # ids below the lowest were skipped for good (opened and dropped before the
            # master heard of them): count them as seen
            self._seen_through = max(self._seen_through, min(ahead) - 1)
        while self._seen_through + 1 in ahead:
            self._seen_through += 1
            ahead.discard(self._seen_through)

    def _overtaken_open(self, stream_id: int, now: float) -> Stream | None:
        """Data or a close for a stream the master has not seen opened: its open is behind it."""
        if self.role is Role.MASTER and stream_id > 0 and not self._seen(stream_id):
            return self._open_from_peer(stream_id, now)
        return None

    def _known(self, frame: Data | Ack | Close | Reset) -> Stream | None:
        stream = self.streams.get(frame.stream)
        if stream is not None:
            stream.opened = OpenState.KNOWN
        return stream

    def _on_data(self, frame: Data, now: float) -> None:
        stream = self.streams.get(frame.stream)  # not _known(): one call less per data frame
        if stream is None:
            stream = self._overtaken_open(frame.stream, now)
            if stream is None:
                self.frames.append(Reset(frame.stream))  # it is gone here
                return
        stream.opened = _KNOWN
        self._receive_data(stream, frame.offset, frame.payload, now)
        self._pump(now)

    def _on_ack(self, frame: Ack, now: float) -> None:
        stream = self._known(frame)
        if stream is not None:
            self._acked(stream, frame.offset)
            self._pump(now)

    def _on_close(self, frame: Close, now: float) -> None:
        stream = self._known(frame) or self._overtaken_open(frame.stream, now)
        if stream is None:
            self.frames.append(Reset(frame.stream))
            return
        if frame.offset < stream.recv_next:
            raise ProtocolError(f"stream {stream.id}: close at {frame.offset} < {stream.recv_next}")
        if stream.peer_final is not None and frame.offset != stream.peer_final:
            raise ProtocolError(f"stream {stream.id}: close moved from {stream.peer_final} to {frame.offset}")
        if stream.peer_final is None:
            stream.peer_final = frame.offset
            if stream.recv_next < frame.offset:
                stream.move_recv(RecvState.FINISHING)
        if not self._maybe_deliver_close(stream):
            self._schedule_ack(stream, now, force=True)  # where we are: the rest may follow
        self._pump(now)

    def _on_reset(self, frame: Reset, now: float) -> None:
        stream = self._known(frame)
        if stream is not None:
            self._drop(stream, "reset by the other side")
            self._pump(now)
        elif self.role is Role.MASTER and frame.stream > 0:
            self._mark_seen(frame.stream)  # it overtook the stream's open: that is void now

    # -- internals -------------------------------------------------------------------

    def _send(self, frame: Frame, now: float, expects_answer: bool = False) -> None:
        self.frames.append(frame)
        self.last_sent = now
        if expects_answer and self._waiting_since is None:
            self._waiting_since = now

    def _receive_data(self, stream: Stream, offset: int, payload: bytes, now: float) -> None:
        end = offset + len(payload)
        final = stream.peer_final
        if final is not None and end > final:
            raise ProtocolError(f"stream {stream.id}: data up to {end} after the close at {final}")
        expected = stream.recv_next
        if offset > expected:
            self._hold_early(stream, offset, payload)
            return
        if end <= expected:
            self._schedule_ack(stream, now, force=True)  # a duplicate: say where we are
            return
        fresh = payload if offset == expected else payload[expected - offset :]
        stream.recv_next = end
        self.events.append(Deliver(stream.id, fresh))
        if stream.early:
            self._deliver_early(stream)
        if final is not None:
            self._maybe_deliver_close(stream)
        self._schedule_ack(stream, now)

    def _hold_early(self, stream: Stream, offset: int, payload: bytes) -> None:
        """Data that overtook earlier data: keep it until the bytes before it arrive."""
        if not payload:
            return
        window = self.settings.window
        if offset + len(payload) > stream.recv_next + window:
            raise ProtocolError(
                f"stream {stream.id}: data at {offset} more than a window ahead of {stream.recv_next}"
            )
        held = stream.early.get(offset)
        if held is not None and len(held) >= len(payload):
            return  # a duplicate of what is held
        if held is None:
            if len(stream.early) >= MAX_EARLY_FRAMES:
                raise ProtocolError(f"stream {stream.id}: more than {MAX_EARLY_FRAMES} frames ahead")
            heappush(stream.early_heap, offset)
        stream.early_bytes += len(payload) - (len(held) if held is not None else 0)
        if stream.early_bytes > window:
            raise ProtocolError(f"stream {stream.id}: more than {window} bytes held ahead")
        stream.early[offset] = payload

    def _deliver_early(self, stream: Stream) -> None:
        """Deliver, in order, the held data that the stream has now caught up with."""
        early, heap = stream.early, stream.early_heap
        while heap and heap[0] <= stream.recv_next:
            offset = heappop(heap)
            payload = early.pop(offset)
            stream.early_bytes -= len(payload)
            end = offset + len(payload)
            if end <= stream.recv_next:
                continue  # what arrived in order meanwhile covered it
            expected = stream.recv_next
            stream.recv_next = end
            fresh = payload if offset == expected else payload[expected - offset :]
            self.events.append(Deliver(stream.id, fresh))

    def _schedule_ack(self, stream: Stream, now: float, force: bool = False) -> None:
        acked = stream.recv_acked
        if force or acked is None or stream.recv_next - acked >= self.settings.ack_every:
            self._ack(stream, force=True)
        elif self._ack_due is None:
            self._ack_due = now + self.settings.ack_delay

    def _ack(self, stream: Stream, force: bool = False) -> None:
        final = stream.peer_final
        offset = stream.recv_next + (1 if final is not None and stream.recv_next >= final else 0)
        if force or offset != stream.recv_acked:
            if self.link:
                self.frames.append(Ack(stream.id, offset))
                stream.recv_acked = offset

    def _acked(self, stream: Stream, offset: int) -> None:
        end = stream.send_end
        if offset > end:
            if offset == end + 1 and stream.sending is SendState.CLOSE_SENT:
                stream.move_send(SendState.CLOSED)
            elif offset != end + 1 or stream.sending is not SendState.CLOSED:
                raise ProtocolError(f"stream {stream.id}: ack {offset} beyond {end}")
            offset = end
        if offset > stream.send_buffer.base:
            stream.send_buffer.discard_to(offset)
            stream.send_next = max(stream.send_next, offset)
        if stream.paused and len(stream.send_buffer) <= self.settings.low_water:
            stream.paused = False
            self.events.append(Resume(stream.id))
        self._forget_if_finished(stream)

    def _maybe_deliver_close(self, stream: Stream) -> bool:
        """Deliver the peer's close once every byte before it is in; True if it was."""
        final = stream.peer_final
        if final is None or stream.recv_next < final or stream.receiving is RecvState.FINISHED:
            return False
        stream.move_recv(RecvState.FINISHED)
        # the final ack now, not on the ack timer: the stream may be forgotten before it fires
        self._ack(stream, force=True)
        if stream.sending is SendState.OPEN:
            self.events.append(Closed(stream.id, CLOSED_BY_PEER, clean=True))
            stream.move_send(SendState.CLOSING)  # our side closes too, once its data is out
        else:
            # we closed first; the peer's close completes it (like TCP's connectionLost)
            self.events.append(Closed(stream.id, CLOSED_CLEANLY, clean=True))
        self._forget_if_finished(stream)
        return True

    def _reset(self, stream: Stream, reason: str) -> None:
        if self.link:
            self.frames.append(Reset(stream.id))
        self._drop(stream, reason)

    def _drop(self, stream: Stream, reason: str) -> None:
        if self.streams.pop(stream.id, None) is not None and stream.receiving is not RecvState.FINISHED:
            self.events.append(Closed(stream.id, reason))

    def _forget_if_finished(self, stream: Stream) -> None:
        if stream.finished and not stream.send_buffer:
            self.streams.pop(stream.id, None)

    def _pump(self, now: float) -> None:
        """Put on the link whatever the windows allow."""
        if not self.link:
            return
        settings = self.settings
        for stream in list(self.streams.values()):
            if stream.opened is _UNSENT:
                if self.role is Role.WORKER:
                    self._send(Open(stream.id), now, expects_answer=True)
                stream.opened = OpenState.SENT
            while stream.send_next < stream.send_end:
                room = settings.window - (stream.send_next - stream.send_base)
                if room <= 0:
                    break
                size = min(settings.chunk, room, stream.send_end - stream.send_next)
                payload = stream.send_buffer.read(stream.send_next, size)
                self._send(Data(stream.id, stream.send_next, payload), now, expects_answer=True)
                stream.send_next += size
            if stream.sending is _CLOSING and stream.send_next == stream.send_end:
                self._send(Close(stream.id, stream.send_end), now, expects_answer=True)
                stream.move_send(SendState.CLOSE_SENT)
            if stream.recv_acked is None:
                self._ack(stream, force=True)
