"""The master's side of invites (docs/fleets.md): redeeming them, making them, cleaning up.

An invite FURL names the master like a worker's FURL, but its secret resolves to an
:class:`InviteObject`, which can do one thing: ``enroll(host)``. That consumes one use
of the invite and adds the worker in ONE edit of the :class:`~bbenroll.master.writer.RegistryWriter`,
which runs under the registry's lock on the invite as it is on disk then, so ten workers
racing for a single-use invite get one worker and nine refusals, never two workers. The
answer, the worker's own FURL, is sent only once that edit is on disk.

What an invite connection may cost the master is bounded as for guesses: it is never
marked authenticated (so it counts against its address's cap of unauthenticated
connections and its deadline), each ``enroll`` counts against the address like a
refusal does (the guard's growing delay), one ``enroll`` per connection, and the
connection is closed after its answer.

Nothing here logs or records the invite's secret, nor the invite FURL: only its ID.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from foolscap.api import DeadReferenceError, Referenceable
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from bbenroll.errors import BBEnrollError
from bbenroll.furl import build_furl
from bbenroll.master import gate as gatemod
from bbenroll.master.tub import address_of, peer_of
from bbenroll.registry.store import Editor
from bbenroll.tunnel.wire import Refused, RefusedForGood, RIInvite

if TYPE_CHECKING:
    from foolscap.broker import Broker

    from bbenroll.master.service import EnrollmentService

__all__ = ["MASTER", "InviteObject", "create_invite_edit", "enroll", "spent_master_invites"]

log = Logger(namespace="bbenroll")

MASTER = "master"  # the ``by`` of the invites the master makes itself (latent workers)
ENROLLING = "invite enrollments"  # what the guard counts an enrollment as, per address
ONE_ENROLL = "one enrollment per invite connection"
# the guard's delay of an enrollment is capped below the connection's deadline for an
# accepted secret (guard.AUTH_TIMEOUT, 10 s), which still runs on an invite connection
ENROLL_MAX_DELAY = 2.0
# seconds an invite connection may wait for its enrollment's write (the lock may be held)
ENROLL_TIMEOUT = 60.0
TIMED_OUT = "enrollment not written in time"


class InviteRefusal(BBEnrollError):
    """The edit found the invite unusable (used up, expired, revoked, gone) under the lock.

    A BBEnrollError, so the writer drops this one edit and writes the rest of its batch."""

    def __init__(self, message: str, permanent: bool = True) -> None:
        super().__init__(message)
        self.permanent = permanent


@implementer(RIInvite)
class InviteObject(Referenceable):
    """What an invite FURL resolves to, for one connection: it only enrolls, once."""

    def __init__(self, service: EnrollmentService, invite_id: str, broker: Broker) -> None:
        self.service = service
        self.invite_id = invite_id
        self.broker = broker
        self.peer = peer_of(broker)
        self.called = False

    def remote_enroll(self, host: str) -> Any:
        return enroll(self.service, self, host)

    def __repr__(self) -> str:
        # Foolscap puts its objects' reprs in failure texts and logs: no address, no module path
        return f"<InviteObject {self.invite_id} from {self.peer}>"


def enroll(service: EnrollmentService, obj: InviteObject, host: str) -> defer.Deferred[dict[str, str]]:
    """``enroll(host)``: one edit through the writer; ``{"name", "furl"}`` once it is on disk."""
    broker = obj.broker
    if obj.called:
        raise Refused(ONE_ENROLL)
    obj.called = True
    invite_id, peer = obj.invite_id, obj.peer
    # counted like a refusal: an address that enrolls many workers waits longer and longer
    # (up to the guard's maximum), and so does its next guess
    refusal = service.guard.refused(address_of(broker.transport), ENROLLING, service.clock.seconds())
    delay = min(refusal.delay, ENROLL_MAX_DELAY)
    answer: defer.Deferred[dict[str, str]] = defer.Deferred()
    result: dict[str, str] = {}

    def submit() -> None:
        now = service.now()
        # From here a use may be consumed, and its answer must not be lost: the connection leaves
        # the Doorkeeper (no auth deadline, no place in the per-address cap, where the oldest,
        # which this is, would go first), bounded by ENROLL_TIMEOUT instead, and closed after
        # its answer. It is still not marked authenticated (no larger buffer, no session).
        keeper = getattr(broker.tub, "doorkeeper", None)
        if keeper is not None:
            keeper.settled(broker.transport)
        broker.answer_later(ENROLL_TIMEOUT, lambda: broker.shutdown(Failure(DeadReferenceError(TIMED_OUT))))
        d = service.writer.submit(redeem_edit(invite_id, host, now, peer, result))
        d.addCallbacks(written, not_applied)
        d.addBoth(finish)
        d.chainDeferred(answer)

    def written(_: None) -> dict[str, str]:
        log.info(
            "enrolled worker {worker!r} from {peer} with invite {invite}",
            worker=result["name"], peer=peer, invite=invite_id,
        )
        return {"name": result["name"], "furl": result["furl"], "enrolled_by": invite_id}

    def not_applied(failure: Failure) -> None:
        failure.trap(BBEnrollError)
        error = failure.value
        permanent = getattr(error, "permanent", False)
        log.info("refused invite {invite} from {peer}: {why}", invite=invite_id, peer=peer, why=str(error))
        raise (RefusedForGood if permanent else Refused)(str(error))

    def finish(outcome: Any) -> Any:
        # the invite connection has done what it may do: closed once the answer has left
        broker.end_after_answers(Failure(DeadReferenceError("invite answered")))
        return outcome

    broker.answer_later(delay, submit)
    return answer


def redeem_edit(
    invite_id: str, host: str, now: datetime, peer: str, result: dict[str, str]
) -> Callable[[Editor], None]:
    """The writer's edit for one enrollment (in its thread, under the lock, on the registry as on disk)."""
    from bbenroll.registry import invites as invitesmod

    def edit(editor: Editor) -> None:
        invite = editor.registry.invites.get(invite_id)
        if invite is None:  # removed (pruned, or by the master) since the lookup
            raise InviteRefusal(str(gatemod.UNKNOWN))
        accepted, reason = gatemod.invite_state(invite, now)
        if not accepted:
            raise InviteRefusal(str(reason))
        try:
            invite, worker = invitesmod.redeem(invite, editor.registry.workers, host, now)
        except BBEnrollError as e:  # refused (used up meanwhile), or its name is taken: for good
            raise InviteRefusal(str(e)) from None
        editor.update_invite(invite)
        if worker.name in editor.workers:  # a re-enrolling invite (latent instances)
            editor.update(worker)
        else:
            editor.add(worker)
        # (the edit's own audit diff records `enrolled`, with the invite's ID: no note here)
        result["name"] = worker.name
        result["furl"] = editor.registry.furl(worker)  # the current identity and location

    return edit


def create_invite_edit(
    options: dict[str, Any], ttl: timedelta, now: datetime, result: dict[str, str]
) -> Callable[[Editor], None]:
    """The writer's edit that adds an invite made by the master (``by = "master"``).

    ``result["furl"]`` is the invite FURL: it exists only in memory and in the answer."""
    from bbenroll.registry import invites as invitesmod

    def edit(editor: Editor) -> None:
        invite, secret = invitesmod.new_invite(
            now, ttl=ttl, by=MASTER, taken_ids=set(editor.invites), **options
        )
        editor.add_invite(invite)
        master = editor.registry.master
        result["id"] = invite.id
        result["furl"] = build_furl(master.tubid, master.location, secret)

    return edit


def spent_master_invites(invites: dict[str, Any], now: datetime) -> list[str]:
    """The IDs of the invites the master made that can no longer enroll anyone (used up,
    expired, revoked): the master removes them, so nothing of a latent instance stays."""
    return sorted(
        invite_id for invite_id, invite in invites.items()
        if invite.by == MASTER and not gatemod.invite_state(invite, now)[0]
    )


def remove_invites_edit(ids: Iterable[str], now: datetime) -> Callable[[Editor], None]:
    """The writer's edit that removes the master's spent invites (rechecked under the lock)."""
    wanted = list(ids)

    def edit(editor: Editor) -> None:
        present = editor.registry.invites
        for invite_id in spent_master_invites({i: present[i] for i in wanted if i in present}, now):
            editor.remove_invite(invite_id)

    return edit
