"""The master's Foolscap service: serves every worker's FURL from the registry, live.

One Tub, built from the registry's identity, listens on ``[master].listen``.
A worker's FURL resolves through :class:`EnrollmentBroker` (a name lookup
that also knows the connection) to a per-connection :class:`EnrolledWorker`.
The registry is polled; a change is checked and swapped in whole, or refused
with one log line while the last good registry stays in force. Every tick,
each live connection is re-checked against the registry and the clock, and a
connection whose worker was revoked, removed, expired or whose old secret's
grace ended is dropped: Foolscap's ``unregisterReference`` would not do that.

Nothing here imports Buildbot; ``bbenroll.master`` adapts it to a master.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from foolscap.api import DeadReferenceError, Referenceable, Tub
from foolscap.broker import Broker
from twisted.application import service
from twisted.internet import task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from bbenroll.errors import BBEnrollError
from bbenroll.identity import load_identity
from bbenroll.master import gate as gatemod
from bbenroll.master.status import HEARTBEAT, StatusBook, status_path, write_status
from bbenroll.registry import store as regmod
from bbenroll.tunnel.core import Frame, Settings, clamp_resume_deadline
from bbenroll.tunnel.master_side import MasterSession, pb_client_endpoint
from bbenroll.tunnel.wire import FrameSink, Refused, RIEnrolledWorker

log = Logger(namespace="bbenroll")
_NEVER = object()  # a file signature that matches nothing
MAX_SESSIONS_PER_WORKER = 4  # one worker process needs one; a few allow restarts

POLL_INTERVAL = 1.0  # seconds between registry checks (the issue asks for at least 1/s)
KEEPALIVE = 15  # Foolscap pings an idle connection after this many seconds ...
DISCONNECT_TIMEOUT = 45  # ... and drops one that stayed silent this long
SHUTDOWN_GRACE = 1.0  # seconds a dropped peer gets to receive our last frames
PREAUTH_BUFFER_LIMIT = 16 * 1024  # bytes a peer may have pending before any secret was accepted
BUFFER_LIMIT = 2 * 1024 * 1024  # afterwards (must exceed the largest legitimate token)
MAX_SWISSNUM_LENGTH = 256


def peer_of(broker: Broker) -> str:
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

    authenticated = False
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
        transport = self.transport
        abort = getattr(transport, "abortConnection", None)
        if abort is not None and not self._abort_scheduled:
            self._abort_scheduled = True
            from twisted.internet import reactor

            def abort_if_still_open() -> None:
                with contextlib.suppress(Exception):  # nothing left to abort
                    abort()  # a no-op once the connection is gone

            reactor.callLater(SHUTDOWN_GRACE, abort_if_still_open)


class EnrollmentTub(Tub):
    brokerClass = EnrollmentBroker
    enrollment: EnrollmentService | None = None


@implementer(RIEnrolledWorker)
class EnrolledWorker(FrameSink, Referenceable):
    """What a worker's FURL resolves to, for one connection."""

    def __init__(self, service: EnrollmentService, name: str, swissnum: str, broker: Broker) -> None:
        self.service = service
        self.name = name
        self.swissnum = swissnum
        self.broker = broker
        self.peer = peer_of(broker)

        self.session: MasterSession | None = None

    def remote_get_worker_config(self) -> dict[str, Any]:
        worker = self.service.worker_for(self)
        return {
            "name": worker.name,
            "password": worker.password,
            "protocol": 1,
            "keepalive": KEEPALIVE,
        }

    def remote_open_session(
        self, session: str, receiver: Any, received: dict[int, int], resume: bool, deadline: int
    ) -> dict[str, Any]:
        return self.service.open_session(self, session, receiver, received, resume, deadline)

    # frames of the tunnel (FrameSink); ignored until a session is open
    def receive_frame(self, frame: Frame) -> None:
        if self.session is not None:
            self.session.receive(frame)


Now = Callable[[], datetime]


class EnrollmentService(service.MultiService):
    """Serves the registry's FURLs; reloads it live. Runs alone or under a Buildbot master.

    ``reactor`` is used for the network, ``clock`` (an IReactorTime) for polling and
    for "now", so tests can move time. ``on_workers_changed`` is called with the new
    ``{name: Worker}`` of usable workers whenever that set changes (a Buildbot
    master reconfigures itself then).
    """

    def __init__(
        self,
        registry_path: Path | str,
        *,
        reactor: Any = None,
        clock: IReactorTime | None = None,
        poll_interval: float = POLL_INTERVAL,
        on_workers_changed: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.registry_path = Path(registry_path)
        self.status_path = status_path(self.registry_path)
        self.poll_interval = poll_interval
        self.on_workers_changed = on_workers_changed
        self.status = StatusBook()
        self.connections: dict[tuple[int, str], EnrolledWorker] = {}
        self.sessions: dict[tuple[str, str], MasterSession] = {}
        self.tub: EnrollmentTub | None = None
        self._loop: task.LoopingCall | None = None
        self._signature: tuple[int, int, int] | None = None
        self._refused_signature: object = _NEVER
        self._last_status_write: datetime | None = None
        self._status_failing = False
        self._running_master: tuple[Any, ...] | None = None
        self._warned_master: tuple[Any, ...] | None = None
        # load now, so that a broken registry fails master.cfg/startup loudly
        self.loaded = regmod.load(self.registry_path)
        self.gate = gatemod.Gate(self.loaded.registry)
        self._signature = self._file_signature()
        self._announced = self._buildbot_view(self.gate.usable_workers(self.now()))

    # -- time ---------------------------------------------------------------

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.seconds(), UTC).replace(microsecond=0)

    # -- lifecycle ------------------------------------------------------------

    def startService(self) -> None:
        self._maybe_reload()  # it may have changed since the constructor read it
        master = self.loaded.registry.master
        identity = load_identity(self.loaded.identity_path)
        tub = EnrollmentTub(certData=identity.pem)
        tub.enrollment = self
        tub.unsafeTracebacks = False  # clients never see server tracebacks
        tub.setOption("expose-remote-exception-types", False)
        tub.setOption("accept-gifts", False)
        tub.setOption("keepaliveTimeout", KEEPALIVE)
        tub.setOption("disconnectTimeout", DISCONNECT_TIMEOUT)
        tub.setOption("logLocalFailures", False)
        tub.setOption("logRemoteFailures", False)
        self.listener = tub.listenOn(master.listen)
        self._running_master = (master.listen, master.location, master.pb)
        tub.setLocation(*master.location)
        tub.setServiceParent(self)
        self.tub = tub
        super().startService()
        self._loop = task.LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(self.poll_interval, now=False)
        log.info(
            "bbenroll: serving {count} workers as tub {tubid} on {listen}, location {location}",
            count=len(self.loaded.registry.workers),
            tubid=master.tubid,
            listen=master.listen,
            location=",".join(master.location),
        )
        self._write_status(force=True)

    def stopService(self) -> Any:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        for session in list(self.sessions.values()):
            session.terminate("master shutting down")
        d = super().stopService()
        self._write_status(force=True, running=False)
        self.tub = None
        return d

    # -- the lookup -------------------------------------------------------------

    def lookup(self, swissnum: str, broker: EnrollmentBroker) -> EnrolledWorker:
        peer = peer_of(broker)
        if len(swissnum) > MAX_SWISSNUM_LENGTH:
            decision = gatemod.Decision(False, gatemod.UNKNOWN)
        else:
            decision = self.gate.decide(swissnum, self.now())
        if not decision.accepted:
            log.info("refused connection from {peer}: {why}", peer=peer, why=decision.describe())
            raise Refused(decision.reason)
        assert decision.worker is not None
        key = (id(broker), swissnum)
        existing = self.connections.get(key)
        if existing is not None:
            return existing
        obj = EnrolledWorker(self, decision.worker, swissnum, broker)
        broker.authenticated = True
        self.connections[key] = obj
        assert self.tub is not None
        # its sturdy ref must be the worker's own FURL, not a fresh random name
        self.tub.referenceToName[obj] = swissnum
        broker.notifyOnDisconnect(self._lost, key)
        now = self.now()
        self.status.connected(obj.name, peer, now)
        log.info(
            "accepted worker {worker!r} from {peer} ({which} secret)",
            worker=obj.name,
            peer=peer,
            which=decision.reason,
        )
        self._write_status()
        return obj

    def worker_for(self, obj: EnrolledWorker) -> Any:
        """The registry entry for a live connection; refuses if it lost its right."""
        now = self.now()
        decision = self.gate.still_allowed(obj.name, obj.swissnum, now)
        if not decision.accepted:
            self._kick(obj, decision)
            raise Refused(decision.reason)
        self.status.seen(obj.name, now)
        return self.gate.registry.workers[obj.name]

    def _lost(self, key: tuple[int, str]) -> None:
        obj = self.connections.pop(key, None)
        if obj is None:
            return
        self.status.disconnected(obj.name, self.now())
        log.info("worker {worker!r} disconnected ({peer})", worker=obj.name, peer=obj.peer)
        self._write_status()

    def _kick(self, obj: EnrolledWorker, decision: gatemod.Decision) -> None:
        log.info(
            "dropping worker {worker!r} ({peer}): {why}",
            worker=obj.name,
            peer=obj.peer,
            why=decision.reason,
        )
        if obj.session is not None:
            obj.session.terminate(decision.reason)  # its streams die with it: no resume
        if not obj.broker.disconnected:
            obj.broker.shutdown(Failure(DeadReferenceError(decision.reason)))
        else:
            obj.broker.transport.abortConnection()

    # -- tunnel sessions ---------------------------------------------------------------

    def open_session(
        self,
        obj: EnrolledWorker,
        session_id: str,
        receiver: Any,
        received: dict[int, int],
        resume: bool,
        deadline: int,
    ) -> dict[str, Any]:
        self.worker_for(obj)  # refuses a connection that lost its right meanwhile
        key = (obj.name, session_id)  # a session belongs to the worker that opened it
        session = self.sessions.get(key)
        status = "resumed"
        if session is None:
            if resume:
                return {"status": "unknown", "received": {}}
            self._make_room_for_session(obj.name)
            pb = self._running_master[2] if self._running_master else self.loaded.registry.master.pb
            if pb is None:
                raise Refused("this master has no PB port configured")
            settings = Settings(resume_deadline=clamp_resume_deadline(deadline))
            session = MasterSession(
                worker=obj.name,
                session_id=session_id,
                pb_endpoint=pb_client_endpoint(self.reactor, pb),
                clock=self.clock,
                settings=settings,
                on_expired=self._session_over,
                on_link_dead=self._session_link_dead,
            )
            self.sessions[key] = session
            status = "new"
        if obj.session is not None and obj.session is not session:
            obj.session.detach(obj.session.peer)
        for other in self.connections.values():
            if other is not obj and other.session is session:
                other.session = None  # a newer connection took this session over
        obj.session = session
        receiver.notifyOnDisconnect(session.detach, receiver)
        ours = session.attach(receiver, received)
        log.info(
            "worker {worker!r}: tunnel session {status} ({streams} streams)",
            worker=obj.name,
            status=status,
            streams=len(session.core.streams),
        )
        return {"status": status, "received": ours}

    def _make_room_for_session(self, worker: str) -> None:
        """Bound the sessions one worker can hold: end its oldest idle ones."""
        mine = [s for s in self.sessions.values() if s.worker == worker]
        idle = sorted((s for s in mine if s.peer is None), key=lambda s: s.core.link_changed)
        while len(mine) >= MAX_SESSIONS_PER_WORKER and idle:
            oldest = idle.pop(0)
            mine.remove(oldest)
            oldest.terminate("replaced by a newer session")
        if len(mine) >= MAX_SESSIONS_PER_WORKER:
            raise Refused("too many tunnel sessions for this worker")

    def _session_over(self, session: MasterSession) -> None:
        self.sessions.pop((session.worker, session.session_id), None)

    def _session_link_dead(self, session: MasterSession) -> None:
        peer = session.peer
        if peer is not None:
            session.detach(peer)
            broker = getattr(getattr(peer, "tracker", None), "broker", None)
            if broker is not None and broker.transport is not None:
                broker.transport.abortConnection()

    # -- the loop -----------------------------------------------------------------

    def tick(self) -> None:
        """Reload the registry if it changed, re-check live connections, save status."""
        try:
            self._maybe_reload()
            now = self.now()
            for obj in list(self.connections.values()):
                decision = self.gate.still_allowed(obj.name, obj.swissnum, now)
                if not decision.accepted:
                    self._kick(obj, decision)
            usable = self.gate.usable_workers(now)
            for session in list(self.sessions.values()):
                if session.worker not in usable:
                    session.terminate("worker no longer enrolled")
            view = self._buildbot_view(usable)
            if view != self._announced:
                self._announced = view
                if self.on_workers_changed is not None:
                    self.on_workers_changed(usable)
            self._write_status()
        except Exception:
            log.failure("bbenroll: unexpected error in the registry loop")

    def _file_signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.registry_path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _maybe_reload(self) -> None:
        signature = self._file_signature()
        if signature == self._signature or signature == self._refused_signature:
            return
        try:
            if signature is None:
                raise BBEnrollError(f"{self.registry_path}: the registry file disappeared")
            loaded = regmod.load(self.registry_path)
            old_master = self.loaded.registry.master
            new_master = loaded.registry.master
            if new_master.tubid != old_master.tubid:
                raise BBEnrollError(
                    f"{self.registry_path}: master.tubid changed; restart the master to use a new identity"
                )
        except BBEnrollError as e:
            self._refused_signature = signature
            log.error(
                "bbenroll: keeping the last good registry; the changed one is refused: {error}",
                error=str(e),
            )
            return
        running = self._running_master
        if (new_master.listen, new_master.location, new_master.pb) != running:
            if running != self._warned_master:
                log.warn(
                    "bbenroll: [master] listen/location/pb changed in the registry; "
                    "they take effect when the master restarts"
                )
            self._warned_master = running
        else:
            self._warned_master = None
        self._signature = signature
        self._refused_signature = _NEVER
        self.loaded = loaded
        self.gate = gatemod.Gate(loaded.registry)
        self.status.forget(set(loaded.registry.workers))
        log.info(
            "bbenroll: reloaded {path} ({count} workers)",
            path=str(self.registry_path),
            count=len(loaded.registry.workers),
        )

    @staticmethod
    def _buildbot_view(usable: dict[str, Any]) -> dict[str, tuple[str, Any]]:
        """What Buildbot is configured from: usable workers, passwords, options."""
        return {name: (w.password, sorted(w.buildbot.items())) for name, w in usable.items()}

    def _write_status(self, *, force: bool = False, running: bool = True) -> None:
        now = self.now()
        due = self._last_status_write is None or now - self._last_status_write >= HEARTBEAT
        if not (force or due or (self.status.changed and not self._status_failing)):
            return
        listen = self.loaded.registry.master.listen
        try:
            write_status(self.status_path, self.status.to_json(now, running=running, listen=listen))
        except OSError as e:
            log.error("bbenroll: cannot write {path}: {error}", path=str(self.status_path), error=str(e))
            self._last_status_write = now
            self._status_failing = True  # retry with the next heartbeat, not every tick
            return
        self._status_failing = False
        self.status.changed = False
        self._last_status_write = now
