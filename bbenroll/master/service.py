"""The master's Foolscap service: serves every worker's FURL from the registry, live.

This module is the lifecycle and the wiring; each concern has its own room:

- :mod:`~bbenroll.master.tub`: the Tub, its options, the bounded Broker, listening;
- :mod:`~bbenroll.master.identities`: the master's identities (one Tub each) on its
  one port: two during a key rollover (``master roll-identity``), else one;
- :mod:`~bbenroll.master.gate`: who may connect (pure);
- :mod:`~bbenroll.master.guard`: bounds on unauthenticated connections and guessing (pure);
- :mod:`~bbenroll.master.sessions`: tunnel sessions and their connections;
- :mod:`~bbenroll.master.reloader`: following the registry file;
- :mod:`~bbenroll.master.status`: the status book and its file;
- :mod:`~bbenroll.master.writer`: the master's own registry writes (confirmed
  deliveries, ``rotate_every`` rotations), batched, through the CLI's lock.

Pushed rotation (docs/rotation.md) lives here, on each connection: a worker
subscribes an updater, the master offers it the registry's newest FURL when the
connection is behind, and records the worker's confirmation.

A worker's FURL resolves through :class:`~bbenroll.master.tub.EnrollmentBroker`
(a name lookup that also knows the connection) to a per-connection
:class:`EnrolledWorker`. A live connection is re-checked against the registry
when its worker changes in the file and when the clock changes its right (an
expiry, a grace's end), and a connection whose worker was revoked, removed,
expired or whose old secret's grace ended is dropped: Foolscap's
``unregisterReference`` would not do that.

The tick (once a second) costs what changed, not the fleet (issue #12): one
``stat`` of the registry when it did not change; a changed one is parsed and
planned in a thread (:mod:`~bbenroll.master.schedule`), and applied on the loop
by worker (only the changed workers' connections are looked at). Time-driven
work (expiries, grace ends, policy rotations, ephemeral removals, offers, invite
pruning) runs only when its next due time, computed on a reload or a connection
change, has come. Accepting a connection costs no registry parse and no status
write: the status file is written in batches, in a thread (master/status.py).

Nothing here imports Buildbot; :mod:`bbenroll.master.hook` adapts it to a master.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from foolscap.api import DeadReferenceError, Referenceable
from foolscap.broker import Broker
from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from bbenroll.errors import BBEnrollError, WrongState
from bbenroll.identity import load_identity
from bbenroll.master import auditing, binding, ephemeral, schedule
from bbenroll.master import gate as gatemod
from bbenroll.master import guard as guardmod
from bbenroll.master import legacy as legacymod
from bbenroll.master.identities import RETIRED, ServedIdentities
from bbenroll.master.reloader import POLL_INTERVAL, RegistryReloader
from bbenroll.master.sessions import SessionTable
from bbenroll.master.status import HEARTBEAT, StatusBook, StatusWriter, status_path
from bbenroll.master.tub import (
    KEEPALIVE,
    MAX_SWISSNUM_LENGTH,
    EnrollmentBroker,
    EnrollmentTub,
    ListenError,
    address_of,
    open_files,
    peer_of,
    raise_open_files_limit,
)
from bbenroll.master.writer import RegistryWriter, Runner, thread_runner
from bbenroll.registry import model
from bbenroll.registry.store import Editor, LoadedRegistry, identity_path
from bbenroll.times import format_time
from bbenroll.tunnel.core import Frame
from bbenroll.tunnel.master_side import MasterSession
from bbenroll.tunnel.wire import FrameSink, Refused, RefusedForGood, RIEnrolledWorker

__all__ = ["OFFER_RETRY", "POLL_INTERVAL", "EnrolledWorker", "EnrollmentService", "ListenError"]

log = Logger(namespace="bbenroll")

OFFER_RETRY = 60.0  # seconds before an unanswered or failed offer is made again
# Workers moving to an offered FURL at once: each move is a TLS handshake, a Foolscap
# negotiation and a session move, on both event loops. Offering a whole fleet in one
# tick (rotate --all on 300 workers) starved both loops until links died and every
# test connection timed out; the others wait for a free place (one per confirmation,
# failure, or OFFER_RETRY without an answer).
MAX_OFFERS_IN_FLIGHT = 32
MAX_ROTATIONS_PER_TICK = 50  # rotate_every: a fleet reaching its age on one day is spread out
# seconds before a policy rotation that failed is tried again (when rotations are due is
# otherwise computed, master/schedule.py)
ROTATION_CHECK = 60.0
CONFIRM_OVER_NEW = "confirm over the new FURL"
UNKNOWN_SERIAL = "no such FURL serial"
MAX_REASON_LOGGED = 200


def clean_reason(reason: str) -> str:
    """A worker's failure text, safe for one log line: no control characters, bounded."""
    text = "".join(char if char.isprintable() else " " for char in str(reason)).strip()
    return text[:MAX_REASON_LOGGED] + ("..." if len(text) > MAX_REASON_LOGGED else "")


@implementer(RIEnrolledWorker)
class EnrolledWorker(FrameSink, Referenceable):
    """What a worker's FURL resolves to, for one connection."""

    def __init__(self, service: EnrollmentService, name: str, swissnum: str, broker: Broker) -> None:
        self.service = service
        self.name = name
        self.swissnum = swissnum
        self.broker = broker
        self.peer = peer_of(broker)
        self.key = binding.client_key(broker)  # the TubID of the worker's key, if it has one
        self.session: MasterSession | None = None  # set by the SessionTable only
        self.dropped_at: float | None = None  # when the master began to drop it (clock seconds)
        # pushed rotation: the worker's RIFurlUpdater on this connection (one; a new one replaces
        # it), the serial it holds (reported, or confirmed since), and the offer's state
        self.updater: Any = None
        self.serial = 0
        self.offering = False  # an offer_furl call is in flight
        self.offered_serial: int | None = None
        self.offered_at: float | None = None  # clock seconds
        self.call_failed_logged = False

    def remote_subscribe_updates(self, updater: Any, serial: int) -> None:
        self.service.worker_for(self)
        self.service.subscribe(self, updater, serial)

    def remote_confirm_furl(self, serial: int) -> Any:
        return self.service.confirm(self, serial)

    def remote_furl_update_failed(self, serial: int, reason: str) -> None:
        self.service.worker_for(self)
        self.service.update_failed(self, serial, reason)

    def remote_bind_key(self) -> Any:
        return self.service.bind_key(self)

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
        self.service.worker_for(self)  # refuses a connection that lost its right meanwhile
        return self.service.sessions.open(self, session, receiver, received, resume, deadline)

    def __repr__(self) -> str:
        # Foolscap puts its objects' reprs in failure texts and logs: no address, no module path
        return f"<EnrolledWorker {self.name!r} from {self.peer}>"

    # frames of the tunnel (FrameSink); ignored until a session is open
    def receive_frame(self, frame: Frame) -> None:
        if self.session is not None:
            self.session.receive(frame)


def _offer_order(obj: EnrolledWorker) -> float:
    return -math.inf if obj.offered_at is None else obj.offered_at


class EnrollmentService(service.MultiService):
    """Serves the registry's FURLs; reloads it live. Runs alone or under a Buildbot master.

    ``reactor`` is used for the network, ``clock`` (an IReactorTime) for polling,
    timers and "now", so tests can move time. ``on_workers_changed`` is called
    with the new ``{name: Worker}`` of usable workers whenever that set changes
    (a Buildbot master reconfigures itself then). ``pb_server_factory`` returns
    Buildbot's PB server factory or None: with one, the tunnels' PB legs are
    in-process (tunnel/inprocess.py), else loopback TCP to ``[master] pb``.
    ``attached(name)`` says whether Buildbot's Worker ``name`` is attached now (the
    hook gives it; the status file reports it).
    """

    def __init__(
        self,
        registry_path: Path | str,
        *,
        reactor: Any,
        clock: IReactorTime | None = None,
        poll_interval: float = POLL_INTERVAL,
        on_workers_changed: Callable[[dict[str, Any]], None] | None = None,
        run_write: Runner | None = None,
        busy: Callable[[str], bool] | None = None,
        attached: Callable[[str], bool] | None = None,
        pb_server_factory: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.registry_path = Path(registry_path)
        self.poll_interval = poll_interval
        self.on_workers_changed = on_workers_changed
        self.status = StatusBook()
        # registry parses and status writes run here, off the loop (at once on a test clock)
        self.run_off_loop = thread_runner(self.reactor)
        self.status_writer = StatusWriter(
            status_path(self.registry_path),
            self.status,
            now=self.now,
            listen=lambda: self.loaded.registry.master.listen,
            run=self.run_off_loop,
            schedule=self.clock.callLater,
            on_error=lambda error: log.error("bbenroll: {error}", error=error),
        )
        self.connections: dict[tuple[int, str], EnrolledWorker] = {}
        self.tub: EnrollmentTub | None = None  # the current identity's (new FURLs carry its TubID)
        self.identities: ServedIdentities | None = None  # every identity served on the port
        self._retiring_identity: str | None = None  # the TubID whose removal from the registry is queued
        self._retired_tubids: set[str] = set()  # never served again by this process
        self.port: Any = None  # the listening port, once bound
        self._listen_outcome: Failure | bool | None = None  # None until the bind settled
        self._listen_waiters: list[defer.Deferred[None]] = []
        self._loop: task.LoopingCall | None = None
        self.reloader = RegistryReloader(self.registry_path)  # a broken registry fails loudly here
        first = schedule.plan(None, self.loaded.registry, self.now())
        self.gate = first.gate
        self.guard = guardmod.Guard()
        self._near_open_files_limit = False
        self.sessions = SessionTable(self.reactor, self.clock, self._pb_endpoint, pb_server_factory)
        self._announced = first.view
        self._legacy_pb_seen = self.loaded.registry.master.legacy_pb  # what Buildbot was told
        self.offer_retry = OFFER_RETRY
        self.max_offers_in_flight = MAX_OFFERS_IN_FLIGHT
        # worker name -> when its FURL was offered (clock seconds), until it moved or failed
        self._offers_in_flight: dict[str, float] = {}
        self.max_rotations_per_tick = MAX_ROTATIONS_PER_TICK
        self.writer = RegistryWriter(
            self.registry_path,
            now=self.now,
            run=run_write if run_write is not None else thread_runner(self.reactor),
            schedule=self.clock.callLater,
            on_written=self._after_write,
        )
        self._subscribed: set[EnrolledWorker] = set()  # connections with an updater
        self._to_check: set[EnrolledWorker] = set()  # of those, the ones that may need an offer
        self._rotating: set[str] = set()  # workers whose policy rotation is queued
        self.rotation_check = ROTATION_CHECK
        # the next due times (clock seconds; None: nothing due by the clock): see tick()
        self._event_at = self._seconds_of(first.next_event)  # expiries, grace ends, overlaps
        self._rotation_check_at = self._seconds_of(first.next_rotation)
        self._ephemeral_at: float | None = None  # None here: at the next tick
        self._ephemeral = first.ephemeral
        self._dropping: set[EnrolledWorker] = set()  # dropped, their close not finished yet
        self.attached = attached
        self._unattached: set[str] = set()  # connected, not attached in Buildbot when last asked
        self._attached_sweep_at = 0.0  # every worker watched is asked again then
        # ephemeral workers (master/ephemeral.py): busy(name) says it has a running build (the
        # Buildbot hook gives it; alone, nothing is ever busy); when each was last connected
        self.busy = busy
        self._last_connected: dict[str, datetime] = {}
        self._removing: set[str] = set()  # ephemeral removals queued in the writer
        self._started_at: datetime | None = None
        self._pruning = False  # the removal of the master's spent invites is queued

    @property
    def loaded(self) -> LoadedRegistry:
        """The registry in force."""
        return self.reloader.loaded

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.seconds(), UTC).replace(microsecond=0)

    # -- lifecycle ------------------------------------------------------------

    def startService(self) -> None:
        """Start listening on ``[master].listen``; :meth:`when_listening` tells how it went.

        Only once the port is bound is "serving" logged and the registry polled. A
        port that cannot be bound is one error line in the log, and the service
        stops. Nothing is returned: a failed Deferred that a caller ignores (the
        service run on its own) would add an "Unhandled error" traceback.
        """
        self._reload_now()  # it may have changed since the constructor read it
        self._started_at = self.now()
        self.reloader.started()
        self._raise_open_files_limit()
        master = self.loaded.registry.master
        identities = ServedIdentities(self, self.clock, self.guard)
        self.identities = identities
        self.tub = identities.add(load_identity(self.loaded.identity_path).pem, master.location)
        self._sync_identities(self.now())  # the previous identity too, during an overlap
        listening = identities.listen(self.reactor, master.listen)
        identities.setServiceParent(self)
        super().startService()
        listening.addCallbacks(self._listening, self._cannot_listen)

    def when_listening(self) -> defer.Deferred[None]:
        """Fires once the port is bound; fails with :class:`ListenError` if it cannot be."""
        if self._listen_outcome is None:
            waiter: defer.Deferred[None] = defer.Deferred()
            self._listen_waiters.append(waiter)
            return waiter
        if isinstance(self._listen_outcome, Failure):
            return defer.fail(self._listen_outcome)
        return defer.succeed(None)

    def _listen_settled(self, outcome: Failure | bool) -> None:
        self._listen_outcome = outcome
        waiters, self._listen_waiters = self._listen_waiters, []
        for waiter in waiters:
            if isinstance(outcome, Failure):
                waiter.errback(outcome)
            else:
                waiter.callback(None)

    def _listening(self, port: Any) -> Any:
        self.port = port
        if not self.running:  # stopped before the port was bound: Foolscap's Listener missed it
            self._listen_settled(True)
            return port.stopListening()
        master = self.loaded.registry.master
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
        if self.identities is not None and len(self.identities.tubs) > 1:
            assert master.previous is not None
            log.info(
                "bbenroll: also serving the previous identity, tub {tubid}, until {until}",
                tubid=master.previous.tubid,
                until=format_time(master.previous.until),
            )
        self.status_writer.write_now()
        self._listen_settled(True)
        return None

    def _cannot_listen(self, failure: Failure) -> None:
        failure.trap(ListenError)
        log.error("bbenroll: {error}", error=str(failure.value))
        if self.running:
            d = self.stopService(write_status=False)
            d.addErrback(lambda f: log.failure("bbenroll: while stopping", f))
        self._listen_settled(failure)  # told to those who wait; nobody waiting is fine

    def stopService(self, *, write_status: bool = True) -> Any:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        self.sessions.end_all("master shutting down")
        self._log_refusals(all_due=True)  # recorded in the audit log too: before the writer closes
        closed = [self.writer.close()]
        d = super().stopService()
        if write_status:
            closed.append(self.status_writer.close())  # the last write: "running": false
        else:
            self.status_writer.stop()
        self.tub = None
        self.identities = None
        return defer.gatherResults([defer.maybeDeferred(lambda: d), *closed], consumeErrors=True)

    # -- the lookup -------------------------------------------------------------

    def lookup(
        self, swissnum: str, broker: EnrollmentBroker, *, may_reload: bool = True
    ) -> EnrolledWorker | defer.Deferred[Any]:
        """Resolve a FURL's swissnum arriving on ``broker``.

        An accepted secret gets its object at once, whatever its address did
        before. A refusal is a Deferred failing with :class:`Refused`, as late as
        the guard says; then the connection ends, unless an accepted secret
        arrived on it before (then only after a few refusals). An unknown secret
        while the registry file changed waits for its reload (off the loop).
        """
        if broker.refusals >= self.guard.max_refusals_per_connection:
            return defer.fail(Refused(guardmod.TOO_MANY_REFUSALS))  # it is being dropped
        if self.identities is not None and broker.tub.tubID not in self.identities.tubs:
            # a late connection of a retired identity (it is being aborted): nothing to find
            return defer.fail(Refused(RETIRED))
        if len(swissnum) > MAX_SWISSNUM_LENGTH:
            decision = gatemod.Decision(False, gatemod.UNKNOWN)
        else:
            decision = self.gate.decide(swissnum, self.now())
            if decision.reason is gatemod.Reason.UNKNOWN and may_reload and not self.reloader.unchanged():
                # `bbenroll add` then at once `worker create`: the worker may be newer than
                # our last poll. It costs a stat() unless the file really changed; then the
                # answer waits for the reload, which runs off the loop.
                d = self._reload()
                d.addCallback(lambda _: self.lookup(swissnum, broker, may_reload=False))
                return d
            if decision.reason is gatemod.Reason.UNKNOWN:
                # no worker's: an invite's? (an unknown one is refused as any unknown secret)
                invited = self.gate.decide_invite(swissnum, self.now())
                if invited is not None and not invited.accepted:
                    return self._refuse(broker, invited)
                if invited is not None:
                    assert invited.invite is not None
                    return self._invite_object(invited.invite, broker)
        if decision.accepted:  # a bound FURL works only from its worker's key
            worker = self.gate.registry.workers.get(decision.worker or "")
            decision = binding.check(decision, worker, binding.client_key(broker))
        if not decision.accepted:
            return self._refuse(broker, decision)
        assert decision.worker is not None
        key = (id(broker), swissnum)
        existing = self.connections.get(key)
        if existing is not None:
            return existing
        obj = EnrolledWorker(self, decision.worker, swissnum, broker)
        broker.mark_authenticated()
        self.connections[key] = obj
        # its sturdy ref must be the worker's own FURL, not a fresh random name; in the Tub of
        # this connection (the identity its FURL named), which is the one that sends the answer
        broker.tub.referenceToName[obj] = swissnum
        broker.notifyOnDisconnect(self._lost, key)  # fires once, with the connection
        self.status.connected(obj.name, obj.peer, self.now(), broker.tub.tubID)
        log.info(
            "accepted worker {worker!r} from {peer} ({which} secret)",
            worker=obj.name,
            peer=obj.peer,
            which=decision.reason,
        )
        self._audit(auditing.accepted(obj.name, swissnum, obj.peer, decision.reason))
        self.status_writer.changed()  # batched: a storm of connects is one write
        if self.attached is not None:
            self._unattached.add(obj.name)  # asked at the next tick
        self._mark_moved(obj.name)
        return obj

    def _invite_object(self, invite_id: str, broker: EnrollmentBroker) -> Any:
        """An invite's object for this connection. The connection is NOT marked authenticated:
        it keeps its deadline and counts against its address's cap (master/invites.py)."""
        from bbenroll.master.invites import InviteObject

        obj = InviteObject(self, invite_id, broker)
        log.info("invite {invite} presented from {peer}", invite=invite_id, peer=obj.peer)
        return obj

    def create_invite(
        self,
        *,
        name: str | None = None,
        prefix: str | None = None,
        tags: Iterable[str] = (),
        uses: int = 1,
        reusable: bool = False,
        ttl: timedelta,
        ephemeral: bool = False,
        worker_expires: timedelta | None = None,
        note: str | None = None,
        reenroll: bool = False,
    ) -> defer.Deferred[str]:
        """Make an invite (``by = "master"``) through the writer; fires with its FURL once on disk.

        For master.cfg code (latent workers). The FURL is the only copy of the secret: the
        caller hands it to the instance and keeps it nowhere else. The master removes its own
        invites once used up or expired."""
        from bbenroll.master import invites as invitesmod

        options: dict[str, Any] = {
            "name": name, "prefix": prefix, "tags": tuple(tags), "uses": uses, "reusable": reusable,
            "ephemeral": ephemeral, "worker_expires": worker_expires, "note": note, "reenroll": reenroll,
        }
        result: dict[str, str] = {}

        def written(_: None) -> str:
            log.info("bbenroll: made invite {invite}", invite=result["id"])
            return result["furl"]

        d = self.writer.submit(invitesmod.create_invite_edit(options, ttl, self.now(), result))
        d.addCallback(written)
        return d

    def _prune_invites(self, now: datetime) -> None:
        """Remove the master's own invites that are spent (one batched edit at a time)."""
        from bbenroll.master import invites as invitesmod

        if self._pruning or not self.running:  # before the start: at the first tick
            return
        spent = invitesmod.spent_master_invites(getattr(self.gate.registry, "invites", {}), now)
        if not spent:
            return
        self._pruning = True

        def done(result: Any) -> None:
            self._pruning = False
            if isinstance(result, Failure):
                self._retry_soon()
                log.info("bbenroll: cannot remove spent invites: {why}", why=str(result.value))
            else:
                log.info("bbenroll: removed {count} spent invites of the master: {ids}",
                         count=len(spent), ids=", ".join(spent[:10]))

        self.writer.submit(invitesmod.remove_invites_edit(spent, now)).addBoth(done)

    def _refuse(self, broker: EnrollmentBroker, decision: gatemod.Decision) -> defer.Deferred[Any]:
        broker.refusals += 1
        why = decision.describe()  # counted by worker and reason: which stale FURL keeps trying
        refusal = self.guard.refused(address_of(broker.transport), why, self.clock.seconds())
        if refusal.log_now:  # later ones go into the address's summary line (and record)
            why += binding.describe_keys(decision)  # a bound FURL from another key: both TubIDs
            log.info("refused connection from {peer}: {why}", peer=peer_of(broker), why=why)
            self._audit(auditing.refused_one(decision.worker, why, peer_of(broker)))
        answer: defer.Deferred[Any] = defer.Deferred()

        def send() -> None:
            refused = RefusedForGood if decision.permanent else Refused
            answer.errback(Failure(refused(decision.message)))
            if not broker.authenticated or broker.refusals >= self.guard.max_refusals_per_connection:
                broker.end_after_answers(Failure(DeadReferenceError(decision.reason)))

        broker.answer_later(refusal.delay, send)
        return answer

    def worker_for(self, obj: EnrolledWorker) -> Any:
        """The registry entry for a live connection; refuses if it lost its right."""
        now = self.now()
        decision = self._still_allowed(obj, now)
        if not decision.accepted:
            self._kick(obj, decision)
            raise (RefusedForGood if decision.permanent else Refused)(decision.message)
        self.status.seen(obj.name, now)
        return self.gate.registry.workers[obj.name]

    def _pb_endpoint(self) -> str | None:
        """Where the tunnels dial Buildbot's PB port: the old public one on loopback during a
        cut-over (``legacy_pb`` follows the registry: Buildbot moves with its next reconfig),
        else the loopback ``pb`` the service started with."""
        legacy_pb = self.loaded.registry.master.legacy_pb
        if legacy_pb is not None:
            try:
                return legacymod.tunnel_endpoint(legacy_pb)
            except BBEnrollError as e:  # the hook refuses such a registry: Buildbot has no port there
                log.error("bbenroll: {error}", error=str(e))
        running = self.reloader.running_settings
        return running[2] if running is not None else self.loaded.registry.master.pb  # type: ignore[return-value]

    # -- the gradual cut-over (master/legacy.py) ------------------------------------

    def tunnel_addresses(self) -> set[tuple[str, int]]:
        """Local addresses of this master's live tunnel connections to the PB port: a PB login
        from one of them came through a tunnel (the hook's dispatcher asks)."""
        return legacymod.leg_addresses(self.sessions.sessions.values())

    def _mark_moved(self, name: str) -> None:
        """A legacy worker's first accepted FURL connection: record ``moved`` (once, through the writer)."""
        worker = self.gate.registry.workers.get(name)
        moving: set[str] = self.__dict__.setdefault("_moving", set())
        if worker is None or legacymod.mark_moved(worker, self.now()) is None or name in moving:
            return
        moving.add(name)
        now = self.now()

        def edit(editor: Editor) -> None:  # in the writer's thread, under the lock
            changed = legacymod.mark_moved(editor.worker(name), now)
            if changed is not None:
                editor.update(changed)

        def done(result: Any) -> None:
            moving.discard(name)
            if isinstance(result, Failure):
                log.info("bbenroll: cannot record that worker {worker!r} moved: {why}", worker=name,
                         why=str(result.value))
            else:
                log.info(
                    "worker {worker!r} moved to its FURL: its password no longer logs in directly on "
                    "the PB port", worker=name,
                )

        self.writer.submit(edit).addBoth(done)

    def _legacy_pb_changed(self) -> bool:
        """Whether ``[master] legacy_pb`` changed since the last look: Buildbot must reconfigure
        (open or close the public PB port), which the worker view alone would not ask for."""
        current = self.loaded.registry.master.legacy_pb
        seen = self._legacy_pb_seen
        self._legacy_pb_seen = current
        return seen != current

    def _lost(self, key: tuple[int, str]) -> None:
        obj = self.connections.pop(key, None)
        if obj is None:
            return
        self._subscribed.discard(obj)
        self._to_check.discard(obj)
        obj.updater = None
        self._dropping.discard(obj)
        self.status.disconnected(obj.name, self.now(), obj.broker.tub.tubID)
        if obj.name in self._ephemeral:  # the ephemeral timeout counts from here
            self._last_connected[obj.name] = self.now()
            due = schedule.ephemeral_due_at(self.now(), ephemeral.timeout_of(self.gate.registry.master))
            self._ephemeral_at = self._earlier(self._ephemeral_at, self._seconds_of(due))
        log.info("worker {worker!r} disconnected ({peer})", worker=obj.name, peer=obj.peer)
        self.status_writer.changed()

    def _kick(self, obj: EnrolledWorker, decision: gatemod.Decision) -> None:
        now = self.clock.seconds()
        if obj.dropped_at is not None and now - obj.dropped_at < self.poll_interval:
            # a re-check right after our own registry write: the drop is under way; the next
            # tick's re-check aborts a connection whose close has not finished
            return
        if obj.dropped_at is None:  # logged and recorded once, however many ticks the close takes
            self._audit(auditing.dropped(obj.name, obj.swissnum, obj.peer, str(decision.reason)))
            log.info(
                "dropping worker {worker!r} ({peer}): {why}",
                worker=obj.name,
                peer=obj.peer,
                why=f"{decision.reason}{binding.describe_keys(decision)}",  # a binding's drop: both keys
            )
        obj.dropped_at = now
        self._dropping.add(obj)  # looked at again by the next ticks until it is gone
        self.sessions.end_connection(obj, decision.reason)
        self._subscribed.discard(obj)  # nothing is ever offered over it again
        self._to_check.discard(obj)
        obj.updater = None
        if not obj.broker.disconnected:
            obj.broker.shutdown(Failure(DeadReferenceError(decision.reason)))
        else:
            obj.broker.transport.abortConnection()

    def _audit(self, change: Any) -> None:
        """Append one of the master's own records (master/auditing.py) through the writer."""
        d = self.writer.submit(auditing.note(change))
        d.addErrback(lambda f: log.failure("bbenroll: cannot write an audit record", f))

    # -- bounds on what peers may cost ------------------------------------------------

    def _raise_open_files_limit(self) -> None:
        try:
            raised = raise_open_files_limit()
        except (OSError, ValueError) as e:
            log.warn("bbenroll: cannot raise the open-files limit: {error}", error=str(e))
            return
        if raised is not None:
            log.info("bbenroll: raised the open-files limit from {old} to {new}", old=raised[0],
                     new=raised[1])

    def _log_refusals(self, *, all_due: bool = False) -> None:
        """The refusal summaries that are due (``all_due``: all that were not logged yet)."""
        for summary in self.guard.summaries(self.clock.seconds(), all_due=all_due):
            self._audit(auditing.refused(summary))
            log.info(
                "refused or dropped {total} connections from {address} "
                "in the last {seconds:.0f} s: {counts}",
                total=summary.total,
                address=summary.address,
                seconds=summary.seconds,
                counts=summary.describe(),
            )

    def _log_guard(self) -> None:
        """Refusal summaries that are due, and whether open files near their limit."""
        self._log_refusals()
        files = open_files()
        near = files is not None and guardmod.near_open_files_limit(*files)
        if near and not self._near_open_files_limit:
            assert files is not None
            log.warn(
                "bbenroll: {count} open files, near the limit of {limit} "
                "({waiting} connections without an accepted secret)",
                count=files[0],
                limit=files[1],
                waiting=self.identities.doorkeeper.waiting() if self.identities else 0,
            )
        self._near_open_files_limit = near

    # -- the loop -----------------------------------------------------------------

    def tick(self) -> None:
        """What is due: a changed registry (one ``stat`` when not), the clock's events, offers,
        rotations, ephemeral removals, Buildbot's attachment, the status heartbeat.

        Nothing here walks the fleet unless something is due (see the module's docstring).
        A changed file is read off the loop; the rest of the tick runs once it is applied
        (while a load is in flight, ticks wait for it: one load at a time).
        """
        if self.reloader.loading is not None:
            return
        self._reload().addCallback(lambda _: self._due_work())

    def _due_work(self) -> None:
        if not self.running:
            return
        try:
            now = self.now()
            seconds = self.clock.seconds()
            if self._event_at is not None and seconds >= self._event_at:
                self._clock_event(now)
            self._recheck(self._dropping, now)
            self._offer_due()
            self._rotate_due(now)
            self._remove_ephemeral(now)
            self.writer.flush()  # a batch that failed is retried here
            self._check_attached()
            self.status_writer.heartbeat()
            self._log_guard()
        except Exception:
            log.failure("bbenroll: unexpected error in the registry loop")

    def _clock_event(self, now: datetime) -> None:
        """The clock changed someone's right (an expiry, a grace or overlap ended, an invite
        expired): look at every connection and at what Buildbot knows (rare: at those moments)."""
        registry = self.gate.registry
        self._event_at = self._seconds_of(schedule.next_event(registry, now))
        self._sync_identities(now)
        self._recheck(self.connections.values(), now)
        usable = self.gate.usable_workers(now)
        self._announce(usable, schedule.buildbot_view(usable))
        self._prune_invites(now)

    def _announce(
        self, usable: dict[str, model.Worker], view: dict[str, tuple[str, Any]], changed: bool | None = None
    ) -> None:
        """Tell Buildbot the usable workers if they (or ``legacy_pb``) changed; end the sessions
        of workers no longer usable. Before the service runs: at its first tick."""
        if not self.running:
            self._event_at = self._earlier(self._event_at, self.clock.seconds())
            return
        self.sessions.end_all_but(usable, "worker no longer enrolled")
        legacy_pb_changed = self._legacy_pb_changed()  # first: it remembers what it saw
        if changed is None:
            changed = view != self._announced
        if changed or legacy_pb_changed:
            self._announced = view
            if self.on_workers_changed is not None:
                self.on_workers_changed(usable)

    def _recheck(self, connections: Iterable[EnrolledWorker], now: datetime) -> None:
        for obj in list(connections):
            decision = self._still_allowed(obj, now)
            if not decision.accepted:
                self._kick(obj, decision)
            else:
                self._dropping.discard(obj)  # allowed again (restored meanwhile)

    def _still_allowed(self, obj: EnrolledWorker, now: datetime) -> gatemod.Decision:
        """The gate's re-check, and the binding: a FURL bound (or re-bound) to another key
        since this connection was let in drops it too."""
        decision = self.gate.still_allowed(obj.name, obj.swissnum, now)
        return binding.check(decision, self.gate.registry.workers.get(obj.name), obj.key)

    def bind_key(self, obj: EnrolledWorker) -> Any:
        """``bind_key``: bind ``obj``'s worker to the key of its connection; answered once on disk."""
        self.worker_for(obj)
        key = obj.key
        if key is None:
            raise Refused(binding.NO_KEY)
        name = obj.name
        outcome: dict[str, str] = {}

        def written(_: None) -> dict[str, str]:
            log.info(
                "worker {worker!r} ({peer}): FURL {how} worker key {key}",
                worker=name, peer=obj.peer, key=key,
                how="bound to" if outcome["status"] == "bound" else "already bound to",
            )
            return outcome

        def not_applied(failure: Failure) -> None:
            failure.trap(BBEnrollError)
            raise Refused(str(failure.value))

        d = self.writer.submit(binding.bind_edit(name, key, self.now(), outcome))
        d.addCallbacks(written, not_applied)
        return d

    def _retry_soon(self) -> None:
        """A master's own edit of the clock's events failed: look at them again at the next tick."""
        self._event_at = self._earlier(self._event_at, self.clock.seconds() + self.poll_interval)

    @staticmethod
    def _seconds_of(when: datetime | None) -> float | None:
        return when.timestamp() if when is not None else None

    @staticmethod
    def _earlier(a: float | None, b: float | None) -> float | None:
        return b if a is None else a if b is None else min(a, b)

    def _reload(self) -> defer.Deferred[None]:
        """Reload a changed registry off the loop (one ``stat`` if it did not change); fires once
        it is applied, or once the load in flight settled. Never fails."""
        now, announced = self.now(), self._announced

        def prepare(old: LoadedRegistry, new: LoadedRegistry) -> schedule.Plan:  # in the thread
            return schedule.plan(old.registry, new.registry, now, announced)

        d = self.reloader.poll_off_loop(self.run_off_loop, prepare)
        d.addCallback(self._reloaded)
        d.addErrback(lambda f: log.failure("bbenroll: while applying a reloaded registry", f))
        return d

    def _reloaded(self, result: tuple[LoadedRegistry, schedule.Plan] | None) -> None:
        if result is not None:
            self._apply(*result)

    def _reload_now(self) -> None:
        """Reload a changed registry on this thread (the start, a latent instance's start)."""
        old = self.gate.registry
        loaded = self.reloader.poll()
        if loaded is not None:
            self._apply(loaded, schedule.plan(old, loaded.registry, self.now(), self._announced))

    def _apply(self, loaded: LoadedRegistry, plan: schedule.Plan) -> None:
        """Put a reloaded registry in force, by worker: only what changed is looked at."""
        now = self.now()
        registry = loaded.registry
        self.gate = plan.gate
        self.status.forget_removed(set(plan.removed))
        for name in plan.removed:
            self._last_connected.pop(name, None)
        every = plan.master_changed  # a new identity or policy concerns every connection
        touched = [obj for obj in self.connections.values() if every or obj.name in plan.changed]
        self._to_check |= {obj for obj in touched if obj in self._subscribed}  # a serial may have grown
        self._ephemeral = plan.ephemeral
        self._ephemeral_at = None  # looked at on the next tick (only the ephemeral workers)
        self._event_at = self._seconds_of(plan.next_event)
        self._rotation_check_at = self._seconds_of(plan.next_rotation)
        if self.identities is not None and (every or registry.master.previous is not None):
            self._sync_identities(now)  # a roll: serve the new identity at once
        self._recheck(touched, now)
        # compared in the thread, unless Buildbot was told something else meanwhile
        changed = plan.view_changed if plan.announced is self._announced else None
        self._announce(plan.usable, plan.view, changed)
        self._prune_invites(now)
        if self._event_at is not None and self._event_at <= self.clock.seconds():
            self._clock_event(now)  # planned at an earlier "now" (in the thread)

    # -- master identities (key rollover) -------------------------------------------

    def _sync_identities(self, now: datetime) -> None:
        """Serve the registry's identity, and its previous one until it retires; retire the rest.

        The previous identity retires by this clock at once (its ``until``, or every
        usable worker confirmed), even before the registry write that removes it lands.
        """
        identities = self.identities
        if identities is None:
            return
        registry = self.gate.registry
        master = registry.master
        wanted = {master.tubid: master.identity}
        retirement = model.identity_retirement(master, registry.workers.values(), now)
        previous = master.previous
        # once retired, for good: a rotation after the roll may make a worker look
        # unconfirmed again before the registry write that removes `previous` lands
        if previous is not None and retirement is None and previous.tubid not in self._retired_tubids:
            wanted[previous.tubid] = previous.identity
        for tubid, identity in wanted.items():
            if tubid not in identities.tubs:
                try:
                    pem = load_identity(identity_path(self.registry_path, identity)).pem
                    identities.add(pem, master.location)
                except (BBEnrollError, ValueError) as e:  # store.load checked it: a file changed since
                    log.error("bbenroll: cannot serve master identity {tubid}: {error}", tubid=tubid,
                              error=str(e))
                    continue
                log.info("bbenroll: serving master identity {tubid}", tubid=tubid)
        if master.tubid in identities.tubs:
            self.tub = identities.tubs[master.tubid]
        for tubid in identities.tubids():
            if tubid not in wanted and len(identities.tubs) > 1:
                self._retire_identity(tubid, retirement or "it is no longer in the registry")
        if previous is not None and (retirement is not None or previous.tubid in self._retired_tubids):
            self._remove_previous_identity(previous.tubid, retirement or "retired earlier")

    def _retire_identity(self, tubid: str, why: str) -> None:
        assert self.identities is not None
        old = [obj for obj in self.connections.values() if obj.broker.tub.tubID == tubid]
        log.info(
            "bbenroll: retiring master identity {tubid} ({why}); dropping its {count} connections",
            tubid=tubid,
            why=why,
            count=len(old),
        )
        for obj in old:  # nothing is offered over them any more; their sessions wait for a resume
            self._subscribed.discard(obj)
            self._to_check.discard(obj)
            obj.updater = None
            if not obj.broker.disconnected:  # (the Tub's stop would too, for the brokers it knows)
                self._audit(auditing.dropped(obj.name, obj.swissnum, obj.peer, "master identity retired"))
                obj.broker.shutdown(Failure(DeadReferenceError(RETIRED)))
        self._retired_tubids.add(tubid)
        d = self.identities.retire(tubid)  # stops its Tub: the rest of its connections end
        d.addErrback(lambda f: log.failure("bbenroll: while retiring a master identity", f))

    def _remove_previous_identity(self, tubid: str, why: str) -> None:
        """Remove ``[master] previous`` from the registry (once; retried by the writer)."""
        if self._retiring_identity == tubid:
            return
        self._retiring_identity = tubid

        def edit(editor: Editor) -> None:  # in the writer's thread, under the lock
            master = editor.master
            if master.previous is not None and master.previous.tubid == tubid:
                editor.set_master(model.retire_identity(master))

        def done(result: Any) -> None:
            if isinstance(result, Failure):
                self._retiring_identity = None  # the next tick asks again
                self._retry_soon()
                log.info("bbenroll: cannot remove the retired identity from the registry: {why}",
                         why=str(result.value))
            else:
                log.info("bbenroll: removed the retired master identity {tubid} from the registry ({why})",
                         tubid=tubid, why=why)

        self.writer.submit(edit).addBoth(done)

    # -- pushed rotation ------------------------------------------------------------

    def subscribe(self, obj: EnrolledWorker, updater: Any, serial: int) -> None:
        """``subscribe_updates``: remember the updater (a second one replaces the first)."""
        if obj.updater is not updater:
            # an offer in flight through the old updater no longer counts; but when the last
            # offer was made still does: re-subscribing is no way around OFFER_RETRY
            obj.offering = False
        obj.updater = updater
        obj.serial = serial
        obj.call_failed_logged = False
        self._subscribed.add(obj)
        self._to_check.add(obj)
        self._offer_due()

    def _needs_offer(self, obj: EnrolledWorker, worker: model.Worker) -> bool:
        # a different secret than the current one: the one a rotation replaced (the gate let it in);
        # or the identity a roll replaced: the newest FURL carries the new TubID
        return (
            obj.serial < worker.serial
            or obj.swissnum != worker.swissnum
            or obj.broker.tub.tubID != self.gate.registry.master.tubid
        )

    def _offer_due(self) -> None:
        """Offer the registry's newest FURL to the subscribed connections that lack it."""
        now = self.now()
        seconds = self.clock.seconds()
        for name, offered_at in list(self._offers_in_flight.items()):
            if seconds - offered_at >= self.offer_retry:
                del self._offers_in_flight[name]  # no answer: its place goes to the next worker
        # never offered first, then the longest waiting: a retry does not starve the others
        for obj in sorted(self._to_check, key=_offer_order):
            if obj.updater is None:
                self._to_check.discard(obj)
                continue
            decision = self.gate.still_allowed(obj.name, obj.swissnum, now)
            if not decision.accepted:
                self._to_check.discard(obj)  # the re-check drops it; never offer over it
                continue
            worker = self.gate.registry.workers[obj.name]
            if not worker.is_usable(now) or not self._needs_offer(obj, worker):
                self._to_check.discard(obj)
                continue
            recent = obj.offered_at is not None and seconds - obj.offered_at < self.offer_retry
            if obj.offering and recent:
                continue  # one offer in flight; one whose answer never came is lost after OFFER_RETRY
            newer = obj.offered_serial is None or worker.serial > obj.offered_serial
            if not newer and recent:
                continue
            in_flight = self._offers_in_flight
            if obj.name not in in_flight and len(in_flight) >= self.max_offers_in_flight:
                break  # the rest stay to check: offered as places free up
            self._offer(obj, worker)

    def _offer(self, obj: EnrolledWorker, worker: model.Worker) -> None:
        serial, furl = worker.serial, self.gate.registry.furl(worker)
        obj.offering = True
        obj.offered_serial = serial
        obj.offered_at = self.clock.seconds()
        self._offers_in_flight[obj.name] = obj.offered_at
        updater = obj.updater
        self.status.offered(obj.name, serial)
        log.info("offering worker {worker!r} FURL serial {serial}", worker=obj.name, serial=serial)

        def settled(result: Any) -> None:
            if obj.updater is updater:
                obj.offering = False
            if isinstance(result, Failure) and not obj.call_failed_logged:
                obj.call_failed_logged = True  # once per connection: a dead link fails every call
                log.info(
                    "worker {worker!r} ({peer}): FURL offer failed: {why}",
                    worker=obj.name,
                    peer=obj.peer,
                    why=clean_reason(str(result.value) or type(result.value).__name__),
                )

        try:
            d = updater.callRemote("offer_furl", serial, furl)
        except Exception:  # a reference Foolscap already knows to be dead, or a violation
            d = defer.fail(Failure())
        d.addBoth(settled)

    def confirm(self, obj: EnrolledWorker, serial: int) -> Any:
        """``confirm_furl``: only over the worker's current secret; answered once on disk."""
        worker = self.worker_for(obj)
        if obj.swissnum != worker.swissnum or obj.broker.tub.tubID != self.gate.registry.master.tubid:
            raise Refused(CONFIRM_OVER_NEW)
        if serial > worker.serial:
            # the CLI may have rotated it since our last poll: look again once the file is reloaded
            d = self._reload()
            d.addCallback(lambda _: self._confirm_reloaded(obj, serial))
            return d
        return self._confirm(obj, worker, serial)

    def _confirm_reloaded(self, obj: EnrolledWorker, serial: int) -> Any:
        worker = self.worker_for(obj)
        if serial > worker.serial:
            raise Refused(UNKNOWN_SERIAL)
        return self._confirm(obj, worker, serial)

    def _confirm(self, obj: EnrolledWorker, worker: model.Worker, serial: int) -> Any:
        obj.serial = max(obj.serial, serial)
        self._offers_in_flight.pop(obj.name, None)  # it moved (to this FURL or an older one): a place is free
        if serial < worker.serial:
            # it moved to an older FURL than the newest: the offer of the newest was lost or
            # raced a rotation; offer it now (one offer per confirm: bounded by its own calls)
            obj.offered_at = None
            self._to_check.add(obj)
            self._offer_due()
            return {"status": "stale"}
        if worker.delivered is not None and worker.delivered >= serial:
            self.status.delivered(obj.name, serial)
            return {"status": "confirmed"}  # a repeated confirmation: nothing to write
        name, now = obj.name, self.now()  # read here: the edit runs in the writer's thread

        def edit(editor: Editor) -> None:
            current = editor.worker(name)  # as on disk, under the lock
            if not current.is_usable(now):
                raise WrongState(f"worker {name!r} is {current.state(now)}")
            editor.update(model.confirm(current, serial, now))

        def written(_: None) -> dict[str, str]:
            self.status.delivered(name, serial)
            return {"status": "confirmed"}

        def not_applied(failure: Failure) -> None:
            failure.trap(BBEnrollError)  # removed or revoked meanwhile: one line for the worker
            raise Refused(str(failure.value))

        d = self.writer.submit(edit)
        d.addCallbacks(written, not_applied)
        return d

    def update_failed(self, obj: EnrolledWorker, serial: int, reason: str) -> None:
        """``furl_update_failed``: the worker keeps its old FURL; the offer is made again later."""
        why = clean_reason(reason)
        log.info(
            "worker {worker!r} could not move to FURL serial {serial}: {why}",
            worker=obj.name,
            serial=serial,
            why=why,
        )
        self.status.update_failed(obj.name, serial, why, self.now())
        self._offers_in_flight.pop(obj.name, None)
        obj.offering = False
        obj.offered_at = self.clock.seconds()  # not again before OFFER_RETRY
        self._to_check.add(obj)
        self.status_writer.changed()

    def _after_write(self) -> None:
        """The master wrote the registry: use it now (off the loop), not at the next poll."""
        if not self.running:  # a write that was under way when the service stopped
            return
        self._reload().addCallback(lambda _: self._offer_due())

    def _rotate_due(self, now: datetime) -> None:
        """``rotate_every``: queue the rotation of (a bounded number of) workers that reached it.

        The registry is looked at only when the first worker's rotation is due (computed on
        each reload, master/schedule.py), and on every tick while more are due than one tick
        rotates; a rotation that failed is tried again after :data:`ROTATION_CHECK`.
        """
        seconds = self.clock.seconds()
        if self._rotation_check_at is None or seconds < self._rotation_check_at:
            return
        default = self.gate.registry.master.rotate_every
        room = max(0, self.max_rotations_per_tick - len(self._rotating))
        candidates = (
            name
            for name, worker in self.gate.registry.workers.items()
            if name not in self._rotating and model.rotation_due(worker, default, now)
        )
        due = list(itertools.islice(candidates, room + 1))
        more = len(due) > room
        due = due[:room]
        for name in due:
            self._rotating.add(name)
        # the queued ones' reload plans again; until then, the first one not queued
        later = schedule.next_rotation(self.gate.registry, now, skip=self._rotating)
        self._rotation_check_at = seconds if more else self._seconds_of(later)
        if not due:
            return
        log.info(
            "bbenroll: rotating {count} workers by policy (rotate_every): {names}",
            count=len(due),
            names=", ".join(due[:10]) + (f" and {len(due) - 10} more" if len(due) > 10 else ""),
        )
        for name in due:
            self.writer.submit(self._policy_rotation(name, now)).addBoth(self._rotated, name)

    @staticmethod
    def _policy_rotation(name: str, now: datetime) -> Callable[[Editor], None]:
        def edit(editor: Editor) -> None:  # in the writer's thread
            worker = editor.worker(name)  # as on disk, under the lock: the CLI may have rotated it
            if worker.is_usable(now) and model.rotation_due(worker, editor.registry.master.rotate_every, now):
                editor.update(model.rotate(worker, now))

        return edit

    def _rotated(self, result: Any, name: str) -> None:
        self._rotating.discard(name)
        if isinstance(result, Failure):
            log.info("bbenroll: not rotating {worker!r}: {why}", worker=name, why=str(result.value))
            self._rotation_check_at = self._earlier(
                self._rotation_check_at, self.clock.seconds() + self.rotation_check
            )

    # -- latent workers (master/latent.py) ------------------------------------------

    def current_worker(self, name: str) -> model.Worker | None:
        """Registry worker ``name`` as the file says now (a stat() unless it changed since the last
        poll): a latent instance is not started for a worker revoked a moment ago."""
        self._reload_now()
        return self.gate.registry.workers.get(name)

    # -- ephemeral workers ----------------------------------------------------------

    def _is_busy(self, name: str) -> bool:
        if self.busy is None:
            return False
        try:
            return bool(self.busy(name))
        except Exception:
            log.failure("bbenroll: cannot tell whether {worker!r} has a running build", worker=name)
            return True  # when in doubt, a worker is not removed

    def _remove_ephemeral(self, now: datetime) -> None:
        """Queue the removal of the ephemeral workers disconnected longer than the timeout.

        Only when the first one is due (:attr:`_ephemeral_at`: computed here, moved by a
        reload and by an ephemeral worker's disconnect); only the ephemeral workers are looked at.
        """
        seconds = self.clock.seconds()
        if self._ephemeral_at is not None and seconds < self._ephemeral_at:
            return
        self._ephemeral_at = None
        if not self._ephemeral:
            return
        registry = self.gate.registry
        connected = {obj.name for obj in self.connections.values() if not obj.broker.disconnected}
        for name in connected & self._ephemeral:  # a connection's last moment is now
            self._last_connected[name] = now
        candidates = {
            name: registry.workers[name]
            for name in self._ephemeral
            if name in registry.workers and name not in self._removing
        }
        timeout = ephemeral.timeout_of(registry.master)
        started = self._started_at or now
        due = ephemeral.due_for_removal(
            candidates,
            now=now,
            timeout=timeout,
            connected=connected,
            last_connected=self._last_connected,
            started=started,
            busy=self._is_busy,
        )
        # when to look again: the next one's timeout, or the next tick for a busy one past it
        for name, worker in candidates.items():
            if name in connected or name in due:
                continue
            at = schedule.ephemeral_due_at(
                ephemeral.disconnected_since(worker, self._last_connected, started), timeout
            )
            next_at = self.poll_interval + seconds if at <= now else self._seconds_of(at)
            self._ephemeral_at = self._earlier(self._ephemeral_at, next_at)
        for name in due:
            worker = registry.workers[name]
            since = ephemeral.disconnected_since(worker, self._last_connected, self._started_at or now)
            log.info(
                "bbenroll: removing ephemeral worker {worker!r}: disconnected since {since}",
                worker=name,
                since=format_time(since),
            )
            self._removing.add(name)
            d = self.writer.submit(self._ephemeral_removal(name, worker.swissnum))
            d.addBoth(self._ephemeral_removed, name)

    @staticmethod
    def _ephemeral_removal(name: str, swissnum: str) -> Callable[[Editor], None]:
        def edit(editor: Editor) -> None:  # in the writer's thread, under the lock
            current = editor.workers.get(name)
            # re-enrolled (a new secret) or made permanent since: not the worker we decided on
            if current is not None and current.ephemeral and current.swissnum == swissnum:
                editor.remove(name)  # recorded as `removed`, actor master

        return edit

    def _ephemeral_removed(self, result: Any, name: str) -> None:
        self._removing.discard(name)
        if isinstance(result, Failure):
            log.info("bbenroll: not removing ephemeral worker {worker!r}: {why}", worker=name,
                     why=str(result.value))

    @staticmethod
    def _buildbot_view(usable: dict[str, Any]) -> dict[str, tuple[str, Any]]:
        """What Buildbot is configured from: usable workers, passwords, options."""
        return schedule.buildbot_view(usable)

    # -- Buildbot's attachment (the status file) ---------------------------------------

    def _is_attached(self, name: str) -> bool:
        assert self.attached is not None
        try:
            return bool(self.attached(name))
        except Exception:
            log.failure("bbenroll: cannot tell whether {worker!r} is attached in Buildbot", worker=name)
            return False

    def _check_attached(self) -> None:
        """Ask Buildbot about the workers connected but not attached when last asked (each tick:
        they are few, and an attach should show soon); about every watched worker once a
        :data:`~bbenroll.master.status.HEARTBEAT` (a detach). A change is a batched status write."""
        if self.attached is None:
            return
        seconds = self.clock.seconds()
        if seconds >= self._attached_sweep_at:
            self._attached_sweep_at = seconds + HEARTBEAT.total_seconds()
            names = set(self.status.watched()) | self._unattached
        elif self._unattached:
            names = set(self._unattached)
        else:
            return
        changed = False
        for name in names:
            attached = self._is_attached(name)
            changed |= self.status.set_attached(name, attached)
            link = self.status.workers.get(name)
            if not attached and link is not None and link.connections:
                self._unattached.add(name)
            else:
                self._unattached.discard(name)
        if changed:
            self.status_writer.changed()
