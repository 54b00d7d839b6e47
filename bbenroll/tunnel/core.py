"""The tunnel protocol, without I/O: streams, offsets, acks, windows, timers.

Each side of a tunnel session runs one :class:`TunnelCore`. The application
(a PB connection) writes bytes into a stream; the core turns them into frames
for the link (the worker's Foolscap connection) and turns frames from the link
back into bytes for the application, in order, exactly once:

- every byte of a stream has an offset; :class:`Data` frames carry their offset,
  :class:`Ack` frames carry the receiver's next expected offset (cumulative);
- the sender keeps unacknowledged bytes; at most ``window`` bytes are in flight;
- when the link drops, nothing is lost: after a reconnect both sides exchange
  what they have received (:meth:`TunnelCore.received`) and each resends from
  there (:meth:`TunnelCore.link_up`); duplicates are trimmed by offset;
- a side that hears nothing for ``dead_after`` seconds declares the link dead;
  idle sides ping every ``ping_interval`` seconds;
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
    ping_interval: float = 5.0
    dead_after: float = 15.0
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
        stream.send_buffer += data
        pending = len(stream.send_buffer)
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
        for stream in list(self.streams.values()):
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
        if now >= self.last_received + self.settings.dead_after:
            self.link = False
            self.link_changed = now
            self.events.append(LinkDead(f"nothing heard for {self.settings.dead_after:.0f}s"))
            return
        if self._ack_due is not None and now >= self._ack_due:
            self._ack_due = None
            for stream in self.streams.values():
                self._ack(stream)
        if now >= self.last_sent + self.settings.ping_interval:
            self._send(Ping(), now)
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

    # -- frames from the peer ----------------------------------------------------------

    def _on_ping(self, frame: Ping, now: float) -> None:
        pass  # last_received is all a ping is for

    def _on_open(self, frame: Open, now: float) -> None:
        if self.role is Role.WORKER:
            raise ProtocolError("the master may not open streams")
        if frame.stream in self.streams:
            return  # a repeated open (the worker did not hear from us before a reconnect)
        stream = self.streams[frame.stream] = Stream(frame.stream, opened=OpenState.KNOWN)
        self.events.append(Opened(frame.stream))
        self._ack(stream, force=True)
        self._pump(now)

    def _known(self, frame: Data | Ack | Close | Reset) -> Stream | None:
        stream = self.streams.get(frame.stream)
        if stream is not None:
            stream.opened = OpenState.KNOWN
        return stream

    def _on_data(self, frame: Data, now: float) -> None:
        stream = self.streams.get(frame.stream)  # not _known(): one call less per data frame
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
        stream = self._known(frame)
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
        self._maybe_deliver_close(stream)
        self._schedule_ack(stream, now, force=True)
        self._pump(now)

    def _on_reset(self, frame: Reset, now: float) -> None:
        stream = self._known(frame)
        if stream is not None:
            self._drop(stream, "reset by the other side")
            self._pump(now)

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
        final = stream.peer_final
        if final is not None and end > final:
            raise ProtocolError(f"stream {stream.id}: data up to {end} after the close at {final}")
        fresh = payload if offset == stream.recv_next else payload[stream.recv_next - offset :]
        stream.recv_next = end
        self.events.append(Deliver(stream.id, fresh))
        if final is not None:
            self._maybe_deliver_close(stream)
        self._schedule_ack(stream, now)

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
        if offset > stream.send_base:
            del stream.send_buffer[: offset - stream.send_base]
            stream.send_base = offset
            stream.send_next = max(stream.send_next, offset)
        if stream.paused and len(stream.send_buffer) <= self.settings.low_water:
            stream.paused = False
            self.events.append(Resume(stream.id))
        self._forget_if_finished(stream)

    def _maybe_deliver_close(self, stream: Stream) -> None:
        final = stream.peer_final
        if final is None or stream.recv_next < final or stream.receiving is RecvState.FINISHED:
            return
        stream.move_recv(RecvState.FINISHED)
        if stream.sending is SendState.OPEN:
            self.events.append(Closed(stream.id, CLOSED_BY_PEER, clean=True))
            stream.move_send(SendState.CLOSING)  # our side closes too, once its data is out
        else:
            # we closed first; the peer's close completes it (like TCP's connectionLost)
            self.events.append(Closed(stream.id, CLOSED_CLEANLY, clean=True))
        self._forget_if_finished(stream)

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
                    self._send(Open(stream.id), now)
                stream.opened = OpenState.SENT
            while stream.send_next < stream.send_end:
                room = settings.window - (stream.send_next - stream.send_base)
                if room <= 0:
                    break
                size = min(settings.chunk, room, stream.send_end - stream.send_next)
                start = stream.send_next - stream.send_base
                with memoryview(stream.send_buffer) as view:  # one copy, not two
                    payload = bytes(view[start : start + size])
                self._send(Data(stream.id, stream.send_next, payload), now)
                stream.send_next += size
            if stream.sending is _CLOSING and stream.send_next == stream.send_end:
                self._send(Close(stream.id, stream.send_end), now)
                stream.move_send(SendState.CLOSE_SENT)
            if stream.recv_acked is None:
                self._ack(stream, force=True)
