"""Workers, the master's settings and their states. Pure: no I/O, ``now`` passed in.

``registry_from_data`` turns what ``tomllib`` read into checked objects and
collects every problem with the key it concerns; ``worker_to_data`` is its
inverse for one worker (what the registry stores).
"""

from __future__ import annotations

import functools
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from bbenroll.errors import FurlError, InvalidName, WrongState
from bbenroll.furl import (
    MIN_SWISSNUM_LENGTH,
    build_furl,
    check_hint,
    check_swissnum,
    check_tubid,
    is_base32,
    new_password,
    new_swissnum,
)
from bbenroll.times import format_time, to_utc

REGISTRY_VERSION = 1
WORKER_NAME_MAX = 50
DEFAULT_EXPIRING_WITHIN = timedelta(days=7)

# Buildbot's own identifier rule (buildbot.util.identifiers.ident_re), which it
# applies to worker names with a maximum length of 50.
_IDENT_PATTERN = "[a-zA-Z\u00a0-\U0010ffff_-][a-zA-Z0-9\u00a0-\U0010ffff_-]*"
_ASCII_IDENT_RE = re.compile(r"[a-zA-Z_-][a-zA-Z0-9_-]*")


@functools.cache
def _ident_re() -> re.Pattern[str]:
    return re.compile(_IDENT_PATTERN)  # compiling the Unicode ranges costs ms: only when needed


def is_worker_name(name: str) -> bool:
    if not name or len(name) > WORKER_NAME_MAX:
        return False
    if name.isascii():
        return _ASCII_IDENT_RE.fullmatch(name) is not None
    return _ident_re().fullmatch(name) is not None


STATES = ("active", "expiring", "rotating", "expired", "revoked")


def check_worker_name(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidName("a worker name may not be empty")
    if len(name) > WORKER_NAME_MAX:
        raise InvalidName(
            f"worker name {name!r} is {len(name)} characters long; Buildbot allows at most {WORKER_NAME_MAX}"
        )
    if not is_worker_name(name):
        raise InvalidName(
            f"worker name {name!r} is not a Buildbot identifier: use letters, digits, '_' and "
            "'-', not starting with a digit"
        )
    return name


@dataclass(frozen=True)
class Previous:
    """The secret a rotation replaced, still honoured until ``until``."""

    swissnum: str
    until: datetime


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
    revoked: datetime | None = None
    revoked_reason: str | None = None
    # per-worker Buildbot options ([workers.NAME.buildbot]), kept as written
    buildbot: Mapping[str, Any] = field(default_factory=dict)

    def state(self, now: datetime, expiring_within: timedelta = DEFAULT_EXPIRING_WITHIN) -> str:
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and self.expires <= now:
            return "expired"
        if self.previous is not None and self.previous.until > now:
            return "rotating"
        if self.expires is not None and self.expires - now <= expiring_within:
            return "expiring"
        return "active"

    def is_usable(self, now: datetime) -> bool:
        return self.state(now) not in ("revoked", "expired")

    def accepts(self, swissnum: str, now: datetime) -> bool:
        """Would a connection presenting ``swissnum`` be let in at ``now``?"""
        if not self.is_usable(now):
            return False
        if hmac.compare_digest(self.swissnum, swissnum):
            return True
        prev = self.previous
        return prev is not None and prev.until > now and hmac.compare_digest(prev.swissnum, swissnum)


@dataclass(frozen=True)
class MasterSettings:
    identity: str  # as written: relative to the registry's directory unless absolute
    tubid: str
    location: tuple[str, ...]
    listen: str
    pb: str | None = None  # the master's loopback PB endpoint (used by the master hook)


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
    check_worker_name(name)
    now = to_utc(now)
    if expires is not None and expires <= now:
        raise WrongState(f"expiry {format_time(expires)} is in the past")
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


def rotate(worker: Worker, now: datetime, grace: timedelta | None = None) -> Worker:
    """A new swissnum; with ``grace`` the current one stays valid that long.

    Without grace the PB password changes too: everything the old FURL gave is
    void at once. With grace the PB password is kept, because workers still
    running from the old FURL log in to Buildbot with it until they move over;
    it is only usable through an authenticated tunnel to a loopback port.
    A rotation during a grace window replaces the older previous secret: only
    the secret being rotated away gets a grace period.
    """
    if worker.revoked is not None:
        raise WrongState(f"worker {worker.name!r} is revoked; use 'bbenroll restore' instead")
    now = to_utc(now)
    previous = Previous(worker.swissnum, to_utc(now + grace)) if grace else None
    return replace(
        worker,
        swissnum=new_swissnum(),
        password=worker.password if grace else new_password(),
        rotated=now,
        previous=previous,
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
    )


# --- views -----------------------------------------------------------------


def worker_summary(
    worker: Worker, now: datetime, expiring_within: timedelta = DEFAULT_EXPIRING_WITHIN
) -> dict[str, Any]:
    """What ``list`` shows: no secrets."""
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


# --- to and from plain data (what TOML holds) -------------------------------


def worker_to_data(worker: Worker) -> dict[str, Any]:
    """The worker as the registry stores it, keys in the documented order."""
    data: dict[str, Any] = {
        "swissnum": worker.swissnum,
        "password": worker.password,
        "created": worker.created,
        "rotated": worker.rotated,
    }
    if worker.expires is not None:
        data["expires"] = worker.expires
    if worker.tags:
        data["tags"] = list(worker.tags)
    if worker.note is not None:
        data["note"] = worker.note
    if worker.previous is not None:
        data["previous"] = {"swissnum": worker.previous.swissnum, "until": worker.previous.until}
    if worker.revoked is not None:
        data["revoked"] = worker.revoked
        if worker.revoked_reason is not None:
            data["revoked_reason"] = worker.revoked_reason
    if worker.buildbot:
        data["buildbot"] = dict(worker.buildbot)
    return data


class Problems:
    """Collects ``(key, message)`` pairs while checking data."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, key: str, message: str) -> None:
        self.items.append((key, message))

    def __bool__(self) -> bool:
        return bool(self.items)


_MASTER_KEYS = {"identity", "tubid", "location", "listen", "pb"}
_WORKER_REQUIRED = ("swissnum", "password", "created", "rotated")
_WORKER_OPTIONAL = {"expires", "tags", "note", "previous", "revoked", "revoked_reason", "buildbot"}
_WORKER_REQUIRED_SET = frozenset(_WORKER_REQUIRED)
_WORKER_ALLOWED = _WORKER_REQUIRED_SET | _WORKER_OPTIONAL
_TYPE_NAMES = {str: "a string", int: "an integer", list: "an array", dict: "a table"}


def key_path(*parts: str) -> str:
    """``workers.name`` with TOML quoting where a part needs it."""
    out = []
    for part in parts:
        out.append(part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else f'"{part}"')
    return ".".join(out)


def _time(value: Any, key: str, problems: Problems) -> datetime | None:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            problems.add(key, "must include a time zone, like 2027-01-01T00:00:00Z")
            return None
        try:
            return to_utc(value)
        except OverflowError:
            problems.add(key, "is out of range")
            return None
    if isinstance(value, date):  # a bare date means midnight UTC
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    problems.add(key, "must be a date-time, like 2027-01-01T00:00:00Z")
    return None


def _str(value: Any, key: str, problems: Problems) -> str | None:
    if not isinstance(value, str):
        problems.add(key, f"must be a string, not {_toml_type(value)}")
        return None
    return value


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, datetime | date):
        return "a date"
    if isinstance(value, float):
        return "a float"
    for t, name in _TYPE_NAMES.items():
        if isinstance(value, t):
            return name
    return type(value).__name__


def _master_from_data(data: Any, problems: Problems) -> MasterSettings | None:
    if not isinstance(data, dict):
        problems.add("master", "missing [master] table" if data is None else "must be a table")
        return None
    for key in sorted(set(data) - _MASTER_KEYS):
        problems.add(f"master.{key_path(key)}", "unknown key")
    values: dict[str, Any] = {}
    for key in ("identity", "tubid", "listen"):
        if key not in data:
            problems.add(f"master.{key}", "missing")
        else:
            values[key] = _str(data[key], f"master.{key}", problems)
    if values.get("identity") == "":
        problems.add("master.identity", "may not be empty")
    if values.get("tubid") is not None:
        try:
            check_tubid(values["tubid"])
        except FurlError as e:
            problems.add("master.tubid", str(e))
    location = data.get("location")
    hints: list[str] = []
    if location is None:
        problems.add("master.location", "missing")
    elif not isinstance(location, list) or not location:
        problems.add("master.location", "must be a non-empty array of connection hints")
    else:
        for i, hint in enumerate(location):
            try:
                hints.append(check_hint(hint))
            except FurlError as e:
                problems.add(f"master.location[{i}]", str(e))
    pb = data.get("pb")
    if pb is not None:
        _str(pb, "master.pb", problems)
    if problems:
        return None
    return MasterSettings(
        identity=values["identity"],
        tubid=values["tubid"],
        location=tuple(hints),
        listen=values["listen"],
        pb=pb,
    )


def _utc_time(value: Any) -> datetime | None:
    if type(value) is datetime and value.tzinfo is UTC and not value.microsecond:
        return value
    return None


def _worker_fast(name: str, data: Any) -> Worker | None:
    """The common, well-formed entry, checked quickly; None sends it to the slow path."""
    if type(data) is not dict or not _WORKER_REQUIRED_SET <= data.keys() <= _WORKER_ALLOWED:
        return None
    if "previous" in data or "buildbot" in data or "revoked_reason" in data:
        return None
    swissnum, password = data["swissnum"], data["password"]
    if type(swissnum) is not str or len(swissnum) < MIN_SWISSNUM_LENGTH or not is_base32(swissnum):
        return None
    if type(password) is not str or not password or not is_worker_name(name):
        return None
    created, rotated = _utc_time(data["created"]), _utc_time(data["rotated"])
    expires = _utc_time(data["expires"]) if "expires" in data else None
    revoked = _utc_time(data["revoked"]) if "revoked" in data else None
    if (
        created is None
        or rotated is None
        or ("expires" in data and expires is None)
        or ("revoked" in data and revoked is None)
    ):
        return None
    tags = data.get("tags", [])
    if type(tags) is not list or not all(type(t) is str and t for t in tags):
        return None
    note = data.get("note")
    if note is not None and type(note) is not str:
        return None
    return Worker(name, swissnum, password, created, rotated, expires, tuple(tags), note, None, revoked)


# buildbot.worker.Worker options that can be written in TOML, and their types
BUILDBOT_OPTIONS: dict[str, tuple[type, ...]] = {
    "max_builds": (int,),
    "notify_on_missing": (str, list),
    "missing_timeout": (int,),
    "properties": (dict,),
    "defaultProperties": (dict,),
    "keepalive_interval": (int,),
    "machine_name": (str,),
}


def check_buildbot_options(options: dict[str, Any], where: str, problems: Problems) -> None:
    """Catch typos before Buildbot refuses a whole reconfig over one.

    Used by ``bbenroll check`` only: editing commands stay tolerant of options
    a newer Buildbot may have added.
    """
    for key, value in options.items():
        types = BUILDBOT_OPTIONS.get(key)
        if types is None:
            known = ", ".join(sorted(BUILDBOT_OPTIONS))
            problems.add(f"{where}.{key_path(key)}", f"unknown Buildbot worker option (known: {known})")
        elif isinstance(value, bool) or not isinstance(value, types):
            problems.add(f"{where}.{key_path(key)}", f"must be {' or '.join(_TYPE_NAMES[t] for t in types)}")


def worker_from_data(name: str, data: Any, problems: Problems) -> Worker | None:
    worker = _worker_fast(name, data)
    if worker is not None:
        return worker
    where = f"workers.{key_path(name)}"
    before = len(problems.items)
    try:
        check_worker_name(name)
    except InvalidName as e:
        problems.add(where, str(e))
    if not isinstance(data, dict):
        problems.add(where, "must be a table")
        return None
    for key in sorted(set(data) - set(_WORKER_REQUIRED) - _WORKER_OPTIONAL):
        problems.add(f"{where}.{key_path(key)}", "unknown key")
    for key in _WORKER_REQUIRED:
        if key not in data:
            problems.add(f"{where}.{key}", "missing")
    swissnum = _str(data.get("swissnum", ""), f"{where}.swissnum", problems)
    if swissnum:
        try:
            check_swissnum(swissnum)
        except FurlError as e:
            problems.add(f"{where}.swissnum", str(e))
    password = _str(data.get("password", ""), f"{where}.password", problems)
    if "password" in data and not password:
        problems.add(f"{where}.password", "may not be empty")
    created = _time(data["created"], f"{where}.created", problems) if "created" in data else None
    rotated = _time(data["rotated"], f"{where}.rotated", problems) if "rotated" in data else None
    expires = _time(data["expires"], f"{where}.expires", problems) if "expires" in data else None
    revoked = _time(data["revoked"], f"{where}.revoked", problems) if "revoked" in data else None
    tags: tuple[str, ...] = ()
    if "tags" in data:
        raw = data["tags"]
        if not isinstance(raw, list) or not all(isinstance(t, str) and t for t in raw):
            problems.add(f"{where}.tags", "must be an array of non-empty strings")
        else:
            tags = tuple(raw)
    note = _str(data["note"], f"{where}.note", problems) if "note" in data else None
    reason = None
    if "revoked_reason" in data:
        reason = _str(data["revoked_reason"], f"{where}.revoked_reason", problems)
        if "revoked" not in data:
            problems.add(f"{where}.revoked_reason", "set, but the worker is not revoked")
    previous = None
    if "previous" in data:
        raw = data["previous"]
        pwhere = f"{where}.previous"
        if not isinstance(raw, dict) or set(raw) != {"swissnum", "until"}:
            problems.add(pwhere, "must be a table with exactly 'swissnum' and 'until'")
        else:
            prev_swissnum = _str(raw["swissnum"], f"{pwhere}.swissnum", problems)
            if prev_swissnum:
                try:
                    check_swissnum(prev_swissnum)
                except FurlError as e:
                    problems.add(f"{pwhere}.swissnum", str(e))
            until = _time(raw["until"], f"{pwhere}.until", problems)
            if prev_swissnum and until:
                previous = Previous(prev_swissnum, until)
    buildbot = data.get("buildbot", {})
    if not isinstance(buildbot, dict):
        problems.add(f"{where}.buildbot", "must be a table")
    if len(problems.items) > before:
        return None
    assert swissnum and password and created and rotated
    return Worker(
        name=name,
        swissnum=swissnum,
        password=password,
        created=created,
        rotated=rotated,
        expires=expires,
        tags=tags,
        note=note,
        previous=previous,
        revoked=revoked,
        revoked_reason=reason,
        buildbot=buildbot,
    )


def registry_from_data(data: Mapping[str, Any], problems: Problems) -> Registry | None:
    """Check the parsed TOML; returns the registry, or None with ``problems`` filled."""
    version = data.get("version")
    if version is None:
        problems.add("version", "missing (this format is version = 1)")
    elif isinstance(version, bool) or not isinstance(version, int):
        problems.add("version", f"must be an integer, not {_toml_type(version)}")
    elif version != REGISTRY_VERSION:
        problems.add(
            "version",
            f"unknown registry version {version}; this bbenroll reads version {REGISTRY_VERSION}",
        )
        return None  # a newer format: do not second-guess the rest of it
    for key in sorted(set(data) - {"version", "master", "workers"}):
        problems.add(key_path(key), "unknown key")
    master = _master_from_data(data.get("master"), problems)
    raw_workers = data.get("workers", {})
    workers: dict[str, Worker] = {}
    if not isinstance(raw_workers, dict):
        problems.add("workers", "must be a table of worker tables")
    else:
        for name, entry in raw_workers.items():
            worker = worker_from_data(name, entry, problems)
            if worker is not None:
                workers[name] = worker
    check_unique_secrets(workers.values(), problems)
    if problems or master is None:
        return None
    return Registry(master=master, workers=workers, version=version)


def check_unique_secrets(workers: Iterable[Worker], problems: Problems) -> None:
    seen: dict[str, str] = {}
    for worker in workers:
        secrets = [worker.swissnum] + ([worker.previous.swissnum] if worker.previous else [])
        for secret in secrets:
            other = seen.get(secret)
            if other is not None and other != worker.name:
                problems.add(
                    f"workers.{key_path(worker.name)}.swissnum",
                    f"same secret as worker {other!r}; rotate one of them",
                )
            seen[secret] = worker.name
