"""bbenroll upgrade: a version 1 registry written by the previous release becomes version 2."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest

from bbenroll.errors import BBEnrollError
from bbenroll.registry import store
from bbenroll.registry.upgrade import UpgradeError, plan, set_version, upgrade
from tests.helpers.cli import run_cli

FIXTURE = Path(__file__).parent.parent / "fixtures" / "registry-v1"


@pytest.fixture
def v1(tmp_path: Path) -> Path:
    for name in ("workers.toml", "master.pem", "workers.audit.jsonl"):
        shutil.copy(FIXTURE / name, tmp_path / name)
        (tmp_path / name).chmod(0o600)
    return tmp_path / "workers.toml"


def test_the_current_bbenroll_refuses_a_version_1_file_naming_the_command(v1: Path) -> None:
    with pytest.raises(BBEnrollError, match=r"registry version 1 is older .* run `bbenroll upgrade`"):
        store.load(v1)
    result = run_cli(["--registry", str(v1), "list"])
    assert result.code == 1
    assert "bbenroll upgrade" in result.err and "Traceback" not in result.err


def test_upgrade_keeps_every_worker_every_comment_and_the_old_file(v1: Path) -> None:
    old_text = v1.read_text()
    result = run_cli(["--registry", str(v1), "upgrade"])
    assert result.code == 0, result.err
    new_text = v1.read_text()
    # only the version number changed, and the [audit] table that records the upgrade
    as_before = new_text.replace("version = 2", "version = 1", 1)
    assert as_before.split("[audit]")[0] == old_text.split("[audit]")[0]
    assert "# w2 is the arm64 box under the desk" in new_text
    assert "version = 2  # written by bbenroll 0.1.0" in new_text
    backup = v1.with_name("workers.toml.v1.bak")
    assert backup.read_text() == old_text
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    loaded = store.load(v1)
    workers = loaded.registry.workers
    assert sorted(workers) == ["w1", "w2", "w3"]
    assert workers["w1"].tags == ("linux",) and workers["w1"].note == "rack 4"
    assert workers["w2"].previous is not None and workers["w2"].serial == 1
    assert workers["w3"].revoked is not None and workers["w3"].revoked_reason == "laptop stolen"
    # the upgrade is the audit log's last record, and the chain still verifies
    last = json.loads((v1.parent / "workers.audit.jsonl").read_text().splitlines()[-1])
    assert last["action"] == "upgraded"
    verify = run_cli(["--registry", str(v1), "audit", "verify"])
    assert verify.code == 0, verify.err


def test_the_upgraded_file_reads_as_the_old_release_wrote_it(v1: Path, tmp_path: Path) -> None:
    """Every worker of the old file equals what the version 1 text held, field by field."""
    from bbenroll.registry.upgrade import version_of

    old_text = v1.read_text()
    assert version_of(old_text, "x") == 1
    as_v2 = store.registry_from_text(v1, set_version(old_text, 1, 2, "x"))
    upgrade(v1)
    assert store.load(v1).registry.workers == as_v2.workers
    assert store.load(v1).registry.master == as_v2.master


def test_a_second_upgrade_has_nothing_to_do_and_a_restored_old_file_gets_a_new_backup(v1: Path) -> None:
    old_text = v1.read_text()
    upgrade(v1)
    again = run_cli(["--registry", str(v1), "--json", "upgrade"])
    assert again.code == 0
    assert json.loads(again.out)["upgraded"] is False
    assert "already registry version 2" in run_cli(["--registry", str(v1), "upgrade"]).err
    v1.write_text(old_text)  # the admin restored the old file: its backup may not be overwritten
    assert upgrade(v1).backup == v1.with_name("workers.toml.v1.2.bak")
    assert v1.with_name("workers.toml.v1.bak").read_text() == old_text


def test_dry_run_writes_nothing(v1: Path) -> None:
    before = {p.name: p.read_bytes() for p in v1.parent.iterdir()}
    result = run_cli(["--registry", str(v1), "--json", "upgrade", "--dry-run"])
    assert result.code == 0
    assert json.loads(result.out) | {"registry": None} == {
        "registry": None, "from": 1, "to": 2, "upgraded": False, "dry_run": True, "backup": None,
    }
    assert {p.name: p.read_bytes() for p in v1.parent.iterdir()} == before


@pytest.mark.parametrize(
    "text, message",
    [
        ("version = 3\n[master]\n", "written by a newer bbenroll"),
        ("version = 0\n", "not one bbenroll ever wrote"),
        ("not toml [", "invalid TOML"),
        ("[master]\nversion = 1\n", "no integer 'version'"),
    ],
)
def test_files_no_upgrade_applies_to_are_refused_in_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "workers.toml"
    path.write_text(text)
    with pytest.raises(UpgradeError, match=message):
        plan(text, str(path))
    result = run_cli(["--registry", str(path), "upgrade"])
    assert result.code == 1 and message in result.err and len(result.err.strip().splitlines()) == 1
    assert path.read_text() == text


def test_an_upgrade_that_would_not_load_writes_nothing(v1: Path) -> None:
    text = v1.read_text().replace('tags = ["linux"]', "tags = 3")
    v1.write_text(text)
    result = run_cli(["--registry", str(v1), "upgrade"])
    assert result.code == 1 and "nothing was upgraded" in result.err
    assert v1.read_text() == text
    assert not v1.with_name("workers.toml.v1.bak").exists()


def test_only_the_root_version_line_changes() -> None:
    text = 'version = 1\n[master]\nnote = """\nversion = 1\n"""\n'
    assert set_version(text, 1, 2, "x") == 'version = 2\n[master]\nnote = """\nversion = 1\n"""\n'
    with pytest.raises(UpgradeError):
        set_version("[master]\nversion = 1\n", 1, 2, "x")
