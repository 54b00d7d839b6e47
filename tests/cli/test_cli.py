"""The real CLI, in-process, against temporary registries: exact output, exit codes, files."""

from __future__ import annotations

import json
import os
import re
import stat
import tomllib
from datetime import timedelta

import pytest

from bbenroll.furl import parse_furl
from tests.helpers.cli import HINT, run_cli


def registry_data(reg_path):
    return tomllib.loads(reg_path.read_text())


def test_init_creates_private_registry_and_identity(tmp_path, clock):
    path = tmp_path / "workers.toml"
    result = run_cli(["--registry", str(path), "init", "--location", HINT, "--location", "tcp:10.0.0.1:9989"])
    assert result.code == 0, result.err
    data = tomllib.loads(path.read_text())
    tubid = data["master"]["tubid"]
    assert result.out == tubid + "\n"
    assert result.err == (
        f"created {path} and {tmp_path / 'master.pem'} (mode 0600); add a worker with: bbenroll add NAME\n"
    )
    assert data["master"]["location"] == [HINT, "tcp:10.0.0.1:9989"]
    assert data["master"]["listen"] == "tcp:9989:backlog=1024"
    assert data["master"]["pb"] == "tcp:9990:interface=127.0.0.1:backlog=1024"
    for name in ("workers.toml", "master.pem"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    # refuses to overwrite, leaves both files alone
    before = path.read_bytes(), (tmp_path / "master.pem").read_bytes()
    result = run_cli(["--registry", str(path), "init", "--location", HINT])
    assert result.code == 1
    assert result.err == f"error: {path}: already exists; refusing to overwrite a registry\n"
    assert (path.read_bytes(), (tmp_path / "master.pem").read_bytes()) == before


def test_init_refuses_existing_identity(tmp_path):
    (tmp_path / "master.pem").write_text("precious")
    result = run_cli(["--registry", str(tmp_path / "workers.toml"), "init", "--location", HINT])
    assert result.code == 1
    assert "master.pem: already exists; refusing to overwrite a master identity" in result.err
    assert (tmp_path / "master.pem").read_text() == "precious"
    assert not (tmp_path / "workers.toml").exists()


def test_init_rejects_bad_location(tmp_path):
    result = run_cli(["--registry", str(tmp_path / "workers.toml"), "init", "--location", "buildbot:9989"])
    assert result.code == 1
    assert result.err == (
        "error: --location: connection hint 'buildbot:9989' has no type: "
        "for TCP write tcp:buildbot:9989\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_add_prints_only_the_furl(cli, reg_path):
    result = cli("add", "worker1", "--tag", "linux", "--note", "rack 3", "--expires", "30d")
    assert result.code == 0, result.err
    assert result.err == ""
    data = registry_data(reg_path)
    entry = data["workers"]["worker1"]
    expected = f"pb://{data['master']['tubid']}@{HINT}/{entry['swissnum']}\n"
    assert result.out == expected
    assert entry["tags"] == ["linux"]
    assert entry["note"] == "rack 3"
    assert entry["created"] == entry["rotated"]
    assert entry["expires"] - entry["created"] == timedelta(days=30)
    assert len(entry["swissnum"]) >= 32
    assert entry["password"] and entry["password"] != entry["swissnum"]
    assert stat.S_IMODE(reg_path.stat().st_mode) == 0o600


def test_add_json_matches_show_json(cli):
    added = json.loads(cli("add", "w1", "--json").out)
    shown = json.loads(cli("--json", "show", "w1").out)
    assert added == shown
    for key in (
        "name",
        "furl",
        "tubid",
        "location",
        "state",
        "created",
        "rotated",
        "expires",
        "revoked",
        "tags",
        "note",
    ):
        assert key in shown
    assert shown["state"] == "active"
    assert shown["created"] == "2026-11-29T06:00:00Z"
    assert parse_furl(shown["furl"]).tubid == shown["tubid"]


def test_add_refuses_existing_and_invalid_names(cli, reg_path):
    assert cli("add", "w1").code == 0
    before = reg_path.read_bytes()
    result = cli("add", "w1")
    assert (result.code, result.out) == (1, "")
    assert result.err == f"error: {reg_path}: worker 'w1' already exists\n"
    for bad, why in [
        ("bad name", "is not a Buildbot identifier"),
        ("1abc", "is not a Buildbot identifier"),
        ("a" * 51, "Buildbot allows at most 50"),
        ("a.b", "is not a Buildbot identifier"),
    ]:
        result = cli("add", bad)
        assert result.code == 1
        assert why in result.err
        assert result.err.count("\n") == 1 and "Traceback" not in result.err
    assert reg_path.read_bytes() == before
    assert cli("add", "wörker-ü_1").code == 0  # Buildbot allows non-ASCII letters


def test_add_bad_expiry(cli, reg_path):
    before = reg_path.read_bytes()
    result = cli("add", "w1", "--expires", "soon")
    assert result.code == 2
    assert result.err == (
        "error: Invalid value for '--expires': date 'soon' not understood: use ISO 8601, like 2027-06-30 "
        "or 2027-06-30T12:00:00Z (see 'bbenroll add --help')\n"
    )
    result = cli("add", "w1", "--expires", "2020-01-01")
    assert result.code == 1
    assert result.err == "error: expiry 2020-01-01T00:00:00Z is in the past\n"
    assert reg_path.read_bytes() == before


def test_show_unknown_worker(cli, reg_path):
    result = cli("show", "nope")
    assert (result.code, result.out) == (1, "")
    assert result.err == f"error: {reg_path}: no worker named 'nope'\n"


def test_list_table_and_json(cli, clock):
    cli("add", "alpha", "--tag", "linux", "--note", "rack 3")
    cli("add", "beta", "--expires", "3d", "--tag", "mac")
    cli("add", "gamma")
    cli("revoke", "gamma", "--reason", "stolen laptop")
    result = cli("list")
    assert result.code == 0
    lines = result.out.splitlines()
    assert lines[0].split() == ["name", "state", "created", "rotated", "expires", "delivery", "tags", "note"]
    assert lines[2].split() == [
        "alpha",
        "active",
        "2026-11-29",
        "06:00",
        "2026-11-29",
        "06:00",
        "current",
        "linux",
        "rack",
        "3",
    ]
    assert lines[3].split() == [
        "beta",
        "expiring",
        "2026-11-29",
        "06:00",
        "2026-11-29",
        "06:00",
        "2026-12-02",
        "06:00",
        "current",
        "mac",
    ]
    assert lines[4].split()[:2] == ["gamma", "revoked"]
    assert len(lines) == 5
    listed = json.loads(cli("list", "--json").out)
    assert [w["name"] for w in listed] == ["alpha", "beta", "gamma"]
    assert [w["state"] for w in listed] == ["active", "expiring", "revoked"]
    assert listed[2]["revoked_reason"] == "stolen laptop"
    for entry in listed:
        assert "furl" not in entry and "swissnum" not in json.dumps(entry) and "password" not in entry
    assert [w["name"] for w in json.loads(cli("list", "--json", "--tag", "mac").out)] == ["beta"]
    assert [w["name"] for w in json.loads(cli("list", "--json", "--revoked").out)] == ["gamma"]
    assert [w["name"] for w in json.loads(cli("list", "--json", "--expiring", "7d").out)] == ["beta"]
    assert json.loads(cli("list", "--json", "--expiring", "1d").out) == []
    clock.now += timedelta(days=4)
    assert [w["state"] for w in json.loads(cli("list", "--json").out)] == ["active", "expired", "revoked"]


def test_list_never_prints_secrets(cli, reg_path):
    cli("add", "w1")
    entry = registry_data(reg_path)["workers"]["w1"]
    for args in (("list",), ("list", "--json")):
        out = cli(*args).out
        assert entry["swissnum"] not in out and entry["password"] not in out


def test_list_empty(cli):
    result = cli("list")
    assert (result.code, result.out) == (0, "")
    assert result.err == "no workers yet; add one with: bbenroll add NAME\n"


def test_rotate_with_grace(cli, reg_path, clock):
    old_furl = cli("add", "w1").out.strip()
    old = registry_data(reg_path)["workers"]["w1"]
    clock.now += timedelta(hours=1)
    result = cli("rotate", "w1", "--grace", "7d")
    assert result.code == 0, result.err
    new = registry_data(reg_path)["workers"]["w1"]
    assert result.out == old_furl.rsplit("/", 1)[0] + "/" + new["swissnum"] + "\n"
    assert "until 2026-12-06T07:00:00Z" in result.err and "worker create" not in result.err
    assert new["swissnum"] != old["swissnum"]
    assert new["password"] == old["password"]  # workers on the old FURL still log in to Buildbot
    assert new["previous"]["swissnum"] == old["swissnum"]
    assert new["rotated"] - old["rotated"] == timedelta(hours=1)
    assert json.loads(cli("show", "w1", "--json").out)["state"] == "rotating"
    # a compromised rotation drops the previous secret and the password at once
    assert cli("rotate", "w1", "--compromised").code == 0
    after = registry_data(reg_path)["workers"]["w1"]
    assert "previous" not in after
    assert after["password"] != new["password"]


def test_rotate_all_and_usage_errors(cli, reg_path):
    for name in ("a", "b", "c"):
        cli("add", name)
    cli("revoke", "c")
    before = registry_data(reg_path)["workers"]
    result = cli("rotate", "--all")
    assert result.code == 0
    after = registry_data(reg_path)["workers"]
    names = [line.split()[0] for line in result.out.splitlines()]
    assert names == ["a", "b"]
    assert after["a"]["swissnum"] != before["a"]["swissnum"]
    assert after["c"] == before["c"]  # revoked workers are left alone
    assert cli("rotate").code == 2
    assert cli("rotate", "a", "--all").code == 2
    result = cli("rotate", "a", "nope")
    assert result.code == 1 and "no worker named 'nope'" in result.err
    assert registry_data(reg_path)["workers"] == after  # all or nothing
    assert cli("rotate", "c").err == "error: worker 'c' is revoked; use 'bbenroll restore' instead\n"
    assert cli("rotate", "a", "--grace", "forever").code == 2
    assert registry_data(reg_path)["workers"]["a"] == after["a"]


def test_revoke_restore_remove(cli, reg_path):
    old_furl = cli("add", "w1").out.strip()
    result = cli("revoke", "w1", "--reason", "lost")
    assert (result.code, result.out) == (0, "")
    assert result.err == "revoked worker 'w1'; a running master drops it within seconds\n"
    entry = registry_data(reg_path)["workers"]["w1"]
    assert entry["revoked_reason"] == "lost"
    assert cli("revoke", "w1").err == "error: worker 'w1' is already revoked\n"
    shown = cli("show", "w1")
    assert shown.err == "warning: worker 'w1' is revoked: the master refuses this FURL\n"
    result = cli("restore", "w1")
    assert result.code == 0
    new_furl = result.out.strip()
    assert new_furl != old_furl
    entry = registry_data(reg_path)["workers"]["w1"]
    assert "revoked" not in entry and "revoked_reason" not in entry
    assert cli("restore", "w1").err == "error: worker 'w1' is not revoked\n"
    # remove asks for confirmation; without a terminal it refuses
    result = cli("remove", "w1")
    assert result.code == 1
    assert result.err == "error: refusing to remove worker 'w1' without --yes (no terminal to ask)\n"
    result = cli("remove", "w1", "--yes")
    assert (result.code, result.err) == (0, "removed worker 'w1'\n")
    assert "w1" not in registry_data(reg_path).get("workers", {})
    assert cli("remove", "w1", "--yes").code == 1


def test_check_ok_and_problems(cli, reg_path):
    cli("add", "w1")
    result = cli("check")
    assert (result.code, result.out, result.err) == (0, "", f"{reg_path}: OK (1 worker)\n")
    assert json.loads(cli("check", "--json").out)["warnings"] == []
    text = reg_path.read_text()
    text = text.replace('location = ["tcp:buildbot.example.org:9989"]', 'location = ["buildbot:99"]')
    text = text.replace("[workers.w1]", '[workers."bad name"]')
    reg_path.write_text(text)
    os.chmod(reg_path, 0o644)
    result = cli("check")
    assert result.code == 1
    lines = result.err.splitlines()
    assert lines[-1] == f"error: {reg_path}: 3 problems found"
    assert any("master.location[0]" in line for line in lines)
    assert any('workers."bad name"' in line and "not a Buildbot identifier" in line for line in lines)
    assert any("accessible by group or others (mode 0644)" in line for line in lines)
    checked = json.loads(cli("check", "--json").out)
    assert checked["ok"] is False and len(checked["problems"]) == 3


def test_check_warns_when_no_hint_uses_the_listen_port(cli, reg_path):
    """The FURLs would point at another port than the one the master listens on:
    right only behind a port forward, so a warning, and check still passes."""
    reg_path.write_text(reg_path.read_text().replace('listen = "tcp:9989"', 'listen = "tcp:12345"'))
    result = cli("check")
    warning = (
        f"warning: {reg_path}: master.location: no hint uses port 12345, where master.listen (tcp:12345) "
        "listens; workers will connect to port 9989, which is right only if something forwards it to 12345"
    )
    assert (result.code, result.err.splitlines()) == (0, [warning, f"{reg_path}: OK (0 workers)"])
    checked = json.loads(cli("check", "--json").out)
    assert checked["ok"] is True and checked["warnings"] == [warning.removeprefix("warning: ")]


def test_permission_warning_on_every_command(cli, reg_path):
    cli("add", "w1")
    os.chmod(reg_path, 0o640)
    result = cli("show", "w1")
    assert result.code == 0
    assert result.err == (
        f"warning: {reg_path} is accessible by group or others (mode 0640); run: chmod 600 {reg_path}\n"
    )


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda t: t.replace("version = 2", "version = 3"),
            "{p}: version: unknown registry version 3; this bbenroll reads version 2 (a newer bbenroll "
            "wrote it: upgrade bbenroll)",
        ),
        (
            lambda t: t.replace("version = 2", "version = 1"),
            "{p}: version: registry version 1 is older than this bbenroll's version 2: run `bbenroll "
            "upgrade` (it keeps your comments and makes a backup)",
        ),
        (
            lambda t: t.replace("version = 2", "version = 2\nversion = 2"),
            "{p}:5:12: invalid TOML: Cannot overwrite a value",
        ),
        (lambda t: t + "[workers.w1]\nswissnum = 'x'\n", "{p}:"),
        (
            lambda t: t.replace('identity = "master.pem"', 'identity = "missing.pem"'),
            "{p}: master.identity: {d}/missing.pem: master identity file not found",
        ),
        (
            lambda t: t.replace('listen = "tcp:9989"', "listen = 9989"),
            "{p}:6: master.listen: must be a string, not an integer",
        ),
        (
            lambda t: t.replace("tubid = ", 'tubid = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"\n#'),
            "{p}: master.tubid aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa does not match the identity",
        ),
        (
            lambda t: t.replace("password = ", "pasword = "),
            "{p}:{w1}: workers.w1.pasword: unknown key (and 1 more problems: run 'bbenroll check')",
        ),
        (lambda t: t.replace("[workers.w1]", "[workers.w1]\ncreated = 5"), "{p}:"),
        (
            lambda t: t.replace("created = 2026-11-29T06:00:00Z", "created = 2026-11-29T06:00:00"),
            "{p}:{w1}: workers.w1.created: must include a time zone, like 2027-01-01T00:00:00Z",
        ),
        (lambda t: "\x00" + t, "{p}:1:1: invalid TOML"),
    ],
)
def test_malformed_registry_gives_one_line_and_is_never_rewritten(cli, reg_path, mutate, message):
    cli("add", "w1")
    broken = mutate(reg_path.read_text())
    reg_path.write_text(broken)
    for args in (("show", "w1"), ("list",), ("add", "w2"), ("rotate", "w1"), ("revoke", "w1")):
        result = cli(*args)
        assert result.code == 1, (args, result)
        assert result.out == ""
        lines = result.err.splitlines()
        assert len(lines) == 1, result.err
        w1 = broken.splitlines().index("[workers.w1]") + 1
        assert lines[0].startswith("error: " + message.format(p=reg_path, d=reg_path.parent, w1=w1)), lines[0]
        assert "Traceback" not in result.err
        assert reg_path.read_text() == broken


def test_verbose_shows_traceback(cli, reg_path):
    reg_path.write_text("version = ")
    assert "Traceback" in cli("-v", "list").err
    assert "Traceback" not in cli("list").err


def test_missing_registry(cli, reg_path):
    reg_path.unlink()
    result = cli("list")
    assert result.code == 1
    assert result.err == (
        f"error: {reg_path}: not found (create one with 'bbenroll init', or point --registry at it)\n"
    )


def test_registry_from_environment(cli, reg_path):
    assert cli("add", "w1", registry_arg=False, env={"BBENROLL_REGISTRY": str(reg_path)}).code == 0
    assert "w1" in registry_data(reg_path)["workers"]


def test_hand_written_comments_survive_byte_for_byte(cli, reg_path):
    cli("add", "w1")
    cli("add", "w2")
    text = reg_path.read_text()
    text = text.replace("[workers.w1]", "# the build farm's oldest box\n[workers.w1]  # keep!")
    text = text.replace("[master]", "[master]   # hand comment")
    text += "\n# a comment at the very end\n"
    reg_path.write_text(text)
    cli("rotate", "w2", "--grace", "1d")
    cli("revoke", "w2")
    cli("add", "w3")
    after = reg_path.read_text()
    head = text[: text.index("[workers.w2]")]

    def without_audit(text: str) -> str:  # the [audit] table changes with every edit
        return re.sub(r"\[audit\]\n(?:#.*\n)?head = .*\ncount = .*\n", "", text)

    # master, w1 and all comments before w2: byte for byte
    assert without_audit(after).startswith(without_audit(head))
    assert "# a comment at the very end\n" in after
    assert registry_data(reg_path)["workers"]["w1"] == tomllib.loads(text)["workers"]["w1"]


def test_usage_errors_exit_2(cli):
    assert cli("frobnicate").code == 2
    assert cli("add").code == 2
    assert cli("list", "--expiring", "soon").code == 2


@pytest.mark.parametrize(
    "old, new, message",
    [
        (
            "rotated = 2026-11-29T06:00:00Z",
            "rotated = 2026-11-29T06:00:00Z\ntags = 0",
            "workers.w1.tags: must be an array of non-empty strings",
        ),
        (
            "created = 2026-11-29T06:00:00Z",
            "created = 0001-01-01T00:00:00+01:00",
            "workers.w1.created: is out of range",
        ),
    ],
)
def test_odd_values_in_the_registry_are_one_line_errors(cli, reg_path, old, new, message):
    cli("add", "w1")
    reg_path.write_text(reg_path.read_text().replace(old, new, 1))
    for args in (("list",), ("check",)):
        result = cli(*args)
        assert result.code == 1 and "internal error" not in result.err
        assert message in result.err


@pytest.mark.parametrize(
    "content", [b"\xff\xfe", b'{"workers": {"w1": 5}}', b'{"workers": {"w1": {"since": 5}}}']
)
def test_damaged_status_file_is_reported_not_a_crash(cli, reg_path, content):
    cli("add", "w1")
    (reg_path.parent / "workers.status.json").write_bytes(content)
    result = cli("status")
    assert result.code == 1
    assert result.err.endswith("master status file is damaged; it is rewritten while a master runs\n")
    assert result.err.count("\n") == 1


def test_status_without_a_master(cli):
    cli("add", "w1")
    result = cli("status")
    assert result.code == 0
    assert (
        result.err == "warning: no master is running: no master has run with this registry (no status file)\n"
    )
    assert result.out.splitlines()[2].split() == ["w1", "disconnected"]


def test_qr_image_into_a_missing_directory(cli, reg_path):
    cli("add", "w1")
    target = reg_path.parent / "nodir" / "x.png"
    result = cli("show", "w1", "--png", str(target))
    assert result.code == 1
    assert result.err == f"error: {target}: cannot write the QR code: No such file or directory\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ("--listen", "garbage"),
            "error: --listen: listen endpoint 'garbage' is not a Twisted server endpoint",
        ),
        (("--pb", "tcp:9990"), "error: --pb: master.pb 'tcp:9990' listens on every interface"),
    ],
)
def test_init_checks_endpoints(tmp_path, args, message):
    result = run_cli(["--registry", str(tmp_path / "workers.toml"), "init", "--location", HINT, *args])
    assert result.code == 1 and result.err.startswith(message), result.err
    assert list(tmp_path.iterdir()) == []


def test_worker_create_bad_arguments(tmp_path):
    bad = tmp_path / "bad.furl"
    bad.write_bytes(b"\xff\xfe")
    result = run_cli(["worker", "create", str(tmp_path / "w"), "--furl-file", str(bad)])
    assert (result.code, result.err) == (1, f"error: {bad}: not UTF-8 text (byte 1); a FURL is ASCII text\n")
    result = run_cli(["worker", "create", str(tmp_path / "w"), "--timeout", "nan", "pb://x"])
    assert result.code == 2 and "--timeout" in result.err
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "args, usage",
    [([], "Usage: bbenroll [OPTIONS] COMMAND"), (["worker"], "Usage: bbenroll worker [OPTIONS]")],
)
def test_no_command_prints_the_help_on_stderr(args, usage):
    result = run_cli(args)
    assert (result.code, result.out) == (2, "")
    assert result.err.startswith(usage)
    assert "error:" not in result.err


@pytest.mark.parametrize("name", ["wa\u200b", "w\u202eab", "w\u0430", "--help", "-w", "wo\u0308rker"])
def test_add_refuses_look_alike_invisible_and_option_like_names(cli, reg_path, name):
    """All of these are Buildbot identifiers; none may be a new worker's name."""
    before = reg_path.read_bytes()
    result = cli("add", "--", name)
    assert (result.code, result.out) == (1, "")
    assert result.err.startswith(f"error: worker name {name!r} ") and result.err.count("\n") == 1
    assert reg_path.read_bytes() == before


def test_a_registry_holding_an_unsafe_name_loads_and_check_warns(cli, reg_path):
    assert cli("add", "wa").code == 0
    reg_path.write_text(reg_path.read_text().replace("[workers.wa]", '[workers."w\u0430"]'))  # Cyrillic a
    assert cli("show", "w\u0430").code == 0 and cli("rotate", "w\u0430").code == 0
    result = cli("check")
    warning = (
        f"warning: {reg_path}: worker name 'w\u0430' holds '\u0430' (U+0430); new names use ASCII or "
        "Latin-1 letters (À-ÿ), digits, '_' and '-', starting with a letter or '_' (no look-alike, "
        "invisible or reordering characters)"
    )
    assert (result.code, result.err.splitlines()) == (0, [warning, f"{reg_path}: OK (1 worker)"])
    checked = json.loads(cli("check", "--json").out)
    assert checked["ok"] is True and checked["warnings"] == [warning.removeprefix("warning: ")]


def test_list_and_show_give_the_delivery_state(cli, reg_path, clock):
    """current until the FURL changes, pending until the worker confirms, then confirmed."""
    from bbenroll.registry import model, store

    cli("add", "alpha")
    cli("add", "beta")
    cli("add", "gamma")
    clock.now += timedelta(hours=1)
    assert cli("rotate", "beta").code == 0
    assert cli("rotate", "gamma").code == 0
    confirmed_at = clock.now + timedelta(seconds=4)
    with store.edit(reg_path, now=confirmed_at) as editor:  # what the running master does
        editor.update(model.confirm(editor.worker("gamma"), 1, confirmed_at))
    lines = cli("list").out.splitlines()
    column = lines[0].index("delivery")
    assert [line[column:].split("  ")[0] for line in lines[2:]] == [
        "current", "pending since 2026-11-29 07:00", "confirmed 2026-11-29 07:00"]
    listed = {w["name"]: w for w in json.loads(cli("list", "--json").out)}
    assert listed["alpha"]["delivery"] == {"state": "current", "serial": 0, "since": "2026-11-29T06:00:00Z"}
    assert listed["beta"]["delivery"] == {"state": "pending", "serial": 1, "since": "2026-11-29T07:00:00Z"}
    assert listed["gamma"]["delivery"] == {"state": "confirmed", "serial": 1,
                                           "since": "2026-11-29T07:00:04Z"}
    assert [listed[n]["serial"] for n in ("alpha", "beta", "gamma")] == [0, 1, 1]
    shown = cli("show", "beta")
    assert shown.out.count("\n") == 1 and shown.out.startswith("pb://")  # stdout: the FURL alone
    assert shown.err == "delivery: FURL 1 pending since 2026-11-29 07:00\n"
    assert cli("show", "alpha").err == ""  # the FURL it was enrolled with: nothing to say
    assert json.loads(cli("show", "gamma", "--json").out)["delivery"]["state"] == "confirmed"
    # a repeated confirmation writes nothing at all
    text = reg_path.read_bytes()
    with store.edit(reg_path, now=confirmed_at + timedelta(hours=1)) as editor:
        editor.update(model.confirm(editor.worker("gamma"), 1, confirmed_at + timedelta(hours=1)))
    assert reg_path.read_bytes() == text


def test_worker_create_reads_a_pushed_furl_file_with_its_serial_line(tmp_path):
    from tests.helpers.net import free_port

    # a worker's own bbenroll.furl after a pushed update: "# serial N", then the FURL
    furl = f"pb://{'a' * 32}@tcp:127.0.0.1:{free_port()}/{'b' * 32}"
    pushed = tmp_path / "bbenroll.furl"
    pushed.write_text(f"# serial 3\n{furl}\n")
    from tests.helpers.buildbot import BIN, run

    proc = run(BIN / "bbenroll", "worker", "create", tmp_path / "w", "--furl-file", pushed, "--timeout", "2",
               check=False)
    assert proc.returncode == 1
    # the FURL was understood and tried (nothing listens there), not refused as malformed
    assert "cannot reach the master" in proc.stderr, proc.stderr
