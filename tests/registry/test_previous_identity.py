"""``[master] previous``: the identity a master key rollover replaced (schema, load checks, model)."""

from __future__ import annotations

import os
import tomllib
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from bbenroll.errors import RegistryError, WrongState
from bbenroll.fileio import atomic_write
from bbenroll.identity import make_identity_pem, tubid_from_pem
from bbenroll.registry import audit, model, store
from bbenroll.registry.schema import Problems, master_from_data

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
UNTIL = NOW + timedelta(days=7)
UNTIL_TEXT = "2026-12-10T12:00:00Z"


@pytest.fixture(scope="session")
def second_pem() -> bytes:
    return make_identity_pem()  # slow: once per session


@pytest.fixture
def rolled(reg_path, second_pem):
    """``reg_path`` after a roll to ``second_pem`` (master.pem is the previous identity)."""
    atomic_write(reg_path.parent / "new.pem", second_pem, exclusive=True)
    with store.edit(reg_path, now=NOW) as editor:
        editor.set_master(model.roll_identity(editor.master, "new.pem", tubid_from_pem(second_pem), NOW))
    return reg_path


def set_previous(path, line: str) -> None:
    text = path.read_text()
    start = text.index("previous = {")
    end = text.index("\n", start)
    path.write_text(text[:start] + line + text[end:])


def test_a_rolled_registry_loads_with_both_identities(rolled, second_pem):
    old_tubid = store.load(rolled).registry.master.previous.tubid
    master = store.load(rolled).registry.master
    assert master.tubid == tubid_from_pem(second_pem) != old_tubid
    assert master.previous == model.PreviousIdentity("master.pem", old_tubid, UNTIL)
    assert master.in_overlap(NOW) and not master.in_overlap(UNTIL)
    assert store.check(rolled) == []
    assert tomllib.loads(rolled.read_text())["master"]["previous"]["until"] == UNTIL


def test_a_missing_previous_key_file_is_a_problem(rolled):
    os.unlink(rolled.parent / "master.pem")
    (problem,) = store.check(rolled)
    missing = rolled.parent / "master.pem"
    assert problem == (
        f"{rolled}: master.previous.identity: {missing}: master identity file not found; "
        "if its overlap is over, remove master.previous with 'bbenroll edit'"
    )
    with pytest.raises(RegistryError):
        store.load(rolled)


def test_a_previous_tubid_that_does_not_match_its_file_is_a_problem(rolled):
    real = store.load(rolled).registry.master.previous.tubid
    line = f'previous = {{identity = "master.pem", tubid = "{"a" * 32}", until = {UNTIL_TEXT}}}'
    set_previous(rolled, line)
    (problem,) = store.check(rolled)
    assert problem == (
        f"{rolled}: master.previous.tubid {'a' * 32} does not match the identity "
        f"{rolled.parent / 'master.pem'} (its tubid is {real}); was the identity file replaced?"
    )


def test_a_previous_identity_that_is_the_current_one_is_a_problem(rolled, second_pem):
    tubid = tubid_from_pem(second_pem)
    set_previous(rolled, f'previous = {{identity = "new.pem", tubid = "{tubid}", until = {UNTIL_TEXT}}}')
    (problem,) = store.check(rolled)
    assert "is the current one" in problem and problem.startswith(f"{rolled}: master.previous:")


@pytest.mark.parametrize(
    "value, message",
    [
        ('"master.pem"', "master.previous: must be a table with exactly 'identity', 'tubid' and 'until'"),
        ('{identity = "master.pem", tubid = "%s"}', "master.previous: must be a table with exactly"),
        ('{identity = "", tubid = "%s", until = 2026-12-10T12:00:00Z}', "previous.identity: may not be"),
        ('{identity = "master.pem", tubid = "%s", until = 2026-12-10T12:00:00Z, x = 1}', "previous: must be"),
        ('{identity = "master.pem", tubid = "%s", until = "soon"}', "previous.until: must be a date-time"),
    ],
)
def test_a_malformed_previous_is_one_problem_with_its_key(rolled, value, message):
    old = store.load(rolled).registry.master.previous.tubid
    set_previous(rolled, "previous = " + (value % old if "%s" in value else value))
    problems = store.check(rolled)
    assert len(problems) == 1 and message in problems[0], problems


def test_a_previous_key_readable_by_others_is_a_warning(rolled):
    os.chmod(rolled.parent / "master.pem", 0o644)
    loaded = store.load(rolled)
    assert any(str(rolled.parent / "master.pem") in w and "chmod 600" in w for w in loaded.warnings)


def test_schema_reads_previous_and_rejects_its_unknown_keys():
    problems = Problems()
    base = {"identity": "n.pem", "tubid": "b" * 32, "location": ["tcp:h:1"], "listen": "tcp:1"}
    previous = {"identity": "o.pem", "tubid": "c" * 32, "until": NOW}
    master = master_from_data({**base, "previous": previous}, problems)
    assert not problems and master.previous == model.PreviousIdentity("o.pem", "c" * 32, NOW)
    master_from_data({**base, "previous": {"identity": "o.pem", "tubid": "c", "until": NOW}}, problems)
    assert [key for key, _ in problems.items] == ["master.previous.tubid"]


# --- the model ---------------------------------------------------------------------


def master_settings(**changes):
    base = model.MasterSettings("master.pem", "a" * 32, ("tcp:h:1",), "tcp:1")
    return replace(base, **changes)


def worker(name: str, **changes) -> model.Worker:
    return replace(model.new_worker(name, NOW - timedelta(days=1)), **changes)


def test_one_roll_at_a_time():
    rolled = model.roll_identity(master_settings(), "n.pem", "b" * 32, NOW, timedelta(days=1))
    assert rolled.previous == model.PreviousIdentity("master.pem", "a" * 32, NOW + timedelta(days=1))
    with pytest.raises(WrongState, match="rolled already"):
        model.roll_identity(rolled, "m.pem", "c" * 32, NOW + timedelta(hours=23))
    again = model.roll_identity(rolled, "m.pem", "c" * 32, NOW + timedelta(days=1))  # the overlap is over
    assert again.previous.tubid == "b" * 32
    assert model.roll_identity(master_settings(), "n.pem", "b" * 32, NOW, timedelta(0)).previous is None
    with pytest.raises(WrongState, match="same tubid"):
        model.roll_identity(master_settings(), "n.pem", "a" * 32, NOW)


def test_the_old_identity_retires_when_its_overlap_ends_or_every_usable_worker_confirmed():
    master = model.roll_identity(master_settings(), "n.pem", "b" * 32, NOW)
    waiting = worker("w1", serial=1)
    confirmed = worker("w2", serial=1, delivered=1, delivered_at=NOW)
    late = worker("late")  # added after the roll: serial 0
    revoked = worker("gone", serial=0, revoked=NOW)
    expired = worker("old", serial=1, expires=NOW)
    assert model.on_previous_identity(master, waiting)
    assert not any(model.on_previous_identity(master, w) for w in (confirmed, late, revoked))
    assert model.identity_retirement(master, [waiting, confirmed], NOW) is None
    later = NOW + timedelta(seconds=1)
    assert model.identity_retirement(master, [confirmed, late, revoked, expired], later) == (
        "every worker confirmed a FURL under the new identity"
    )
    assert model.identity_retirement(master, [waiting], UNTIL) == "its overlap ended at 2026-12-10T12:00:00Z"
    assert model.identity_retirement(master_settings(), [waiting], NOW) is None  # nothing to retire
    assert not model.on_previous_identity(master_settings(), waiting)


def test_retiring_is_one_identity_retired_record(rolled):
    old = store.load(rolled).registry.master.previous.tubid
    before = len(audit.read_records(audit.log_path(rolled)))
    comment = "# kept: a comment in [master]\n"
    rolled.write_text(rolled.read_text().replace("previous = {", comment + "previous = {"))
    with store.edit(rolled, now=NOW) as editor:
        editor.set_master(model.retire_identity(editor.master))
    new = audit.read_records(audit.log_path(rolled))[before:]
    assert [(r["action"], r["reason"]) for r in new] == [
        ("identity-retired", f"tubid {old} is no longer served")
    ]
    text = rolled.read_text()
    assert "previous = {" not in text and comment in text
    assert store.load(rolled).registry.master.previous is None
