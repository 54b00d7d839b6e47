"""Tunnel sessions, and which connection each one is attached to.

A session belongs to the worker that opened it and outlives that worker's
Foolscap connections (see :mod:`bbenroll.tunnel.master_side`). The
:class:`SessionTable` is the only owner of the connection <-> session binding:
it opens a session, resumes it on a new connection (taking it over from an
older one), bounds the sessions of one worker to
:data:`MAX_SESSIONS_PER_WORKER` (on the only path that makes a session: a resume
never does), grants each session a resume deadline of at most
:data:`MASTER_MAX_RESUME_DEADLINE`, detaches a session whose link went dead, and
ends a worker's sessions. The disconnect watcher it puts on a worker's
receiver is removed as soon as that receiver no longer carries the session.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from bbenroll.tunnel.core import clamp_resume_deadline
from bbenroll.tunnel.master_side import MasterSession, master_settings, pb_client_endpoint
from bbenroll.tunnel.wire import Refused, abort_connection

log = Logger(namespace="bbenroll")

MAX_SESSIONS_PER_WORKER = 4  # one worker process needs one; a few allow restarts
# the longest a session (its PB connections included) outlives its link, whatever the
# worker asks (a worker may ask up to RESUME_DEADLINE_MAX, 3600 s)
MASTER_MAX_RESUME_DEADLINE = 900

# What a refused open_session is told
NO_PB_PORT = "this master has no PB port configured"
TOO_MANY_SESSIONS = "too many tunnel sessions for this worker"
REPLACED = "replaced by a newer session"


class Connection(Protocol):
    """One worker connection, as the table sees it (the service's EnrolledWorker)."""

    name: str
    session: MasterSession | None


@dataclass
class _Attachment:
    connection: Connection
    receiver: Any  # the worker's RITunnelPeer on that connection
    marker: Any  # its notifyOnDisconnect registration


class SessionTable:
    """All tunnel sessions of one service, keyed by (worker, session id); its bounds are attributes."""

    max_sessions_per_worker: int = MAX_SESSIONS_PER_WORKER
    max_resume_deadline: float = MASTER_MAX_RESUME_DEADLINE

    def __init__(
        self,
        reactor: Any,
        clock: IReactorTime,
        pb_endpoint: Callable[[], str | None],
        pb_server_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.reactor = reactor  # for the PB connections
        self.clock = clock
        self.pb_endpoint = pb_endpoint  # the PB port the running master listens on
        self.pb_server_factory = pb_server_factory  # Buildbot's PB factory: in-process legs (master_side.py)
        self.sessions: dict[tuple[str, str], MasterSession] = {}
        self._attached: dict[MasterSession, _Attachment] = {}

    def open(
        self,
        connection: Connection,
        session_id: str,
        receiver: Any,
        received: dict[int, int],
        resume: bool,
        deadline: int,
    ) -> dict[str, Any]:
        """``open_session`` of :class:`RIEnrolledWorker` (for a connection that is still
        allowed): a new session, the resumed one, or "unknown". The answer's ``deadline``
        is the resume deadline granted (seconds); workers that predate it ignore it."""
        session = self.sessions.get((connection.name, session_id))
        status = "resumed"
        if session is None:
            if resume:
                return {"status": "unknown", "received": {}}
            session = self._new_session(connection.name, session_id, deadline)
            status = "new"
        self._attach(connection, session, receiver)
        ours = session.attach(receiver, received)
        log.info(
            "worker {worker!r}: tunnel session {status} ({streams} streams)",
            worker=connection.name,
            status=status,
            streams=len(session.core.streams),
        )
        return {"status": status, "received": ours, "deadline": int(session.core.settings.resume_deadline)}

    def granted_deadline(self, asked: int) -> float:
        """The resume deadline a session gets when its worker asks for ``asked`` seconds."""
        return min(clamp_resume_deadline(asked), float(self.max_resume_deadline))

    def _new_session(self, worker: str, session_id: str, deadline: int) -> MasterSession:
        self._make_room(worker)
        pb = self.pb_endpoint()
        if pb is None:
            raise Refused(NO_PB_PORT)
        session = MasterSession(
            worker=worker,
            session_id=session_id,
            pb_endpoint=pb_client_endpoint(self.reactor, pb),
            clock=self.clock,
            settings=master_settings(self.granted_deadline(deadline)),
            on_expired=self._over,
            on_link_dead=self._link_dead,
            pb_server_factory=self.pb_server_factory,
        )
        self.sessions[(worker, session_id)] = session
        return session

    def _make_room(self, worker: str) -> None:
        """Bound the sessions one worker can hold: end its oldest idle ones."""
        mine = [s for s in self.sessions.values() if s.worker == worker]
        idle = sorted((s for s in mine if s.peer is None), key=lambda s: s.core.link_changed)
        cap = self.max_sessions_per_worker
        while len(mine) >= cap and idle:
            oldest = idle.pop(0)
            mine.remove(oldest)
            oldest.terminate(REPLACED)
        if len(mine) >= cap:
            raise Refused(TOO_MANY_SESSIONS)

    # -- the binding ------------------------------------------------------------

    def _attach(self, connection: Connection, session: MasterSession, receiver: Any) -> None:
        previous = connection.session
        if previous is not None and previous is not session:
            self._detach(previous)  # this connection moves on to another session
        self._forget_attachment(session)  # an older connection's hold on it, if any
        marker = receiver.notifyOnDisconnect(self._receiver_lost, session, receiver)
        self._attached[session] = _Attachment(connection, receiver, marker)
        connection.session = session

    def _forget_attachment(self, session: MasterSession) -> _Attachment | None:
        attachment = self._attached.pop(session, None)
        if attachment is not None:
            attachment.receiver.dontNotifyOnDisconnect(attachment.marker)
            if attachment.connection.session is session:
                attachment.connection.session = None
        return attachment

    def _detach(self, session: MasterSession) -> None:
        attachment = self._forget_attachment(session)
        if attachment is not None:
            session.detach(attachment.receiver)

    def _receiver_lost(self, session: MasterSession, receiver: Any) -> None:
        attachment = self._attached.get(session)
        if attachment is not None and attachment.receiver is receiver:
            del self._attached[session]
            if attachment.connection.session is session:
                attachment.connection.session = None
        session.detach(receiver)

    def _link_dead(self, session: MasterSession) -> None:
        """The tunnel heard nothing: detach the session (it waits for a resume) and
        drop the connection, whose Foolscap keepalive may not have noticed yet."""
        peer = session.peer
        self._detach(session)
        if peer is not None:
            session.detach(peer)
            abort_connection(peer)

    def _over(self, session: MasterSession) -> None:
        """A session ended (terminated or expired): forget it."""
        self._forget_attachment(session)
        self.sessions.pop((session.worker, session.session_id), None)

    # -- ending sessions ----------------------------------------------------------

    def end_connection(self, connection: Connection, reason: str) -> None:
        """End the session a connection carries (its streams die with it: no resume).

        Only a session this connection still carries: after a pushed rotation the
        session moved to the worker's new connection, and dropping the old one
        (its secret retired) must not end it.
        """
        session = connection.session
        if session is None:
            return
        attachment = self._attached.get(session)
        if attachment is not None and attachment.connection is not connection:
            connection.session = None  # a stale binding: the session lives on elsewhere
            return
        session.terminate(reason)

    def end_all_but(self, workers: Iterable[str], reason: str) -> None:
        """End every session of a worker not in ``workers``."""
        keep = set(workers)
        for session in list(self.sessions.values()):
            if session.worker not in keep:
                session.terminate(reason)

    def end_all(self, reason: str) -> None:
        self.end_all_but((), reason)

