"""One stream of a tunnel session: its buffers, offsets, and lifecycle per direction.

The lifecycle is explicit: :class:`OpenState` (does the peer know the stream),
:class:`SendState` (our direction) and :class:`RecvState` (the peer's). Moves
not in :data:`SEND_MOVES` / :data:`RECV_MOVES` raise :class:`ProtocolError`:
the frames that cause them break the protocol.
"""

from __future__ import annotations

import enum
from bisect import bisect_right
from dataclasses import dataclass, field

from bbenroll.tunnel.frames import ProtocolError


class OpenState(enum.Enum):
    """Does the peer know the stream? (Only worker streams start UNSENT.)"""

    UNSENT = "unsent"  # our open frame is not on the link (yet, or again after a reconnect)
    SENT = "sent"  # sent, but the peer has not answered on this stream
    KNOWN = "known"  # the peer sent something for it, or listed it on resume


class SendState(enum.Enum):
    """Our direction of a stream."""

    OPEN = "open"  # the application may write
    CLOSING = "closing"  # closed (by the application, or in answer to the peer): close after the data
    CLOSE_SENT = "close-sent"  # our close frame is on the link
    CLOSED = "closed"  # the peer acknowledged our close


class RecvState(enum.Enum):
    """The peer's direction of a stream."""

    OPEN = "open"
    FINISHING = "finishing"  # the peer's close arrived; bytes before it are still missing
    FINISHED = "finished"  # every byte and the close were delivered to the application


# Legal moves; anything else is a protocol error (or a bug of ours).
SEND_MOVES: dict[SendState, frozenset[SendState]] = {
    SendState.OPEN: frozenset({SendState.CLOSING}),
    SendState.CLOSING: frozenset({SendState.CLOSE_SENT}),
    SendState.CLOSE_SENT: frozenset({SendState.CLOSED, SendState.CLOSING}),  # CLOSING: resend on resume
    SendState.CLOSED: frozenset(),
}
RECV_MOVES: dict[RecvState, frozenset[RecvState]] = {
    RecvState.OPEN: frozenset({RecvState.FINISHING, RecvState.FINISHED}),
    RecvState.FINISHING: frozenset({RecvState.FINISHED}),
    RecvState.FINISHED: frozenset(),
}


class SendBuffer:
    """A stream's unacknowledged and unsent bytes, kept as the chunks the application wrote.

    ``base`` is the first byte the peer has not acknowledged, ``end`` the offset after
    the last byte written. A write appends its bytes object (no copy); an ack drops the
    chunks below it (a ``bytearray``'s ``del buf[:n]`` moves every byte behind it, so
    each ack cost as much as the whole window); :meth:`read` returns a frame's payload,
    the chunk itself when a frame is exactly one write, else one join of the pieces it
    spans (so a backlog of small writes goes out as few large frames).
    """

    __slots__ = ("_chunks", "_first", "_starts", "base", "end")

    def __init__(self, base: int = 0) -> None:
        self._chunks: list[bytes] = []
        self._starts: list[int] = []  # absolute offset of each chunk's first byte
        self._first = 0  # index of the first chunk not wholly acknowledged
        self.base = base
        self.end = base

    def __len__(self) -> int:
        return self.end - self.base

    def append(self, data: bytes) -> None:
        self._chunks.append(data)
        self._starts.append(self.end)
        self.end += len(data)

    def discard_to(self, offset: int) -> None:
        """The peer has everything before ``offset`` (base <= offset <= end)."""
        self.base = offset
        chunks, starts, first = self._chunks, self._starts, self._first
        count = len(chunks)
        while first < count and starts[first] + len(chunks[first]) <= offset:
            first += 1
        if first == count:
            chunks.clear()
            starts.clear()
            first = 0
        elif first > 64 and 2 * first > count:
            # forget the acknowledged chunks' slots now and then, not on every ack
            del chunks[:first], starts[:first]
            first = 0
        self._first = first

    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes from absolute ``offset`` (base <= offset, offset + size <= end)."""
        i = bisect_right(self._starts, offset, self._first) - 1
        chunk = self._chunks[i]
        start = offset - self._starts[i]
        stop = start + size
        if stop <= len(chunk):
            return chunk if start == 0 and stop == len(chunk) else chunk[start:stop]
        parts = [chunk[start:]]
        needed = size - len(parts[0])
        while needed > 0:
            i += 1
            chunk = self._chunks[i]
            piece = chunk if len(chunk) <= needed else chunk[:needed]
            parts.append(piece)
            needed -= len(piece)
        return b"".join(parts)


@dataclass
class Stream:
    id: int
    opened: OpenState = OpenState.UNSENT
    sending: SendState = SendState.OPEN
    receiving: RecvState = RecvState.OPEN
    paused: bool = False  # flow control, not lifecycle: the application was told to pause
    # sending: bytes from send_base (acked by the peer up to here) on
    send_buffer: SendBuffer = field(default_factory=SendBuffer)
    send_next: int = 0  # next offset to put on the link
    # receiving
    recv_next: int = 0
    recv_acked: int | None = 0  # last ack we sent; None: the peer must be told again (resume)
    peer_final: int | None = None  # offset of the peer's close
    # data that overtook earlier data on the link (Foolscap reorders): offset -> payload,
    # delivered once the bytes before it arrive; at most a window's worth (core.py)
    early: dict[int, bytes] = field(default_factory=dict)
    early_heap: list[int] = field(default_factory=list)  # the keys of ``early``, lowest first
    early_bytes: int = 0

    @property
    def send_base(self) -> int:
        return self.send_buffer.base

    @property
    def send_end(self) -> int:
        return self.send_buffer.end

    @property
    def finished(self) -> bool:
        return self.receiving is RecvState.FINISHED and self.sending is SendState.CLOSED

    def move_send(self, new: SendState) -> None:
        if new not in SEND_MOVES[self.sending]:
            raise ProtocolError(
                f"stream {self.id}: cannot go from sending {self.sending.value} to {new.value}"
            )
        self.sending = new

    def move_recv(self, new: RecvState) -> None:
        if new not in RECV_MOVES[self.receiving]:
            raise ProtocolError(
                f"stream {self.id}: cannot go from receiving {self.receiving.value} to {new.value}"
            )
        self.receiving = new
