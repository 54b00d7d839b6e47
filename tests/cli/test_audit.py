"""bbenroll audit / audit verify: real CLI runs on real registries and logs."""

from __future__ import annotations

import json
import os
import stat
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bbenroll.cli import COMMANDS
from bbenroll.cli import audit as audit_cli
from bbenroll.registry import audit
from tests.helpers.cli import Clock


def log_of(reg_path: Path) -> Path:
    return reg_path.parent / "workers.audit.jsonl"


def secrets_of(reg_path: Path) -> set[str]:
    data = tomllib.loads(reg_path.read_text())
    found = set()
    for worker in data.get("workers", {}).values():
        found |= {worker["swissnum"], worker["password"]}
        if "previous" in worker:
            found.add(worker["previous"]["swissnum"])
    return found


def lifecycle(cli, reg_path: Path) -> set[str]:
    """add, rotate (with grace), revoke, restore, remove; every secret seen on the way."""
    seen: set[str] = set()
    steps = (
        ("add", "w1"),
        ("add", "w2", "--tag", "linux"),
        ("rotate", "w1", "--grace", "1d"),
        ("rotate", "w1"),
        ("revoke", "w1", "--reason", "laptop stolen"),
        ("restore", "w1"),
        ("remove", "w2", "--yes"),
    )
    for step in steps:
        result = cli(*step)
        assert result.code == 0, (step, result.err)
        seen |= secrets_of(reg_path)
    return seen


def test_every_change_is_recorded_with_fingerprints_never_secrets(cli, reg_path):
    seen = lifecycle(cli, reg_path)
    records = audit.read_records(log_of(reg_path))
    assert [(r["action"], r["worker"]) for r in records] == [
        ("initialized", None),
        ("added", "w1"),
        ("added", "w2"),
        ("rotated", "w1"),
        ("rotated", "w1"),
        ("revoked", "w1"),
        ("restored", "w1"),
        ("removed", "w2"),
    ]
    assert records[3]["reason"].startswith("grace until ")
    assert records[5]["reason"] == "laptop stolen"
    assert all(r["actor"] == audit.cli_actor() for r in records[1:])
    # the fingerprints follow the secrets: each rotation's old one is the one before's new one
    assert records[3]["old_secret"] == records[1]["new_secret"]
    assert records[4]["old_secret"] == records[3]["new_secret"]
    current = tomllib.loads(reg_path.read_text())["workers"]["w1"]["swissnum"]
    assert records[6]["new_secret"] == audit.fingerprint(current)
    text = log_of(reg_path).read_text()
    assert len(seen) >= 8
    for secret in seen:
        assert secret not in text
    assert stat.S_IMODE(log_of(reg_path).stat().st_mode) == 0o600
    registry = tomllib.loads(reg_path.read_text())
    assert registry["audit"] == {"head": records[-1]["hash"], "count": len(records)}


def test_verify_intact(cli, reg_path):
    lifecycle(cli, reg_path)
    result = cli("audit", "verify")
    assert result.code == 0, result.err
    head = tomllib.loads(reg_path.read_text())["audit"]["head"]
    assert result.out == f"8 records, chain intact; head {head}\n"
    document = json.loads(cli("--json", "audit", "verify").out)
    assert document["intact"] is True and document["records"] == 8 and document["head"] == head
    keys = {"registry", "log", "ok", "intact", "records", "head", "problems", "warnings", "notes"}
    assert set(document) == keys


def _lines(reg_path: Path) -> list[str]:
    return log_of(reg_path).read_text().splitlines(keepends=True)


def _write(reg_path: Path, lines: list[str]) -> None:
    log_of(reg_path).write_text("".join(lines))


def edit_line(lines: list[str]) -> list[str]:
    lines[4] = lines[4].replace('"rotated"', '"changed"')
    return lines


def delete_line(lines: list[str]) -> list[str]:
    del lines[4]
    return lines


def swap_lines(lines: list[str]) -> list[str]:
    lines[3], lines[4] = lines[4], lines[3]
    return lines


def truncate(lines: list[str]) -> list[str]:
    return lines[:-2]


@pytest.mark.parametrize(
    "tamper, where, message",
    [
        (edit_line, "workers.audit.jsonl:5: record 5:", "hash mismatch"),
        (delete_line, "workers.audit.jsonl:5: record 6:", "deleted"),
        (swap_lines, "workers.audit.jsonl:4: record 5:", "reordered"),
        (truncate, "", "the log was truncated"),
    ],
)
def test_verify_detects_tampering_and_says_where(cli, reg_path, tamper, where, message):
    lifecycle(cli, reg_path)
    _write(reg_path, tamper(_lines(reg_path)))
    result = cli("audit", "verify")
    assert result.code == 1
    first = result.err.splitlines()[0]
    assert first.startswith(f"error: {where}") and message in first
    assert "Traceback" not in result.err
    result = cli("--json", "audit", "verify")
    assert result.code == 1
    (document,) = [json.loads(line) for line in result.out.splitlines()]  # exactly one document
    assert document["intact"] is False and message in document["problems"][0]["message"]


def test_verify_explains_an_edit_the_registry_never_got(cli, reg_path):
    lifecycle(cli, reg_path)
    before = reg_path.read_text()
    cli("add", "w3")
    reg_path.write_text(before)  # as if the registry write after the append never happened
    result = cli("audit", "verify")
    assert result.code == 0
    assert "warning: workers.audit.jsonl:9: record 9: record 9 was appended" in result.err


def test_audit_table_and_filters(cli, reg_path):
    lifecycle(cli, reg_path)
    result = cli("audit")
    assert result.code == 0
    header, _, *rows = result.out.splitlines()
    assert header.split()[:4] == ["time", "actor", "action", "worker"]
    assert len(rows) == 8 and "laptop stolen" in rows[5] and rows[0].split()[2] == "initialized"
    w2 = json.loads(cli("audit", "--worker", "w2", "--json").out)
    assert [r["action"] for r in w2] == ["added", "removed"]
    rotated = json.loads(cli("audit", "--action", "rotated", "--json").out)
    assert [r["seq"] for r in rotated] == [4, 5]
    assert cli("audit", "--action", "frobbed").code == 2


def test_since_filters_by_time(reg_path):
    from tests.helpers.cli import run_cli

    def at(now: datetime, *args: str):
        return run_cli(["--registry", str(reg_path), *args], clock=Clock(now))

    real_now = datetime.now(UTC)  # the records' times: the edit commands stamp them with the wall clock
    assert at(real_now, "add", "w1").code == 0
    later = real_now + timedelta(days=2)
    assert json.loads(at(later, "audit", "--since", "1d", "--json").out) == []
    assert [r["action"] for r in json.loads(at(later, "audit", "--since", "3d", "--json").out)][-1] == "added"
    result = at(later, "audit", "--since", "1d")
    assert result.code == 0 and "no audit records match" in result.err


def test_log_is_private_under_umask_000(cli, reg_path):
    log_of(reg_path).unlink()
    old = os.umask(0)
    try:
        assert cli("add", "w1").code == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(log_of(reg_path).stat().st_mode) == 0o600


def test_log_refuses_a_planted_symlink(cli, reg_path, tmp_path):
    target = tmp_path / "target"
    target.write_text("")
    log_of(reg_path).unlink()
    log_of(reg_path).symlink_to(target)
    before = reg_path.read_text()
    result = cli("add", "w1")
    assert result.code == 1 and "symbolic link" in result.err and "Traceback" not in result.err
    assert reg_path.read_text() == before and target.read_text() == ""


def test_log_goes_beside_the_real_registry(tmp_path, reg_path, clock):
    from tests.helpers.cli import run_cli

    link = tmp_path / "link.toml"
    link.symlink_to(reg_path)
    assert run_cli(["--registry", str(link), "add", "w1"], clock=clock).code == 0
    assert not (tmp_path / "link.audit.jsonl").exists()
    assert audit.read_records(log_of(reg_path))[-1]["action"] == "added"


def test_registered_and_actions_match_the_core():
    assert COMMANDS["audit"] == "bbenroll.cli.audit"
    assert audit_cli.ACTIONS == audit.ACTIONS


def test_listing_warns_about_damaged_lines(cli, reg_path):
    lifecycle(cli, reg_path)
    lines = _lines(reg_path)
    lines[2] = "garbage\n"
    _write(reg_path, lines)
    result = cli("audit", "--json")
    assert result.code == 0
    assert len(json.loads(result.out)) == 7
    assert "1 line(s) of the audit log are not records" in result.err
