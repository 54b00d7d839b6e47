"""The remote interfaces of the worker <-> master link, with bounds on every argument.

The worker's FURL resolves to an object implementing :class:`RIEnrolledWorker`;
the worker hands the master a :class:`RITunnelPeer` (its receiver) in
``open_session``. Frames of the tunnel core map one to one onto ``frame_*``
methods, sent with ``callRemoteOnly`` (no answer needed: acks are frames).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any as AnyValue

from foolscap.api import RemoteInterface, Tub
from foolscap.schema import (
    Any,
    ByteStringConstraint,
    DictOf,
    IntegerConstraint,
    Nothing,
    UnicodeConstraint,
)

from bbenroll.tunnel.core import Settings
from bbenroll.tunnel.frames import Ack, Close, Data, Frame, Open, Ping, Reset

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


class RefusedForGood(Refused):
    """A refusal that retrying cannot change: this FURL (or invite) is unknown, revoked,
    expired, retired, bound to another key, or the invite is used up, expired or revoked.
    A subclass, so a worker that knows only :class:`Refused` still recognises it (Foolscap
    sends the qualified names of every class of the exception); ``bbenroll worker run``
    exits with its own status on it (docs/deploy.md), so an orchestrator stops restarting."""


REFUSED_FOR_GOOD_TYPE_NAMES = ("bbenroll.tunnel.wire.RefusedForGood",)

# The qualified names a master may send for Refused: Foolscap identifies a remote
# exception by its module path, and masters before the package layout raised it
# from bbenroll.service. Both are the wire contract; a new worker must still slow
# down when an old master refuses it.
REFUSED_TYPE_NAMES = ("bbenroll.tunnel.wire.Refused", "bbenroll.service.Refused")


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


FurlText = UnicodeConstraint(maxLength=2048)  # a FURL with a few hints fits many times over
Serial = IntegerConstraint(maxBytes=8)
FailureText = UnicodeConstraint(maxLength=300)


class RIFurlUpdater(RemoteInterface):
    """The worker's end of pushed rotation (docs/rotation.md): the master offers new FURLs.

    Handed to the master by ``subscribe_updates``; a worker that never subscribes
    (bbenroll before pushed rotation) is never offered anything.
    """

    __remote_name__ = "RIFurlUpdater.bbenroll.v1"

    def offer_furl(serial=Serial, furl=FurlText):
        """The worker's newest FURL, numbered ``serial``. The worker tests it, writes it and
        confirms it over a connection made with it (``confirm_furl``), or reports
        ``furl_update_failed``. An offer whose serial is not above the worker's own is ignored,
        so a repeated or late push is harmless."""
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
        Masters that cap the resume deadline add ``"deadline": SECONDS``, what they
        grant (at most what was asked); the worker keeps its streams no longer.
        """
        return DictOf(UnicodeConstraint(maxLength=16), Any(), maxKeys=8)

    def bind_key():
        """Bind this worker's FURL to the key this connection was made with (docs/security.md):
        from then on the master refuses the FURL from any other key. Returns
        ``{"status": "bound"|"already", "fingerprint": TUBID}`` once the binding is on disk.
        ``worker create`` calls it; a master without it fails the call (nothing is bound)."""
        return DictOf(UnicodeConstraint(maxLength=16), UnicodeConstraint(maxLength=64), maxKeys=4)

    # -- pushed rotation (docs/rotation.md); a master without them answers with a failure,
    # which a worker ignores: it then simply never gets offers --------------------------

    def subscribe_updates(updater=RIFurlUpdater, serial=Serial):
        """Offer this worker its new FURLs through ``updater``; ``serial`` is the number of
        the FURL the worker holds (0: none known). The master offers at once if the
        registry holds a newer one or this connection used a secret being rotated away."""
        return Nothing()

    def confirm_furl(serial=Serial):
        """Called over a connection made with FURL ``serial``: the worker holds it, has
        written it, and its streams moved here. The master records the delivery and
        retires the old secret. Returns ``{"status": "confirmed"|"stale"}`` ("stale": the
        registry already holds a newer FURL, which will be offered)."""
        return DictOf(UnicodeConstraint(maxLength=16), Any(), maxKeys=4)

    def furl_update_failed(serial=Serial, reason=FailureText):
        """The worker could not test or write FURL ``serial``; it keeps its old one. The
        master logs ``reason`` and keeps the old secret valid (until the grace ends)."""
        return Nothing()


HostName = UnicodeConstraint(maxLength=255)


class RIInvite(RemoteInterface):
    """What an invite FURL resolves to on the master (docs/fleets.md): it only enrolls.

    The invite's secret is never a worker's credential: ``enroll`` consumes one use
    (atomically, under the registry's lock), adds the worker, and answers with the
    worker's own FURL over this encrypted link. A refused invite fails the lookup (or
    this call) with :class:`RefusedForGood`: unknown, used up, expired or revoked.
    """

    __remote_name__ = "RIInvite.bbenroll.v1"

    def enroll(host=HostName):
        """Enroll a worker; ``host``: the machine's short host name (for ``--prefix`` names).
        Returns ``{"name": NAME, "furl": FURL}``."""
        return DictOf(UnicodeConstraint(maxLength=16), UnicodeConstraint(maxLength=2048), maxKeys=8)


# the interface names a worker sees on the reference a FURL resolves to (RemoteReference.tracker)
WORKER_INTERFACE = RIEnrolledWorker.__remote_name__
INVITE_INTERFACE = RIInvite.__remote_name__


# Each frame type and the remote method that carries it, with the frame's fields
# as the method's arguments, in order. FrameSink's remote_* methods are the way back.
FRAME_METHODS: Mapping[type, tuple[str, Callable[[AnyValue], tuple]]] = MappingProxyType({
    Data: ("frame_data", lambda f: (f.stream, f.offset, f.payload)),
    Ack: ("frame_ack", lambda f: (f.stream, f.offset)),
    Open: ("frame_open", lambda f: (f.stream,)),
    Close: ("frame_close", lambda f: (f.stream, f.offset)),
    Reset: ("frame_reset", lambda f: (f.stream,)),
    Ping: ("frame_ping", lambda f: ()),
})


def send_frame(remote: AnyValue, frame: Frame) -> None:
    """Put one frame of the tunnel core on the link (no answer expected)."""
    method, arguments = FRAME_METHODS[type(frame)]
    remote.callRemoteOnly(method, *arguments(frame))


def abort_connection(reference: object) -> None:
    """Abort the Foolscap connection that carries ``reference`` (a RemoteReference), now.

    For a link the tunnel declared dead: Foolscap's keepalive may take minutes to
    notice, and ``loseConnection`` can wait forever on a stuck peer.
    """
    broker = getattr(getattr(reference, "tracker", None), "broker", None)
    transport = getattr(broker, "transport", None)
    if transport is not None:
        transport.abortConnection()


class FrameSink:
    """The ``remote_frame_*`` methods of :class:`RITunnelPeer`, turned back into frames."""

    def receive_frame(self, frame: Frame) -> None:
        raise NotImplementedError

    def remote_frame_open(self, stream: int) -> None:
        self.receive_frame(Open(stream))

    def remote_frame_data(self, stream: int, offset: int, payload: bytes) -> None:
        self.receive_frame(Data(stream, offset, payload))

    def remote_frame_ack(self, stream: int, offset: int) -> None:
        self.receive_frame(Ack(stream, offset))

    def remote_frame_close(self, stream: int, offset: int) -> None:
        self.receive_frame(Close(stream, offset))

    def remote_frame_reset(self, stream: int) -> None:
        self.receive_frame(Reset(stream))

    def remote_frame_ping(self) -> None:
        self.receive_frame(Ping())


# seconds: Foolscap pings an idle connection after this long; both ends use it. Longer
# than the tunnel's own idle ping (core.Settings.ping_interval, 30 s), so a tunnel's
# connection never needs Foolscap's too: each one costs the master a timer and a PING
# and PONG per connection; at 15 s that was ~130 a second at 1,000 idle workers.
KEEPALIVE = 60

# The worker's client Tub, for `worker create` and for the tunnel alike.
CLIENT_TUB_OPTIONS: Mapping[str, AnyValue] = MappingProxyType({
    # a refusal arrives as RemoteException(CopiedFailure), checked by type (failures.py),
    # never as a local exception made from the master's class name
    "expose-remote-exception-types": False,
    "keepaliveTimeout": KEEPALIVE,
})


def start_client_tub(key: bytes | None = None) -> Tub:
    """A started Foolscap Tub with :data:`CLIENT_TUB_OPTIONS` (stop it with ``stopService``).

    ``key``: the worker's key and certificate (PEM, its ``bbenroll.pem``), so that the
    Tub has the worker's own TubID, to which the master may bind its FURL; None: a new
    random key, as Foolscap makes for every Tub.
    """
    tub = Tub(certData=key) if key is not None else Tub()
    for name, value in CLIENT_TUB_OPTIONS.items():
        tub.setOption(name, value)
    tub.startService()
    return tub
