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
