"""bbenroll rebind, and how show/list present a worker's key binding (docs/security.md)."""

from __future__ import annotations

import json

from bbenroll.cli import COMMANDS
from bbenroll.registry import audit, model, store
from tests.helpers.binding import KEY_A, bound_of
from tests.helpers.cli import FIXED_NOW


def bind(reg_path, name: str, key: str = KEY_A) -> None:
    """What the running master writes when ``worker create`` asks it to bind (bind_key)."""
    with store.edit(reg_path, 5, actor={"by": "master", "host": "m"}, now=FIXED_NOW) as editor:
        editor.update(model.bind(editor.worker(name), key, FIXED_NOW))


def test_rebind_clears_the_binding_and_is_audited(cli, reg_path):
    assert COMMANDS["rebind"] == "bbenroll.cli.rebind"
    cli("add", "w1")
    furl = json.loads(cli("--json", "show", "w1").out)["furl"]
    bind(reg_path, "w1")
    result = cli("rebind", "w1")
    assert result.code == 0, result.err
    assert result.out == ""
    assert result.err.startswith(f"worker 'w1' is no longer bound to worker key {KEY_A}; ")
    assert bound_of(reg_path, "w1") is None
    record = audit.read_records(audit.log_path(reg_path))[-1]
    assert (record["action"], record["worker"], record["reason"]) == ("unbound", "w1", f"worker key {KEY_A}")
    assert json.loads(cli("--json", "show", "w1").out)["furl"] == furl  # the FURL stays the same


def test_rebind_of_several_names_json_and_an_unbound_worker(cli, reg_path):
    cli("add", "w1")
    cli("add", "w2")
    bind(reg_path, "w1")
    records = len(audit.read_records(audit.log_path(reg_path)))
    result = cli("--json", "rebind", "w1", "w2", "w1")
    assert result.code == 0, result.err
    assert json.loads(result.out) == [
        {"name": "w1", "was_bound": {"fingerprint": KEY_A, "at": "2026-11-29T06:00:00Z"}},
        {"name": "w2", "was_bound": None},
    ]
    assert len(audit.read_records(audit.log_path(reg_path))) == records + 1  # w2 unchanged: no record
    plain = cli("rebind", "w2")
    assert plain.code == 0 and plain.err == "worker 'w2' was not bound to a worker key; nothing to do\n"


def test_rebind_of_an_unknown_worker_is_one_line_and_changes_nothing(cli, reg_path):
    cli("add", "w1")
    bind(reg_path, "w1")
    before = reg_path.read_text()
    result = cli("rebind", "w1", "nobody")
    assert result.code == 1 and result.err.count("\n") == 1 and "nobody" in result.err
    assert "Traceback" not in result.err
    assert reg_path.read_text() == before
    as_json = cli("--json", "rebind", "nobody")
    assert as_json.code == 1 and json.loads(as_json.out)["exit"] == 1
    assert cli("rebind").code == 2  # a name is required


def test_show_and_list_give_the_binding(cli, reg_path):
    cli("add", "w1")
    cli("add", "w2")
    bind(reg_path, "w1")
    listed = {w["name"]: w for w in json.loads(cli("--json", "list").out)}
    assert listed["w1"]["bound"] == {"fingerprint": KEY_A, "at": "2026-11-29T06:00:00Z"}
    assert listed["w2"]["bound"] is None
    shown = cli("show", "w1")
    assert shown.code == 0 and shown.out.startswith("pb://")
    assert f"bound to worker key {KEY_A} since 2026-11-29" in shown.err
    assert json.loads(cli("--json", "show", "w1").out)["bound"]["fingerprint"] == KEY_A
    assert "bound to" not in cli("show", "w2").err
