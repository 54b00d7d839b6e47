"""What ``workers.toml`` may hold: one declarative definition of every table's keys.

``MASTER_FIELDS`` and ``WORKER_FIELDS`` say, for each key: its name, its kind
(the TOML type and the rule a value must follow), whether it is required, and
what it means. Everything else is derived from them: reading plain data (what
``tomllib`` returns) into checked model objects, collecting every problem with
the key it concerns, writing a worker back as plain data
(:func:`worker_to_data`), and the tables of docs/registry.md
(:func:`markdown_table`).

There is one read path. Each kind (:mod:`.kinds`) converts the common,
well-formed case first with exact type checks (what makes ``list --json`` on
thousands of workers fast) and works out the message only when a value is
wrong; a problem's key (``workers."wörker".tags``) is only spelled out when
there is a problem. Pure: no I/O.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bbenroll.errors import InvalidName
from bbenroll.furl import MIN_SWISSNUM_LENGTH, SWISSNUM_BITS, TUBID_LENGTH
from bbenroll.registry.audit import AuditHead
from bbenroll.registry.invites import ID_RULE, Invite, is_invite_id
from bbenroll.registry.kinds import (
    BOOLEAN,
    COUNT,
    DURATION,
    HINTS,
    NON_EMPTY_STRING,
    POLICY,
    SECRET,
    STRING,
    TABLE,
    TAGS,
    TIME,
    TUBID,
    TYPE_NAMES,
    Invalid,
    Kind,
    toml_type,
)
from bbenroll.registry.model import (
    OLDEST_UPGRADABLE_VERSION,
    REGISTRY_VERSION,
    Bound,
    MasterSettings,
    Previous,
    PreviousIdentity,
    Registry,
    Worker,
    check_buildbot_name,
    is_worker_name,
)


class Problems:
    """Collects ``(key, message)`` pairs while checking data."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, key: str, message: str) -> None:
        self.items.append((key, message))

    def __bool__(self) -> bool:
        return bool(self.items)


_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")


def key_path(*parts: str) -> str:
    """``workers.name`` with TOML quoting where a part needs it."""
    return ".".join(part if _BARE_KEY_RE.fullmatch(part) else f'"{part}"' for part in parts)


@dataclass(frozen=True, eq=False)
class Field:
    """One key of a table; the model attribute of the same name holds its value."""

    key: str
    kind: Kind
    doc: str
    required: bool = False
    default: Any = None  # an optional key holding this is not written
    requires: str | None = None  # only valid together with this other key

    @property
    def attr(self) -> str:
        return self.key  # (the readers rely on it: a test keeps the model's names equal)


def _previous(value: Any) -> Previous:
    if type(value) is not dict or value.keys() != _PREVIOUS_KEYS:
        raise Invalid("must be a table with exactly 'swissnum' and 'until'")
    values = _convert_all(PREVIOUS_FIELDS, value)
    return Previous(**values)


def _previous_to_data(previous: Previous) -> dict[str, Any]:
    return {field.key: getattr(previous, field.attr) for field in PREVIOUS_FIELDS}


PREVIOUS = Kind("inline table", _previous, to_data=_previous_to_data)

PREVIOUS_FIELDS = (
    Field("swissnum", SECRET, "The secret that was replaced.", required=True),
    Field("until", TIME, "Accepted until then.", required=True),
)
_PREVIOUS_KEYS = {field.key for field in PREVIOUS_FIELDS}

def inline_table_kind(make: Callable[..., Any], fields: tuple[Field, ...]) -> Kind:
    """A small table of exactly ``fields``, read into ``make(**values)`` and written inline
    (``key = {a = ..., b = ...}``), as bbenroll writes ``[master] previous`` and ``bound``."""
    keys = {field.key for field in fields}
    quoted = [f"'{field.key}'" for field in fields]
    names = f"{', '.join(quoted[:-1])} and {quoted[-1]}"

    def read(value: Any) -> Any:
        if type(value) is not dict or value.keys() != keys:
            raise Invalid(f"must be a table with exactly {names}")
        return make(**_convert_all(fields, value))

    def to_data(value: Any) -> Any:
        import tomlkit  # only when writing

        table = tomlkit.inline_table()
        table.update({field.key: getattr(value, field.attr) for field in fields})
        return table

    return Kind("inline table", read, to_data=to_data)


PREVIOUS_IDENTITY_FIELDS = (
    Field("identity", NON_EMPTY_STRING, "Path of the replaced identity's PEM file.", required=True),
    Field("tubid", TUBID, "Its TubID, checked against the file.", required=True),
    Field("until", TIME, "Served until then.", required=True),
)
PREVIOUS_IDENTITY = inline_table_kind(PreviousIdentity, PREVIOUS_IDENTITY_FIELDS)

BOUND_FIELDS = (
    Field("tubid", TUBID, "The worker key's TubID.", required=True),
    Field("at", TIME, "When it was bound.", required=True),
)
BOUND = inline_table_kind(Bound, BOUND_FIELDS)

MASTER_FIELDS = (
    Field(
        "identity",
        NON_EMPTY_STRING,
        "Path of the master's TLS key + self-signed certificate (PEM), relative to the registry's "
        "directory (`~` is expanded). Mode 0600.",
        required=True,
    ),
    Field(
        "tubid",
        TUBID,
        f"{TUBID_LENGTH} lowercase base32 characters: the base32 SHA-1 digest of the DER certificate, "
        "exactly as Foolscap computes a TubID. Checked against `identity` on every load: a mismatch (say, a "
        "replaced key) is an error, because every FURL already handed out pins this value.",
        required=True,
    ),
    Field(
        "location",
        HINTS,
        "Connection hints written into every FURL, tried in turn by workers. `tcp:HOST:PORT` with a DNS "
        "name, IPv4 address or `[IPv6]` address; other Foolscap hint types (`tor:...`) are accepted if "
        "they follow Foolscap's `TYPE:ADDRESS` rule. Printable ASCII only (a port's digits are `0`-`9`).",
        required=True,
    ),
    Field(
        "listen",
        STRING,
        "Where the master's Foolscap service listens: a Twisted server endpoint string, e.g. `tcp:9989`.",
        required=True,
    ),
    Field(
        "pb",
        STRING,
        "The master's own Buildbot PB port, loopback only (default written by `init`: "
        "`tcp:9990:interface=127.0.0.1`). Used by the master hook.",
    ),
    Field(
        "rotate_every",
        DURATION,
        "The rotation policy: the running master rotates (and pushes) a worker's secret once it is this "
        "old (`rotated`), unless the worker's own `rotate_every` says otherwise. Absent: secrets are "
        "rotated only by `bbenroll rotate`.",
    ),
    Field(
        "previous",
        PREVIOUS_IDENTITY,
        '`{identity = "...", tubid = "...", until = DATE-TIME}`: the identity a `bbenroll master '
        "roll-identity` replaced, served on the same port beside the new one until `until` (or until "
        "every worker confirmed its new FURL; then the running master removes it). Same rules as "
        "`identity`/`tubid`, and its tubid differs from `tubid`.",
    ),
    Field(
        "legacy_pb",
        STRING,
        "During a gradual cut-over (docs/migration.md): the old public PB port (a Twisted server endpoint "
        "string, e.g. `tcp:9989`), where workers that have not moved to their FURL still log in with "
        "their password. `bbenroll master finish-migration` removes it; the master then closes it.",
    ),
    Field(
        "ephemeral_timeout",
        DURATION,
        "How long an ephemeral worker (enrolled with `invite --ephemeral`) may stay disconnected before "
        "the running master removes it from the registry and from Buildbot (never during a build). "
        "Absent: 10 minutes.",
    ),
)

# in the order bbenroll writes them
WORKER_FIELDS = (
    Field(
        "swissnum",
        SECRET,
        f"The worker's secret, the last part of its FURL: at least {MIN_SWISSNUM_LENGTH} lowercase "
        f"base32 characters ({SWISSNUM_BITS} bits) from the OS's CSPRNG, as Foolscap makes its own. "
        "Unique across the registry (including `previous`).",
        required=True,
    ),
    Field(
        "password", NON_EMPTY_STRING, "The worker's Buildbot PB password (192 random bits).", required=True
    ),
    Field("created", TIME, "When the worker was enrolled.", required=True),
    Field("rotated", TIME, "When its secrets last changed (enrolment, rotation, restore).", required=True),
    Field("expires", TIME, "From this instant the master refuses the worker."),
    Field("tags", TAGS, "Free-form tags, for `bbenroll list --tag`.", default=()),
    Field("note", STRING, "Free-form note."),
    Field(
        "previous",
        PREVIOUS,
        '`{swissnum = "...", until = DATE-TIME}`: the secret a `rotate` replaced (with its grace '
        "period), accepted until "
        "`until`. Only the most recent previous secret is kept.",
    ),
    Field(
        "serial",
        COUNT,
        "The number of the worker's newest FURL: 0 when added, one more with every change of its FURL "
        "(`rotate`, `restore`, `master set-location`). Written once it is not 0.",
        default=0,
    ),
    Field("changed", TIME, "When `serial` last grew."),
    Field(
        "delivered",
        COUNT,
        "The newest serial the worker confirmed it connects with (written by the running master); "
        "never above `serial`.",
        requires="delivered_at",
    ),
    Field("delivered_at", TIME, "When the worker confirmed `delivered`.", requires="delivered"),
    Field(
        "bound",
        BOUND,
        '`{tubid = "...", at = DATE-TIME}`: the worker key (the TubID of the key in the worker\'s '
        "`bbenroll.pem`) this FURL is bound to, written by the running master when `worker create` asks "
        "for it; from then on the master refuses the FURL from any other key. Absent: any key may use "
        "it. `bbenroll rebind`, `rotate --compromised` and `restore` remove it.",
    ),
    Field(
        "rotate_every",
        POLICY,
        "This worker's rotation policy, instead of `[master] rotate_every`; `\"never\"`: the master never "
        "rotates it by itself.",
    ),
    Field("revoked", TIME, "Present when revoked: the master refuses the worker."),
    Field("revoked_reason", STRING, "Why (only with `revoked`).", requires="revoked"),
    Field("enrolled_by", STRING, "The ID of the invite this worker enrolled with (`bbenroll invite`)."),
    Field(
        "ephemeral",
        BOOLEAN,
        "`true`: enrolled with an `--ephemeral` invite; the running master removes the worker once it has "
        "been disconnected longer than `[master] ephemeral_timeout`.",
        default=False,
    ),
    Field(
        "legacy",
        BOOLEAN,
        "`true`: imported from a master.cfg by `bbenroll import`, with its old PB password; until it "
        "`moved`, it may still log in on `[master] legacy_pb`.",
        default=False,
    ),
    Field(
        "moved",
        TIME,
        "When an imported worker first connected through its FURL (written by the running master); from "
        "then on its password no longer logs in on the public port.",
    ),
    Field(
        "buildbot",
        TABLE,
        "Per-worker Buildbot options for the master hook (e.g. `max_builds`). Never rewritten by bbenroll.",
        default={},
    ),
)



def _hash(value: Any) -> str:
    if type(value) is not str or not _HASH_RE.fullmatch(value):
        raise Invalid('must be "sha256:" and 64 lowercase hex digits')
    return value


_HASH_RE = re.compile(r"sha256:[0-9a-f]{64}")
HASH = Kind("string", _hash)

# [invites.ID] (docs/fleets.md), in the order bbenroll writes them
INVITE_FIELDS = (
    Field(
        "hash",
        HASH,
        '`"sha256:"` and the 64 hex digits of the SHA-256 of the invite\'s secret: the registry never '
        "holds the secret itself, which `bbenroll invite` shows once.",
        required=True,
    ),
    Field("created", TIME, "When the invite was made.", required=True),
    Field("expires", TIME, "From this instant the invite enrolls no worker.", required=True),
    Field(
        "uses",
        COUNT,
        "How many more workers may enroll with it; required unless `reusable = true` (then absent).",
    ),
    Field(
        "reusable",
        BOOLEAN,
        "`true`: any number of workers may enroll with it until it expires.",
        default=False,
    ),
    Field("used", COUNT, "How many workers enrolled with it so far.", default=None),
    Field("name", STRING, "The name the enrolled worker gets (not with `prefix`)."),
    Field(
        "prefix",
        STRING,
        "Enrolled workers are named `PREFIX-<their short host name>`, made unique (`-2`, `-3`, ...).",
    ),
    Field("tags", TAGS, "The enrolled workers' tags.", default=()),
    Field("ephemeral", BOOLEAN, "`true`: the enrolled workers are ephemeral.", default=False),
    Field(
        "worker_expires",
        DURATION,
        "An enrolled worker expires this long after it enrolled. Absent: it does not expire.",
    ),
    Field("note", STRING, "Free-form note."),
    Field("by", STRING, 'Who made it: `"user@host"` (`bbenroll invite`) or `"master"` (master.cfg code).'),
    Field("revoked", TIME, "Present when revoked (`bbenroll invite revoke`): it enrolls no worker."),
    Field(
        "reenroll",
        BOOLEAN,
        "`true` (with `name`): the invite re-enrolls that existing worker (new secret, the previous one "
        "dropped at once, key binding removed, serial + 1), as latent worker instances need.",
        default=False,
    ),
)

# [audit]: written by bbenroll under the registry's lock, with each append to the audit log
AUDIT_FIELDS = (
    Field(
        "head",
        HASH,
        "The hash of the last record of the audit log (`X.audit.jsonl`), as `sha256:` and 64 hex digits.",
        required=True,
    ),
    Field("count", COUNT, "How many records the audit log holds (its last record's `seq`).", required=True),
)

_WORKER_BY_KEY = {field.key: field for field in WORKER_FIELDS}
_REQUIRES_MESSAGES = {
    "revoked": "set, but the worker is not revoked",
    "delivered": "set without delivered",
    "delivered_at": "set without delivered_at",
}


# --- reading ---------------------------------------------------------------


@functools.cache
def _plan(fields: tuple[Field, ...]) -> tuple[tuple[str, Callable[[Any], Any], bool, str | None], ...]:
    """``fields`` as plain tuples: attribute lookups cost time on thousands of workers."""
    return tuple((field.key, field.kind.convert, field.required, field.requires) for field in fields)


def _convert_all(fields: tuple[Field, ...], data: dict[str, Any]) -> dict[str, Any]:
    """The model values of ``data``'s keys (each field's attribute is its key);
    one Invalid with every problem (unknown and missing keys included)."""
    values: dict[str, Any] = {}
    bad: list[tuple[str, str]] = []
    for key, convert, required, requires in _plan(fields):
        if key in data:
            try:
                values[key] = convert(data[key])
            except Invalid as e:
                bad.extend((f".{key}{suffix}", message) for suffix, message in e.items)
            if requires is not None and requires not in data:
                bad.append((f".{key}", _REQUIRES_MESSAGES[requires]))
        elif required:
            bad.append((f".{key}", "missing"))
    if len(values) != len(data):
        known = {field.key for field in fields}
        bad[:0] = [(f".{key_path(key)}", "unknown key") for key in sorted(set(data) - known)]
    if bad:
        raise Invalid.many(bad)
    return values


def _table_values(
    fields: tuple[Field, ...], data: Any, where: Callable[[], str], problems: Problems
) -> dict[str, Any] | None:
    if type(data) is not dict:
        problems.add(where(), "must be a table")
        return None
    try:
        return _convert_all(fields, data)
    except Invalid as e:
        prefix = where()
        for suffix, message in e.items:
            problems.add(prefix + suffix, message)
        return None


def master_from_data(data: Any, problems: Problems) -> MasterSettings | None:
    if data is None:
        problems.add("master", "missing [master] table")
        return None
    values = _table_values(MASTER_FIELDS, data, lambda: "master", problems)
    return MasterSettings(**values) if values is not None else None


def audit_from_data(data: Any, problems: Problems) -> AuditHead | None:
    """The registry's ``[audit]`` table; None when absent (a registry older than its audit log)."""
    if data is None:
        return None
    values = _table_values(AUDIT_FIELDS, data, lambda: "audit", problems)
    return AuditHead(**values) if values is not None else None


def worker_from_data(name: str, data: Any, problems: Problems) -> Worker | None:
    def where() -> str:
        return f"workers.{key_path(name)}"

    try:
        check_buildbot_name(name)  # not the stricter rule of new names: existing registries still load
    except InvalidName as e:
        problems.add(where(), str(e))
        _table_values(WORKER_FIELDS, data, where, problems)  # and every other problem
        return None
    values = _table_values(WORKER_FIELDS, data, where, problems)
    if values is None:
        return None
    delivered = values.get("delivered")
    if delivered is not None and delivered > values.get("serial", 0):
        problems.add(
            where() + ".delivered",
            f"is {delivered}, above serial {values.get('serial', 0)}: no worker can confirm a FURL "
            "the registry never issued",
        )
        return None
    return Worker(name, **values)


def registry_from_data(data: Mapping[str, Any], problems: Problems) -> Registry | None:
    """Check the parsed TOML; returns the registry, or None with ``problems`` filled."""
    version = data.get("version")
    if version is None:
        problems.add("version", f"missing (this format is version = {REGISTRY_VERSION})")
    elif isinstance(version, bool) or not isinstance(version, int):
        problems.add("version", f"must be an integer, not {toml_type(version)}")
    elif OLDEST_UPGRADABLE_VERSION <= version < REGISTRY_VERSION:
        problems.add(
            "version",
            f"registry version {version} is older than this bbenroll's version {REGISTRY_VERSION}: "
            "run `bbenroll upgrade` (it keeps your comments and makes a backup)",
        )
        return None
    elif version != REGISTRY_VERSION:
        problems.add(
            "version",
            f"unknown registry version {version}; this bbenroll reads version {REGISTRY_VERSION} "
            "(a newer bbenroll wrote it: upgrade bbenroll)",
        )
        return None  # a newer format: do not second-guess the rest of it
    for key in sorted(set(data) - {"version", "master", "workers", "audit", "invites"}):
        problems.add(key_path(key), "unknown key")
    master = master_from_data(data.get("master"), problems)
    audit_from_data(data.get("audit"), problems)
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
    invites = invites_from_data(data.get("invites", {}), problems)
    if problems or master is None:
        return None
    return Registry(master=master, workers=workers, version=version, invites=invites)


def invite_from_data(invite_id: str, data: Any, problems: Problems) -> Invite | None:
    def where() -> str:
        return f"invites.{key_path(invite_id)}"

    bad_id = not is_invite_id(invite_id)
    if bad_id:
        problems.add(where(), f"not an invite ID: {ID_RULE}")
    values = _table_values(INVITE_FIELDS, data, where, problems)
    if values is None or bad_id:
        return None
    reusable = values.get("reusable", False)
    ok = True
    if reusable and "uses" in values:
        problems.add(where() + ".uses", "set, but the invite is reusable")
        ok = False
    if not reusable and "uses" not in values:
        problems.add(where() + ".uses", "missing (or reusable = true)")
        ok = False
    if "name" in values and "prefix" in values:
        problems.add(where() + ".prefix", "set together with name: an invite has one or the other")
        ok = False
    for key in ("name", "prefix"):
        if key in values and not is_worker_name(values[key]):
            problems.add(where() + f".{key}", "is not a Buildbot worker name")
            ok = False
    if values.get("reenroll") and "name" not in values:
        problems.add(where() + ".reenroll", "set without name")
        ok = False
    if not ok:
        return None
    if reusable:
        values["uses"] = None
    return Invite(invite_id, **values)


def invites_from_data(raw: Any, problems: Problems) -> dict[str, Invite]:
    invites: dict[str, Invite] = {}
    if not isinstance(raw, dict):
        problems.add("invites", "must be a table of invite tables")
        return invites
    for invite_id, entry in raw.items():
        invite = invite_from_data(invite_id, entry, problems)
        if invite is not None:
            invites[invite_id] = invite
    return invites


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


# --- writing ---------------------------------------------------------------


def worker_to_data(worker: Worker) -> dict[str, Any]:
    """The worker as the registry stores it, keys in the documented order."""
    data: dict[str, Any] = {}
    for field in WORKER_FIELDS:
        value = getattr(worker, field.attr)
        if not field.required and value == field.default:
            continue
        if field.requires is not None and getattr(worker, _WORKER_BY_KEY[field.requires].attr) is None:
            continue  # (revoked_reason without revoked: not written)
        data[field.key] = field.kind.to_data(value)
    return data


def invite_to_data(invite: Invite) -> dict[str, Any]:
    """The invite as the registry stores it, keys in the documented order (never a secret)."""
    data: dict[str, Any] = {}
    for field in INVITE_FIELDS:
        value = getattr(invite, field.attr)
        if not field.required and value == field.default:
            continue
        data[field.key] = field.kind.to_data(value)
    return data


def master_to_data(master: MasterSettings) -> dict[str, Any]:
    """The [master] table's keys as the registry stores them (optional ones only when set)."""
    return {
        field.key: field.kind.to_data(getattr(master, field.attr))
        for field in MASTER_FIELDS
        if field.required or getattr(master, field.attr) != field.default
    }


# --- Buildbot options ([workers.NAME.buildbot]) ------------------------------

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


def check_buildbot_options(options: Mapping[str, Any], where: str, problems: Problems) -> None:
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
            problems.add(f"{where}.{key_path(key)}", f"must be {' or '.join(TYPE_NAMES[t] for t in types)}")


# --- documentation -----------------------------------------------------------


def markdown_table(fields: tuple[Field, ...], table: str) -> str:
    """The table of ``fields`` as docs/registry.md shows it (a test keeps them equal)."""
    lines = ["| key | type | meaning |", "|---|---|---|"]
    for field in fields:
        key = f"`[{table}.{field.key}]`" if field.kind.is_table else f"`{field.key}`"
        need = "required" if field.required else "optional"
        lines.append(f"| {key} | {field.kind.doc}, {need} | {field.doc} |")
    return "\n".join(lines)
