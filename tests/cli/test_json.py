"""--json: stdout holds exactly one JSON document for every command, on success and on an error."""

from __future__ import annotations

import json
import os

import pytest

import bbenroll.demo as demo
from tests.helpers.cli import HINT, run_cli


def one_document(out: str):
    """The single JSON document on stdout (one line, nothing before or after it)."""
    assert out.endswith("\n") and out.count("\n") == 1, repr(out)
    return json.loads(out)


def fake_demo(result: str):
    def run_demo(events, *, timeout, keep):
        build = demo.BuildResult(number=1, builder="demo", worker="demo-worker", result=result, duration=2.0,
                                  log_tail=["hello"])
        events.furl("demo-worker", "pb://x@tcp:127.0.0.1:1/abcdefgh")
        events.build_done(build)
        return demo.DemoResult(build=build, furl="pb://x@tcp:127.0.0.1:1/abcd…", directory=None, elapsed=3.0)

    return run_demo


# (command line after --registry, what to prepare, the keys the document must hold)
SUCCESSES = {
    "init": (["init", "--location", HINT], "fresh",
             {"registry", "identity", "tubid", "location", "listen", "pb"}),
    "add --qr": (["add", "w2", "--qr"], None, {"name", "furl", "state"}),
    "show --qr": (["show", "w1", "--qr"], None, {"name", "furl", "state"}),
    "list": (["list"], None, None),
    "rotate": (["rotate", "w1", "--grace", "1d"], None, None),
    "set": (["set", "w1", "--note", "n"], None, None),
    "edit": (["edit"], "editor true", {"registry", "saved"}),
    "revoke": (["revoke", "w1"], None, {"name", "state", "revoked"}),
    "restore": (["restore", "w1"], "revoked", {"name", "furl", "state"}),
    "remove": (["remove", "w1", "--yes"], None, {"name", "removed"}),
    "check": (["check"], None, {"registry", "ok", "problems"}),
    "audit verify": (["audit", "verify"], None,
                     {"registry", "log", "ok", "intact", "records", "head"}),
    "status": (["status"], None, {"running", "why", "updated", "workers"}),
    "master set-location": (["master", "set-location", "tcp:new.example.org:9989"], None,
                            {"changed", "location", "old_location", "workers"}),
    "completion": (["completion", "bash"], None, {"shell", "script"}),
    "demo": (["demo"], "demo success", {"ok", "result", "build", "furl"}),
}

# (command line, what to prepare, exit status, the message)
ERRORS = {
    "init": (["init", "--location", HINT], None, 1, "{p}: already exists; refusing to overwrite a registry"),
    "add": (["add", "bad name"], None, 1, None),
    "add --qr, usage": (["add", "--qr", "--bogus", "w2"], None, 2,
                        "No such option '--bogus'. Did you mean '--verbose'? (see 'bbenroll add --help')"),
    "show": (["show", "nope"], None, 1, "{p}: no worker named 'nope'"),
    "list": (["list", "--expiring", "soon"], None, 2, None),
    "rotate, usage": (["rotate"], None, 2,
                      "give worker names, --tag T or --all: exactly one of them "
                      "(see 'bbenroll rotate --help')"),
    "rotate": (["rotate", "nope"], None, 1, "{p}: no worker named 'nope'"),
    "set": (["set", "nope", "--note", "n"], None, 1, "{p}: no worker named 'nope'"),
    "edit": (["edit"], "editor false", 1, "the editor 'false' exited with status 1; registry unchanged"),
    "revoke": (["revoke", "nope"], None, 1, "{p}: no worker named 'nope'"),
    "restore": (["restore", "w1"], None, 1, "worker 'w1' is not revoked"),
    "remove": (["remove", "w1"], None, 1,
               "refusing to remove worker 'w1' without --yes (no terminal to ask)"),
    "status": (["status"], "damaged status", 1, None),
    "master set-location": (["master", "set-location", "tcp:h:0"], None, 1,
                            "HINTS: connection hint 'tcp:h:0': port must be 1-65535"),
    "master, usage": (["master", "set-location"], None, 2, None),
    "audit, usage": (["audit", "--action", "frobbed"], None, 2, None),
    "audit verify": (["audit", "verify"], "broken registry", 1, None),
    "completion": (["completion", "tcsh"], None, 2, None),
    "worker create": (["worker", "create", "{d}/w", "pb://nonsense"], None, 1,
                      "a FURL has the form pb://TUBID@HINT[,HINT...]/SWISSNUM"),
    "worker create, usage": (["worker", "create", "{d}/w", "--timeout", "nan", "pb://x"], None, 2, None),
    "demo, usage": (["demo", "--timeout", "1"], None, 2, None),
    "unknown command": (["frobnicate"], None, 2, "No such command 'frobnicate'. (see 'bbenroll --help')"),
    "broken registry": (["list"], "broken registry", 1, None),
}


@pytest.fixture
def prepare(cli, reg_path, monkeypatch):
    def prepare(what: str | None) -> None:
        if what == "fresh":
            for name in ("workers.toml", "master.pem", "workers.audit.jsonl"):
                (reg_path.parent / name).unlink()
            return
        assert cli("add", "w1").code == 0
        if what == "revoked":
            assert cli("revoke", "w1").code == 0
        elif what == "damaged status":
            (reg_path.parent / "workers.status.json").write_bytes(b"\xff")
        elif what == "open permissions":
            os.chmod(reg_path, 0o644)
        elif what == "broken registry":
            reg_path.write_text("version = ")
        elif what and what.startswith("editor"):
            monkeypatch.setenv("VISUAL", what.split()[1])
        elif what and what.startswith("demo"):
            monkeypatch.setattr(demo, "run_demo", fake_demo(what.split()[1]))

    return prepare


@pytest.mark.parametrize("json_first", [True, False], ids=["--json first", "--json last"])
@pytest.mark.parametrize("case", SUCCESSES)
def test_success_is_one_document(cli, prepare, case, json_first):
    args, what, keys = SUCCESSES[case]
    prepare(what)
    result = cli("--json", *args) if json_first else cli(*args, "--json")
    assert result.code == 0, result.err
    document = one_document(result.out)
    if keys is None:
        assert isinstance(document, list) and document and "name" in document[0]
    else:
        assert keys <= set(document)
    assert "error" not in result.err


@pytest.mark.parametrize("case", ERRORS)
def test_error_is_one_document(cli, prepare, reg_path, case):
    args, what, code, message = ERRORS[case]
    prepare(what)
    args = [a.format(d=reg_path.parent) for a in args]
    result = cli(*args, "--json")
    assert result.code == code, result
    document = one_document(result.out)
    assert set(document) == {"error", "exit"} and document["exit"] == code
    assert result.err.splitlines()[-1] == "error: " + document["error"]
    if message is not None:
        assert document["error"] == message.format(p=reg_path)
    assert "Traceback" not in result.err


@pytest.mark.parametrize("command, what", [("check", "open permissions"), ("demo", "demo failure")])
def test_a_failure_with_a_result_is_one_document(cli, prepare, reg_path, command, what):
    """A failed check or demo build: its own document says so (ok: false), exit 1, no second document."""
    prepare(what)
    result = cli(command, "--json")
    assert result.code == 1
    document = one_document(result.out)
    assert document["ok"] is False
    expected = {
        "check": f"error: {reg_path}: 1 problem found",
        "demo": "error: the demo build finished with failure",
    }[command]
    assert result.err.splitlines()[-1] == expected


def test_without_json_errors_leave_stdout_empty(cli):
    result = cli("show", "nope")
    assert (result.code, result.out) == (1, "")


def test_add_json_qr_has_no_qr_art(cli):
    """Bug 1: the QR code used to follow the JSON document."""
    result = cli("add", "w1", "--json", "--qr")
    assert result.code == 0
    assert one_document(result.out)["name"] == "w1"
    assert "█" not in result.out and "▀" not in result.out


@pytest.mark.parametrize("args", [["--json", "--version"], ["--version", "--json"]])
def test_version_with_json_is_one_document(args):
    from importlib.metadata import version

    result = run_cli(args)
    assert result.code == 0
    assert one_document(result.out) == {"name": "bbenroll", "version": version("bbenroll")}
    plain = run_cli(["--version"])
    assert plain.out == f"bbenroll, version {version('bbenroll')}\n"
