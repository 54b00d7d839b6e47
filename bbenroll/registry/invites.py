"""Invites: one-off or reusable secrets that only enroll new workers (docs/fleets.md).

An invite FURL pins the master like a worker FURL, but its secret can do one
thing: make the master add a worker (or re-enroll one) and hand back that
worker's own FURL. The registry keeps only a hash of the secret
(``[invites.ID]``), never the secret. Pure: no I/O, ``now`` passed in.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from bbenroll.errors import BBEnrollError, WorkerExists, WrongState
from bbenroll.furl import new_swissnum
from bbenroll.registry.model import (
    WORKER_NAME_MAX,
    Worker,
    check_buildbot_name,
    is_worker_name,
    new_worker,
)
from bbenroll.times import format_time, to_utc

DEFAULT_TTL = timedelta(hours=1)
ID_PREFIX = "inv-"
ID_RE = re.compile(r"inv-[a-z2-7]{8}")
ID_RULE = '"inv-" and 8 lowercase base32 characters'
HASH_PREFIX = "sha256:"
# the prefix must leave room for "-<host>"; a host of one character at least
PREFIX_MAX = WORKER_NAME_MAX - 2
_BASE32 = "abcdefghijklmnopqrstuvwxyz234567"
_HOST_BAD_RE = re.compile(r"[^a-z0-9_-]+")


class InviteState(StrEnum):
    """An invite's state at ``now``: derived, never stored (a ``str``, like model.State)."""

    USABLE = "usable"
    USED_UP = "used-up"
    EXPIRED = "expired"
    REVOKED = "revoked"


class RefusalReason(StrEnum):
    """Why the master refuses an invite: the value is the message the worker reads."""

    USED_UP = "invite already used"
    EXPIRED = "invite expired"
    REVOKED = "invite revoked"


class InviteRefused(BBEnrollError):
    """The invite cannot enroll a worker (any more): ``reason`` says why."""

    reason: RefusalReason

    def __init__(self, invite_id: str | None = None) -> None:
        self.invite_id = invite_id
        super().__init__(self.reason.value)


class InviteUsedUp(InviteRefused):
    reason = RefusalReason.USED_UP


class InviteExpired(InviteRefused):
    reason = RefusalReason.EXPIRED


class InviteRevoked(InviteRefused):
    reason = RefusalReason.REVOKED


class ReenrollRefused(BBEnrollError):
    """A re-enrolling invite names a worker that was removed, revoked or has expired since the
    invite was made: it may never bring that worker back (``bbenroll restore`` does, on purpose)."""


class InviteNotFound(BBEnrollError):
    """No invite of that ID in the registry (``invite revoke ID``)."""


_REFUSALS: dict[InviteState, type[InviteRefused]] = {
    InviteState.USED_UP: InviteUsedUp,
    InviteState.EXPIRED: InviteExpired,
    InviteState.REVOKED: InviteRevoked,
}


@dataclass(frozen=True)
class Invite:
    """One ``[invites.ID]`` table. ``uses``: uses left (None when ``reusable``)."""

    id: str
    hash: str
    created: datetime
    expires: datetime
    uses: int | None = 1
    reusable: bool = False
    used: int = 0
    name: str | None = None
    prefix: str | None = None
    tags: tuple[str, ...] = ()
    ephemeral: bool = False
    worker_expires: timedelta | None = None
    note: str | None = None
    by: str | None = None
    revoked: datetime | None = None
    reenroll: bool = False

    def state(self, now: datetime) -> InviteState:
        # revoked first: an admin's decision says more than a date
        if self.revoked is not None:
            return InviteState.REVOKED
        if not self.reusable and (self.uses or 0) <= 0:
            return InviteState.USED_UP
        if self.expires <= now:
            return InviteState.EXPIRED
        return InviteState.USABLE

    def matches(self, secret: str) -> bool:
        """Whether ``secret`` is this invite's (constant time)."""
        return hmac.compare_digest(self.hash, invite_hash(secret))


def invite_state(invite: Invite, now: datetime) -> InviteState:
    return invite.state(now)


def invite_hash(secret: str) -> str:
    """``sha256:`` and the 64 hex digits of the secret's SHA-256: what the registry keeps."""
    return HASH_PREFIX + hashlib.sha256(secret.encode("ascii")).hexdigest()


def new_invite_id() -> str:
    """``inv-`` and 8 random base32 characters (random: not derived from the secret)."""
    return ID_PREFIX + "".join(secrets.choice(_BASE32) for _ in range(8))


def is_invite_id(text: str) -> bool:
    return isinstance(text, str) and ID_RE.fullmatch(text) is not None


def check_prefix(prefix: str) -> str:
    """A prefix must make valid names: a Buildbot identifier leaving room for ``-<host>``."""
    check_buildbot_name(prefix)
    if len(prefix) > PREFIX_MAX:
        raise WrongState(f"invite prefix {prefix!r} is too long: at most {PREFIX_MAX} characters")
    return prefix


def new_invite(
    now: datetime,
    *,
    name: str | None = None,
    prefix: str | None = None,
    tags: Iterable[str] = (),
    uses: int | None = 1,
    reusable: bool = False,
    ttl: timedelta = DEFAULT_TTL,
    ephemeral: bool = False,
    worker_expires: timedelta | None = None,
    note: str | None = None,
    by: str | None = None,
    reenroll: bool = False,
    taken_ids: Iterable[str] = (),
) -> tuple[Invite, str]:
    """A new invite and its secret (shown once; only its hash is kept)."""
    now = to_utc(now)
    if name is not None and prefix is not None:
        raise WrongState("an invite takes a name or a prefix, not both")
    if name is not None:
        check_buildbot_name(name)
    if prefix is not None:
        check_prefix(prefix)
    if reenroll and name is None:
        raise WrongState("a re-enrolling invite needs the name of the worker it re-enrolls")
    if reusable:
        uses = None
    elif uses is None or uses < 1:
        raise WrongState("an invite needs at least one use (or reusable)")
    if ttl <= timedelta(0):
        raise WrongState("an invite's lifetime must be positive")
    if worker_expires is not None and worker_expires <= timedelta(0):
        raise WrongState("the enrolled worker's lifetime must be positive")
    taken = set(taken_ids)
    invite_id = new_invite_id()
    while invite_id in taken:  # 40 bits: a collision is rare, but cheap to avoid
        invite_id = new_invite_id()
    secret = new_swissnum()
    invite = Invite(
        id=invite_id,
        hash=invite_hash(secret),
        created=now,
        expires=to_utc(now + ttl),
        uses=uses,
        reusable=reusable,
        name=name,
        prefix=prefix,
        tags=tuple(dict.fromkeys(tags)),
        ephemeral=ephemeral,
        worker_expires=worker_expires,
        note=note or None,
        by=by,
        reenroll=reenroll,
    )
    return invite, secret


def find(invites: Iterable[Invite], secret: str) -> Invite | None:
    """The invite ``secret`` belongs to; every hash is compared (constant time each)."""
    found = None
    digest = invite_hash(secret)
    for invite in invites:
        if hmac.compare_digest(invite.hash, digest):
            found = invite
    return found


def sanitize_host(host: str) -> str:
    """A short host name as part of a Buildbot name: lowercase, other characters as ``-``."""
    cleaned = _HOST_BAD_RE.sub("-", host.strip().lower()).strip("-")
    return cleaned or "host"


def unique_name(prefix: str, host: str, taken: Iterable[str] | Mapping[str, Any]) -> str:
    """``PREFIX-<host>`` as a valid Buildbot name, not in ``taken`` (``-2``, ``-3``, ... if it is)."""
    taken = set(taken)
    base = f"{prefix}-{sanitize_host(host)}"
    if not is_worker_name(base[:WORKER_NAME_MAX]):
        base = f"{prefix}-h{sanitize_host(host)}"  # (only a prefix ending oddly gets here)
    n = 1
    while True:
        suffix = "" if n == 1 else f"-{n}"
        candidate = base[: WORKER_NAME_MAX - len(suffix)].rstrip("-") + suffix
        if candidate not in taken and is_worker_name(candidate):
            return candidate
        n += 1


def redeem(
    invite: Invite, workers: Mapping[str, Worker], host: str, now: datetime
) -> tuple[Invite, Worker]:
    """Consume one use of ``invite`` for a worker on ``host``: the invite after, and the worker.

    The worker is new (or, for a ``reenroll`` invite, the named worker with new
    secrets). Raises an InviteRefused subclass when the invite is not usable,
    WorkerExists when its ``name`` is taken (and it does not re-enroll).
    """
    if isinstance(invite, Mapping) and isinstance(workers, Invite):
        invite, workers = workers, invite  # (fleet-contract.md spells it redeem(workers, invite, ...))
    now = to_utc(now)
    state = invite.state(now)
    if state is not InviteState.USABLE:
        raise _REFUSALS[state](invite.id)
    expires = to_utc(now + invite.worker_expires) if invite.worker_expires is not None else None
    if invite.name is not None:
        existing = workers.get(invite.name)
        if existing is not None and not invite.reenroll:
            raise WorkerExists(f"worker {invite.name!r} already exists")
        if invite.reenroll:
            if existing is None:
                raise ReenrollRefused(f"worker {invite.name!r} was removed")
            if not existing.is_usable(now):  # revoked or expired: never undone by an invite
                raise ReenrollRefused(f"worker {invite.name!r} is {existing.state(now)}")
            worker = _reenrolled(existing, invite, now, expires)
        else:
            worker = _enrolled(invite.name, invite, now, expires)
    else:
        worker = _enrolled(unique_name(invite.prefix or "worker", host, workers), invite, now, expires)
    after = replace(
        invite,
        used=invite.used + 1,
        uses=None if invite.reusable else (invite.uses or 0) - 1,
    )
    return after, worker


def _enrolled(name: str, invite: Invite, now: datetime, expires: datetime | None) -> Worker:
    worker = new_worker(name, now, expires=expires, tags=invite.tags)
    return replace(worker, enrolled_by=invite.id, ephemeral=invite.ephemeral)


def _reenrolled(worker: Worker, invite: Invite, now: datetime, expires: datetime | None) -> Worker:
    """A latent instance's new start: a new FURL secret, the old one gone at once, the binding removed.

    The PB password stays: Buildbot's latent worker object holds it from master.cfg, and a new one
    would refuse the instance's first login until a reconfig (and cost a reconfig per instance).
    The tunnel logs in only as its own worker, so the password alone is worth nothing outside it.
    """
    return replace(
        worker,
        swissnum=new_swissnum(),
        rotated=now,
        previous=None,
        bound=None,
        serial=worker.serial + 1,
        changed=now,
        expires=expires if expires is not None else worker.expires,
        tags=tuple(dict.fromkeys([*worker.tags, *invite.tags])),
        enrolled_by=invite.id,
        ephemeral=invite.ephemeral,
    )


def revoke(invite: Invite, now: datetime) -> Invite:
    if invite.revoked is not None:
        raise WrongState(f"invite {invite.id} is already revoked")
    return replace(invite, revoked=to_utc(now))


def prunable(invite: Invite, now: datetime) -> bool:
    """Nothing can enroll with it any more: expired, used up or revoked."""
    return invite.state(now) is not InviteState.USABLE


def prune(invites: Mapping[str, Invite], now: datetime) -> list[str]:
    """The IDs of the invites ``invite prune`` removes at ``now``, in the registry's order."""
    return [invite_id for invite_id, invite in invites.items() if prunable(invite, now)]


def invite_summary(invite: Invite, now: datetime) -> dict[str, Any]:
    """What ``invite list`` shows: never the hash."""
    from bbenroll.registry.kinds import format_duration

    return {
        "id": invite.id,
        "state": invite.state(now),
        "uses_left": None if invite.reusable else invite.uses,
        "reusable": invite.reusable,
        "used": invite.used,
        "created": format_time(invite.created),
        "expires": format_time(invite.expires),
        "revoked": format_time(invite.revoked),
        "name": invite.name,
        "prefix": invite.prefix,
        "reenroll": invite.reenroll,
        "tags": list(invite.tags),
        "ephemeral": invite.ephemeral,
        "worker_expires": format_duration(invite.worker_expires) if invite.worker_expires else None,
        "by": invite.by,
        "note": invite.note,
    }
