"""One archive with everything a master's enrollment needs: the registry, its identities, its audit log.

Written under the registry's lock, so no edit (the CLI's or the running
master's) lands between reading the registry and reading its audit log: the
archive is one consistent state. The format is a plain (uncompressed) tar,
which every system can open without bbenroll, holding ``manifest.json`` first
(each file's role, name, size and SHA-256) and then the files. A tar, not a
zip, because Python's tarfile lets us refuse, before extracting anything,
every member that is not a plain file named in the manifest; uncompressed,
because the content is mostly random secrets and PEM text.

Restoring verifies the whole archive first, then writes every file to a
temporary beside its target and renames them all only when all were written:
a failure leaves the targets as they were. Restore never follows symlinks of
the archive (it has none) and never writes outside the registry's directory
and the identity paths the registry names.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bbenroll.errors import BBEnrollError

FORMAT = "bbenroll-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MAX_MEMBERS = 32  # registry, two identities, the audit log and its rotations, manifest
MAX_MEMBER_BYTES = 64 * 1024 * 1024  # the audit log rotates at 8 MiB; 5 rotations kept
ROLES = ("registry", "identity", "previous-identity", "audit-log")


class BackupError(BBEnrollError):
    pass


@dataclass(frozen=True)
class Member:
    role: str
    name: str  # the name inside the archive: the file's name beside the registry (or the identity's path)
    data: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class Archive:
    created: str
    registry_name: str
    members: tuple[Member, ...]

    def of(self, role: str) -> list[Member]:
        return [m for m in self.members if m.role == role]

    def summary(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "registry": self.registry_name,
            "files": [{"role": m.role, "name": m.name, "bytes": len(m.data)} for m in self.members],
        }


# --- collecting (under the lock) ------------------------------------------------------


def _audit_files(real: Path) -> list[Path]:
    from bbenroll.registry import audit

    log = audit.log_path(real)
    files = [log] if log.exists() else []
    for n in range(1, audit.AUDIT_KEEP + 1):
        rotated = audit.rotated_path(log, n)
        if rotated.exists():
            files.append(rotated)
    return files


def _collect(path: Path, real: Path) -> list[Member]:
    from bbenroll.registry import store

    text = store.read_text(real)
    loaded = store.load(path, real=real)  # a registry that does not load is not worth backing up as is
    members = [Member("registry", real.name, text.encode("utf-8"))]
    master = loaded.registry.master
    for role, identity in (("identity", master.identity),
                           ("previous-identity", master.previous.identity if master.previous else None)):
        if identity is None:
            continue
        ident_path = store.identity_path(real, identity)
        try:
            members.append(Member(role, identity, ident_path.read_bytes()))
        except OSError as e:
            raise BackupError(f"cannot read {ident_path}: {e.strerror}") from None
    for log in _audit_files(real):
        members.append(Member("audit-log", log.name, log.read_bytes()))
    return members


def create_backup(
    path: Path, archive: Path, *, now: datetime, force: bool = False, timeout: float = 30.0
) -> Archive:
    """Write ``archive`` (0600, atomically) from the registry at ``path``, under its lock."""
    from bbenroll.fileio import atomic_write, exclusive_lock
    from bbenroll.registry import store
    from bbenroll.times import format_time

    path = Path(path)
    store.read_text(path)  # the friendly "not found"
    real = store.real_path(path)
    archive = Path(archive)
    if archive.is_symlink():
        raise BackupError(f"{archive} is a symbolic link; refusing to write the backup through it")
    if archive.exists() and not force:
        raise BackupError(f"{archive} exists; use --force to replace it")
    with exclusive_lock(store.lock_path(real), timeout=timeout, owned_like=real):
        members = _collect(path, real)
    result = Archive(format_time(now), real.name, tuple(members))
    try:
        atomic_write(archive, _tar_bytes(result))
    except OSError as e:
        raise BackupError(f"cannot write {e.filename or archive}: {e.strerror}") from None
    return result


def _tar_bytes(archive: Archive) -> bytes:
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "created": archive.created,
        "registry": archive.registry_name,
        "files": [
            {"role": m.role, "name": m.name, "bytes": len(m.data), "sha256": m.digest}
            for m in archive.members
        ],
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        entries = [(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n")]
        entries += [(_member_name(i, m), m.data) for i, m in enumerate(archive.members)]
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o600
            info.mtime = 0  # the manifest says when; equal contents give equal archives
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _member_name(index: int, member: Member) -> str:
    # a flat, safe name inside the archive whatever the identity's path: files/N-BASENAME
    return f"files/{index}-{Path(member.name).name}"


# --- reading and verifying --------------------------------------------------------------


def read_archive(archive: Path) -> Archive:
    """The archive's members, every digest checked; BackupError (one line) on anything else."""
    archive = Path(archive)
    try:
        tar = tarfile.open(archive, mode="r:")
    except FileNotFoundError:
        raise BackupError(f"{archive}: no such file") from None
    except (OSError, tarfile.TarError) as e:
        raise BackupError(f"{archive}: not a bbenroll backup (not a tar archive: {e})") from None
    with tar:
        infos = tar.getmembers()
        if len(infos) > MAX_MEMBERS + 1:
            raise BackupError(f"{archive}: {len(infos)} entries, more than a bbenroll backup holds")
        contents: dict[str, bytes] = {}
        for info in infos:
            if not info.isreg() or info.size > MAX_MEMBER_BYTES or info.name in contents:
                raise BackupError(f"{archive}: entry {info.name!r} is not a file a bbenroll backup holds")
            extracted = tar.extractfile(info)
            assert extracted is not None  # a regular file
            contents[info.name] = extracted.read()
    try:
        manifest = json.loads(contents.pop(MANIFEST))
    except (KeyError, ValueError):
        raise BackupError(f"{archive}: no readable {MANIFEST}: not a bbenroll backup") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{archive}: not a bbenroll backup")
    if manifest.get("version") != FORMAT_VERSION:
        raise BackupError(
            f"{archive}: backup format version {manifest.get('version')!r}; "
            f"this bbenroll reads {FORMAT_VERSION}"
        )
    members = []
    files = manifest.get("files")
    if not isinstance(files, list):
        raise BackupError(f"{archive}: {MANIFEST} has no file list")
    for index, entry in enumerate(files):
        member = _manifest_member(archive, index, entry, contents)
        members.append(member)
    if contents:
        raise BackupError(f"{archive}: {sorted(contents)[0]!r} is not in the manifest")
    if [m.role for m in members].count("registry") != 1 or [m.role for m in members].count("identity") != 1:
        raise BackupError(f"{archive}: a backup holds exactly one registry and one identity")
    return Archive(str(manifest.get("created")), str(manifest.get("registry")), tuple(members))


def _manifest_member(archive: Path, index: int, entry: Any, contents: dict[str, bytes]) -> Member:
    if not (isinstance(entry, dict) and entry.get("role") in ROLES and isinstance(entry.get("name"), str)):
        raise BackupError(f"{archive}: {MANIFEST} entry {index + 1} is malformed")
    member = Member(entry["role"], entry["name"], b"")
    name = _member_name(index, member)
    data = contents.pop(name, None)
    if data is None:
        raise BackupError(f"{archive}: {name} is missing")
    member = Member(member.role, member.name, data)
    if member.digest != entry.get("sha256") or len(data) != entry.get("bytes"):
        raise BackupError(f"{archive}: {member.name} does not match its digest: the archive is damaged")
    if member.role in ("registry", "audit-log") and Path(member.name).name != member.name:
        raise BackupError(f"{archive}: {MANIFEST} entry {index + 1} names a path, not a file name")
    return member


def verify_backup(archive: Path) -> tuple[Archive, list[str]]:
    """The archive and its problems (empty: it restores to a registry that passes ``check``)."""
    from bbenroll.registry import store

    contents = read_archive(archive)
    with _unpacked(contents) as registry:
        problems = store.check(registry)
    # the problems name the temporary directory; say where they are in the archive instead
    return contents, [p.replace(str(registry.parent) + os.sep, f"{archive}:") for p in problems]


@contextlib.contextmanager
def _unpacked(archive: Archive) -> Iterator[Path]:
    """The archive's files in a private temporary directory, laid out as they are restored."""
    with tempfile.TemporaryDirectory(prefix="bbenroll-verify-") as tmp:
        root = Path(tmp) / "registry"
        root.mkdir(mode=0o700)
        targets = plan_restore(archive, root / archive.of("registry")[0].name)
        for target, member in targets.items():
            if not target.is_relative_to(root):
                continue  # an absolute identity path: checked where it is restored, not here
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(member.data)
            target.chmod(0o600)
        yield root / archive.of("registry")[0].name


# --- restoring ----------------------------------------------------------------------------


def plan_restore(archive: Archive, registry: Path) -> dict[Path, Member]:
    """Where each member goes when the registry is restored to ``registry``."""
    from bbenroll.registry import audit, store

    registry = Path(registry).absolute()
    targets: dict[Path, Member] = {registry: archive.of("registry")[0]}
    for member in archive.of("identity") + archive.of("previous-identity"):
        targets[store.identity_path(registry, member.name)] = member
    log = audit.log_path(registry)
    old_stem = Path(archive.of("registry")[0].name).stem
    for member in archive.of("audit-log"):
        # X.audit.jsonl / X.audit.N.jsonl, renamed after the registry they are restored beside
        suffix = member.name[len(old_stem):] if member.name.startswith(old_stem) else member.name
        targets[log.with_name(registry.stem + suffix)] = member
    return targets


def restore_backup(
    archive_path: Path,
    registry: Path,
    *,
    force: bool = False,
    now: datetime,
    actor: Mapping[str, str] | None = None,
) -> tuple[Archive, list[Path]]:
    """Put the archive's files back for ``registry``; refuses to overwrite without ``force``."""
    from bbenroll.fileio import fsync_directory
    from bbenroll.registry import audit, store

    archive, problems = verify_backup(archive_path)
    if problems:
        raise BackupError(f"{archive_path}: the archive's registry does not pass check: {problems[0]}")
    targets = plan_restore(archive, registry)
    existing = [t for t in targets if t.exists() or t.is_symlink()]
    if existing and not force:
        raise BackupError(
            f"{existing[0]} exists; use --force to replace it (and the other files of the backup)"
        )
    written: list[tuple[Path, Path]] = []
    try:
        for target, member in targets.items():
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".restore", dir=target.parent)
            written.append((Path(tmp), target))  # before writing: a failed write is removed too
            with os.fdopen(fd, "wb") as f:
                f.write(member.data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
    except OSError as e:
        for tmp, _ in written:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise BackupError(
            f"cannot write {e.filename or registry}: {e.strerror}; nothing was restored"
        ) from None
    # every file is on disk: the renames are what remains, and they do not fail for lack of space
    for tmp, target in written:
        os.replace(tmp, target)
    for directory in {target.parent for _, target in written}:
        fsync_directory(directory)
    with store.edit(registry, now=now, actor=actor) as editor:
        editor.note(audit.Change("backup-restored", reason=f"from a backup made {archive.created}"))
    return archive, list(targets)
