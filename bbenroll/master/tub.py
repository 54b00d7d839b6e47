"""The master's Tub: the one set of Tub options, the bounded Broker, and listening.

:class:`EnrollmentBroker` lets the service see which connection a lookup
arrives on, bounds what a peer may make us buffer, and really closes the
socket on shutdown (after :data:`SHUTDOWN_GRACE` seconds on the Tub's injected
clock). :class:`Doorkeeper` applies :mod:`bbenroll.master.guard`'s bounds to
connections that have not authenticated yet, from the TCP accept on
(:class:`EnrollmentNegotiation`), with deadlines on the same clock.
:func:`make_tub` builds the Tub with :data:`TUB_OPTIONS` (several, sharing one
Doorkeeper, during a key rollover: :mod:`bbenroll.master.identities`);
:class:`ReportingEndpoint` (used by :func:`listen`) reports whether the port got
bound, so the service can say "serving" only once the port is really bound, and
a taken port is one :class:`ListenError` naming it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from foolscap.api import Tub
from foolscap.broker import Broker
from foolscap.negotiate import Negotiation
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorTime, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from bbenroll.errors import BBEnrollError
from bbenroll.master import guard as guardmod
from bbenroll.master.replies import SchemaReplies
from bbenroll.tunnel.wire import KEEPALIVE

if TYPE_CHECKING:
    from bbenroll.master.service import EnrollmentService

log = Logger(namespace="bbenroll")

DISCONNECT_TIMEOUT = 45  # seconds: a connection silent this long (after KEEPALIVE pings) is dropped
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


def address_of(transport: Any) -> str:
    """The address a connection counts against (:func:`~bbenroll.master.guard.address_key`)."""
    try:
        peer = transport.getPeer()
    except Exception:
        return "unknown peer"
    return guardmod.address_key(str(getattr(peer, "host", peer)))


class Doorkeeper:
    """The connections of one Tub that have not presented an accepted secret yet.

    Each has a deadline on ``clock`` (:data:`~bbenroll.master.guard.SILENT_TIMEOUT`
    from the TCP accept to its first bytes, :data:`~bbenroll.master.guard.NEGOTIATION_TIMEOUT`
    from the TCP accept to the end of negotiation, then
    :data:`~bbenroll.master.guard.AUTH_TIMEOUT` from the Broker's start) and counts
    against its address's caps in ``guard``; past any, it is aborted. Connections
    are named by their transport, which Foolscap keeps from the negotiation to the
    Broker.
    """

    negotiation_timeout = guardmod.NEGOTIATION_TIMEOUT
    auth_timeout = guardmod.AUTH_TIMEOUT
    silent_timeout = guardmod.SILENT_TIMEOUT

    def __init__(self, guard: guardmod.Guard, clock: IReactorTime) -> None:
        self.guard = guard
        self.clock = clock
        self._waiting: dict[Any, tuple[str, Any]] = {}  # transport -> (address, its deadline's call)
        self._accepted_at: dict[Any, float] = {}  # transports that have not spoken yet -> accept time

    def arrived(self, transport: Any, timeout: float,
                progress: guardmod.Progress = guardmod.Progress.SILENT) -> None:
        """A connection (or the next phase of one, ``progress``) starts: it has ``timeout`` seconds."""
        entry = self._waiting.get(transport)
        if entry is not None:  # negotiated: the deadline for a secret starts now
            address, deadline = entry
            if deadline.active():
                deadline.cancel()
            self._accepted_at.pop(transport, None)
            over = self.guard.progressed(address, transport, progress)
        else:
            address = address_of(transport)
            over = self.guard.arrived(address, transport)
            if progress is guardmod.Progress.SILENT:
                self._accepted_at[transport] = self.clock.seconds()
                timeout = min(timeout, self.silent_timeout)  # until its first bytes (spoke())
            else:  # a Broker without our negotiation (in-memory links)
                over += self.guard.progressed(address, transport, progress)
        self._waiting[transport] = (address, self.clock.callLater(timeout, self._drop, transport,
                                                                  guardmod.TIMED_OUT))
        for victim in over:
            self._drop(victim, guardmod.OVER_CAP)

    def spoke(self, transport: Any) -> None:
        """The connection sent its first bytes: the rest of the negotiation timeout,
        and it outranks silent ones over the cap."""
        entry = self._waiting.get(transport)
        if entry is None:
            return
        address, deadline = entry
        accepted = self._accepted_at.pop(transport, None)
        if accepted is not None and deadline.active():  # the silent deadline: now the negotiation's
            deadline.reset(max(0.0, accepted + self.negotiation_timeout - self.clock.seconds()))
        for victim in self.guard.progressed(address, transport, guardmod.Progress.NEGOTIATING):
            self._drop(victim, guardmod.OVER_CAP)

    def settled(self, transport: Any) -> None:
        """The connection authenticated or closed: no deadline, no longer counted."""
        self._accepted_at.pop(transport, None)
        entry = self._waiting.pop(transport, None)
        if entry is None:
            return
        address, deadline = entry
        if deadline.active():
            deadline.cancel()
        self.guard.settled(address, transport)

    def waiting(self) -> int:
        """How many connections are open without an accepted secret."""
        return len(self._waiting)

    def drop_all(self) -> None:
        """Abort every waiting connection (the Tub stops: Foolscap would leave
        those still negotiating open)."""
        for transport in list(self._waiting):
            self.settled(transport)
            with contextlib.suppress(Exception):  # already gone
                transport.abortConnection()

    def _drop(self, transport: Any, reason: str) -> None:
        entry = self._waiting.get(transport)
        address = entry[0] if entry is not None else address_of(transport)
        self.settled(transport)
        self.guard.dropped(address, reason, self.clock.seconds())
        with contextlib.suppress(Exception):  # already gone
            transport.abortConnection()


def _doorkeeper(tub: Any) -> Doorkeeper | None:
    return getattr(tub, "doorkeeper", None)


class EnrollmentNegotiation(Negotiation):
    """Foolscap's server-side negotiation, counted and timed by the Tub's :class:`Doorkeeper`."""

    _spoke = False  # the peer sent its first bytes (told to the Doorkeeper once)

    def connectionMadeServer(self) -> None:
        keeper = _doorkeeper(getattr(self.listener, "_tub", None))
        if keeper is not None:
            # Foolscap's own negotiation timeout (120 s) runs on the global reactor;
            # the Doorkeeper's shorter one runs on the Tub's clock instead. 0: off.
            self.SERVER_TIMEOUT = 0
        Negotiation.connectionMadeServer(self)
        if keeper is not None:
            keeper.arrived(self.transport, keeper.negotiation_timeout)

    def dataReceived(self, data: bytes) -> None:
        if not self._spoke:
            self._spoke = True
            keeper = _doorkeeper(getattr(self.listener, "_tub", None))
            if keeper is not None:
                keeper.spoke(self.transport)
        Negotiation.dataReceived(self, data)

    def connectionLost(self, reason: Failure) -> None:
        # only during negotiation: afterwards Foolscap routes this to the Broker's
        keeper = _doorkeeper(getattr(getattr(self, "listener", None), "_tub", None))
        if keeper is not None:
            keeper.settled(self.transport)
        Negotiation.connectionLost(self, reason)


class EnrollmentBroker(SchemaReplies, Broker):
    """A Broker that lets the service see which connection a lookup arrives on,
    bounds what a peer may buffer, really closes the socket on shutdown, and
    tells a bad call why without our reprs (:class:`~bbenroll.master.replies.SchemaReplies`)."""

    authenticated = False  # set by mark_authenticated() once this connection presented an accepted secret
    refusals = 0  # lookups refused on this connection
    _abort_scheduled = False
    _abort_call: Any = None  # the DelayedCall of the shutdown abort, while pending
    _answers: set[Any] | None = None  # delayed answers (DelayedCalls) still to send

    def connectionMade(self) -> None:
        Broker.connectionMade(self)
        if getattr(self.tub, "retired", False):
            # its negotiation picked this Tub just before the identity retired: the connection
            # must not be served by a stopped Tub. Its connectionLost settles it in the Doorkeeper.
            with contextlib.suppress(Exception):  # already gone
                self.transport.abortConnection()
            return
        keeper = _doorkeeper(self.tub)
        if keeper is not None:
            keeper.arrived(self.transport, keeper.auth_timeout, guardmod.Progress.NEGOTIATED)

    def connectionLost(self, why: Failure) -> None:
        keeper = _doorkeeper(self.tub)
        if keeper is not None:
            keeper.settled(self.transport)
        abort, self._abort_call = self._abort_call, None
        if abort is not None and abort.active():
            abort.cancel()  # closed by itself: nothing left to abort
        Broker.connectionLost(self, why)

    def finish(self, why: Failure) -> None:
        for answer in self._answers or ():
            if answer.active():
                answer.cancel()
        self._answers = None
        Broker.finish(self, why)

    def mark_authenticated(self) -> None:
        """This connection presented an accepted secret: no deadline, no cap, larger buffer."""
        self.authenticated = True
        keeper = _doorkeeper(self.tub)
        if keeper is not None:
            keeper.settled(self.transport)

    def answer_later(self, delay: float, answer: Callable[[], None]) -> None:
        """Call ``answer`` after ``delay`` seconds on the Tub's clock, unless the connection ends first."""
        if self.disconnected:
            return
        if self._answers is None:
            self._answers = set()
        answers = self._answers

        def fire() -> None:
            answers.discard(call)
            answer()

        call = self.tub.clock.callLater(delay, fire)
        answers.add(call)

    def end_after_answers(self, why: Failure) -> None:
        """Shut the connection down once what was just sent has left (on the next turn)."""

        def end() -> None:
            if not self.disconnected:
                self.shutdown(why)

        self.answer_later(0, end)

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
            self._abort_call = None
            with contextlib.suppress(Exception):  # nothing left to abort
                abort()  # a no-op once the connection is gone

        self._abort_call = clock.callLater(SHUTDOWN_GRACE, abort_if_still_open)


class EnrollmentTub(Tub):
    brokerClass = EnrollmentBroker
    negotiationClass = EnrollmentNegotiation
    enrollment: EnrollmentService | None = None
    clock: IReactorTime | None = None  # for the brokers' shutdown abort and the Doorkeeper
    doorkeeper: Doorkeeper | None = None
    # False when the Doorkeeper is shared by the identities of one port (ServedIdentities):
    # then stopping this Tub must not abort the connections of the others, nor those negotiating
    owns_doorkeeper = True
    # set when the identity retires (master key rollover): a connection whose negotiation
    # picked this Tub before and finishes after is aborted, and nothing keeps its Broker
    retired = False

    def brokerAttached(self, tubref: Any, broker: Any, isClient: bool) -> Any:
        if self.retired:
            return None  # Foolscap would assert a running Tub; the Broker is being aborted
        return Tub.brokerAttached(self, tubref, broker, isClient)

    def stopService(self) -> Any:
        if self.doorkeeper is not None and self.owns_doorkeeper:
            self.doorkeeper.drop_all()
        return Tub.stopService(self)


def make_tub(
    cert_pem: bytes,
    enrollment: EnrollmentService,
    clock: IReactorTime,
    guard: guardmod.Guard | None = None,
    *,
    doorkeeper: Doorkeeper | None = None,
) -> EnrollmentTub:
    """The master's Tub with :data:`TUB_OPTIONS`, resolving names through ``enrollment``,
    its unauthenticated connections bounded by ``guard``.

    ``doorkeeper``: one shared with the other identities on the same port (its
    guard then counts for all of them; ``guard`` is ignored); the Tub does not own it.
    """
    tub = EnrollmentTub(certData=cert_pem)
    tub.enrollment = enrollment
    tub.clock = clock
    if doorkeeper is not None:
        tub.doorkeeper = doorkeeper
        tub.owns_doorkeeper = False
    else:
        tub.doorkeeper = Doorkeeper(guard if guard is not None else guardmod.Guard(), clock)
    tub.unsafeTracebacks = False  # clients never see server tracebacks
    for name, value in TUB_OPTIONS.items():
        tub.setOption(name, value)
    return tub


@implementer(IStreamServerEndpoint)
class ReportingEndpoint:
    """An endpoint that tells us whether the Tub's listener got its port (``listening``).

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
    reporting = ReportingEndpoint(endpoint, description)
    tub.listenOn(reporting)
    return reporting.listening


# -- open files -----------------------------------------------------------------------


def raise_open_files_limit() -> tuple[int, int] | None:
    """Raise the soft RLIMIT_NOFILE as far as allowed (POSIX); ``(old, new)`` if it changed.

    Each connection costs a file descriptor, and 1024 (a common default) is
    little for a master that many peers can reach. Raises OSError or ValueError
    if the system refuses.
    """
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = guardmod.open_files_target(soft, hard, resource.RLIM_INFINITY)
    if target is None:
        return None
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return soft, target


def open_files() -> tuple[int, int, int] | None:
    """``(open file descriptors, soft limit, the platform's "unlimited")``, where it can be known."""
    try:
        import resource
    except ImportError:
        return None
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            count = len(os.listdir(directory))
        except OSError:
            continue
        return count, resource.getrlimit(resource.RLIMIT_NOFILE)[0], resource.RLIM_INFINITY
    return None
