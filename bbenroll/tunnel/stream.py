"""One stream of a tunnel session: its buffers, offsets, and lifecycle per direction.

The lifecycle is explicit: :class:`OpenState` (does the peer know the stream),
:class:`SendState` (our direction) and :class:`RecvState` (the peer's). Moves
not in :data:`SEND_MOVES` / :data:`RECV_MOVES` raise :class:`ProtocolError`:
the frames that cause them break the protocol.
"""

from __future__ import annotations

import enum
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


@dataclass
class Stream:
    id: int
    opened: OpenState = OpenState.UNSENT
    sending: SendState = SendState.OPEN
    receiving: RecvState = RecvState.OPEN
    paused: bool = False  # flow control, not lifecycle: the application was told to pause
    # sending: bytes from send_base (acked by the peer up to here) on
    send_buffer: bytearray = field(default_factory=bytearray)
    send_base: int = 0
    send_next: int = 0  # next offset to put on the link
    # receiving
    recv_next: int = 0
    recv_acked: int | None = 0  # last ack we sent; None: the peer must be told again (resume)
    peer_final: int | None = None  # offset of the peer's close

    @property
    def send_end(self) -> int:
        return self.send_base + len(self.send_buffer)

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
