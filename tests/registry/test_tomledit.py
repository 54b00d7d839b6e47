"""The splicer and its fallback: what an edit changes, and nothing else.

Byte for byte: an edit rewrites only the edited worker's tables, on every
layout of ``tests/helpers/registry.py`` the splice handles; on the others
(the whole-document fallback) data and comments survive. And which path an
edit takes, line endings, and what must happen when tomlkit fails.
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from bbenroll.errors import RegistryError
from bbenroll.registry import model, schema, store, tomledit
from bbenroll.registry.store import registry_from_text
from tests.helpers.registry import (
    COMMENTS,
    FALLBACK_LAYOUTS,
    MASTER,
    MASTER_HEAD,
    MASTER_TABLE,
    NOW,
    PATH,
    QUOTED,
    SPLICE_LAYOUTS,
    TUBID,
    Layout,
    body,
    cases,
    comment_lines,
    crlf,
    edit_text,
    editor_for,
    expected_data,
    on_disk,
)


def test_layouts_are_valid_registries() -> None:
    for layout in SPLICE_LAYOUTS + FALLBACK_LAYOUTS:
        workers = registry_from_text(PATH, layout.text).workers
        owners = {n for n in layout.workers if "." not in n}
        # (one segment may hold several workers when the layout allows no finer split)
        assert owners <= set(workers) and len(workers) >= 2, layout.name


@pytest.mark.parametrize("layout,op,name", cases(SPLICE_LAYOUTS))
def test_splice_touches_only_the_edited_table(layout: Layout, op: str, name: str) -> None:
    old = layout.text
    new, worker = edit_text(old, op, name)
    # (a) the data is exactly what was asked for
    assert tomllib.loads(new) == expected_data(old, name, worker)
    assert registry_from_text(PATH, new).workers == {
        **{n: w for n, w in registry_from_text(PATH, old).workers.items() if n != name},
        **({name: worker} if worker else {}),
    }
    # (b) every byte outside the edited worker's table is unchanged
    if op == "add":
        assert new.startswith(old)
        appended = tomllib.loads(new[len(old) :])
        assert appended == {"workers": {name: schema.worker_to_data(worker)}}
        return
    before, after = layout.outside(name)
    assert new.startswith(before)
    assert new.endswith(after)
    middle = new[len(before) : len(new) - len(after)]
    assert len(before) + len(after) <= len(new)
    if op == "remove":
        assert middle == "", f"left behind of the removed table: {middle!r}"
    else:
        own = "".join(text for owner, text in layout.segments if owner == name)
        # comments written inside the table survive the rewrite of the table
        assert comment_lines(middle) == comment_lines(own)


@pytest.mark.parametrize("layout,op,name", cases(FALLBACK_LAYOUTS))
def test_fallback_layouts_keep_data_and_comments(layout: Layout, op: str, name: str) -> None:
    old = layout.text
    new, worker = edit_text(old, op, name)
    assert tomllib.loads(new) == expected_data(old, name, worker)
    kept = "".join(text for owner, text in layout.segments if not (op == "remove" and owner == name))
    for comment in comment_lines(kept):
        assert comment in new


def test_several_edits_in_one_save() -> None:
    old = QUOTED.text
    editor = editor_for(old)
    rotated = model.rotate(editor.worker("wörker-1"), NOW)
    editor.update(rotated)
    editor.remove("plain")
    added = model.new_worker("zeta", NOW)
    editor.add(added)
    new = editor.render()
    data = copy.deepcopy(tomllib.loads(old))
    data["workers"]["wörker-1"] = schema.worker_to_data(rotated)
    del data["workers"]["plain"]
    data["workers"]["zeta"] = schema.worker_to_data(added)
    assert tomllib.loads(new) == data
    # the untouched worker's table, with its sub-tables and comments, is carried over verbatim
    own = "".join(text for owner, text in QUOTED.segments if owner == "ç-2")
    assert own in new


def test_crlf_file_stays_crlf() -> None:
    """An edit of a CRLF registry must not leave it with mixed line endings."""
    old = crlf(COMMENTS).text
    for op, name in (("rotate", "beta"), ("add", "zeta"), ("revoke", "alpha")):
        new, _ = edit_text(old, op, name)
        assert "\n" not in new.replace("\r\n", ""), f"{op}: bare LF line endings in a CRLF file"


def test_edit_on_disk_keeps_layout(tmp_path: Path) -> None:
    """Through store.edit on a real registry: the file's other bytes are carried over."""
    path = on_disk(tmp_path, COMMENTS.text)
    tubid = store.load(path).registry.master.tubid
    with store.edit(path) as editor:
        editor.update(model.rotate(editor.worker("beta"), NOW))
    new = path.read_text(encoding="utf-8")
    new = new[: new.rindex("\n\n[audit]\n") + 1]  # appended to a registry older than the audit log
    before, after = COMMENTS.outside("beta")
    assert new.startswith(before.replace(TUBID, tubid))
    assert new.endswith(after)
    loaded = store.load(path)
    assert loaded.registry.workers["beta"].rotated == NOW
    assert loaded.registry.workers["alpha"] == registry_from_text(PATH, COMMENTS.text).workers["alpha"]


def no_fallback(*args: Any, **kwargs: Any) -> str:
    raise AssertionError("the edit fell back to the whole-document rewrite")


@pytest.mark.parametrize("layout,op,name", cases(SPLICE_LAYOUTS))
def test_splice_layouts_take_the_fast_path(
    monkeypatch: pytest.MonkeyPatch, layout: Layout, op: str, name: str
) -> None:
    """CRLF files, strings with '#' lines and arrays of sub-tables are spliced, not round-tripped."""
    monkeypatch.setattr(tomledit, "rewrite_whole", no_fallback)
    new, worker = edit_text(layout.text, op, name)
    assert tomllib.loads(new) == expected_data(layout.text, name, worker)


@pytest.mark.parametrize("layout,op,name", cases([crlf(layout) for layout in FALLBACK_LAYOUTS]))
def test_fallback_keeps_crlf(layout: Layout, op: str, name: str) -> None:
    new, worker = edit_text(layout.text, op, name)
    assert tomllib.loads(new) == expected_data(layout.text, name, worker)
    assert "\n" not in new.replace("\r\n", ""), "bare LF line endings in a CRLF file"


def test_mixed_line_endings_follow_the_first_line() -> None:
    """New lines get the line break of the file's first line; other lines keep theirs."""
    old = COMMENTS.text.replace("\n", "\r\n", 3)
    for op, name in (("rotate", "beta"), ("add", "zeta"), ("revoke", "alpha")):
        new, _ = edit_text(old, op, name)
        assert new.count("\n") - new.count("\r\n") <= old.count("\n") - old.count("\r\n")


def test_remove_and_add_again_in_one_save() -> None:
    for layout in (COMMENTS, crlf(QUOTED), FALLBACK_LAYOUTS[1]):
        editor = editor_for(layout.text)
        name = "alpha" if "alpha" in editor.workers else "plain"
        editor.remove(name)
        again = model.new_worker(name, NOW)
        editor.add(again)
        new = editor.render()
        assert store.registry_from_text(PATH, new).workers[name] == again


def test_add_to_an_empty_inline_workers_table() -> None:
    """``[workers.NAME]`` cannot follow ``workers = {}``: the worker goes into the inline table."""
    text = MASTER_HEAD + "workers = {}  # none yet\n" + MASTER_TABLE
    new, worker = edit_text(text, "add", "zeta")
    assert tomllib.loads(new) == expected_data(text, "zeta", worker)
    assert "# none yet" in new


def test_remove_keeps_comments_of_separated_tables() -> None:
    """Removing a worker whose sub-table lives elsewhere keeps every other comment in place."""
    layout = FALLBACK_LAYOUTS[1]
    new, _ = edit_text(layout.text, "remove", "alpha")
    assert new == (
        MASTER
        + "# alpha\n"
        + "# beta\n"
        + "[workers.beta]\n"
        + body(2)
        + "\n"
        + "# alpha's options, far from alpha\n"
        + "# end\n"
    )


def test_tomlkit_failure_is_a_clear_error_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = on_disk(tmp_path, COMMENTS.text)
    before = path.read_bytes()

    def broken(text: str) -> Any:
        raise tomlkit.exceptions.UnexpectedEofError(1, 1)

    monkeypatch.setattr(tomlkit, "parse", broken)
    with pytest.raises(RegistryError) as info:
        with store.edit(path) as editor:
            editor.update(model.rotate(editor.worker("beta"), NOW))
    assert str(info.value).startswith(f"{path}: cannot edit this layout: UnexpectedEofError")
    assert "internal error" not in str(info.value)
    assert path.read_bytes() == before


def test_result_that_does_not_read_back_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = on_disk(tmp_path, FALLBACK_LAYOUTS[1].text)
    before = path.read_bytes()
    for bad in ("not = [toml", "version = 2\n"):
        monkeypatch.setattr(tomledit, "rewrite_whole", lambda *args, bad=bad: bad)
        with pytest.raises(RegistryError) as info:
            with store.edit(path) as editor:
                editor.remove("beta")
        assert "cannot edit this layout: the edited text would not read back" in str(info.value)
        assert "internal error" not in str(info.value)
        assert path.read_bytes() == before


def test_apply_without_changes_returns_the_text_itself() -> None:
    text = COMMENTS.text
    registry = registry_from_text(PATH, text)
    assert tomledit.apply(text, tomledit.Edit(registry, registry, {}, [])) is text


def test_apply_checks_what_the_fallback_wrote(monkeypatch: pytest.MonkeyPatch) -> None:
    """The read-back check lives in apply: a fallback result that differs is a LayoutError."""
    layout = FALLBACK_LAYOUTS[1]
    before = registry_from_text(PATH, layout.text)
    beta = model.rotate(before.workers["beta"], NOW)
    after = model.Registry(before.master, {**before.workers, "beta": beta}, before.version)
    edit = tomledit.Edit(before, after, {"beta": beta}, [])
    assert registry_from_text(PATH, tomledit.apply(layout.text, edit)) == after
    monkeypatch.setattr(tomledit, "rewrite_whole", lambda text, edit: text)  # "forgets" the change
    with pytest.raises(tomledit.LayoutError) as info:
        tomledit.apply(layout.text, edit)
    assert str(info.value) == "the edited text would not read back as intended"


# --- the [master] table: master set-location ------------------------------------


def _moved(text: str) -> tuple[str, model.Registry]:
    """``text`` after the edit ``master set-location`` makes: new hints, a serial bump each."""
    from dataclasses import replace

    editor = editor_for(text)
    editor.set_master(replace(editor.master, location=("tcp:new.example.org:9989",)))
    for worker in list(editor.workers.values()):
        editor.update(model.change_location(worker, NOW))
    assert editor.dirty
    return editor.render(), editor.registry


@pytest.mark.parametrize("layout", [*SPLICE_LAYOUTS, *FALLBACK_LAYOUTS], ids=lambda layout: layout.name)
def test_a_location_change_reads_back_and_keeps_every_comment(layout: Layout) -> None:
    new_text, expected = _moved(layout.text)
    assert registry_from_text(PATH, new_text) == expected
    assert comment_lines(new_text) == [
        line for line in comment_lines(layout.text) if line not in ("# primary [the one]", "# ]]")
    ] or layout.fallback
    if not layout.fallback:
        # the master table keeps its comments; only the location value is new
        assert "# about the master" in new_text and 'identity = "master.pem"  # relative' in new_text
        newline = "\r\n" if "\r\n" in layout.text else "\n"
        assert new_text.startswith(MASTER_HEAD.replace("\n", newline))


def test_only_the_master_changes_outside_its_table_nothing_moves() -> None:
    from dataclasses import replace

    editor = editor_for(COMMENTS.text)
    editor.set_master(replace(editor.master, location=("tcp:new.example.org:9989",)))
    new_text = editor.render()
    before, _, after = COMMENTS.text.partition(MASTER_TABLE)
    assert new_text.startswith(before) and new_text.endswith(after)
    table = new_text[len(before): len(new_text) - len(after)]
    old_location = MASTER_TABLE[MASTER_TABLE.index("location = ["): MASTER_TABLE.index("listen")]
    assert table == MASTER_TABLE.replace(old_location, 'location = ["tcp:new.example.org:9989"]\n')
    assert tomllib.loads(new_text)["master"]["location"] == ["tcp:new.example.org:9989"]


def test_a_new_workers_buildbot_options_get_their_own_table_and_are_never_rewritten_later(reg_path):
    """bbenroll import adds workers with options: tomledit writes them as [workers.NAME.buildbot];
    an existing worker's hand-written options stay exactly as written."""
    from dataclasses import replace as with_

    from bbenroll.registry import model, store
    from tests.helpers.cli import FIXED_NOW

    options = {"max_builds": 2, "properties": {"arch": "arm64", "cores": 8}}
    with store.edit(reg_path, now=FIXED_NOW) as editor:
        editor.add(with_(model.new_worker("w1", FIXED_NOW), buildbot=options, legacy=True))
    text = reg_path.read_text()
    assert "[workers.w1.buildbot]\nmax_builds = 2\n" in text
    assert store.load(reg_path).registry.workers["w1"].buildbot == options
    hand = text.replace("max_builds = 2\n", "max_builds = 2  # by hand: keep\n")
    reg_path.write_text(hand)
    with store.edit(reg_path, now=FIXED_NOW) as editor:
        worker = editor.worker("w1")
        editor.update(with_(worker, note="rack 4"))
    after = reg_path.read_text()
    assert "max_builds = 2  # by hand: keep\n" in after and 'note = "rack 4"' in after
