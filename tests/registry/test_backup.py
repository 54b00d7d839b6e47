"""Backups: one consistent archive of registry, identities and audit log; restored all or nothing."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest

from bbenroll.registry import audit, backup, store
from tests.helpers.cli import FIXED_NOW


def files_of(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if not p.name.startswith(".")}


def test_a_backup_holds_every_file_and_restores_byte_for_byte(cli, reg_path: Path, tmp_path: Path) -> None:
    cli("add", "w1")
    cli("add", "w2")
    archive = tmp_path / "b.tar"
    made = backup.create_backup(reg_path, archive, now=FIXED_NOW)
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert [m.role for m in made.members] == ["registry", "identity", "audit-log"]
    before = files_of(reg_path.parent)
    target = tmp_path / "elsewhere" / "workers.toml"
    target.parent.mkdir()
    backup.restore_backup(archive, target, now=FIXED_NOW)
    after = files_of(target.parent)
    assert after["master.pem"] == before["master.pem"]
    assert store.load(target).registry.workers == store.load(reg_path).registry.workers
    assert all(stat.S_IMODE((target.parent / n).stat().st_mode) == 0o600 for n in after)
    # the restore is recorded, after the backup's own records, and the chain holds
    records = audit.read_records(audit.log_path(target))
    assert records[-1]["action"] == "backup-restored"
    assert records[:-1] == audit.read_records(audit.log_path(reg_path))
    verified = cli("--registry", str(target), "audit", "verify", registry_arg=False)
    assert verified.code == 0 and "chain intact" in verified.out + verified.err


def test_a_renamed_registry_gets_its_audit_log_renamed_too(cli, reg_path: Path, tmp_path: Path) -> None:
    cli("add", "w1")
    archive = tmp_path / "b.tar"
    backup.create_backup(reg_path, archive, now=FIXED_NOW)
    target = tmp_path / "r" / "fleet.toml"
    target.parent.mkdir()
    backup.restore_backup(archive, target, now=FIXED_NOW)
    assert (target.parent / "fleet.audit.jsonl").exists()
    assert store.load(target).registry.workers.keys() == {"w1"}


def test_restore_refuses_to_overwrite_and_force_replaces_all(cli, reg_path: Path, tmp_path: Path) -> None:
    cli("add", "w1")
    archive = tmp_path / "b.tar"
    backup.create_backup(reg_path, archive, now=FIXED_NOW)
    cli("add", "w2")  # after the backup
    before = files_of(reg_path.parent)
    with pytest.raises(backup.BackupError, match="exists; use --force"):
        backup.restore_backup(archive, reg_path, now=FIXED_NOW)
    assert files_of(reg_path.parent) == before
    backup.restore_backup(archive, reg_path, now=FIXED_NOW, force=True)
    assert store.load(reg_path).registry.workers.keys() == {"w1"}


def test_a_failed_restore_leaves_nothing_behind(cli, reg_path: Path, tmp_path: Path, monkeypatch) -> None:
    cli("add", "w1")
    archive = tmp_path / "b.tar"
    backup.create_backup(reg_path, archive, now=FIXED_NOW)
    target = tmp_path / "r" / "workers.toml"
    target.parent.mkdir()
    real_fdopen = os.fdopen
    opened = []

    def failing_fdopen(fd, *args, **kwargs):  # the third temporary cannot be written: disk full
        opened.append(fd)
        if len(opened) == 3:
            os.close(fd)
            raise OSError(28, "No space left on device")
        return real_fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(backup.os, "fdopen", failing_fdopen)
    with pytest.raises(backup.BackupError, match="nothing was restored"):
        backup.restore_backup(archive, target, now=FIXED_NOW)
    assert list(target.parent.iterdir()) == []


def damaged(archive: Path, change) -> bytes:
    members = {}
    with tarfile.open(archive) as tar:
        for info in tar.getmembers():
            members[info.name] = tar.extractfile(info).read()
    change(members)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _flip_registry(m):
    m["files/0-workers.toml"] = m["files/0-workers.toml"].replace(b"version = 2", b"version = 3")


def _extra(m):
    m["files/9-evil"] = b"x"


def _no_manifest(m):
    del m["manifest.json"]


def _drop_identity(m):
    manifest = json.loads(m["manifest.json"])
    for entry in manifest["files"]:  # the identity, relabelled: digests all match, no identity left
        if entry["role"] == "identity":
            entry["role"] = "audit-log"
    m["manifest.json"] = json.dumps(manifest).encode()


@pytest.mark.parametrize(
    "change, message",
    [
        (_flip_registry, "does not match its digest"),
        (_extra, "not in the manifest"),
        (_no_manifest, "not a bbenroll backup"),
        (_drop_identity, "exactly one registry and one identity"),
    ],
)
def test_a_damaged_archive_is_refused_before_anything_is_written(
    cli, reg_path: Path, tmp_path: Path, change, message
) -> None:
    cli("add", "w1")
    archive = tmp_path / "b.tar"
    backup.create_backup(reg_path, archive, now=FIXED_NOW)
    archive.write_bytes(damaged(archive, change))
    target = tmp_path / "r" / "workers.toml"
    target.parent.mkdir()
    with pytest.raises(backup.BackupError, match=message):
        backup.restore_backup(archive, target, now=FIXED_NOW)
    assert list(target.parent.iterdir()) == []


def test_a_symlink_or_a_path_in_an_archive_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "b.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("files/0-workers.toml")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(backup.BackupError, match="not a file a bbenroll backup holds"):
        backup.read_archive(archive)
    archive.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(backup.BackupError, match="not a tar archive"):
        backup.read_archive(archive)


def test_an_archive_whose_identity_does_not_match_fails_verify(cli, reg_path: Path, tmp_path: Path) -> None:
    from bbenroll.identity import make_identity_pem

    cli("add", "w1")
    (reg_path.parent / "master.pem").write_bytes(make_identity_pem("someone else"))  # the key was replaced
    archive = tmp_path / "b.tar"
    with pytest.raises(Exception, match=r"(?i)tubid"):  # a registry that does not load is not backed up
        backup.create_backup(reg_path, archive, now=FIXED_NOW)
    assert not archive.exists()


def test_create_refuses_to_replace_an_archive_without_force(cli, reg_path: Path, tmp_path: Path) -> None:
    archive = tmp_path / "b.tar"
    archive.write_text("keep me")
    with pytest.raises(backup.BackupError, match="use --force"):
        backup.create_backup(reg_path, archive, now=FIXED_NOW)
    assert archive.read_text() == "keep me"
    backup.create_backup(reg_path, archive, now=FIXED_NOW, force=True)
    assert backup.read_archive(archive).of("registry")
