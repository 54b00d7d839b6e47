"""The remote interfaces of the worker <-> master link, with bounds on every argument.

The worker's FURL resolves to an object implementing :class:`RIEnrolledWorker`;
the worker hands the master a :class:`RITunnelPeer` (its receiver) in
``open_session``. Frames of the tunnel core map one to one onto ``frame_*``
methods, sent with ``callRemoteOnly`` (no answer needed: acks are frames).
"""

from __future__ import annotations

from foolscap.api import RemoteInterface
from foolscap.schema import (
    Any,
    ByteStringConstraint,
    DictOf,
    IntegerConstraint,
    Nothing,
    UnicodeConstraint,
)

from bbenroll.tunnel import core
from bbenroll.tunnel.core import Frame, Settings

MAX_PAYLOAD = 2 * Settings().chunk  # a data frame never carries more than one chunk
Offset = IntegerConstraint(maxBytes=8)  # streams can outgrow 2**31 bytes
StreamId = IntegerConstraint()
SessionId = UnicodeConstraint(maxLength=64)
Payload = ByteStringConstraint(maxLength=MAX_PAYLOAD)
Received = DictOf(StreamId, Offset, maxKeys=4096)


class Refused(Exception):
    """What the master raises to a worker it will not serve (the secret is unknown,
    revoked, expired or retired, or a limit was hit); the message is one line for
    the worker admin. Part of the wire contract: the worker recognises a refusal by
    this type (Foolscap copies its qualified name), never by its text."""


class RITunnelPeer(RemoteInterface):
    """Frame sink; implemented by both sides."""

    __remote_name__ = "RITunnelPeer.bbenroll.v1"

    def frame_open(stream=StreamId):
        return Nothing()

    def frame_data(stream=StreamId, offset=Offset, payload=Payload):
        return Nothing()

    def frame_ack(stream=StreamId, offset=Offset):
        return Nothing()

    def frame_close(stream=StreamId, offset=Offset):
        return Nothing()

    def frame_reset(stream=StreamId):
        return Nothing()

    def frame_ping():
        return Nothing()


class RIEnrolledWorker(RITunnelPeer):
    """What a worker's FURL resolves to on the master."""

    __remote_name__ = "RIEnrolledWorker.bbenroll.v1"

    def get_worker_config():
        """The worker's Buildbot name, PB password and settings."""
        return DictOf(UnicodeConstraint(maxLength=64), Any(), maxKeys=32)

    def open_session(
        session=SessionId,
        receiver=RITunnelPeer,
        received=Received,
        resume=bool,
        deadline=int,
    ):
        """Bind this connection to a tunnel session (new, or resumed after a reconnect).

        Returns ``{"status": "new"|"resumed"|"unknown", "received": {stream: offset}}``;
        "unknown" means the master does not know the session (it restarted, or the
        session expired): the worker must drop its streams and start a new session.
        """
        return DictOf(UnicodeConstraint(maxLength=16), Any(), maxKeys=8)


def send_frame(remote: object, frame: Frame) -> None:
    """Put one frame of the tunnel core on the link (no answer expected)."""
    kind = frame.kind
    call = remote.callRemoteOnly  # type: ignore[attr-defined]
    if kind == core.DATA:
        call("frame_data", frame.stream, frame.offset, frame.payload)
    elif kind == core.ACK:
        call("frame_ack", frame.stream, frame.offset)
    elif kind == core.OPEN:
        call("frame_open", frame.stream)
    elif kind == core.CLOSE:
        call("frame_close", frame.stream, frame.offset)
    elif kind == core.RESET:
        call("frame_reset", frame.stream)
    elif kind == core.PING:
        call("frame_ping")
    else:
        raise ValueError(f"unknown frame kind {kind!r}")


class FrameSink:
    """The ``remote_frame_*`` methods of :class:`RITunnelPeer`, turned back into frames."""

    def receive_frame(self, frame: Frame) -> None:
        raise NotImplementedError

    def remote_frame_open(self, stream: int) -> None:
        self.receive_frame(Frame(core.OPEN, stream))

    def remote_frame_data(self, stream: int, offset: int, payload: bytes) -> None:
        self.receive_frame(Frame(core.DATA, stream, offset, payload))

    def remote_frame_ack(self, stream: int, offset: int) -> None:
        self.receive_frame(Frame(core.ACK, stream, offset))

    def remote_frame_close(self, stream: int, offset: int) -> None:
        self.receive_frame(Frame(core.CLOSE, stream, offset))

    def remote_frame_reset(self, stream: int) -> None:
        self.receive_frame(Frame(core.RESET, stream))

    def remote_frame_ping(self) -> None:
        self.receive_frame(Frame(core.PING))
