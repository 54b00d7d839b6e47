"""Workers, the master's settings and their states. Pure: no I/O, ``now`` passed in.

What the file may hold and how plain data becomes these objects (and back)
is :mod:`bbenroll.registry.schema`.
"""

from __future__ import annotations

import functools
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from bbenroll.errors import InvalidName, WrongState
from bbenroll.furl import (
    build_furl,
    new_password,
    new_swissnum,
)
from bbenroll.times import format_time, to_utc

if TYPE_CHECKING:
    from bbenroll.registry.invites import Invite

# 2: invites, ephemeral and imported workers, legacy_pb (bbenroll upgrade rewrites a version 1 file)
REGISTRY_VERSION = 2
OLDEST_UPGRADABLE_VERSION = 1
WORKER_NAME_MAX = 50
DEFAULT_EXPIRING_WITHIN = timedelta(days=7)
# how long a rotated-away secret keeps working unless --grace says otherwise
DEFAULT_GRACE = timedelta(days=7)
# how long an ephemeral worker may stay disconnected before the master removes it
DEFAULT_EPHEMERAL_TIMEOUT = timedelta(minutes=10)
# a worker's ``rotate_every = "never"``: no policy rotation, whatever [master] says
NEVER = timedelta(0)

# Buildbot's own identifier rule (buildbot.util.identifiers.ident_re), which it
# applies to worker names with a maximum length of 50: what a registry may hold.
_IDENT_PATTERN = "[a-zA-Z\u00a0-\U0010ffff_-][a-zA-Z0-9\u00a0-\U0010ffff_-]*"
_ASCII_IDENT_RE = re.compile(r"[a-zA-Z_-][a-zA-Z0-9_-]*")
# New names (``bbenroll add``) keep to a safe part of it: ASCII and Latin-1
# letters (À-ÿ, none of which looks like another letter of the set), so no
# look-alikes from other scripts (Cyrillic ``а``), no invisible (``\u200b``),
# combining or reordering (``\u202e``) characters, and no leading ``-`` that a
# command line reads as an option.
SAFE_NAME_CHARACTERS = "ASCII or Latin-1 letters (À-ÿ), digits, '_' and '-', starting with a letter or '_'"
_LATIN1_LETTERS = "\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u00ff"  # without × and ÷
_SAFE_NAME_RE = re.compile(rf"[A-Za-z_{_LATIN1_LETTERS}][A-Za-z0-9_\-{_LATIN1_LETTERS}]*")


@functools.cache
def _ident_re() -> re.Pattern[str]:
    return re.compile(_IDENT_PATTERN)  # compiling the Unicode ranges costs ms: only when needed


def is_worker_name(name: str) -> bool:
    """Buildbot accepts ``name`` as a worker name (a registry may hold it)."""
    if not name or len(name) > WORKER_NAME_MAX:
        return False
    if name.isascii():
        return _ASCII_IDENT_RE.fullmatch(name) is not None
    return _ident_re().fullmatch(name) is not None


def _check_length(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise InvalidName("a worker name may not be empty")
    if len(name) > WORKER_NAME_MAX:
        raise InvalidName(
            f"worker name {name!r} is {len(name)} characters long; Buildbot allows at most {WORKER_NAME_MAX}"
        )


def check_buildbot_name(name: str) -> str:
    """The rule for names a registry holds: Buildbot's own (any script)."""
    _check_length(name)
    if not is_worker_name(name):
        raise InvalidName(
            f"worker name {name!r} is not a Buildbot identifier: use letters, digits, '_' and "
            "'-', not starting with a digit"
        )
    return name


def unsafe_name_reason(name: str) -> str | None:
    """Why a (Buildbot-valid) name is outside the safe set for new names, or None."""
    if _SAFE_NAME_RE.fullmatch(name):
        return None
    odd = next((char for char in name if not _SAFE_NAME_RE.fullmatch("a" + char)), None)
    if odd is not None and not odd.isascii():
        return (
            f"worker name {name!r} holds {odd!r} (U+{ord(odd):04X}); new names use {SAFE_NAME_CHARACTERS} "
            "(no look-alike, invisible or reordering characters)"
        )
    if name.startswith("-"):
        return f"worker name {name!r} starts with '-', which a command line reads as an option"
    return f"worker name {name!r} is not made of {SAFE_NAME_CHARACTERS}"


def check_worker_name(name: str) -> str:
    """The rule for a new worker's name: Buildbot's rule, within the safe set."""
    check_buildbot_name(name)
    reason = unsafe_name_reason(name)
    if reason is not None:
        raise InvalidName(reason)
    return name


class State(StrEnum):
    """A worker's state: derived from its times at ``now``, never stored.

    A ``str``: JSON output and tables show the value (``"active"``), and it
    compares equal to it.
    """

    ACTIVE = "active"
    EXPIRING = "expiring"
    ROTATING = "rotating"
    EXPIRED = "expired"
    REVOKED = "revoked"


STATES = tuple(state.value for state in State)
# the states in which the master refuses a worker (and Buildbot does not know it)
REFUSED_STATES = frozenset({State.REVOKED, State.EXPIRED})


@dataclass(frozen=True)
class Previous:
    """The secret a rotation replaced, still honoured until ``until``."""

    swissnum: str
    until: datetime


@dataclass(frozen=True)
class Bound:
    """The worker key (its client TubID) a FURL is bound to (docs/security.md), since ``at``."""

    tubid: str
    at: datetime


@dataclass(frozen=True)
class Worker:
    name: str
    swissnum: str
    password: str
    created: datetime
    rotated: datetime
    expires: datetime | None = None
    tags: tuple[str, ...] = ()
    note: str | None = None
    previous: Previous | None = None
    # the number of the worker's newest FURL: grows by one whenever its FURL changes
    serial: int = 0
    changed: datetime | None = None  # when serial last grew
    delivered: int | None = None  # the newest serial the worker confirmed
    delivered_at: datetime | None = None
    bound: Bound | None = None  # None: any worker key may use the FURL (as before binding existed)
    rotate_every: timedelta | None = None  # overrides [master] rotate_every; NEVER: not by policy
    revoked: datetime | None = None
    revoked_reason: str | None = None
    # enrolled through an invite (docs/fleets.md): the invite's ID; ephemeral: the running
    # master removes the worker once it has been disconnected for [master] ephemeral_timeout
    enrolled_by: str | None = None
    ephemeral: bool = False
    # imported from a master.cfg (docs/migration.md): legacy = it may still log in with its
    # password on [master] legacy_pb; moved = its first connection through its FURL, from
    # when on that password no longer logs in on the public port
    legacy: bool = False
    moved: datetime | None = None
    # per-worker Buildbot options ([workers.NAME.buildbot]), kept as written
    buildbot: Mapping[str, Any] = field(default_factory=dict)

    def state(self, now: datetime, expiring_within: timedelta = DEFAULT_EXPIRING_WITHIN) -> State:
        if self.revoked is not None:
            return State.REVOKED
        if self.expires is not None and self.expires <= now:
            return State.EXPIRED
        if self.previous is not None and self.previous.until > now:
            return State.ROTATING
        if self.expires is not None and self.expires - now <= expiring_within:
            return State.EXPIRING
        return State.ACTIVE

    def is_usable(self, now: datetime) -> bool:
        return self.state(now) not in REFUSED_STATES

    def accepts(self, swissnum: str, now: datetime) -> bool:
        """Would a connection presenting ``swissnum`` be let in at ``now``?"""
        if not self.is_usable(now):
            return False
        if hmac.compare_digest(self.swissnum, swissnum):
            return True
        prev = self.previous
        return prev is not None and prev.until > now and hmac.compare_digest(prev.swissnum, swissnum)


@dataclass(frozen=True)
class PreviousIdentity:
    """The master identity a ``master roll-identity`` replaced, still served until ``until``."""

    identity: str  # as written, like MasterSettings.identity
    tubid: str
    until: datetime


@dataclass(frozen=True)
class MasterSettings:
    identity: str  # as written: relative to the registry's directory unless absolute
    tubid: str
    location: tuple[str, ...]
    listen: str
    pb: str | None = None  # the master's loopback PB endpoint (used by the master hook)
    rotate_every: timedelta | None = None  # the rotation policy; None: secrets are rotated only by hand
    # the identity a roll replaced, served beside this one during the overlap (docs/rotation.md)
    previous: PreviousIdentity | None = None
    # the old public PB port kept open during a gradual cut-over (docs/migration.md)
    legacy_pb: str | None = None
    ephemeral_timeout: timedelta | None = None  # None: DEFAULT_EPHEMERAL_TIMEOUT

    def in_overlap(self, now: datetime) -> bool:
        """A previous identity is still served at ``now``."""
        return self.previous is not None and self.previous.until > now


def roll_identity(
    master: MasterSettings, identity: str, tubid: str, now: datetime, grace: timedelta = DEFAULT_GRACE
) -> MasterSettings:
    """``master`` with a new identity; the current one is served ``grace`` longer (0: not at all).

    One roll at a time: during an overlap a second roll would have to drop the
    previous identity at once, cutting off the workers still on it.
    """
    now = to_utc(now)
    check_roll(master, now)
    if tubid == master.tubid:
        raise WrongState("the new identity has the same tubid as the current one")
    previous = PreviousIdentity(master.identity, master.tubid, to_utc(now + grace)) if grace else None
    return replace(master, identity=identity, tubid=tubid, previous=previous)


def check_roll(master: MasterSettings, now: datetime) -> None:
    """Refuse a roll while a previous identity is still served (WrongState)."""
    if master.previous is not None and master.in_overlap(to_utc(now)):
        raise WrongState(
            f"the master identity was rolled already: the old tubid {master.previous.tubid} is served "
            f"until {format_time(master.previous.until)}; roll again after that, or once every worker "
            "confirmed its new FURL (the running master then retires the old identity)"
        )


def retire_identity(master: MasterSettings) -> MasterSettings:
    """``master`` without its previous identity (the overlap ended)."""
    return replace(master, previous=None)


def on_previous_identity(master: MasterSettings, worker: Worker) -> bool:
    """Whether ``worker`` may still hold a FURL under the previous identity's TubID.

    True while a previous identity exists and the worker has not confirmed its
    newest FURL (every FURL minted since the roll carries the new TubID; a worker
    added since has serial 0 and never held an old one).
    """
    if master.previous is None or worker.revoked is not None or worker.serial == 0:
        return False
    return (worker.delivered or 0) < worker.serial


def identity_retirement(master: MasterSettings, workers: Iterable[Worker], now: datetime) -> str | None:
    """Why the previous identity should retire at ``now`` (None: not yet, or there is none).

    At the first of: its overlap ended, or every usable worker confirmed a FURL
    minted since the roll (revoked and expired workers do not count).
    """
    previous = master.previous
    if previous is None:
        return None
    if previous.until <= now:
        return f"its overlap ended at {format_time(previous.until)}"
    if all(not on_previous_identity(master, w) for w in workers if w.is_usable(now)):
        return "every worker confirmed a FURL under the new identity"
    return None


def location_mismatch(master: MasterSettings) -> str | None:
    """Why the FURLs' TCP hints may point at the wrong port, or None.

    ``init --listen tcp:12345`` once wrote hints with port 9989. A hint on
    another port is right only behind a port forward, so this is a warning,
    not a problem: ``bbenroll check`` says it and still passes.
    """
    from bbenroll.endpoints import listen_port
    from bbenroll.furl import tcp_hint_port

    port = listen_port(master.listen)
    hint_ports = [p for p in map(tcp_hint_port, master.location) if p is not None]
    if port is None or not hint_ports or port in hint_ports:
        return None
    ports = ", ".join(str(p) for p in dict.fromkeys(hint_ports))
    return (
        f"master.location: no hint uses port {port}, where master.listen ({master.listen}) listens; "
        f"workers will connect to port {ports}, which is right only if something forwards it to {port}"
    )


def usable(registry: Registry, now: datetime) -> dict[str, Worker]:
    """The workers Buildbot should know about at ``now``: not revoked, not expired.

    The one rule behind master.cfg's ``Enrollment.workers()``/``names()`` and the
    running service's reconfigs, so the two can never disagree.
    """
    return {name: w for name, w in registry.workers.items() if w.is_usable(now)}


@dataclass
class Registry:
    master: MasterSettings
    workers: dict[str, Worker]
    version: int = REGISTRY_VERSION
    invites: dict[str, Invite] = field(default_factory=dict)  # [invites.ID] (registry/invites.py)

    def furl(self, worker: Worker) -> str:
        return build_furl(self.master.tubid, self.master.location, worker.swissnum)


# --- transitions: each returns a new Worker --------------------------------


def new_worker(
    name: str,
    now: datetime,
    *,
    expires: datetime | None = None,
    tags: Iterable[str] = (),
    note: str | None = None,
) -> Worker:
    check_buildbot_name(name)  # the registry's rule; ``add`` applies check_worker_name's stricter one first
    now = to_utc(now)
    check_expiry(expires, now)
    return Worker(
        name=name,
        swissnum=new_swissnum(),
        password=new_password(),
        created=now,
        rotated=now,
        expires=expires,
        tags=tuple(dict.fromkeys(tags)),
        note=note or None,
    )


def check_expiry(expires: datetime | None, now: datetime) -> None:
    """A new expiry must lie ahead (None: never expires)."""
    if expires is not None and expires <= now:
        raise WrongState(f"expiry {format_time(expires)} is in the past")


KEEP: Any = object()  # "not given" for change(): expires=None means "never", so None cannot mean "leave it"


def change(
    worker: Worker,
    now: datetime,
    *,
    expires: datetime | None = KEEP,
    tag: tuple[str, ...] = (),
    untag: tuple[str, ...] = (),
    note: str | None = KEEP,
    rotate_every: timedelta | None = KEEP,
) -> Worker:
    """``worker`` with new settings (``bbenroll set``); its secrets and dates are never touched.

    ``rotate_every``: the worker's own rotation policy (NEVER: exempt; None:
    follow ``[master] rotate_every``).
    """
    changes: dict[str, Any] = {}
    if rotate_every is not KEEP:
        if rotate_every is not None and rotate_every < timedelta(0):
            raise ValueError("rotate_every may not be negative")
        changes["rotate_every"] = rotate_every
    if expires is not KEEP:
        check_expiry(expires, to_utc(now))
        changes["expires"] = expires
    if tag or untag:
        kept = [t for t in worker.tags if t not in untag]
        changes["tags"] = tuple(dict.fromkeys([*kept, *(t for t in tag if t not in untag)]))
    if note is not KEEP:
        changes["note"] = note or None  # --note "" clears it
    return replace(worker, **changes)


def rotate(
    worker: Worker,
    now: datetime,
    grace: timedelta | None = DEFAULT_GRACE,
    *,
    compromised: bool = False,
) -> Worker:
    """A new swissnum; with ``grace`` the current one stays valid that long.

    The PB password is kept: it is an internal detail between the tunnel and
    the loopback PB port, usable only through an authenticated tunnel, so a
    routine rotation must not force every worker admin to run
    ``worker create --force``. Only ``compromised`` changes it, and refuses the
    old secret at once (no grace: the thief may hold both).
    A rotation during a grace window replaces the older previous secret: only
    the secret being rotated away gets a grace period.
    """
    if worker.revoked is not None:
        raise WrongState(f"worker {worker.name!r} is revoked; use 'bbenroll restore' instead")
    if compromised and grace:
        raise ValueError("a compromised rotation has no grace period")
    now = to_utc(now)
    previous = Previous(worker.swissnum, to_utc(now + grace)) if grace and not compromised else None
    return replace(
        worker,
        swissnum=new_swissnum(),
        password=new_password() if compromised else worker.password,
        rotated=now,
        previous=previous,
        serial=worker.serial + 1,
        changed=now,
        # the thief may hold the worker's key too: the next `worker create` binds afresh
        bound=None if compromised else worker.bound,
    )


def revoke(worker: Worker, now: datetime, reason: str | None = None) -> Worker:
    if worker.revoked is not None:
        raise WrongState(f"worker {worker.name!r} is already revoked")
    return replace(worker, revoked=to_utc(now), revoked_reason=reason or None, previous=None)


def restore(worker: Worker, now: datetime) -> Worker:
    """Un-revoke with fresh secrets: the revoked FURL never works again."""
    if worker.revoked is None:
        raise WrongState(f"worker {worker.name!r} is not revoked")
    now = to_utc(now)
    return replace(
        worker,
        swissnum=new_swissnum(),
        password=new_password(),
        rotated=now,
        revoked=None,
        revoked_reason=None,
        previous=None,
        serial=worker.serial + 1,
        changed=now,
        bound=None,  # whoever got the worker revoked may hold its key
    )


def change_location(worker: Worker, now: datetime) -> Worker:
    """The master's connection hints changed (``master set-location``): the worker's
    FURL is new, its secrets are not. The serial grows so that a running master
    pushes the new FURL."""
    if worker.revoked is not None:
        raise WrongState(f"worker {worker.name!r} is revoked: its FURL is never handed out")
    return replace(worker, serial=worker.serial + 1, changed=to_utc(now))


def confirm(worker: Worker, serial: int, now: datetime) -> Worker:
    """The worker confirmed that it connects with FURL ``serial`` (pushed rotation).

    Idempotent: a confirmation of a serial already confirmed (or older) returns
    ``worker`` itself, not even the date changes, so a repeated or late
    confirmation writes nothing. Serial 0 is the enrolment FURL, which is never
    pushed: there is nothing to confirm. Confirming the newest serial ends the
    previous secret's grace now; its record stays, so the master refuses the old
    FURL as "retired by rotation" rather than as an unknown secret.
    """
    if serial > worker.serial:
        raise WrongState(
            f"worker {worker.name!r} cannot confirm FURL {serial}: "
            f"the registry issued only up to {worker.serial}"
        )
    if serial < 1 or (worker.delivered is not None and worker.delivered >= serial):
        return worker
    now = to_utc(now)
    previous = worker.previous
    if serial == worker.serial and previous is not None and previous.until > now:
        previous = Previous(previous.swissnum, until=now)
    return replace(worker, delivered=serial, delivered_at=now, previous=previous)


def bind(worker: Worker, tubid: str, now: datetime) -> Worker:
    """Bind ``worker``'s FURL to the worker key ``tubid`` (``worker create`` asked the master to).

    Idempotent for the key already bound (the same worker back, not even the date
    changes); another key is refused: only ``unbind`` (``bbenroll rebind``) moves a FURL.
    """
    if worker.bound is not None:
        if worker.bound.tubid == tubid:
            return worker
        raise WrongState(
            f"worker {worker.name!r} is bound to another worker key; 'bbenroll rebind {worker.name}' first"
        )
    return replace(worker, bound=Bound(tubid, to_utc(now)))


def unbind(worker: Worker) -> Worker:
    """Forget the bound key (``bbenroll rebind``): the next ``worker create`` binds anew."""
    return replace(worker, bound=None)


class DeliveryState(StrEnum):
    """Whether the worker holds the registry's newest FURL (a ``str``, like State)."""

    CURRENT = "current"  # never changed since the worker was added
    PENDING = "pending"  # changed, not confirmed yet
    CONFIRMED = "confirmed"  # the worker confirmed the newest FURL


@dataclass(frozen=True)
class Delivery:
    state: DeliveryState
    serial: int  # the registry's newest serial for the worker
    since: datetime


def delivery(worker: Worker) -> Delivery:
    if worker.serial == 0:
        return Delivery(DeliveryState.CURRENT, 0, worker.created)
    if worker.delivered is not None and worker.delivered >= worker.serial and worker.delivered_at is not None:
        return Delivery(DeliveryState.CONFIRMED, worker.serial, worker.delivered_at)
    return Delivery(DeliveryState.PENDING, worker.serial, worker.changed or worker.rotated)


def rotation_due(worker: Worker, default_every: timedelta | None, now: datetime) -> bool:
    """Whether the rotation policy says ``worker``'s secret is old enough to rotate at ``now``.

    The worker's own ``rotate_every`` wins over ``default_every`` ([master]
    rotate_every); NEVER (``"never"`` in the file) turns the policy off for it.
    Never due for a revoked or expired worker, nor while a previous secret is
    still in its grace period: the last rotation has not been delivered yet, and
    rotating again would cut off a worker still on the older secret.
    """
    every = worker.rotate_every if worker.rotate_every is not None else default_every
    if not every:  # None or NEVER
        return False
    if not worker.is_usable(now):
        return False
    if worker.previous is not None and worker.previous.until > now:
        return False
    return now - worker.rotated >= every


# --- views -----------------------------------------------------------------


def bound_summary(bound: Bound | None) -> dict[str, Any] | None:
    """The key binding as ``list``/``show --json`` give it: the key's TubID (its fingerprint), when."""
    return {"fingerprint": bound.tubid, "at": format_time(bound.at)} if bound is not None else None


def worker_summary(
    worker: Worker, now: datetime, expiring_within: timedelta = DEFAULT_EXPIRING_WITHIN
) -> dict[str, Any]:
    """What ``list`` shows: no secrets."""
    sent = delivery(worker)
    return {
        "name": worker.name,
        "state": worker.state(now, expiring_within),
        "created": format_time(worker.created),
        "rotated": format_time(worker.rotated),
        "expires": format_time(worker.expires),
        "revoked": format_time(worker.revoked),
        "revoked_reason": worker.revoked_reason,
        "grace_until": format_time(worker.previous.until) if worker.previous else None,
        "tags": list(worker.tags),
        "note": worker.note,
        "serial": worker.serial,
        "bound": bound_summary(worker.bound),
        "delivery": {"state": sent.state, "serial": sent.serial, "since": format_time(sent.since)},
    }


def worker_details(
    registry: Registry,
    worker: Worker,
    now: datetime,
    expiring_within: timedelta = DEFAULT_EXPIRING_WITHIN,
) -> dict[str, Any]:
    """What ``show``/``add``/``rotate`` return: the summary plus the FURL."""
    details = worker_summary(worker, now, expiring_within)
    details["furl"] = registry.furl(worker)
    details["tubid"] = registry.master.tubid
    details["location"] = list(registry.master.location)
    return details


# --- moved to :mod:`.schema` -------------------------------------------------

# what importers of this module may still reach here; resolved on first use,
# because schema imports this module
_IN_SCHEMA = frozenset(
    {
        "BUILDBOT_OPTIONS",
        "Problems",
        "check_buildbot_options",
        "check_unique_secrets",
        "key_path",
        "registry_from_data",
        "worker_from_data",
        "worker_to_data",
    }
)


def __getattr__(name: str) -> Any:
    if name in _IN_SCHEMA:
        from bbenroll.registry import schema

        return getattr(schema, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
