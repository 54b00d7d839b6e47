"""More splice/fallback cases: which path an edit takes, line endings, failures.

The layouts come from ``test_tomlsplice``; these tests check what its
byte-for-byte tests cannot see (an edit that silently takes the slow path) and
what must happen when tomlkit fails.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from bbenroll.errors import RegistryError
from bbenroll.registry import model, store, tomledit
from bbenroll.registry.tomlscan import scan, table_span
from tests.registry.test_tomlscan import (
    COMMENTS,
    FALLBACK_LAYOUTS,
    HASH_LINE_STRING,
    MASTER,
    MASTER_HEAD,
    MASTER_TABLE,
    NOW,
    PATH,
    QUOTED,
    SPLICE_LAYOUTS,
    TUBID,
    Layout,
    apply,
    body,
    cases,
    crlf,
    editor_for,
    expected_data,
)


def no_fallback(*args: Any, **kwargs: Any) -> str:
    raise AssertionError("the edit fell back to the whole-document rewrite")


@pytest.mark.parametrize("layout,op,name", cases(SPLICE_LAYOUTS))
def test_splice_layouts_take_the_fast_path(
    monkeypatch: pytest.MonkeyPatch, layout: Layout, op: str, name: str
) -> None:
    """CRLF files, strings with '#' lines and arrays of sub-tables are spliced, not round-tripped."""
    monkeypatch.setattr(tomledit, "rewrite_whole", no_fallback)
    new, worker = apply(layout.text, op, name)
    assert tomllib.loads(new) == expected_data(layout.text, name, worker)


def test_table_span_keeps_string_lines_starting_with_hash() -> None:
    for text in (HASH_LINE_STRING.text, crlf(HASH_LINE_STRING).text):
        scanned = scan(text)
        index = [h.path for h in scanned.headers].index(("workers", "alpha"))
        start, end = table_span(scanned, index)
        assert text[start:end].rstrip().endswith("# run make'''")
        assert tomllib.loads(text[start:end])["workers"]["alpha"]["note"] == "build notes:\n# run make"


def test_table_span_leaves_the_next_tables_comments() -> None:
    text = COMMENTS.text.replace("\n", "\r\n")
    scanned = scan(text)
    index = [h.path for h in scanned.headers].index(("workers", "beta"))
    start, end = table_span(scanned, index)
    assert text[start:end].endswith("expires = 2027-01-01T00:00:00Z\r\n")
    assert text[end:].startswith("# trailing comment of beta, kept\r\n")


@pytest.mark.parametrize("layout,op,name", cases([crlf(layout) for layout in FALLBACK_LAYOUTS]))
def test_fallback_keeps_crlf(layout: Layout, op: str, name: str) -> None:
    new, worker = apply(layout.text, op, name)
    assert tomllib.loads(new) == expected_data(layout.text, name, worker)
    assert "\n" not in new.replace("\r\n", ""), "bare LF line endings in a CRLF file"


def test_mixed_line_endings_follow_the_first_line() -> None:
    """New lines get the line break of the file's first line; other lines keep theirs."""
    old = COMMENTS.text.replace("\n", "\r\n", 3)
    for op, name in (("rotate", "beta"), ("add", "zeta"), ("revoke", "alpha")):
        new, _ = apply(old, op, name)
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
    new, worker = apply(text, "add", "zeta")
    assert tomllib.loads(new) == expected_data(text, "zeta", worker)
    assert "# none yet" in new


def test_remove_keeps_comments_of_separated_tables() -> None:
    """Removing a worker whose sub-table lives elsewhere keeps every other comment in place."""
    layout = FALLBACK_LAYOUTS[1]
    new, _ = apply(layout.text, "remove", "alpha")
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


def on_disk(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "workers.toml"
    created = store.create(
        path,
        location=["tcp:buildbot.example.org:9989"],
        listen="tcp:9989",
        pb="tcp:1:interface=127.0.0.1",
        identity="master.pem",
    )
    path.write_bytes(text.replace(TUBID, created.registry.master.tubid).encode())
    return path


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
    for bad in ("not = [toml", "version = 1\n"):
        monkeypatch.setattr(tomledit, "rewrite_whole", lambda *args, bad=bad: bad)
        with pytest.raises(RegistryError) as info:
            with store.edit(path) as editor:
                editor.remove("beta")
        assert "cannot edit this layout: the edited text would not read back" in str(info.value)
        assert "internal error" not in str(info.value)
        assert path.read_bytes() == before
