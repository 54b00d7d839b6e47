"""bbenroll master set-location: new hints in every FURL, same secrets, one audit record."""

from __future__ import annotations

import json
import tomllib
from datetime import timedelta

import pytest

from bbenroll.furl import parse_furl
from bbenroll.registry import audit
from tests.helpers.cli import FIXED_NOW, HINT

NEW = "tcp:new.example.org:9989,tcp:10.0.0.1:9989"


def data(reg_path):
    return tomllib.loads(reg_path.read_text())


def records(reg_path):
    return audit.read_records(audit.log_path(reg_path))


@pytest.fixture
def three(cli, reg_path, clock):
    for name in ("a", "b", "c"):
        assert cli("add", name).code == 0
    assert cli("revoke", "c").code == 0
    clock.now += timedelta(hours=1)
    return data(reg_path)["workers"]


def test_set_location_changes_every_furl_but_no_secret(cli, reg_path, three, clock):
    furl_before = cli("show", "a").out.strip()
    result = cli("master", "set-location", NEW)
    assert result.code == 0, result.err
    assert result.out == ""
    assert result.err == (
        f"location: {HINT} -> {NEW}\n"
        "new FURLs for 2 workers (same secrets); a running master pushes them to connected workers\n"
    )
    after = data(reg_path)
    assert after["master"]["location"] == NEW.split(",")
    for name in ("a", "b"):
        worker = after["workers"][name]
        assert (worker["swissnum"], worker["password"]) == (three[name]["swissnum"], three[name]["password"])
        assert worker["serial"] == 1 and worker["changed"] == FIXED_NOW + timedelta(hours=1)
        assert worker["rotated"] == three[name]["rotated"]
    assert "serial" not in after["workers"]["c"]  # revoked: nobody gets its FURL
    furl = parse_furl(cli("show", "a").out.strip())
    assert furl.hints == tuple(NEW.split(",")) and furl.swissnum == parse_furl(furl_before).swissnum
    assert "# Connection hints written into every FURL" in reg_path.read_text()  # comments kept
    # a running master pushes FURL 1: the delivery is pending until the worker confirms
    listed = {w["name"]: w for w in json.loads(cli("list", "--json").out)}
    assert listed["a"]["delivery"] == {"state": "pending", "serial": 1, "since": "2026-11-29T07:00:00Z"}


def test_set_location_is_one_audit_record_and_the_log_verifies(cli, reg_path, three):
    before = len(records(reg_path))
    assert cli("master", "set-location", NEW).code == 0
    new = records(reg_path)[before:]
    assert [(r["action"], r["worker"]) for r in new] == [("location-changed", None)]
    assert new[0]["reason"] == f"{HINT} -> {NEW}; FURLs of 2 workers changed"
    verified = cli("audit", "verify")
    assert verified.code == 0, verified.err


def test_the_same_hints_change_nothing(cli, reg_path, three):
    text = reg_path.read_bytes()
    log = audit.log_path(reg_path).read_bytes()
    result = cli("master", "set-location", f" {HINT} ")
    assert (result.code, result.out) == (0, "")
    assert result.err == f"nothing to change: the hints are already  {HINT} \n"
    assert reg_path.read_bytes() == text and audit.log_path(reg_path).read_bytes() == log
    document = json.loads(cli("master", "set-location", HINT, "--json").out)
    assert document == {"changed": False, "location": [HINT], "old_location": [HINT], "workers": []}


@pytest.mark.parametrize(
    "hints, message",
    [
        ("tcp:h", "HINTS: connection hint 'tcp:h' is not tcp:HOST:PORT"),
        ("tcp:h:99999", "HINTS: connection hint 'tcp:h:99999': port must be 1-65535"),
        ("9989", "HINTS: connection hint '9989' is not TYPE:ADDRESS"),
        (f"{HINT},", f"HINTS '{HINT},': an empty hint (two commas in a row, or one at an end)"),
        ("", "HINTS: give at least one connection hint, like tcp:buildbot.example.org:9989"),
        ("tcp:h\u00e9:1", "HINTS: connection hint 'tcp:h\u00e9:1' holds '\u00e9'"),
    ],
)
def test_bad_hints_are_one_line_and_leave_the_file_alone(cli, reg_path, three, hints, message):
    text = reg_path.read_bytes()
    result = cli("master", "set-location", hints)
    assert (result.code, result.out) == (1, "")
    assert result.err.startswith(f"error: {message}") and result.err.count("\n") == 1
    assert "Traceback" not in result.err
    assert reg_path.read_bytes() == text
    result = cli("--json", "master", "set-location", hints)
    document = json.loads(result.out)  # one document, the error
    assert result.out.count("\n") == 1 and document["exit"] == 1 and document["error"].startswith(message)
    assert reg_path.read_bytes() == text


def test_json_is_one_document(cli, reg_path, three):
    result = cli("master", "set-location", NEW, "--json")
    assert result.code == 0 and result.out.count("\n") == 1
    assert json.loads(result.out) == {
        "changed": True,
        "location": NEW.split(","),
        "old_location": [HINT],
        "workers": ["a", "b"],
    }


def test_a_hint_on_another_port_than_listen_is_a_warning(cli, reg_path, three):
    result = cli("master", "set-location", "tcp:new.example.org:443")
    assert result.code == 0
    assert result.err.startswith(
        "warning: master.location: no hint uses port 9989, where master.listen (tcp:9989) listens"
    )
    assert data(reg_path)["master"]["location"] == ["tcp:new.example.org:443"]


def test_a_second_move_raises_the_serials_again_and_duplicates_are_kept_once(cli, reg_path, three):
    assert cli("master", "set-location", NEW).code == 0
    assert cli("master", "set-location", f"{HINT},{HINT}").code == 0
    after = data(reg_path)
    assert after["master"]["location"] == [HINT]
    assert [after["workers"][n]["serial"] for n in ("a", "b")] == [2, 2]


def test_no_registry_is_one_line(tmp_path):
    from tests.helpers.cli import run_cli

    missing = tmp_path / "none.toml"
    result = run_cli(["--registry", str(missing), "master", "set-location", HINT])
    assert result.code == 1 and result.err.count("\n") == 1 and "not found" in result.err
    assert not missing.exists()


# --- roll-identity -------------------------------------------------------------------

ROLLED_PEM = "master-20261129T070000Z.pem"  # the `three` fixture moved the clock one hour on


def mode_of(path) -> int:
    return path.stat().st_mode & 0o777


def test_roll_identity_mints_a_new_key_beside_the_old_and_changes_every_furl(cli, reg_path, three, clock):
    from bbenroll.identity import load_identity

    old_pem = (reg_path.parent / "master.pem").read_bytes()
    old_tubid = data(reg_path)["master"]["tubid"]
    furl_before = parse_furl(cli("show", "a").out.strip())
    result = cli("master", "roll-identity")
    assert result.code == 0, result.err
    assert result.out == ""
    new_file = reg_path.parent / ROLLED_PEM
    new_tubid = load_identity(new_file).tubid
    assert result.err == (
        f"new master identity {ROLLED_PEM} (tubid {new_tubid}); master.pem is kept\n"
        "new FURLs for 2 workers (same secrets, new TubID); a running master serves both identities on "
        "its port until 2026-12-06T07:00:00Z, pushes the new FURLs to connected workers, and retires the "
        "old identity once every worker confirmed (or then)\n"
    )
    assert mode_of(new_file) == 0o600
    assert (reg_path.parent / "master.pem").read_bytes() == old_pem  # the old key is untouched
    master = data(reg_path)["master"]
    assert (master["identity"], master["tubid"]) == (ROLLED_PEM, new_tubid)
    assert master["previous"] == {
        "identity": "master.pem",
        "tubid": old_tubid,
        "until": FIXED_NOW + timedelta(hours=1, days=7),
    }
    assert "previous = {identity = " in reg_path.read_text()  # an inline table, like a worker's
    after = data(reg_path)["workers"]
    for name in ("a", "b"):
        assert after[name]["serial"] == 1
        assert after[name]["swissnum"] == three[name]["swissnum"]
    assert "serial" not in after["c"]  # revoked
    furl = parse_furl(cli("show", "a").out.strip())
    assert (furl.tubid, furl.swissnum, furl.hints) == (new_tubid, furl_before.swissnum, furl_before.hints)
    listed = {w["name"]: w["identity"] for w in json.loads(cli("list", "--json").out)}
    assert listed == {"a": "previous", "b": "previous", "c": "current"}
    assert cli("check").code == 0


def test_roll_identity_is_one_audit_record_and_the_log_verifies(cli, reg_path, three):
    old_tubid = data(reg_path)["master"]["tubid"]
    before = len(records(reg_path))
    assert cli("master", "roll-identity", "--grace", "2d").code == 0
    new = records(reg_path)[before:]
    assert [(r["action"], r["worker"]) for r in new] == [("identity-rolled", None)]
    new_tubid = data(reg_path)["master"]["tubid"]
    assert new[0]["reason"] == (
        f"tubid {old_tubid} -> {new_tubid}; previous identity served until 2026-12-01T07:00:00Z; "
        "FURLs of 2 workers changed"
    )
    assert cli("audit", "verify").code == 0


def test_a_second_roll_during_the_overlap_is_refused_and_changes_nothing(cli, reg_path, three, clock):
    assert cli("master", "roll-identity").code == 0
    text = reg_path.read_bytes()
    log = audit.log_path(reg_path).read_bytes()
    files = sorted(p.name for p in reg_path.parent.iterdir())
    clock.now += timedelta(days=1)
    result = cli("master", "roll-identity")
    assert (result.code, result.out) == (1, "")
    assert result.err.startswith("error: the master identity was rolled already: the old tubid ")
    assert result.err.count("\n") == 1 and "Traceback" not in result.err
    assert reg_path.read_bytes() == text and audit.log_path(reg_path).read_bytes() == log
    assert sorted(p.name for p in reg_path.parent.iterdir()) == files  # no key minted
    document = json.loads(cli("--json", "master", "roll-identity").out)
    assert document["exit"] == 1 and document["error"].startswith("the master identity was rolled already")
    clock.now += timedelta(days=7)  # the overlap is over: the next roll may go
    result = cli("master", "roll-identity")
    assert result.code == 0, result.err
    master = data(reg_path)["master"]
    assert master["identity"] == "master-20261207T070000Z.pem"  # not master-...Z-...Z.pem
    assert master["previous"]["identity"] == ROLLED_PEM


def test_roll_identity_json_is_one_document(cli, reg_path, three):
    old_tubid = data(reg_path)["master"]["tubid"]
    result = cli("--json", "master", "roll-identity", "--grace", "12h")
    assert result.code == 0 and result.out.count("\n") == 1
    document = json.loads(result.out)
    assert document == {
        "tubid": data(reg_path)["master"]["tubid"],
        "identity": ROLLED_PEM,
        "previous": {"tubid": old_tubid, "identity": "master.pem", "until": "2026-11-29T19:00:00Z"},
        "old_tubid": old_tubid,
        "old_identity": "master.pem",
        "workers": ["a", "b"],
    }


def test_roll_identity_with_no_grace_keeps_no_previous_identity(cli, reg_path, three):
    result = cli("master", "roll-identity", "--grace", "0")
    assert result.code == 0, result.err
    assert "previous" not in data(reg_path)["master"]
    assert "each worker admin must run 'bbenroll worker create --force BASEDIR NEWFURL'" in result.err
    assert (reg_path.parent / "master.pem").exists()
    assert cli("master", "roll-identity", "--grace", "0").code == 0  # no overlap: no refusal
    names = sorted(p.name for p in reg_path.parent.glob("master*.pem"))
    assert names == ["master-20261129T070000Z-2.pem", ROLLED_PEM, "master.pem"]  # never replaced


def test_a_bad_grace_is_a_usage_error(cli, reg_path, three):
    text = reg_path.read_bytes()
    result = cli("master", "roll-identity", "--grace", "soon")
    assert result.code == 2 and "duration 'soon' not understood" in result.err
    assert reg_path.read_bytes() == text
    assert sorted(p.name for p in reg_path.parent.glob("*.pem")) == ["master.pem"]


def test_a_key_file_in_the_way_is_never_replaced(cli, reg_path, three):
    import os

    text = reg_path.read_bytes()
    (reg_path.parent / ROLLED_PEM).write_bytes(b"in the way")  # taken: the next free name is used
    os.chmod(reg_path.parent / ROLLED_PEM, 0o600)
    result = cli("master", "roll-identity")
    assert result.code == 0, result.err
    assert (reg_path.parent / ROLLED_PEM).read_bytes() == b"in the way"
    assert data(reg_path)["master"]["identity"] == "master-20261129T070000Z-2.pem"
    assert reg_path.read_bytes() != text


def test_list_says_who_has_not_moved_to_the_new_identity(cli, reg_path, three):
    assert cli("list").err == ""  # no roll: nothing to say
    assert cli("master", "roll-identity").code == 0
    old_tubid = data(reg_path)["master"]["previous"]["tubid"]
    result = cli("list")
    assert result.code == 0
    assert result.err == (
        f"2 workers not yet confirmed on the new master identity (a, b); the old one ({old_tubid}) "
        "is served until 2026-12-06 07:00\n"
    )
