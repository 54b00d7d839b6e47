"""bbenroll edit: a real editor process (a small Python script) on a copy, with the lock held."""

from __future__ import annotations

import json
import shlex
import stat
import sys
import tomllib

import pytest

from bbenroll.cli import edit as edit_module
from bbenroll.registry import model, store
from bbenroll.times import format_time
from tests.helpers.cli import FIXED_NOW

# The "editor": replaces EDIT_OLD by EDIT_NEW (on its Nth run EDIT_OLD_<N>/EDIT_NEW_<N> if set), records
# what it saw, can try the registry's lock like another CLI writer, and exits with EDIT_EXIT.
EDITOR_SCRIPT = r'''
import json, os, stat, sys
path = sys.argv[-1]
record = os.environ["EDIT_RECORD"]
runs = json.load(open(record)) if os.path.exists(record) else []
text = open(path, encoding="utf-8").read()
n = len(runs) + 1
new = os.environ.get(f"EDIT_NEW_{n}", os.environ.get("EDIT_NEW"))
if new is not None:
    text = text.replace(os.environ.get(f"EDIT_OLD_{n}", os.environ.get("EDIT_OLD")), new)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
seen = {"path": path, "mode": stat.S_IMODE(os.stat(path).st_mode)}
if os.environ.get("EDIT_TRY_LOCK"):
    from datetime import UTC, datetime
    from bbenroll.errors import LockTimeout
    from bbenroll.registry import model, store
    try:
        with store.edit(os.environ["EDIT_TRY_LOCK"], timeout=0.3) as editor:
            editor.add(model.new_worker("intruder", datetime.now(UTC)))
        seen["lock"] = "got it"
    except LockTimeout as e:
        seen["lock"] = str(e)
runs.append(seen)
json.dump(runs, open(record, "w"))
sys.exit(int(os.environ.get("EDIT_EXIT", "0")))
'''


@pytest.fixture
def registry(reg_path):
    with store.edit(reg_path) as editor:
        editor.add(model.new_worker("w1", FIXED_NOW, note="rack 1"))
        editor.add(model.new_worker("w2", FIXED_NOW))
    reg_path.write_text("# hand-written comment\n" + reg_path.read_text())
    return reg_path


@pytest.fixture
def editor(tmp_path):
    script = tmp_path / "fake_editor.py"
    script.write_text(EDITOR_SCRIPT)
    record = tmp_path / "editor-runs.json"

    def env(**values: str) -> dict[str, str | None]:
        return {
            "VISUAL": None,
            "EDITOR": f"{shlex.quote(sys.executable)} {shlex.quote(str(script))} --wait",
            "EDIT_RECORD": str(record),
            **values,
        }

    env.runs = lambda: json.loads(record.read_text()) if record.exists() else []  # type: ignore[attr-defined]
    return env


def leftovers(reg_path):
    return sorted(p.name for p in reg_path.parent.iterdir() if ".edit-" in p.name)


def test_a_valid_edit_is_saved_atomically_with_mode_0600(cli, registry, editor):
    result = cli("edit", env=editor(EDIT_OLD='note = "rack 1"', EDIT_NEW='note = "rack 2"'))
    assert result.code == 0, result.err
    assert result.err == f"{registry}: saved: changed 'w1'\n"
    data = tomllib.loads(registry.read_text())
    assert data["workers"]["w1"]["note"] == "rack 2"
    assert registry.read_text().startswith("# hand-written comment\n")
    assert stat.S_IMODE(registry.stat().st_mode) == 0o600
    (run,) = editor.runs()
    assert run["mode"] == 0o600  # the copy holds every secret
    assert str(registry.parent) == run["path"].rsplit("/", 1)[0]  # next to the registry: 'identity' resolves
    assert leftovers(registry) == []


def test_adding_and_removing_workers_is_summarised_in_json(cli, registry, editor):
    text = registry.read_text()
    w2 = text[text.index("[workers.w2]"):]
    w3 = w2.replace("[workers.w2]", "[workers.w3]")
    swissnum = tomllib.loads(text)["workers"]["w2"]["swissnum"]
    w3 = w3.replace(swissnum, "z" * 32)
    result = cli("edit", "--json", env=editor(EDIT_OLD=w2, EDIT_NEW=w3))
    assert result.code == 0, result.err
    document = json.loads(result.out)
    assert document == {"registry": str(registry), "saved": True, "added": ["w3"], "removed": ["w2"],
                        "changed": [], "master": False}
    assert set(tomllib.loads(registry.read_text())["workers"]) == {"w1", "w3"}


def test_no_change_leaves_the_file_untouched(cli, registry, editor):
    before = registry.read_bytes(), registry.stat().st_mtime_ns, registry.stat().st_ino
    result = cli("edit", env=editor())
    assert (result.code, result.out, result.err) == (0, "", "no changes; registry untouched\n")
    assert (registry.read_bytes(), registry.stat().st_mtime_ns, registry.stat().st_ino) == before
    assert leftovers(registry) == []


def test_an_invalid_edit_off_a_terminal_fails_and_changes_nothing(cli, registry, editor):
    before = registry.read_bytes()
    result = cli("edit", env=editor(EDIT_OLD="[workers.w2]", EDIT_NEW="[workers.w2]\ncolour = 1"))
    assert result.code == 1
    lines = result.err.splitlines()
    assert lines[0].startswith(f"error: {registry}:") and "colour" in lines[0]
    assert lines[-1] == f"error: {registry}: 1 problem; registry unchanged"
    assert "Traceback" not in result.err and "edit again" not in result.err
    assert registry.read_bytes() == before
    assert len(editor.runs()) == 1  # not asked again: nobody to answer
    assert leftovers(registry) == []


def test_broken_toml_is_refused_with_json_error(cli, registry, editor):
    before = registry.read_bytes()
    result = cli("edit", "--json", env=editor(EDIT_OLD="[workers.w2]", EDIT_NEW="[workers.w2"))
    assert result.code == 1
    assert json.loads(result.out) == {"error": f"{registry}: 1 problem; registry unchanged", "exit": 1}
    assert "invalid TOML" in result.err
    assert registry.read_bytes() == before


def test_on_a_terminal_answering_no_keeps_the_registry(cli, registry, editor, monkeypatch):
    monkeypatch.setattr(edit_module, "interactive", lambda: True)
    before = registry.read_bytes()
    result = cli("edit", input="n\n", env=editor(EDIT_OLD="[workers.w2]", EDIT_NEW="[workers.w2"))
    assert result.code == 1
    assert "edit again? [Y/n]" in result.err
    assert result.err.splitlines()[-1] == f"error: {registry}: not saved; registry unchanged"
    assert registry.read_bytes() == before
    assert len(editor.runs()) == 1


def test_on_a_terminal_editing_again_can_fix_it(cli, registry, editor, monkeypatch):
    monkeypatch.setattr(edit_module, "interactive", lambda: True)
    env = editor(
        EDIT_OLD_1='note = "rack 1"', EDIT_NEW_1='note = "rack 1',  # run 1 breaks the string
        EDIT_OLD_2='note = "rack 1\n', EDIT_NEW_2='note = "rack 9"\n',  # run 2 mends it
    )
    result = cli("edit", input="\n", env=env)  # Enter: the default, yes
    assert result.code == 0, result.err
    assert len(editor.runs()) == 2
    assert "edit again? [Y/n]" in result.err
    assert result.err.splitlines()[-1] == f"{registry}: saved: changed 'w1'"
    assert tomllib.loads(registry.read_text())["workers"]["w1"]["note"] == "rack 9"
    assert leftovers(registry) == []


def test_a_failing_editor_aborts(cli, registry, editor):
    before = registry.read_bytes()
    result = cli("edit", env=editor(EDIT_OLD='note = "rack 1"', EDIT_NEW='note = "rack 2"', EDIT_EXIT="3"))
    assert result.code == 1
    assert result.err.endswith("exited with status 3; registry unchanged\n")
    assert result.err.count("\n") == 1
    assert registry.read_bytes() == before
    assert leftovers(registry) == []


def test_a_missing_editor_is_one_line(cli, registry):
    before = registry.read_bytes()
    result = cli("edit", env={"VISUAL": "/nonexistent/editor -w", "EDITOR": None})
    assert result.code == 1
    assert result.err == "error: cannot run the editor '/nonexistent/editor': No such file or directory; " \
        "registry unchanged\n"
    assert registry.read_bytes() == before
    assert leftovers(registry) == []


def test_other_writers_wait_on_the_lock_while_the_editor_runs(cli, registry, editor):
    env = editor(EDIT_OLD='note = "rack 1"', EDIT_NEW='note = "rack 2"', EDIT_TRY_LOCK=str(registry))
    result = cli("edit", env=env)
    assert result.code == 0, result.err
    (run,) = editor.runs()
    assert run["lock"] == f"{store.lock_path(store.real_path(registry))}: another bbenroll has held the " \
        "lock for 0s; try again"
    workers = tomllib.loads(registry.read_text())["workers"]
    assert "intruder" not in workers and workers["w1"]["note"] == "rack 2"
    assert cli("add", "after").code == 0  # the lock is free again once the session ends


def test_no_registry_is_one_line(cli, tmp_path, editor):
    result = cli("--registry", str(tmp_path / "none.toml"), "edit", env=editor(), registry_arg=False)
    assert result.code == 1 and result.err.count("\n") == 1 and "not found" in result.err
    assert editor.runs() == []


def test_a_duplicate_secret_is_refused_like_check_refuses_it(cli, registry, editor):
    data = tomllib.loads(registry.read_text())["workers"]
    before = registry.read_bytes()
    result = cli("edit", env=editor(EDIT_OLD=data["w2"]["swissnum"], EDIT_NEW=data["w1"]["swissnum"]))
    assert result.code == 1
    assert "workers.w2.swissnum: same secret as worker 'w1'" in result.err.splitlines()[0]
    assert result.err.splitlines()[-1] == f"error: {registry}: 1 problem; registry unchanged"
    assert registry.read_bytes() == before


def test_an_edit_is_audited_and_its_audit_table_is_ours(cli, registry, editor):
    """Like every other edit: one record per changed worker, chained, at the CLI's clock;
    an [audit] table changed in the editor is put back to what the chain says."""
    log = registry.parent / "workers.audit.jsonl"
    before = log.read_text().splitlines()
    forged = 'head = "sha256:' + "0" * 64 + '"'
    text = registry.read_text()
    old_head = next(line for line in text.splitlines() if line.startswith("head = "))
    result = cli("edit", env=editor(EDIT_OLD_1='note = "rack 1"', EDIT_NEW_1='note = "rack 9"'))
    assert result.code == 0, result.err
    # a second session that only forges the anchor: nothing audited changed, anchor kept
    result = cli("edit", env=editor(EDIT_OLD=old_head, EDIT_NEW=forged))
    assert result.code == 0, result.err
    after = log.read_text().splitlines()
    assert len(after) == len(before) + 1
    record = json.loads(after[-1])
    assert (record["action"], record["worker"]) == ("changed", "w1")
    assert record["time"] == format_time(FIXED_NOW)  # the CLI's injected clock, not the wall clock
    assert forged not in registry.read_text()
    assert cli("audit", "verify").code == 0


def test_an_edit_can_repair_a_registry_that_does_not_load(cli, registry, editor):
    """The one tool that can fix a broken registry under the lock must not refuse it;
    the audit chain records the repair and stays intact."""
    registry.write_text(registry.read_text().replace("version = 2", "version = 7", 1))
    assert cli("check").code == 1
    result = cli("edit", env=editor(EDIT_OLD="version = 7", EDIT_NEW="version = 2"))
    assert result.code == 0, result.err
    assert "did not load before this edit" in result.err
    assert cli("check").code == 0
    assert cli("audit", "verify").code == 0
