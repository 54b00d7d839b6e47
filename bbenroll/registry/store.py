"""``workers.toml`` on disk: fast checked reads, safe in-place edits.

One way in: :func:`inspect` reads the file with the standard library's
``tomllib`` only and checks all of it (schema, identity, permissions);
:func:`load` stops at its first problem, :func:`check` lists them all.
A non-strict read first looks in the read cache (:mod:`.readcache`), which
answers only for exactly the bytes just read; a read that had to parse, and
every :meth:`Editor.save`, leave it what they parsed.

One way out: :func:`edit` holds an exclusive lock, re-reads the file, and
:meth:`Editor.save` has :func:`tomledit.apply` rewrite only the tables of the
workers that changed (with tomlkit, so comments and layout inside them
survive); every other byte of the file is carried over untouched. The new
text is checked before it replaces the old one, atomically.

A new registry is made by :func:`create` (in :mod:`bbenroll.registry.create`,
re-exported here: it writes through the same checks).
"""

from __future__ import annotations

import contextlib
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bbenroll.errors import (
    BBEnrollError,
    IdentityError,
    RegistryError,
    WorkerExists,
    WorkerNotFound,
    WrongState,
)
from bbenroll.fileio import atomic_write, exclusive_lock, owner_of, permission_problem
from bbenroll.identity import load_identity
from bbenroll.registry import DEFAULT_REGISTRY, ENV_REGISTRY, audit, readcache, schema
from bbenroll.registry.audit import AuditHead
from bbenroll.registry.invites import Invite, InviteNotFound
from bbenroll.registry.model import MasterSettings, Registry, Worker
from bbenroll.registry.schema import Problems


@dataclass
class LoadedRegistry:
    path: Path
    registry: Registry
    text: str
    warnings: list[str] = field(default_factory=list)
    audit: AuditHead | None = None  # the [audit] table: None in a registry older than its audit log

    @property
    def identity_path(self) -> Path:
        return identity_path(self.path, self.registry.master.identity)

    def worker(self, name: str) -> Worker:
        return _worker(self.path, self.registry.workers, name)


def _worker(path: Path, workers: dict[str, Worker], name: str) -> Worker:
    try:
        return workers[name]
    except KeyError:
        raise WorkerNotFound(f"{path}: no worker named {name!r}") from None


def identity_path(registry_path: Path, identity: str) -> Path:
    return Path(registry_path).parent / os.path.expanduser(identity)


def default_path() -> Path:
    return Path(os.environ.get(ENV_REGISTRY) or DEFAULT_REGISTRY)


def read_text(path: Path) -> str:
    return decode_text(read_bytes(path)[0], path)


def read_bytes(path: Path) -> tuple[bytes, os.stat_result]:
    """The registry file's bytes and the ``fstat`` of the file they were read from."""
    try:
        with open(path, "rb") as f:
            return f.read(), os.fstat(f.fileno())
    except FileNotFoundError:
        raise RegistryError(
            str(path), "not found (create one with 'bbenroll init', or point --registry at it)"
        ) from None
    except IsADirectoryError:
        raise RegistryError(str(path), "is a directory, not a registry file") from None
    except OSError as e:
        raise RegistryError(str(path), f"cannot read: {e.strerror}") from None


def decode_text(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise RegistryError(f"{path}:{line}", "not valid UTF-8") from None


_POSITION_RE = re.compile(r"^(.*) \(at line (\d+), column (\d+)\)$", re.S)
_EOF_RE = re.compile(r"^(.*) \(at end of document\)$", re.S)


def parse_text(text: str, where: str) -> dict[str, Any]:
    """``tomllib.loads`` with errors that say ``file:line:column``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message = getattr(e, "msg", None) or str(e)
        lineno, colno = getattr(e, "lineno", None), getattr(e, "colno", None)
        mo = _POSITION_RE.match(str(e))
        if mo:
            message, lineno, colno = mo.group(1), int(mo.group(2)), int(mo.group(3))
        else:
            mo = _EOF_RE.match(str(e))
            if mo:
                message = mo.group(1)
                lineno = text.count("\n") + 1
        place = f"{where}:{lineno}:{colno}" if lineno and colno else where
        raise RegistryError(place, f"invalid TOML: {message}") from None


def _headers(text: str) -> list[Any]:
    """The text's table headers, or none if the scanner cannot read it (for error messages only)."""
    from bbenroll.registry.tomlscan import ScanError, scan_headers

    try:
        return scan_headers(text)
    except ScanError:
        return []


def locate(headers: list[Any], key: str) -> int | None:
    """The line of the table among ``headers`` that holds ``key`` (for error messages only)."""
    best = None
    for header in headers:
        dotted = schema.key_path(*header.path)
        if key == dotted or key.startswith(dotted + ".") or key.startswith(dotted + "["):
            if best is None or len(header.path) > len(best.path):
                best = header
    return best.line if best else None


@dataclass(frozen=True)
class Problem:
    """One problem with a registry: ``where`` is the file, with ``:line`` (and
    ``:column``) when known; ``message`` starts with the key it concerns."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def _placed(path: Path, text: str, problems: Problems) -> list[Problem]:
    out = []
    headers = _headers(text) if problems.items else []  # scanned once, not once per problem
    for key, message in problems.items:
        line = locate(headers, key)
        out.append(Problem(f"{path}:{line}" if line else str(path), f"{key}: {message}"))
    return out


def _first_as_error(problems: list[Problem]) -> RegistryError:
    """The error a command stops with: the first problem, and how many more there are."""
    first = problems[0]
    more = f" (and {len(problems) - 1} more problems: run 'bbenroll check')" if len(problems) > 1 else ""
    return RegistryError(first.where, first.message + more)


def _examine_text(path: Path, text: str) -> tuple[dict[str, Any] | None, Registry | None, list[Problem]]:
    """Parse and check ``text``: the data, the registry (None if any problem), the problems."""
    try:
        data = parse_text(text, str(path))
    except RegistryError as e:
        return None, None, [Problem(e.where, e.message)]
    problems = Problems()
    registry = schema.registry_from_data(data, problems)
    return data, registry, _placed(path, text, problems)


def registry_from_text(path: Path, text: str) -> Registry:
    """The checked registry that ``text`` holds; RegistryError with the first problem."""
    _, registry, problems = _examine_text(path, text)
    if problems or registry is None:
        raise _first_as_error(problems)
    return registry


def _identity_file(path: Path, master: Any) -> Path | None:
    """The identity file the raw ``[master]`` table names (None: a schema problem already)."""
    if not isinstance(master, dict) or not isinstance(master.get("identity"), str) or not master["identity"]:
        return None
    return identity_path(path, master["identity"])


def _identity_problems(path: Path, master: Any) -> list[Problem]:
    """Whether the identity file named by the raw ``[master]`` table loads and
    matches its tubid. Checked even when other keys are wrong, so that ``check``
    lists everything at once."""
    ident_path = _identity_file(path, master)
    if ident_path is None:
        return []
    try:
        identity = load_identity(ident_path)
    except IdentityError as e:
        return [Problem(str(path), f"master.identity: {e}")]
    tubid = master.get("tubid")
    if isinstance(tubid, str) and tubid != identity.tubid:
        return [
            Problem(
                str(path),
                f"master.tubid {tubid} does not match the identity {ident_path} "
                f"(its tubid is {identity.tubid}); was the identity file replaced?",
            )
        ]
    return _previous_identity_problems(path, master)


def _previous_identity_file(path: Path, master: Any) -> Path | None:
    """The file of the raw ``[master] previous`` table (None: absent or a schema problem already)."""
    previous = master.get("previous") if isinstance(master, dict) else None
    if not isinstance(previous, dict) or not isinstance(previous.get("identity"), str):
        return None
    if not previous["identity"]:
        return None
    return identity_path(path, previous["identity"])


def _previous_identity_problems(path: Path, master: dict[str, Any]) -> list[Problem]:
    """``[master] previous`` (a rolled-over identity) loads, matches its tubid and is another one."""
    ident_path = _previous_identity_file(path, master)
    if ident_path is None:
        return []
    try:
        identity = load_identity(ident_path)
    except IdentityError as e:
        hint = "; if its overlap is over, remove master.previous with 'bbenroll edit'"
        return [Problem(str(path), f"master.previous.identity: {e}{hint}")]
    tubid = master["previous"].get("tubid")
    if isinstance(tubid, str) and tubid != identity.tubid:
        return [
            Problem(
                str(path),
                f"master.previous.tubid {tubid} does not match the identity {ident_path} "
                f"(its tubid is {identity.tubid}); was the identity file replaced?",
            )
        ]
    if identity.tubid == master.get("tubid"):
        return [
            Problem(
                str(path),
                f"master.previous: the previous identity {ident_path} is the current one "
                f"(tubid {identity.tubid}); a roll needs a new key",
            )
        ]
    return []


@dataclass
class Inspection:
    """Everything one reading of a registry found: the one way in."""

    path: Path
    text: str
    registry: Registry | None  # None when there are problems
    problems: list[Problem]  # what makes the registry unusable
    warnings: list[str]  # what is wrong but does not stop a command (permissions)
    audit: AuditHead | None = None


def inspect(path: Path, *, strict: bool = False, real: Path | None = None) -> Inspection:
    """Read ``path`` and check all of it: syntax, schema, identity, permissions.

    With ``strict`` (``bbenroll check``), unknown or mistyped Buildbot options
    are problems too; editing commands stay tolerant of options a newer
    Buildbot may have added. ``real``: read the text from that file (the one
    :func:`edit` resolved and locked); messages and the identity still go by ``path``.
    """
    source = real or path
    try:
        raw, st = read_bytes(source)
        text = decode_text(raw, source)
    except RegistryError as e:
        return Inspection(path, "", None, [Problem(e.where, e.message)], [])
    # the strict check (bbenroll check, bbenroll edit's temporary copy) always parses
    key = None if strict else readcache.key_of(st, raw)
    cached = readcache.lookup(real or real_path(path), key) if key is not None else None
    if cached is not None:
        registry, head = cached
        return _finish(path, text, registry, [], _identity_table(registry.master), head)
    data, registry, problems = _examine_text(path, text)
    if data is None:
        return Inspection(path, text, None, problems, [])
    head = schema.audit_from_data(data.get("audit"), Problems()) if registry is not None else None
    if key is not None and registry is not None:
        readcache.store(real or real_path(path), key, registry, head)
    if strict and registry is not None:
        options = Problems()
        for worker in registry.workers.values():
            where = f"workers.{schema.key_path(worker.name)}.buildbot"
            schema.check_buildbot_options(worker.buildbot, where, options)
        problems += _placed(path, text, options)
    return _finish(path, text, registry, problems, data.get("master"), head)


def _identity_table(master: MasterSettings) -> dict[str, Any]:
    """The ``[master]`` keys the identity checks read, as a checked registry holds them."""
    table: dict[str, Any] = {"identity": master.identity, "tubid": master.tubid}
    if master.previous is not None:
        table["previous"] = {"identity": master.previous.identity, "tubid": master.previous.tubid}
    return table


def _finish(
    path: Path,
    text: str,
    registry: Registry | None,
    problems: list[Problem],
    master: Any,
    head: AuditHead | None,
) -> Inspection:
    """What every read checks live, cached or not: the identity files and the permissions.

    ``master`` is the raw ``[master]`` table (checked even when the rest has problems).
    """
    problems = problems + _identity_problems(path, master)
    private = [path, _identity_file(path, master), _previous_identity_file(path, master)]
    warnings = [problem for file in private if file and (problem := permission_problem(file))]
    if problems:
        return Inspection(path, text, None, problems, warnings)
    return Inspection(path, text, registry, problems, warnings, head)


def invite_warnings(path: Path, registry: Registry, now: datetime) -> list[str]:
    """One line per expired invite (not revoked, not used up: those say so in ``invite list``):
    ``bbenroll check`` warns, without failing; nothing can enroll with it any more."""
    from bbenroll.registry.invites import InviteState
    from bbenroll.times import format_time

    return [
        f"{path}: invites.{invite.id}: expired at {format_time(invite.expires)} ({invite.used} used); "
        "'bbenroll invite prune' removes it"
        for invite in registry.invites.values()
        if invite.state(now) is InviteState.EXPIRED
    ]


def load(path: Path | None = None, *, real: Path | None = None) -> LoadedRegistry:
    """Read and check the registry and its identity. Raises RegistryError."""
    path = Path(path) if path is not None else default_path()
    inspection = inspect(path, real=real)
    if inspection.problems or inspection.registry is None:
        raise _first_as_error(inspection.problems)
    return LoadedRegistry(path, inspection.registry, inspection.text, inspection.warnings, inspection.audit)


def check(path: Path) -> list[str]:
    """Every problem with the registry and its identity, one message each."""
    inspection = inspect(Path(path), strict=True)
    return [str(problem) for problem in inspection.problems] + inspection.warnings


# --- editing ----------------------------------------------------------------


def lock_path(path: Path) -> Path:
    """The sidecar lock of the registry file ``path`` (pass the real file: see :func:`real_path`)."""
    return path.parent / f".{path.name}.lock"


def real_path(path: Path) -> Path:
    """The file a registry path names, all symlinks resolved: what an edit locks and replaces.

    Replacing the symlink itself would leave the master reading an unchanged
    real file, and two paths to one file would take two different locks.
    """
    return Path(os.path.realpath(path))


class Editor:
    """Changes to one registry, made into text by :func:`tomledit.apply` on :meth:`save`."""

    def __init__(self, loaded: LoadedRegistry, target: Path | None = None) -> None:
        self.loaded = loaded
        self.path = loaded.path  # as the user named it: for messages
        self.target = target or real_path(loaded.path)  # the file that save() replaces
        self.workers = dict(loaded.registry.workers)
        self.master = loaded.registry.master
        self._changed: dict[str, Worker | None] = {}  # None: removed
        self._added: list[str] = []
        self._notes: list[audit.Change] = []  # records of events that change no table
        self.invites = dict(loaded.registry.invites)
        self._invites_changed: dict[str, Invite | None] = {}  # None: removed
        self._invites_added: list[str] = []

    @property
    def registry(self) -> Registry:
        return Registry(self.master, self.workers, self.loaded.registry.version, self.invites)

    def invite(self, invite_id: str) -> Invite:
        try:
            return self.invites[invite_id]
        except KeyError:
            raise InviteNotFound(f"{self.path}: no invite {invite_id!r}") from None

    def add_invite(self, invite: Invite) -> None:
        if invite.id in self.invites:
            raise WrongState(f"{self.path}: invite {invite.id} already exists")
        self.invites[invite.id] = invite
        self._invites_added.append(invite.id)

    def update_invite(self, invite: Invite) -> None:
        if self.invite(invite.id) == invite:
            return
        self.invites[invite.id] = invite
        if invite.id not in self._invites_added:
            self._invites_changed[invite.id] = invite

    def remove_invite(self, invite_id: str) -> None:
        self.invite(invite_id)
        del self.invites[invite_id]
        if invite_id in self._invites_added:
            self._invites_added.remove(invite_id)
        else:
            self._invites_changed[invite_id] = None

    def set_master(self, master: MasterSettings) -> None:
        """New ``[master]`` settings (``master set-location``); only the keys that differ are rewritten."""
        self.master = master

    def worker(self, name: str) -> Worker:
        return _worker(self.path, self.workers, name)

    def add(self, worker: Worker) -> None:
        if worker.name in self.workers:
            raise WorkerExists(f"{self.path}: worker {worker.name!r} already exists")
        self.workers[worker.name] = worker
        self._added.append(worker.name)

    def update(self, worker: Worker) -> None:
        if self.worker(worker.name) == worker:
            return  # (a repeated confirmation, say): nothing to write
        self.workers[worker.name] = worker
        if worker.name not in self._added:
            self._changed[worker.name] = worker

    def remove(self, name: str) -> None:
        self.worker(name)
        del self.workers[name]
        if name in self._added:
            self._added.remove(name)
        else:
            self._changed[name] = None

    @property
    def dirty(self) -> bool:
        return bool(
            self._changed
            or self._added
            or self._invites_changed
            or self._invites_added
            or self.master != self.loaded.registry.master
        )

    def render(self) -> str:
        """The new text of the registry, checked to read back as intended."""
        problems = Problems()
        schema.check_unique_secrets(self.workers.values(), problems)
        if problems:
            key, message = problems.items[0]
            raise RegistryError(str(self.path), f"{key}: {message}")
        from bbenroll.registry import tomledit

        edit = tomledit.Edit(
            self.loaded.registry,
            self.registry,
            self._changed,
            self._added,
            self._invites_changed,
            self._invites_added,
        )
        try:
            return tomledit.apply(self.loaded.text, edit)
        except tomledit.LayoutError as e:
            raise RegistryError(str(self.path), f"cannot edit this layout: {e}; file unchanged") from None

    def note(self, change: audit.Change) -> None:
        """Record an event that changes no table (say, the master dropping a revoked
        worker's live connection) in the same chain, after this edit's own changes."""
        self._notes.append(change)

    def changes(self) -> list[audit.Change]:
        """What the audit log will record of this edit: one change per worker that differs, then the notes."""
        before = self.loaded.registry
        changes = audit.diff(before.workers, self.workers, before.master, self.registry.master)
        return changes + audit.invite_changes(before.invites, self.invites) + self._notes

    def save(self, *, now: datetime | None = None, actor: Mapping[str, str] | None = None) -> None:
        """Append one audit record per change (fsync'd), then replace the registry.

        In that order: a crash in between leaves the log ahead of the
        registry's [audit] count, which ``audit verify`` explains as an
        interrupted edit; the other order would leave changes no record tells of.
        """
        changes = self.changes()
        if not self.dirty and not changes:
            return
        text = self.render()
        checked = None
        if changes:
            text, checked = audited(
                self.path, self.target, self.loaded.audit, text, changes, now=now, actor=actor
            )
        data = text.encode("utf-8")
        try:
            atomic_write(self.target, data)
        except OSError as e:
            raise RegistryError(str(self.path), f"cannot write: {e.strerror}") from None
        if checked is not None:  # the next read (the master's reload, the next command) skips the parse
            remember(self.target, data, *checked)


def remember(target: Path, data: bytes, registry: Registry, head: AuditHead | None) -> None:
    """Cache ``registry`` and ``head`` for the file ``target`` that was just written with ``data``.

    They must be what reading ``data`` gives: callers pass what they parsed from it.
    """
    try:
        st = os.stat(target)
    except OSError:
        return
    readcache.store(target, readcache.key_of(st, data), registry, head)


def audited(
    path: Path,
    target: Path,
    anchor: AuditHead | None,
    text: str,
    changes: list[audit.Change],
    *,
    now: datetime | None,
    actor: Mapping[str, str] | None,
) -> tuple[str, tuple[Registry, AuditHead]]:
    """Append ``changes`` to the audit log of ``target`` (fsync'd, chained after ``anchor``,
    the [audit] table read under the lock) and return ``text`` with its new [audit] table,
    with the registry and head that reading that text gives (for the read cache).

    The caller holds the lock and writes the returned text next: a crash in
    between leaves the log ahead of the registry's count, which ``audit
    verify`` explains as an interrupted edit.
    """
    log = audit.log_path(target)
    last = audit.last_record(log)
    count = anchor.count if anchor else 0
    if last is not None and last["seq"] >= count:
        seq, prev = last["seq"], last["hash"]  # after an interrupted edit too
    else:
        seq, prev = count, anchor.head if anchor else None
    records = audit.chain(
        changes,
        after_seq=seq,
        prev=prev,
        now=now if now is not None else datetime.now(UTC),
        actor=actor if actor is not None else audit.cli_actor(),
    )
    head = AuditHead(records[-1]["hash"], records[-1]["seq"])
    text = with_audit_table(text, head, str(path))
    registry = registry_from_text(path, text)  # never write what we could not read back
    audit.append(log, records, max_bytes=audit.AUDIT_MAX_BYTES, owner=owner_of(target))
    return text, (registry, head)


def replace_text(
    path: Path,
    real: Path,
    text: str,
    *,
    now: datetime | None = None,
    actor: Mapping[str, str] | None = None,
) -> list[audit.Change] | None:
    """Replace the registry at ``real`` with ``text`` (checked already), auditing what changed.

    For ``bbenroll edit``, which holds the lock (:func:`lock_path`) itself. The
    [audit] table is always ours: what an editor did to it is replaced. Returns
    the changes recorded, or None when the old file did not load (an edit that
    repairs it): then one record says so, chained after the log's last record.
    """
    after = registry_from_text(path, text)
    try:
        before: LoadedRegistry | None = load(path, real=real)
    except BBEnrollError:
        before = None
    if before is None:
        changes = [audit.Change("changed", reason="edited while it did not load: no per-worker record")]
        text, _ = audited(path, real, None, text, changes, now=now, actor=actor)
    else:
        changes = audit.diff(before.registry.workers, after.workers, before.registry.master, after.master)
        changes += audit.invite_changes(before.registry.invites, after.invites)
        if changes:
            text, _ = audited(path, real, before.audit, text, changes, now=now, actor=actor)
        elif before.audit is not None:  # nothing audited changed: keep the anchor as it was
            text = with_audit_table(text, before.audit, str(path))
    try:
        atomic_write(real, text.encode("utf-8"))
    except OSError as e:
        raise RegistryError(str(path), f"cannot write: {e.strerror}") from None
    return changes if before is not None else None


AUDIT_COMMENT = "# Written by bbenroll with every audit record (docs/registry.md); do not edit."


def audit_table(head: AuditHead, newline: str = "\n") -> str:
    lines = ["[audit]", AUDIT_COMMENT, f'head = "{head.head}"', f"count = {head.count}"]
    return newline.join(lines) + newline


def with_audit_table(text: str, head: AuditHead, where: str) -> str:
    """``text`` with its ``[audit]`` table replaced (or appended, for an older registry)."""
    from bbenroll.registry.tomledit import newline_of
    from bbenroll.registry.tomlscan import ScanError, scan, table_span

    newline = newline_of(text)
    try:
        scanned = scan(text)
    except ScanError as e:
        raise RegistryError(where, f"cannot edit this layout: {e}; file unchanged") from None
    for index, header in enumerate(scanned.headers):
        if header.path == ("audit",) and not header.is_array:
            start, end = table_span(scanned, index, subtables=False)
            return text[:start] + audit_table(head, newline) + text[end:]
    if text and not text.endswith("\n"):
        text += newline
    return text + newline + audit_table(head, newline)


@contextlib.contextmanager
def edit(
    path: Path | None = None,
    timeout: float = 30.0,
    *,
    actor: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> Iterator[Editor]:
    """Lock, load, let the caller change things, save atomically if it returns.

    Every change is audited on the way out (:meth:`Editor.save`): ``actor``
    defaults to the CLI's OS user and host, ``now`` (the records' time) to
    the wall clock, for callers that do not pass their own.

    The path is resolved once, here: the lock, the read and the write all go
    to that one real file, whatever a symlink on the way points to later.
    """
    path = Path(path) if path is not None else default_path()
    if not path.exists():
        read_text(path)  # raises the friendly "not found"
    real = real_path(path)
    with exclusive_lock(lock_path(real), timeout=timeout, owned_like=real):
        editor = Editor(load(path, real=real), real)
        yield editor
        editor.save(now=now, actor=actor)


def create(
    path: Path,
    *,
    location: list[str],
    listen: str,
    pb: str,
    identity: str,
    now: datetime | None = None,
    actor: Mapping[str, str] | None = None,
) -> LoadedRegistry:
    """Write a new registry and a new master identity; refuses to replace either."""
    from bbenroll.registry.create import create_registry

    return create_registry(
        path, location=location, listen=listen, pb=pb, identity=identity, now=now, actor=actor
    )
