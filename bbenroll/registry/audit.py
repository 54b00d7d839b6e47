"""The tamper-evident audit log: ``X.audit.jsonl`` beside the registry ``X.toml``.

One JSON object per line, each carrying the hash of the one before it; the
registry's ``[audit]`` table keeps the latest hash and the count, written under
the same lock as the change. The pure part (no I/O, ``now`` passed in) builds,
chains and verifies records; the thin file layer at the end appends (fsync'd,
O_APPEND|O_NOFOLLOW, mode 0600), rotates by size and reads the files back.

Secrets never enter the log: a secret is recorded by its fingerprint only
(``sha256:`` + the first 16 hex digits of its SHA-256).

Crash safety: records are appended (and fsync'd) *before* the registry is
replaced. A crash in between leaves the log one edit ahead of the registry's
count: :func:`verify` reports those records as an interrupted edit (a warning
naming them), not as tampering. The reverse (the registry ahead of the log) can
only come from a log that lost records, and is a problem.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from bbenroll.errors import BBEnrollError
from bbenroll.times import format_time

AUDIT_MAX_BYTES = 8 * 1024 * 1024  # past this the log is rotated to X.audit.1.jsonl
AUDIT_KEEP = 5  # rotated files kept: X.audit.1.jsonl (newest) .. X.audit.5.jsonl

ACTIONS = (
    "initialized",
    "added",
    "removed",
    "rotated",
    "revoked",
    "restored",
    "changed",
    "master-changed",
    "connection-dropped",
    "confirmed",
    "location-changed",
    "accepted",
    "refused",
    "identity-rolled",
    "identity-retired",
    "bound",
    "unbound",
    # invites (docs/fleets.md): the records name the invite by its ID, never its secret or hash
    "invited",
    "enrolled",
    "invite-revoked",
    "invite-pruned",
    # adoption and backups (docs/migration.md)
    "moved",
    "imported",
    "upgraded",
    "backup-restored",
)
# every key of a record, in the order a person reads them (lines are written with sorted keys)
RECORD_KEYS = (
    "seq",
    "time",
    "actor",
    "action",
    "worker",
    "old_secret",
    "new_secret",
    "reason",
    "prev",
    "hash",
)


# --- pure: records and the chain ---------------------------------------------


@dataclass(frozen=True)
class AuditHead:
    """The registry's ``[audit]`` table: the last record's hash and seq."""

    head: str
    count: int


def fingerprint(secret: str | None) -> str | None:
    """What the log says of a secret: enough to tell two apart, nothing to use."""
    if secret is None:
        return None
    return "sha256:" + hashlib.sha256(secret.encode("utf-8")).hexdigest()[:16]


def canonical(record: Mapping[str, Any]) -> str:
    """The one text form of a record: sorted keys, no spaces, ASCII (so bytes and characters agree)."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def record_hash(record: Mapping[str, Any]) -> str:
    """sha256 over the canonical JSON of the record without its ``hash``."""
    body = {key: value for key, value in record.items() if key != "hash"}
    return "sha256:" + hashlib.sha256(canonical(body).encode("ascii")).hexdigest()


@dataclass(frozen=True)
class Change:
    """One record's content, before it is numbered and chained."""

    action: str
    worker: str | None = None
    old_secret: str | None = None  # fingerprints, never secrets
    new_secret: str | None = None
    reason: str | None = None
    # for the running master's records about a connection: the peer's address, which
    # goes into the record's actor beside the master's own (``{"by", "host", "peer"}``)
    peer: str | None = None


def make_record(
    seq: int, now: datetime, actor: Mapping[str, str], change: Change, prev: str | None
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "seq": seq,
        "time": format_time(now),
        "actor": dict(actor) if change.peer is None else {**actor, "peer": change.peer},
        "action": change.action,
        "worker": change.worker,
        "old_secret": change.old_secret,
        "new_secret": change.new_secret,
        "reason": change.reason,
        "prev": prev,
    }
    record["hash"] = record_hash(record)
    return record


def chain(
    changes: Iterable[Change], *, after_seq: int, prev: str | None, now: datetime, actor: Mapping[str, str]
) -> list[dict[str, Any]]:
    """Number and chain ``changes`` after record ``after_seq`` whose hash is ``prev``."""
    records = []
    for change in changes:
        after_seq += 1
        record = make_record(after_seq, now, actor, change, prev)
        prev = record["hash"]
        records.append(record)
    return records


def worker_change(old: Any, new: Any) -> Change | None:
    """The record for one worker (``model.Worker`` or None on either side), or None if unchanged."""
    if old == new:
        return None
    if old is None:
        if new.enrolled_by is not None:
            secret = fingerprint(new.swissnum)
            return Change("enrolled", new.name, new_secret=secret, reason=f"invite {new.enrolled_by}")
        if new.legacy:  # bbenroll import: the worker's old PB password, a new FURL
            return Change("imported", new.name, new_secret=fingerprint(new.swissnum))
        return Change("added", new.name, new_secret=fingerprint(new.swissnum))
    if new is None:
        return Change("removed", old.name, old_secret=fingerprint(old.swissnum))
    old_fp, new_fp = fingerprint(old.swissnum), fingerprint(new.swissnum)
    if replace(old, bound=new.bound) == new:  # only the key binding changed (docs/security.md)
        if new.bound is not None and old.bound is None:
            return Change("bound", new.name, new_secret=new_fp, reason=f"worker key {new.bound.tubid}")
        if new.bound is None and old.bound is not None:
            return Change("unbound", new.name, old_secret=old_fp, reason=f"worker key {old.bound.tubid}")
    if old.moved is None and new.moved is not None and replace(old, moved=new.moved) == new:
        # an imported worker's first connection through its FURL (the running master writes it)
        return Change("moved", new.name, new_secret=new_fp, reason="its password no longer logs in directly")
    if new.enrolled_by is not None and new.enrolled_by != old.enrolled_by and old_fp != new_fp:
        # a re-enrolling invite (a latent worker's new instance): new secrets, the old ones refused at once
        return Change("enrolled", new.name, old_fp, new_fp, f"re-enrolled through invite {new.enrolled_by}")
    unbound = "; key binding cleared" if old.bound is not None and new.bound is None else ""
    if old.revoked is None and new.revoked is not None:
        return Change("revoked", new.name, old_fp, None if old_fp == new_fp else new_fp, new.revoked_reason)
    if old.revoked is not None and new.revoked is None:
        return Change("restored", new.name, old_fp, new_fp, unbound[2:] or None)
    if old_fp != new_fp:
        grace = new.previous is not None and new.previous.swissnum == old.swissnum
        if grace:
            reason = f"grace until {format_time(new.previous.until)}"
        else:  # `rotate --compromised`: say so, the one rotation an investigation looks for
            reason = "old secret refused at once" + (
                "; PB password changed" if new.password != old.password else ""
            ) + unbound
        return Change("rotated", new.name, old_fp, new_fp, reason)
    if _only_confirmed(old, new):
        # the serial goes in ``reason``: a record's keys are fixed, and old logs must still verify
        retired = new.previous != old.previous
        reason = f"serial {new.delivered}" + ("; previous secret retired" if retired else "")
        return Change(
            "confirmed", new.name, fingerprint(old.previous.swissnum) if retired else None, new_fp, reason
        )
    return Change("changed", new.name, old_fp, new_fp)


def _only_confirmed(old: Any, new: Any) -> bool:
    """``new`` is ``old`` after ``model.confirm``: only the delivery (and the grace's end) differ."""
    if new.delivered == old.delivered:
        return False
    previous_same_secret = (old.previous is None) == (new.previous is None) and (
        old.previous is None or old.previous.swissnum == new.previous.swissnum
    )
    if not previous_same_secret:
        return False
    return replace(old, delivered=new.delivered, delivered_at=new.delivered_at, previous=new.previous) == new


def _only_location_bump(old: Any, new: Any) -> bool:
    """``new`` is ``old`` after ``model.change_location``: one serial more, nothing else."""
    return new.serial == old.serial + 1 and replace(old, serial=new.serial, changed=new.changed) == new


def _identity_change(before_master: Any, after_master: Any) -> Change | None:
    """``master roll-identity`` (a new tubid) or the end of its overlap (previous removed)."""
    if before_master.tubid != after_master.tubid:
        previous = after_master.previous
        kept = (
            f"previous identity served until {format_time(previous.until)}"
            if previous is not None and previous.tubid == before_master.tubid
            else "previous identity not served"
        )
        tubids = f"tubid {before_master.tubid} -> {after_master.tubid}"
        return Change("identity-rolled", reason=f"{tubids}; {kept}")
    old = before_master.previous
    if old is not None and after_master.previous is None:
        return Change("identity-retired", reason=f"tubid {old.tubid} is no longer served")
    return None


_IDENTITY_KEYS = ("identity", "tubid", "previous")


def diff(
    before: Mapping[str, Any], after: Mapping[str, Any], before_master: Any = None, after_master: Any = None
) -> list[Change]:
    """One change per worker that differs (in the order before, then added), and the master's.

    A change of ``[master] location`` is one ``location-changed`` record, and
    the serial bumps it brings (``model.change_location``) are folded into it
    (counted in its reason) rather than logged as one ``changed`` record per
    worker: with 500 workers that would be 500 records saying one thing. A
    master key rollover (a new ``tubid``) is one ``identity-rolled`` record, its
    bumps folded the same way; the end of its overlap is ``identity-retired``.
    Any other change of the master is ``master-changed``.
    """
    changes = []
    both = before_master is not None and after_master is not None
    location_changed = both and before_master.location != after_master.location
    identity = _identity_change(before_master, after_master) if both else None
    if both:
        rest = {"location": after_master.location} if location_changed else {}
        if identity is not None:
            rest.update({key: getattr(after_master, key) for key in _IDENTITY_KEYS})
        if replace(before_master, **rest) != after_master:
            changes.append(Change("master-changed"))
    folded = location_changed or (identity is not None and identity.action == "identity-rolled")
    bumped = 0
    for name in list(before) + [name for name in after if name not in before]:
        old, new = before.get(name), after.get(name)
        if folded and old is not None and new is not None and _only_location_bump(old, new):
            bumped += 1
            continue
        change = worker_change(old, new)
        if change is not None:
            changes.append(change)
    at = 1 if changes and changes[0].action == "master-changed" else 0
    if identity is not None:
        if identity.action == "identity-rolled":
            identity = replace(identity, reason=f"{identity.reason}; FURLs of {bumped} workers changed")
        changes.insert(at, identity)
        at += 1
    if location_changed:
        hints = f"{','.join(before_master.location)} -> {','.join(after_master.location)}"
        record = Change("location-changed", reason=f"{hints}; FURLs of {bumped} workers changed")
        changes.insert(at, record)
    return changes


def invite_change(old: Any, new: Any) -> Change | None:
    """The record for one invite (``invites.Invite`` or None on either side): its ID, never its hash."""
    if old == new:
        return None
    if old is None:
        return Change("invited", reason=f"invite {new.id}: {_invite_terms(new)}")
    if new is None:
        return Change("invite-pruned", reason=f"invite {old.id} removed ({old.used} used)")
    if old.revoked is None and new.revoked is not None:
        return Change("invite-revoked", reason=f"invite {new.id}")
    consumed = new.used - old.used
    if consumed > 0 and replace(old, used=new.used, uses=new.uses) == new:
        if new.uses is None or (old.uses is not None and old.uses - new.uses == consumed):
            return None  # uses consumed: each worker's `enrolled` record tells of it
    return Change("changed", reason=f"invite {new.id}: {_invite_terms(new)}")


def _invite_terms(invite: Any) -> str:
    uses = "reusable" if invite.reusable else f"{invite.uses} uses left"
    if invite.name:
        target = f"name {invite.name}"
    else:
        target = f"prefix {invite.prefix}" if invite.prefix else "any name"
    extra = "; ephemeral" if invite.ephemeral else ""
    extra += "; re-enrolls" if invite.reenroll else ""
    return f"{uses}, {target}, expires {format_time(invite.expires)}{extra}"


def invite_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[Change]:
    """One change per invite that differs (in the order before, then added)."""
    changes = []
    for invite_id in list(before) + [i for i in after if i not in before]:
        change = invite_change(before.get(invite_id), after.get(invite_id))
        if change is not None:
            changes.append(change)
    return changes


# --- pure: verification --------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One line of a log file, as read: ``file`` is its name, ``number`` 1-based."""

    file: str
    number: int
    text: str


@dataclass
class Finding:
    message: str
    file: str | None = None
    line: int | None = None
    seq: int | None = None

    def __str__(self) -> str:
        place = f"{self.file}:{self.line}: " if self.file else ""
        seq = f"record {self.seq}: " if self.seq is not None else ""
        return f"{place}{seq}{self.message}"

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "seq": self.seq, "message": self.message}


@dataclass
class Report:
    records: int = 0  # records read
    head: str | None = None  # the hash of the last record read
    problems: list[Finding] = field(default_factory=list)  # tampering (or damage): exit 1
    warnings: list[Finding] = field(default_factory=list)  # explained, not tampering
    notes: list[str] = field(default_factory=list)  # where the chain starts

    @property
    def intact(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "intact": self.intact,
            "records": self.records,
            "head": self.head,
            "problems": [p.to_json() for p in self.problems],
            "warnings": [w.to_json() for w in self.warnings],
            "notes": list(self.notes),
        }


def _well_formed(record: Any) -> str | None:
    """Why a parsed line is not a record, or None."""
    if type(record) is not dict:
        return "not a JSON object"
    if set(record) != set(RECORD_KEYS):
        missing = sorted(set(RECORD_KEYS) - set(record))
        extra = sorted(set(record) - set(RECORD_KEYS))
        return f"not a record (missing {missing}, unknown {extra})"
    if type(record["seq"]) is not int or record["seq"] < 1:
        return "seq is not a positive integer"
    return None


def parse_lines(lines: Sequence[Line]) -> tuple[list[tuple[Line, dict[str, Any]]], list[Finding]]:
    """The records of ``lines``, and a finding for each line that is not one, exactly as written."""
    records, problems = [], []
    for line in lines:
        try:
            record = json.loads(line.text)
        except ValueError:
            problems.append(Finding("not a JSON record (edited or damaged)", line.file, line.number))
            continue
        why = _well_formed(record)
        if why is not None:
            problems.append(Finding(why, line.file, line.number))
            continue
        if canonical(record) != line.text:  # any change to the bytes, even one JSON would not see
            problems.append(
                Finding("not as bbenroll wrote it (edited)", line.file, line.number, record["seq"])
            )
            continue
        records.append((line, record))
    return records, problems


def verify(lines: Sequence[Line], *, count: int, head: str | None, oldest_is_rotated: bool = False) -> Report:
    """Check the chain of ``lines`` (oldest first) against the registry's ``count`` and ``head``.

    ``oldest_is_rotated``: the first line comes from a rotated file, so a chain
    that does not start at seq 1 lost its start to rotation, not to tampering.
    """
    report = Report()
    records, report.problems = parse_lines(lines)
    report.records = len(records)
    seqs = {record["seq"] for _, record in records}
    previous: tuple[Line, dict[str, Any]] | None = None
    for line, record in records:
        seq = record["seq"]
        if record_hash(record) != record["hash"]:
            report.problems.append(
                Finding("hash mismatch: the record was edited", line.file, line.number, seq)
            )
        if previous is None:
            if seq != 1:
                if oldest_is_rotated:
                    report.notes.append(
                        f"the oldest kept file starts at record {seq}: older records were rotated away"
                    )
                else:
                    report.problems.append(
                        Finding(
                            f"the log starts at record {seq}, not 1: records before it were deleted",
                            line.file,
                            line.number,
                            seq,
                        )
                    )
            elif record["prev"] is not None:
                report.problems.append(
                    Finding("record 1 names a previous record", line.file, line.number, seq)
                )
            elif record["action"] != "initialized":
                report.notes.append(f"chain starts at record 1, on {record['time']} (the registry is older)")
        else:
            prev_line, prev_record = previous
            if seq != prev_record["seq"] + 1:
                missing = range(prev_record["seq"] + 1, seq)
                moved = seq <= prev_record["seq"] or any(n in seqs for n in missing)
                what = "out of order (records were reordered)" if moved else "records before it were deleted"
                report.problems.append(
                    Finding(
                        f"follows record {prev_record['seq']} (line {prev_line.number}): {what}",
                        line.file,
                        line.number,
                        seq,
                    )
                )
            elif record["prev"] != prev_record["hash"]:
                report.problems.append(
                    Finding(
                        f"prev does not match record {prev_record['seq']}'s hash: the chain was rewritten",
                        line.file,
                        line.number,
                        seq,
                    )
                )
        previous = line, record
    report.head = previous[1]["hash"] if previous else None
    _check_anchor(report, records, count, head)
    return report


def _check_anchor(
    report: Report, records: list[tuple[Line, dict[str, Any]]], count: int, head: str | None
) -> None:
    """Compare the log's end with what the registry recorded under the lock."""
    last_seq = records[-1][1]["seq"] if records else 0
    if count > last_seq:
        where = f"ends at record {last_seq}" if records else "holds none"
        report.problems.append(
            Finding(f"the registry counts {count} records but the log {where}: the log was truncated")
        )
        return
    if count == 0:
        if records and head is None:
            report.warnings.append(_ahead(records, 0))
        return
    by_seq = {record["seq"]: (line, record) for line, record in records}
    anchor = by_seq.get(count)
    if anchor is None:
        report.problems.append(Finding(f"record {count}, the registry's last, is not in the log"))
        return
    line, record = anchor
    if record["hash"] != head:
        report.problems.append(
            Finding(
                "hash differs from the registry's [audit] head: the log was rewritten",
                line.file,
                line.number,
                count,
            )
        )
    if last_seq > count:
        report.warnings.append(_ahead(records, count))


def _ahead(records: list[tuple[Line, dict[str, Any]]], count: int) -> Finding:
    extra = [(line, record) for line, record in records if record["seq"] > count]
    first_line, first = extra[0]
    last = extra[-1][1]
    span = f"records {first['seq']}-{last['seq']} were" if len(extra) > 1 else f"record {first['seq']} was"
    return Finding(
        f"{span} appended but the registry was not written afterwards (an interrupted edit: "
        "their changes are not in the registry)",
        first_line.file,
        first_line.number,
        first["seq"],
    )


def matches(
    record: Mapping[str, Any],
    *,
    worker: str | None = None,
    action: str | None = None,
    since: str | None = None,
) -> bool:
    """Filter for ``bbenroll audit``; ``since`` is a formatted time (they sort as text)."""
    if worker is not None and record.get("worker") != worker:
        return False
    if action is not None and record.get("action") != action:
        return False
    return since is None or str(record.get("time")) >= since


# --- files ---------------------------------------------------------------------

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | NOFOLLOW | getattr(os, "O_BINARY", 0)
TAIL_BYTES = 64 * 1024


def log_path(registry: Path) -> Path:
    """``X.audit.jsonl`` for the (real) registry file ``X.toml``."""
    registry = Path(registry)
    return registry.parent / f"{registry.stem}.audit.jsonl"


def rotated_path(log: Path, n: int) -> Path:
    """``X.audit.N.jsonl``: the Nth newest rotated file."""
    stem = log.name[: -len(".jsonl")]
    return log.parent / f"{stem}.{n}.jsonl"


def log_files(log: Path, keep: int = AUDIT_KEEP) -> list[Path]:
    """The files of the log that exist, oldest first."""
    rotated = [rotated_path(log, n) for n in range(keep, 0, -1)]
    return [path for path in [*rotated, log] if path.exists()]


def _refuse_symlink(path: Path) -> None:
    if path.is_symlink():
        raise BBEnrollError(
            f"{path}: the audit log is a symbolic link; refusing to follow it (bbenroll never makes one: "
            "check who planted it)"
        )


def rotate(log: Path, keep: int = AUDIT_KEEP) -> None:
    """Shift X.audit.N.jsonl up by one (dropping the oldest) and move the log to .1."""
    _refuse_symlink(log)
    oldest = rotated_path(log, keep)
    if oldest.exists() or oldest.is_symlink():
        oldest.unlink()
    for n in range(keep - 1, 0, -1):
        source = rotated_path(log, n)
        if source.exists():
            os.replace(source, rotated_path(log, n + 1))
    os.replace(log, rotated_path(log, 1))


def append(
    log: Path,
    records: Sequence[Mapping[str, Any]],
    *,
    max_bytes: int | None = None,
    keep: int = AUDIT_KEEP,
    owner: tuple[int, int] | None = None,
) -> None:
    """Append ``records`` durably (one write, fsync); rotate first if the log is past ``max_bytes``."""
    from bbenroll.fileio import PRIVATE_MODE, fsync_directory, keep_owner

    if not records:
        return
    max_bytes = AUDIT_MAX_BYTES if max_bytes is None else max_bytes
    try:
        if log.stat().st_size >= max_bytes and not log.is_symlink():
            rotate(log, keep)
    except FileNotFoundError:
        pass
    data = "".join(canonical(record) + "\n" for record in records).encode("ascii")
    try:
        fd = os.open(log, APPEND_FLAGS, PRIVATE_MODE)
    except OSError as e:
        if e.errno == errno.ELOOP or log.is_symlink():
            _refuse_symlink(log)
        raise BBEnrollError(f"{log}: cannot open the audit log: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BBEnrollError(f"{log}: the audit log is not a regular file")
        if os.name == "posix" and stat.S_IMODE(st.st_mode) & 0o077:
            os.fchmod(fd, PRIVATE_MODE)  # O_CREAT's mode is masked by nothing wider, but an old file may be
        keep_owner(fd, owner)
        if st.st_size and _last_byte(log) != b"\n":
            # a write torn by a crash: start on a line of our own, or this record would be lost with it
            data = b"\n" + data
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except OSError as e:
        raise BBEnrollError(f"{log}: cannot write the audit log: {e.strerror}") from None
    finally:
        os.close(fd)
    fsync_directory(log.parent)


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except OSError as e:
        raise BBEnrollError(f"{path}: cannot read the audit log: {e.strerror}") from None


def read_lines(log: Path, keep: int = AUDIT_KEEP) -> tuple[list[Line], bool]:
    """Every line of every kept file, oldest first, and whether the oldest is a rotated file."""
    files = log_files(log, keep)
    lines = []
    for path in files:
        _refuse_symlink(path)
        text = _read(path)
        parts = text.split("\n")
        if parts and parts[-1] == "":
            parts.pop()
        lines.extend(Line(path.name, number, part) for number, part in enumerate(parts, 1))
    return lines, bool(files) and files[0] != log


def read_records(log: Path, keep: int = AUDIT_KEEP) -> list[dict[str, Any]]:
    """The records that parse, oldest first (for ``bbenroll audit``; ``verify`` judges them)."""
    return read_records_and_damage(log, keep)[0]


def read_records_and_damage(log: Path, keep: int = AUDIT_KEEP) -> tuple[list[dict[str, Any]], int]:
    """The records that parse, oldest first, and how many lines are not records."""
    lines, _ = read_lines(log, keep)
    records, problems = parse_lines(lines)
    return [record for _, record in records], len(problems)


def last_record(log: Path) -> dict[str, Any] | None:
    """The newest well-formed record (the log, else X.audit.1.jsonl), read from the tail only."""
    for path in (log, rotated_path(log, 1)):
        try:
            with open(path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - TAIL_BYTES))
                tail = f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            continue
        except OSError as e:
            raise BBEnrollError(f"{path}: cannot read the audit log: {e.strerror}") from None
        for text in reversed(tail.split("\n")):
            if not text:
                continue
            try:
                record = json.loads(text)
            except ValueError:
                continue
            if _well_formed(record) is None:
                return record
        if tail.strip():
            return None
    return None


def cli_actor() -> dict[str, str]:
    """Who runs the CLI: OS user name and short host name."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return {"user": user, "host": socket.gethostname().split(".")[0]}
