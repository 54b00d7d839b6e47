"""The master's Tub: the one set of Tub options, the bounded Broker, and listening.

:class:`EnrollmentBroker` lets the service see which connection a lookup
arrives on, bounds what a peer may make us buffer, and really closes the
socket on shutdown (after :data:`SHUTDOWN_GRACE` seconds on the Tub's injected
clock). :func:`make_tub` builds the Tub with :data:`TUB_OPTIONS`;
:func:`listen` binds its port and reports the outcome, so the service can say
"serving" only once the port is really bound, and a taken port is one
:class:`ListenError` naming it.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from foolscap.api import Tub
from foolscap.broker import Broker
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorTime, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from bbenroll.errors import BBEnrollError

if TYPE_CHECKING:
    from bbenroll.master.service import EnrollmentService

log = Logger(namespace="bbenroll")

KEEPALIVE = 15  # seconds: Foolscap pings an idle connection after this long ...
DISCONNECT_TIMEOUT = 45  # ... and drops one that stayed silent this long
SHUTDOWN_GRACE = 1.0  # seconds a dropped peer gets to receive our last frames
PREAUTH_BUFFER_LIMIT = 16 * 1024  # bytes a peer may have pending before any secret was accepted
BUFFER_LIMIT = 2 * 1024 * 1024  # afterwards (must exceed the largest legitimate token)
MAX_SWISSNUM_LENGTH = 256  # longer names are refused as unknown without a lookup

# The one set of options of the master's Tub. Clients never learn anything about
# the server's code: no tracebacks, no exception types, no gifts accepted.
TUB_OPTIONS: dict[str, Any] = {
    "expose-remote-exception-types": False,
    "accept-gifts": False,
    "keepaliveTimeout": KEEPALIVE,
    "disconnectTimeout": DISCONNECT_TIMEOUT,
    "logLocalFailures": False,
    "logRemoteFailures": False,
}


class ListenError(BBEnrollError):
    """The service cannot bind ``[master].listen`` (the port is taken, or not allowed)."""

    def __init__(self, endpoint: str, reason: str) -> None:
        self.endpoint = endpoint
        self.reason = reason
        super().__init__(f"cannot listen on {endpoint}: {reason}")


def peer_of(broker: Broker) -> str:
    """``host:port`` of a connection's peer, for the log."""
    try:
        peer = broker.transport.getPeer()
    except Exception:
        return "unknown peer"
    host = getattr(peer, "host", None)
    port = getattr(peer, "port", None)
    if host is None:
        return str(peer)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class EnrollmentBroker(Broker):
    """A Broker that lets the service see which connection a lookup arrives on,
    bounds what a peer may buffer, and really closes the socket on shutdown."""

    authenticated = False  # set by the service once this connection presented an accepted secret
    _abort_scheduled = False

    def remote_getReferenceByName(self, name: Any) -> Any:
        enrollment = getattr(self.tub, "enrollment", None)
        if enrollment is None:  # a plain Tub using this broker class
            return Broker.remote_getReferenceByName(self, name)
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        return enrollment.lookup(name, self)

    def handleData(self, chunk: bytes) -> None:
        Broker.handleData(self, chunk)
        limit = BUFFER_LIMIT if self.authenticated else PREAUTH_BUFFER_LIMIT
        if not self.disconnected and len(self.buffer) > limit:
            log.warn(
                "dropping connection from {peer}: {size} bytes pending (limit {limit})",
                peer=peer_of(self),
                size=len(self.buffer),
                limit=limit,
            )
            self.transport.abortConnection()

    def shutdown(self, why: Failure, fireDisconnectWatchers: bool = True) -> None:
        # loseConnection flushes what is queued (e.g. the tunnel's reset frames) but
        # then waits for the peer's TLS close_notify; a stuck or hostile peer would
        # keep the socket (and the worker's slot) forever, so abort soon after.
        Broker.shutdown(self, why, fireDisconnectWatchers)
        abort = getattr(self.transport, "abortConnection", None)
        clock = getattr(self.tub, "clock", None)
        if abort is None or clock is None or self._abort_scheduled:
            return
        self._abort_scheduled = True

        def abort_if_still_open() -> None:
            with contextlib.suppress(Exception):  # nothing left to abort
                abort()  # a no-op once the connection is gone

        clock.callLater(SHUTDOWN_GRACE, abort_if_still_open)


class EnrollmentTub(Tub):
    brokerClass = EnrollmentBroker
    enrollment: EnrollmentService | None = None
    clock: IReactorTime | None = None  # for the brokers' shutdown abort


def make_tub(cert_pem: bytes, enrollment: EnrollmentService, clock: IReactorTime) -> EnrollmentTub:
    """The master's Tub with :data:`TUB_OPTIONS`, resolving names through ``enrollment``."""
    tub = EnrollmentTub(certData=cert_pem)
    tub.enrollment = enrollment
    tub.clock = clock
    tub.unsafeTracebacks = False  # clients never see server tracebacks
    for name, value in TUB_OPTIONS.items():
        tub.setOption(name, value)
    return tub


@implementer(IStreamServerEndpoint)
class _ReportingEndpoint:
    """An endpoint that tells us whether the Tub's listener got its port.

    Foolscap's Listener drops the Deferred of ``endpoint.listen``: a failure there
    would only be an "Unhandled error in Deferred" traceback at garbage collection.
    """

    def __init__(self, endpoint: Any, description: str) -> None:
        self.endpoint = endpoint
        self.description = description
        self.listening: defer.Deferred[Any] = defer.Deferred()

    def listen(self, factory: Any) -> defer.Deferred[Any]:
        def bound(port: Any) -> Any:
            self.listening.callback(port)
            return port

        def failed(failure: Failure) -> None:
            self.listening.errback(Failure(ListenError(self.description, _reason(failure))))
            return None  # the Listener sees "no port": its stopService has nothing to stop

        return defer.maybeDeferred(self.endpoint.listen, factory).addCallbacks(bound, failed)


def _reason(failure: Failure) -> str:
    error = failure.value
    if isinstance(error, CannotListenError):
        socket_error = error.socketError
        return getattr(socket_error, "strerror", None) or str(socket_error)
    return failure.getErrorMessage()


def listen(tub: Tub, reactor: Any, description: str) -> defer.Deferred[Any]:
    """Make ``tub`` listen on the endpoint ``description`` once it runs.

    Returns a Deferred that fires with the listening port once it is bound, or
    fails with :class:`ListenError` naming ``description``.
    """
    try:
        endpoint = serverFromString(reactor, description)
    except (ValueError, KeyError, TypeError) as e:
        return defer.fail(ListenError(description, f"not a server endpoint ({e})"))
    reporting = _ReportingEndpoint(endpoint, description)
    tub.listenOn(reporting)
    return reporting.listening
