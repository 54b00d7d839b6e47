"""The tunnel protocol, without I/O: streams, offsets, acks, windows, timers.

Each side of a tunnel session runs one :class:`TunnelCore`. The application
(a PB connection) writes bytes into a stream; the core turns them into frames
for the link (the worker's Foolscap connection) and turns frames from the link
back into bytes for the application, in order, exactly once:

- every byte of a stream has an offset; ``data`` frames carry their offset,
  ``ack`` frames carry the receiver's next expected offset (cumulative);
- the sender keeps unacknowledged bytes; at most ``window`` bytes are in flight;
- when the link drops, nothing is lost: after a reconnect both sides exchange
  what they have received (:meth:`TunnelCore.received`) and each resends from
  there (:meth:`TunnelCore.link_up`); duplicates are trimmed by offset;
- a side that hears nothing for ``dead_after`` seconds declares the link dead;
  idle sides ping every ``ping_interval`` seconds;
- a session whose link stays down past ``resume_deadline`` closes every stream,
  so the application sees an ordinary disconnect.

Only the worker opens streams. Closing is a "close" frame at the final offset
(it takes one virtual byte, so its ack is final+1); "reset" drops a stream at once.

Inputs are method calls with ``now`` (seconds, any monotonic origin); outputs are
collected in :attr:`TunnelCore.frames` (to send) and :attr:`TunnelCore.events`
(for the application), which the adapter drains with :meth:`TunnelCore.take`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# frame kinds
OPEN, DATA, ACK, CLOSE, RESET, PING = "open", "data", "ack", "close", "reset", "ping"

# event kinds
DELIVER = "deliver"  # (stream, bytes) for the application
OPENED = "opened"  # master side: the worker opened a stream; connect it
CLOSED = "closed"  # the stream is over (peer closed, reset, or session expired)
PAUSE = "pause"  # too much unacknowledged data: stop reading from the application
RESUME = "resume"  # below the low-water mark again
LINK_DEAD = "link-dead"  # nothing heard for dead_after: drop the link and reconnect
EXPIRED = "expired"  # the link stayed down past the resume deadline: session over

# reasons of CLOSED events that are an orderly end (not a failure)
CLOSED_BY_PEER = "closed by the other side"
CLOSED_CLEANLY = "closed"


@dataclass(frozen=True)
class Frame:
    kind: str
    stream: int = 0
    offset: int = 0
    payload: bytes = b""


@dataclass(frozen=True)
class Event:
    kind: str
    stream: int = 0
    data: bytes = b""
    reason: str = ""


# How long a session outlives a lost link (seconds): the worker asks for a value
# in this range (`worker create --resume`, the endpoint's `resume=`), the master
# clamps what it is asked for to it.
RESUME_DEADLINE_DEFAULT = 600
RESUME_DEADLINE_MIN = 5
RESUME_DEADLINE_MAX = 3600


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
    ping_interval: float = 5.0
    dead_after: float = 15.0
    resume_deadline: float = float(RESUME_DEADLINE_DEFAULT)


class ProtocolError(Exception):
    """The peer broke the protocol; the link should be dropped (state is kept)."""


@dataclass
class Stream:
    id: int
    # sending: bytes from send_base (acked by the peer up to here) on
    send_buffer: bytearray = field(default_factory=bytearray)
    send_base: int = 0
    send_next: int = 0  # next offset to put on the link
    open_sent: bool = False
    open_acked: bool = False  # the peer knows this stream
    closing: bool = False  # the application closed: send close after the data
    close_sent: bool = False
    close_acked: bool = False
    paused: bool = False
    # receiving
    recv_next: int = 0
    recv_acked: int = 0  # last ack we sent
    peer_final: int | None = None  # offset of the peer's close
    delivered_close: bool = False

    @property
    def send_end(self) -> int:
        return self.send_base + len(self.send_buffer)

    @property
    def finished(self) -> bool:
        return self.delivered_close and (not self.closing or self.close_acked)


class TunnelCore:
    def __init__(self, *, is_worker: bool, now: float, settings: Settings | None = None) -> None:
        self.is_worker = is_worker
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

    # -- draining -------------------------------------------------------------

    def take(self) -> tuple[list[Frame], list[Event]]:
        frames, events = self.frames, self.events
        self.frames, self.events = [], []
        return frames, events

    # -- the application side ---------------------------------------------------

    def open_stream(self, now: float) -> int:
        if not self.is_worker:
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
        if stream is None or stream.closing or not data:
            return
        stream.send_buffer += data
        pending = len(stream.send_buffer)
        limit = self.settings.max_buffer
        if limit is not None and pending > limit:
            self._reset(stream, f"more than {limit} bytes waiting for the link")
            return
        if not stream.paused and pending > self.settings.high_water:
            stream.paused = True
            self.events.append(Event(PAUSE, stream_id))
        self._pump(now)

    def close(self, stream_id: int, now: float) -> None:
        """The application closed its end: send what is buffered, then close."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.closing:
            return
        stream.closing = True
        if stream.peer_final is not None and stream.recv_next >= stream.peer_final:
            stream.delivered_close = True  # both ends closed; nothing more to tell the app
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
        for stream in list(self.streams.values()):
            got = peer_received.get(stream.id)
            if got is None:
                if self.is_worker and not stream.open_acked:
                    stream.open_sent = False  # the master never saw it: open again
                    stream.send_next = stream.send_base
                    stream.close_sent = False
                    continue
                # the peer lost this stream (it expired there): it is gone
                self._drop(stream, "the other side no longer knows this stream")
                continue
            stream.open_acked = stream.open_sent = True
            self._acked(stream, got)
            stream.send_next = max(stream.send_base, min(got, stream.send_end))
            stream.close_sent = stream.close_sent and stream.close_acked
            stream.recv_acked = -1  # tell the peer where we are again
        self._pump(now)

    def link_down(self, now: float) -> None:
        if self.link:
            self.link = False
            self.link_changed = now

    def receive(self, frame: Frame, now: float) -> None:
        self.last_received = now
        kind = frame.kind
        if kind == PING:
            return
        stream = self.streams.get(frame.stream)
        if kind == OPEN:
            if self.is_worker:
                raise ProtocolError("the master may not open streams")
            if stream is None:
                self.streams[frame.stream] = Stream(frame.stream, open_sent=True, open_acked=True)
                self.events.append(Event(OPENED, frame.stream))
                self._ack(self.streams[frame.stream], force=True)
                self._pump(now)
            return
        if stream is None:
            if kind in (DATA, CLOSE):
                self.frames.append(Frame(RESET, frame.stream))  # it is gone here
            return
        stream.open_acked = True
        if kind == DATA:
            self._receive_data(stream, frame.offset, frame.payload, now)
        elif kind == ACK:
            self._acked(stream, frame.offset)
        elif kind == CLOSE:
            if frame.offset < stream.recv_next:
                raise ProtocolError(f"stream {stream.id}: close at {frame.offset} < {stream.recv_next}")
            stream.peer_final = frame.offset
            self._maybe_deliver_close(stream)
            self._schedule_ack(stream, now, force=True)
        elif kind == RESET:
            self._drop(stream, "reset by the other side")
        self._pump(now)

    def tick(self, now: float) -> None:
        """Timers: delayed acks, pings, dead links, the resume deadline."""
        if self.expired:
            return
        if not self.link:
            if now - self.link_changed >= self.settings.resume_deadline:
                self.expired = True
                for stream in list(self.streams.values()):
                    self._drop(stream, "the link stayed down past the resume deadline")
                self.events.append(Event(EXPIRED))
            return
        if now - self.last_received >= self.settings.dead_after:
            self.link = False
            self.link_changed = now
            self.events.append(Event(LINK_DEAD, reason=f"nothing heard for {self.settings.dead_after:.0f}s"))
            return
        if self._ack_due is not None and now >= self._ack_due:
            self._ack_due = None
            for stream in self.streams.values():
                self._ack(stream)
        if now - self.last_sent >= self.settings.ping_interval:
            self._send(Frame(PING), now)
        self._pump(now)

    def next_wakeup(self) -> float | None:
        """When :meth:`tick` must run next (absolute), or None."""
        if self.expired:
            return None
        if not self.link:
            return self.link_changed + self.settings.resume_deadline
        times = [
            self.last_received + self.settings.dead_after,
            self.last_sent + self.settings.ping_interval,
        ]
        if self._ack_due is not None:
            times.append(self._ack_due)
        return min(times)

    # -- internals -------------------------------------------------------------------

    def _send(self, frame: Frame, now: float) -> None:
        self.frames.append(frame)
        self.last_sent = now

    def _receive_data(self, stream: Stream, offset: int, payload: bytes, now: float) -> None:
        end = offset + len(payload)
        if offset > stream.recv_next:
            raise ProtocolError(f"stream {stream.id}: gap, got {offset}, expected {stream.recv_next}")
        if end <= stream.recv_next:
            self._schedule_ack(stream, now, force=True)  # a duplicate: say where we are
            return
        fresh = payload if offset == stream.recv_next else payload[stream.recv_next - offset :]
        stream.recv_next = end
        if not stream.delivered_close:
            self.events.append(Event(DELIVER, stream.id, fresh))
        self._maybe_deliver_close(stream)
        self._schedule_ack(stream, now)

    def _schedule_ack(self, stream: Stream, now: float, force: bool = False) -> None:
        if force or stream.recv_next - stream.recv_acked >= self.settings.ack_every:
            self._ack(stream, force=True)
        elif self._ack_due is None:
            self._ack_due = now + self.settings.ack_delay

    def _ack(self, stream: Stream, force: bool = False) -> None:
        final = stream.peer_final
        offset = stream.recv_next + (1 if final is not None and stream.recv_next >= final else 0)
        if force or offset != stream.recv_acked:
            if self.link:
                self.frames.append(Frame(ACK, stream.id, offset))
                stream.recv_acked = offset

    def _acked(self, stream: Stream, offset: int) -> None:
        if stream.closing and stream.close_sent and offset > stream.send_end:
            stream.close_acked = True
            offset = stream.send_end
        if offset > stream.send_end:
            raise ProtocolError(f"stream {stream.id}: ack {offset} beyond {stream.send_end}")
        if offset > stream.send_base:
            del stream.send_buffer[: offset - stream.send_base]
            stream.send_base = offset
            stream.send_next = max(stream.send_next, offset)
        if stream.paused and len(stream.send_buffer) <= self.settings.low_water:
            stream.paused = False
            self.events.append(Event(RESUME, stream.id))
        self._forget_if_finished(stream)

    def _maybe_deliver_close(self, stream: Stream) -> None:
        final = stream.peer_final
        if final is not None and stream.recv_next >= final and not stream.delivered_close:
            stream.delivered_close = True
            if not stream.closing:
                self.events.append(Event(CLOSED, stream.id, reason=CLOSED_BY_PEER))
                stream.closing = True  # our side closes too, once its data is out
            else:
                # we closed first; the peer's close completes it (like TCP's connectionLost)
                self.events.append(Event(CLOSED, stream.id, reason=CLOSED_CLEANLY))
            self._forget_if_finished(stream)

    def _reset(self, stream: Stream, reason: str) -> None:
        if self.link:
            self.frames.append(Frame(RESET, stream.id))
        self._drop(stream, reason)

    def _drop(self, stream: Stream, reason: str) -> None:
        if self.streams.pop(stream.id, None) is not None and not stream.delivered_close:
            self.events.append(Event(CLOSED, stream.id, reason=reason))

    def _forget_if_finished(self, stream: Stream) -> None:
        if stream.finished and not stream.send_buffer:
            self.streams.pop(stream.id, None)

    def _pump(self, now: float) -> None:
        """Put on the link whatever the windows allow."""
        if not self.link:
            return
        settings = self.settings
        for stream in list(self.streams.values()):
            if not stream.open_sent:
                if not self.is_worker:
                    stream.open_sent = True
                else:
                    self._send(Frame(OPEN, stream.id), now)
                    stream.open_sent = True
            while stream.send_next < stream.send_end:
                room = settings.window - (stream.send_next - stream.send_base)
                if room <= 0:
                    break
                size = min(settings.chunk, room, stream.send_end - stream.send_next)
                start = stream.send_next - stream.send_base
                with memoryview(stream.send_buffer) as view:  # one copy, not two
                    payload = bytes(view[start : start + size])
                self._send(Frame(DATA, stream.id, stream.send_next, payload), now)
                stream.send_next += size
            if stream.closing and not stream.close_sent and stream.send_next == stream.send_end:
                self._send(Frame(CLOSE, stream.id, stream.send_end), now)
                stream.close_sent = True
            if stream.recv_acked == -1:
                self._ack(stream, force=True)
