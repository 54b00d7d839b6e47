"""The worker's end of the tunnel: what buildbot-worker's PB connections run over.

Each ``connect()`` of the endpoint (``endpoint.py``) opens one stream of the
process's :class:`WorkerTunnel`, which keeps one Foolscap connection to the master, reconnects it with a short
capped backoff (Foolscap's Reconnector backs off to an hour), and resumes every
open stream after a reconnect, so buildbot-worker never notices an outage
shorter than the resume deadline. No port is opened on the worker.

When the link falls behind a stream's output (the core's ``Pause``), the stream's
transport holds the commands feeding it until ``Resume`` (transport.py), so a
stall costs pipe space, not memory; ``WORKER_MAX_BUFFER`` is only the safety net.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from foolscap.api import Referenceable
from twisted.internet import defer, error
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from bbenroll.furl import parse_furl
from bbenroll.tunnel import core
from bbenroll.tunnel.adapter import TunnelAdapter
from bbenroll.tunnel.core import Settings
from bbenroll.tunnel.failures import FailureKind, classify
from bbenroll.tunnel.frames import (
    Closed,
    Deliver,
    Expired,
    Frame,
    LinkDead,
    Pause,
    ProtocolError,
    Resume,
    Role,
)
from bbenroll.tunnel.transport import StreamTransport, TunnelAddress
from bbenroll.tunnel.updater import FurlUpdater
from bbenroll.tunnel.wire import FrameSink, RITunnelPeer, abort_connection, start_client_tub

log = Logger(namespace="bbenroll")

CONNECT_TIMEOUT = 30.0  # a connect() that cannot reach the master gives up (buildbot-worker retries)
# Reconnect delays; the last one repeats. Capped low so that data flows again
# within about 2 s of the network returning, even after an outage of minutes;
# jitter (JITTER) keeps a farm of workers from reconnecting in lockstep.
BACKOFF = (0.2, 0.5, 1.0, 1.5)
JITTER = (0.7, 1.1)
REFUSED_RETRY = 30.0  # revoked or unknown secret: no point hammering the master
# The safety net, far above the core's high_water (8 MiB): past this many bytes
# queued for the link, a stream is reset. Normally a stream never gets near it:
# at high_water the core says Pause, and the stream's transport holds the commands
# that feed it (transport.py), so a stalled link fills their pipes, not our memory.
# Only output nothing can pause (a source other than a command's pipe, or a
# buildbot-worker whose internals transport.command_stream does not know) grows to it.
WORKER_MAX_BUFFER = 512 * 1024 * 1024


@implementer(RITunnelPeer)
class Receiver(FrameSink, Referenceable):
    """The worker's frame sink, handed to the master in open_session."""

    def __init__(self, tunnel: WorkerTunnel) -> None:
        self.tunnel = tunnel

    def receive_frame(self, frame: Frame) -> None:
        self.tunnel.receive(frame)


def new_session_id() -> str:
    """128 random bits: the master keys sessions by (worker, id), so an id is never guessed."""
    return secrets.token_hex(16)


def received_offsets(value: Any) -> dict[int, int]:
    """The master's ``received`` map, checked: ``{stream: offset}`` of integers, else ProtocolError."""
    if not isinstance(value, dict):
        raise ProtocolError(f"the master's received map is a {type(value).__name__}, not a table")
    offsets = {}
    for stream, offset in value.items():
        if type(stream) is not int or type(offset) is not int:
            raise ProtocolError("the master's received map holds something other than integers")
        offsets[stream] = offset
    return offsets


class WorkerTunnel(TunnelAdapter):
    """One Foolscap connection to the master, carrying every stream of this process.

    Reconnect policy, as attributes (like Foolscap's Reconnector): after a failed
    attempt the delay is ``backoff[attempt]`` (the last one repeats) times a random
    factor in ``jitter``, or ``refused_retry`` for the kinds in ``slow_retry``; after a
    lost link, ``backoff[0]``. The tunnel itself never gives up: a ``connect()`` does,
    after its timeout (:data:`CONNECT_TIMEOUT`), with the last error, and buildbot-worker
    retries it.
    """

    backoff: tuple[float, ...] = BACKOFF
    jitter: tuple[float, float] = JITTER
    refused_retry: float = REFUSED_RETRY
    slow_retry: frozenset[FailureKind] = frozenset({FailureKind.REFUSED})

    def __init__(
        self,
        furl: str,
        *,
        reactor: Any,
        clock: Any = None,
        resume_deadline: float = core.RESUME_DEADLINE_DEFAULT,
        settings: Settings | None = None,
        on_stopped: Callable[[WorkerTunnel], None] | None = None,
        furlfile: Path | None = None,
        serial: int = 0,
        key: bytes | None = None,
        on_refused: Callable[[WorkerTunnel, str], None] | None = None,
    ) -> None:
        self.furl = furl
        self.reactor = reactor
        # told of a refusal no retry changes (wire.RefusedForGood), instead of retrying slowly;
        # ``worker run``'s child sets it (endpoint.TunnelTable) so that the worker exits
        self.on_refused = on_refused
        self.furlfile = furlfile  # where a pushed FURL is written (None: not written anywhere)
        self.serial = serial  # the number of ``furl`` (docs/rotation.md), from the FURL file
        self.address = TunnelAddress(",".join(parse_furl(furl).hints))
        self.updater = FurlUpdater(self)
        # for the tunnel and each update, with the worker's key (``keyfile=``): one TubID for all,
        # the one a bound FURL needs; without a key every Tub has a random one
        self.key = key
        self.make_client_tub: Callable[[], Any] = lambda: start_client_tub(self.key)
        self._reconnect_after_update = False  # a reconnect waits while an update is under way
        self._told_no_updates = False  # an old master's "no subscribe_updates" is logged once
        self.resume_deadline = resume_deadline
        self.on_stopped = on_stopped
        self.receiver = Receiver(self)
        self.streams: dict[int, StreamTransport] = {}
        self.tub: Any = None
        self.last_error: str | None = None
        self._waiting: list[defer.Deferred] = []
        self._attempt = 0
        self._connecting = False
        self._retry: Any = None
        self._stopped = False
        self._random = random.Random()  # noqa: S311 - jitter, not a secret
        settings = settings or Settings(resume_deadline=resume_deadline, max_buffer=WORKER_MAX_BUFFER)
        super().__init__(clock or reactor, Role.WORKER, settings)
        self.session_id = new_session_id()

    def _new_session(self) -> None:
        self.session_id = new_session_id()
        self.core = self.new_core()

    @property
    def ticking(self) -> bool:
        return not self._stopped

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def connecting(self) -> bool:
        return self._connecting

    def holds(self, furl: str) -> bool:
        """Whether ``furl`` is this tunnel's FURL, or the one it is moving to (and has written)."""
        target = self.updater.target
        return furl == self.furl or (target is not None and furl == target[1])

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        if self.tub is None:
            self.tub = self.make_client_tub()
            self._connect()

    def shutdown(self) -> defer.Deferred:
        """Close every stream, give the close frames a moment to leave, then stop."""
        for stream in list(self.streams):
            self.core.close(stream, self.clock.seconds())
        self.flush()
        d: defer.Deferred = defer.Deferred()
        self.clock.callLater(0.2 if self.link_up and self.streams else 0, d.callback, None)
        d.addCallback(lambda _: self.stop())
        return d

    def stop(self) -> defer.Deferred:
        self._stopped = True
        self.updater.cancel()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._timer.cancel()
        self.peer = None  # a stopped tunnel is never "up": when_ready() must not succeed
        self.core.link_down(self.clock.seconds())
        for transport in list(self.streams.values()):
            transport.lost("tunnel stopped")
        self.streams.clear()
        waiting, self._waiting = self._waiting, []
        for d in waiting:  # their timeouts are cancelled when they fire
            d.errback(error.ConnectError(string="the tunnel was stopped"))
        if self.on_stopped is not None:
            self.on_stopped(self)  # a later connect() starts a fresh tunnel
        tub, self.tub = self.tub, None
        return tub.stopService() if tub is not None else defer.succeed(None)

    def when_ready(self, timeout: float = CONNECT_TIMEOUT) -> defer.Deferred:
        """Fires when the link is up; fails with the last connection error after ``timeout``."""
        if self.link_up:
            return defer.succeed(self)
        d: defer.Deferred = defer.Deferred()
        self._waiting.append(d)

        def expire() -> None:
            if d in self._waiting:
                self._waiting.remove(d)
                d.errback(error.ConnectError(string=self.last_error or "the master did not answer in time"))

        call = self.clock.callLater(timeout, expire)
        d.addBoth(lambda r: (call.active() and call.cancel(), r)[1])
        return d

    # -- connecting ------------------------------------------------------------------

    def retry_delay(self, kind: FailureKind) -> float:
        """Seconds before the next attempt after a failure of ``kind`` (attempts so far: ``_attempt``)."""
        if kind in self.slow_retry:
            return self.refused_retry
        return self.backoff[min(self._attempt, len(self.backoff) - 1)] * self._random.uniform(*self.jitter)

    def _connect(self) -> None:
        if self._connecting or self._stopped or self.tub is None or self.peer is not None:
            # (peer: a retry scheduled when the old link was lost, but an update moved us meanwhile)
            return
        if self.updater.busy:
            # the update either moves the session to the new FURL or gives up; only then
            # is it known which FURL to reconnect with (never two links for one session)
            self._reconnect_after_update = True
            return
        self._connecting = True
        d = self.tub.getReference(self.furl)
        d.addCallback(self._got_reference)
        d.addErrback(self._connect_failed)

    def _got_reference(self, ref: Any) -> defer.Deferred:
        resume = bool(self.core.streams)
        d = ref.callRemote(
            "open_session",
            session=self.session_id,
            receiver=self.receiver,
            received=self.core.received(),
            resume=resume,
            deadline=int(self.resume_deadline),
        )
        d.addCallback(self._session_opened, ref)
        return d

    def _session_opened(self, answer: dict[str, Any], ref: Any) -> Any:
        if self._stopped:  # stopped while the master answered: do not come back to life
            self._connecting = False
            return None
        if answer.get("status") == "unknown":
            # the master restarted or expired our session: our streams are gone there
            log.info("bbenroll: the master no longer knows this tunnel session; starting afresh")
            self._drop_streams("the master restarted")
            self._new_session()
            return self._got_reference(ref)
        self._connecting = False
        self._attempt = 0
        self.last_error = None
        return self._attach(answer, ref)

    def session_opened(self, answer: dict[str, Any], ref: Any) -> Any:
        """The master's answer to ``move_session``: handled exactly as after a reconnect."""
        return self._session_opened(answer, ref)

    def _attach(self, answer: dict[str, Any], ref: Any) -> None:
        """Make ``ref`` (the master's answer to open_session was ``answer``) the tunnel's link.

        After a reconnect, or a move to a pushed FURL while the old link is still up: either
        way the core goes link down -> link up with the master's received map, so that
        what the master did not get is sent again over ``ref``.
        """
        self.peer = ref
        ref.notifyOnDisconnect(self._lost, ref)
        granted = answer.get("deadline")  # masters that cap the resume deadline say what they grant
        if isinstance(granted, int) and 0 < granted < self.core.settings.resume_deadline:
            # past it the master has forgotten the session: keeping streams longer would only
            # delay the "unknown session" restart
            self.core.settings = replace(self.core.settings, resume_deadline=float(granted))
        self.core.link_down(self.clock.seconds())  # a no-op after a reconnect; the old link on a move
        try:
            self.core.link_up(self.clock.seconds(), received_offsets(answer.get("received", {})))
        except ProtocolError as e:
            # the master claims bytes we never sent (or sent nonsense): the sessions cannot be reconciled
            log.warn("bbenroll: tunnel protocol error on resume: {error}; starting a new session", error=e)
            self._drop_streams("the master's view of the session does not match ours")
            self._new_session()
            self._abort_link()
            return None
        log.info(
            "bbenroll: tunnel to the master is up (session {status}, {streams} streams)",
            status=answer.get("status"),
            streams=len(self.core.streams),
        )
        self.flush()
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(self)
        self._subscribe(ref)
        return None

    # -- pushed rotation (updater.py does the update; these are its hooks) ------------------

    def _subscribe(self, ref: Any) -> None:
        try:
            d = ref.callRemote("subscribe_updates", updater=self.updater, serial=self.serial)
        except Exception as e:  # a local Violation: treated like a remote refusal
            d = defer.fail(e)
        d.addErrback(self._not_subscribed)
        if self.updater.pending is not None and not self.updater.busy:  # an update finishes with its own
            pending, self.updater.pending = self.updater.pending, None
            self.updater.offer(*pending)  # an offer that came while we were reconnecting

    def _not_subscribed(self, failure: Failure) -> None:
        if not self._told_no_updates:  # a master before pushed rotation: it never offers
            self._told_no_updates = True
            log.info(
                "bbenroll: the master does not push FURL updates ({why}); carrying on without",
                why=failure.getErrorMessage()[:200],
            )

    def move_session(self, ref: Any) -> defer.Deferred:
        """Ask the master, over ``ref`` (made with a new FURL), to move our session there."""
        return ref.callRemote(
            "open_session",
            session=self.session_id,
            receiver=self.receiver,
            received=self.core.received(),
            resume=True,
            deadline=int(self.resume_deadline),
        )

    def adopt(self, furl: str, serial: int, tub: Any) -> Any:
        """From now on the tunnel is ``furl`` (number ``serial``) on ``tub``; the old Tub, to stop."""
        old, self.tub = self.tub, tub
        self.furl, self.serial = furl, serial
        self.address = TunnelAddress(",".join(parse_furl(furl).hints))
        return old

    def update_finished(self) -> None:
        """The update is done, either way: a reconnect that waited for it goes ahead."""
        if self._reconnect_after_update and not self._stopped:
            self._reconnect_after_update = False
            if self.peer is None:
                self._connect()

    def _connect_failed(self, failure: Failure) -> None:
        self._connecting = False
        why = classify(failure)
        self.last_error = why.message
        delay = self.retry_delay(why.kind)
        self._attempt += 1
        if self._stopped:
            return  # the attempt died with the tunnel: nothing to retry, nothing to say
        if why.permanent and self.on_refused is not None:
            log.error("bbenroll: {error}; not retrying", error=self.last_error)
            self.on_refused(self, why.message)
            return
        log.info("bbenroll: {error}; retrying in {delay:.1f}s", error=self.last_error, delay=delay)
        self._retry = self.clock.callLater(delay, self._connect)

    def _lost(self, ref: Any) -> None:
        if ref is not self.peer:
            return
        self.peer = None
        self.core.link_down(self.clock.seconds())
        self.flush()
        if not self._stopped:
            log.info("bbenroll: tunnel link lost; reconnecting")
            self._retry = self.clock.callLater(self.backoff[0], self._connect)

    def _drop_streams(self, reason: str) -> None:
        for transport in list(self.streams.values()):
            transport.lost(reason)
        self.streams.clear()

    def _abort_link(self) -> None:
        remote, self.peer = self.peer, None
        self.core.link_down(self.clock.seconds())
        if remote is not None:
            abort_connection(remote)
        if not self._stopped and (self._retry is None or not self._retry.active()):
            self._retry = self.clock.callLater(self.backoff[0], self._connect)

    # -- streams -----------------------------------------------------------------------

    def open_stream(self, protocol: Any, factory: Any = None) -> StreamTransport:
        stream = self.core.open_stream(self.clock.seconds())
        readers = getattr(self.reactor, "getReaders", None)  # where the command processes are
        transport = StreamTransport(self, stream, protocol, factory, readers=readers)
        self.streams[stream] = transport
        protocol.makeConnection(transport)
        self.flush()
        return transport

    def reset(self, stream: int, reason: str = "aborted by buildbot-worker") -> None:
        super().reset(stream, reason)

    def on_protocol_error(self, error: ProtocolError) -> None:
        log.warn("bbenroll: tunnel protocol error: {error}; reconnecting", error=error)
        self._abort_link()

    # -- events of the core ----------------------------------------------------------------

    def on_deliver(self, event: Deliver) -> None:
        transport = self.streams.get(event.stream)
        if transport is not None:
            transport.deliver(event.data)

    def on_pause(self, event: Pause) -> None:
        transport = self.streams.get(event.stream)
        if transport is not None:
            transport.pause_output()

    def on_resume(self, event: Resume) -> None:
        transport = self.streams.get(event.stream)
        if transport is not None:
            transport.resume_output()

    def on_closed(self, event: Closed) -> None:
        transport = self.streams.pop(event.stream, None)
        if transport is not None:
            transport.lost(event.reason, clean=event.clean)

    def on_link_dead(self, event: LinkDead) -> None:
        log.info("bbenroll: tunnel link dead ({why}); reconnecting", why=event.reason)
        self._abort_link()

    def on_expired(self, event: Expired) -> None:
        if self.streams:  # an empty session expiring is not news
            log.info("bbenroll: the link stayed down past the resume deadline; streams closed")
        self._drop_streams("resume deadline passed")
        self._new_session()


def endpoint_from_string(reactor: Any, *args: str, **kwargs: str) -> Any:
    """The historical target of the endpoint plugin (``bbenroll:furlfile=...``).

    An installed plugin file from an older bbenroll may still call this: it goes to
    the parser instance of today's plugin, so both share one tunnel table.
    """
    from twisted.plugins.bbenroll_endpoints import bbenroll_endpoint_parser

    return bbenroll_endpoint_parser.parseStreamClient(reactor, *args, **kwargs)
