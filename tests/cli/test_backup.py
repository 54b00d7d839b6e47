"""bbenroll backup create|restore|verify, check --archive, and a real master serving restored FURLs."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest_twisted

from bbenroll.cli import COMMANDS


def test_the_commands_and_their_json(cli, reg_path: Path, tmp_path: Path) -> None:
    assert COMMANDS["backup"] == "bbenroll.cli.backup"
    cli("add", "w1")
    archive = tmp_path / "b.tar"
    made = cli("--json", "backup", "create", str(archive))
    assert made.code == 0, made.err
    document = json.loads(made.out)
    assert [f["role"] for f in document["files"]] == ["registry", "identity", "audit-log"]
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    for args in (("backup", "verify", str(archive)), ("check", "--archive", str(archive))):
        verified = cli("--json", *args)
        assert verified.code == 0, verified.err
        assert json.loads(verified.out)["ok"] is True
    again = cli("backup", "create", str(archive))
    assert again.code == 1 and "use --force" in again.err
    refused = cli("--json", "backup", "restore", str(archive))
    assert refused.code == 1 and "exists; use --force" in json.loads(refused.out)["error"]


def test_verify_and_restore_of_a_broken_archive_are_one_line(cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"\0" * 10)
    for args in (("backup", "verify", str(bad)), ("check", "--archive", str(bad)),
                 ("backup", "restore", str(bad)), ("backup", "verify", str(tmp_path / "missing.tar"))):
        result = cli(*args)
        assert result.code == 1, args
        assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err, result.err


def test_an_archive_whose_registry_fails_check_says_which_problem(cli, tmp_path: Path) -> None:
    cli("add", "w1")
    archive = tmp_path / "b.tar"
    cli("backup", "create", str(archive))
    # a backup of a registry whose identity was later replaced: check catches it inside the archive
    from bbenroll.identity import make_identity_pem
    from bbenroll.registry import backup as backupmod

    parsed = backupmod.read_archive(archive)
    members = tuple(
        backupmod.Member(m.role, m.name, make_identity_pem("x") if m.role == "identity" else m.data)
        for m in parsed.members
    )
    swapped = backupmod.Archive(parsed.created, parsed.registry_name, members)
    archive.write_bytes(backupmod._tar_bytes(swapped))
    result = cli("--json", "check", "--archive", str(archive))
    assert result.code == 1
    document = json.loads(result.out)
    assert document["ok"] is False and any("tubid" in p.lower() for p in document["problems"])
    assert all(str(tmp_path) not in p or str(archive) in p for p in document["problems"])


@pytest_twisted.ensureDeferred
async def test_backup_remove_restore_and_the_master_serves_the_same_furls(master, tmp_path: Path) -> None:
    furls = {name: master.cli("add", name) for name in ("w1", "w2")}
    (tmp_path / "safe").mkdir()
    archive = tmp_path / "safe" / "backup.tar"
    master.cli("backup", "create", str(archive))
    directory = master.path.parent
    for path in directory.iterdir():  # the disk is lost
        if path.is_file():
            path.unlink()
    assert not master.path.exists()
    master.cli("backup", "restore", str(archive))
    master.service.startService()
    await master.service.when_listening()
    for name, furl in furls.items():
        ref = await master.connect(furl)
        config = await ref.callRemote("get_worker_config")
        assert config["name"] == name
