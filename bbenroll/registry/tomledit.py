"""Rewrite worker tables in registry text with tomlkit, touching nothing else.

Imported only by write paths (tomlkit is slow to import and to parse).

:func:`apply` is the one way to turn an edit into new text. It tries
:func:`splice`, the fast path: it re-parses only the edited workers' tables,
checks each table it cuts out or writes, and carries every other byte over.
When the layout is not one the splice handles, :func:`rewrite_whole` makes the
edit with a whole-document tomlkit round trip (removed workers' tables are
still cut out as text where possible, so that the comments tomlkit would file
under them survive), and :func:`apply` checks that the result reads back as
exactly the intended registry. Both keep the file's line endings.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import InlineTable, Table

from bbenroll.registry import schema
from bbenroll.registry.invites import Invite
from bbenroll.registry.model import MasterSettings, Registry, Worker
from bbenroll.registry.schema import Problems
from bbenroll.registry.tomlscan import Header, Scan, ScanError, scan, table_span

# What tomlkit raises on a document it cannot parse or edit: its own errors, but
# also plain ValueError ("Inline tables cannot contain a table"), KeyError,
# TypeError, IndexError, RuntimeError and failed internal assertions.
TOMLKIT_ERRORS = (
    TOMLKitError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    RuntimeError,
    AssertionError,
)

_BARE_LF_RE = re.compile(r"(?<!\r)\n")
_BLANK_LINE_RE = re.compile(r"[ \t]*\r?\n")
_BLANK_END_RE = re.compile(r"[ \t]*\Z")


class Fallback(Exception):
    """The fast splice does not apply to this layout; rewrite the whole document."""


class LayoutError(Exception):
    """This edit cannot be made on this text, not even on the whole document; write nothing."""


@dataclass(frozen=True)
class Edit:
    """The changes of one save: the text holds ``before`` and must come to hold ``after``."""

    before: Registry
    after: Registry
    changed: Mapping[str, Worker | None]  # None: removed
    added: Sequence[str]  # in the order their tables are appended
    # the same for [invites.ID] tables
    invites_changed: Mapping[str, Invite | None] = field(default_factory=dict)
    invites_added: Sequence[str] = ()

    @property
    def touches_invites(self) -> bool:
        return bool(self.invites_changed or self.invites_added)


def apply(text: str, edit: Edit) -> str:
    """The new text: spliced where the layout allows, else rewritten whole and
    checked to read back as ``edit.after``. Raises LayoutError."""
    if (
        not edit.changed
        and not edit.added
        and not edit.touches_invites
        and edit.before.master == edit.after.master
    ):
        return text
    try:
        return splice(text, edit)  # checks every table it cuts out or writes
    except Fallback:
        pass
    new_text = rewrite_whole(text, edit)
    problem = _read_back_problem(new_text, edit.after)
    if problem is not None:
        raise LayoutError(f"the edited text would not read back as intended{problem}")
    return new_text


def _read_back_problem(text: str, expected: Registry) -> str | None:
    """None if ``text`` reads back as ``expected``; else what differs, for the message."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        return f" (invalid TOML: {e})"
    problems = Problems()
    registry = schema.registry_from_data(data, problems)
    if problems:
        key, message = problems.items[0]
        return f" ({key}: {message})"
    return None if registry == expected else ""


def newline_of(text: str) -> str:
    """The line break the text uses: that of its first line (``\\n`` if it has none)."""
    i = text.find("\n")
    return "\r\n" if i > 0 and text[i - 1] == "\r" else "\n"


def with_newline(text: str, newline: str) -> str:
    """``text`` with every bare ``\\n`` written as ``newline``.

    Safe for the data: TOML readers treat ``\\r\\n`` as ``\\n``, in multi-line
    strings too (tomllib replaces every ``\\r\\n`` before it parses).
    """
    if newline == "\n":
        return text
    return _BARE_LF_RE.sub(newline, text)


def _toml_value(key: str, value: Any) -> Any:
    if key == "previous":
        inline = tomlkit.inline_table()
        inline.update(value)
        return inline
    return value


def update_table(table: Table | InlineTable, old: Worker | None, new: Worker) -> None:
    """Make ``table`` hold ``new``, changing only keys whose value differs."""
    old_data = schema.worker_to_data(old) if old is not None else {}
    new_data = schema.worker_to_data(new)
    for key in old_data:
        if key not in new_data and key in table:
            del table[key]
    for key, value in new_data.items():
        if key == "buildbot":
            if old is None and value:  # a new worker's options (bbenroll import): its own sub-table
                options = tomlkit.table()
                options.update(value)
                table.add("buildbot", options)
            continue  # an existing worker's hand-written Buildbot options are never rewritten
        if old_data.get(key) != value or key not in table:
            table[key] = _toml_value(key, value)


def update_invite_table(table: Table | InlineTable, old: Invite | None, new: Invite) -> None:
    """Make ``table`` hold ``new``, changing only keys whose value differs (comments stay)."""
    old_data = schema.invite_to_data(old) if old is not None else {}
    new_data = schema.invite_to_data(new)
    for key in old_data:
        if key not in new_data and key in table:
            del table[key]
    for key, value in new_data.items():
        if old_data.get(key) != value or key not in table:
            table[key] = value


def update_master_table(table: Table | InlineTable, old: MasterSettings, new: MasterSettings) -> None:
    """Make ``table`` hold ``new``, changing only the keys whose value differs (comments stay)."""
    old_data, new_data = schema.master_to_data(old), schema.master_to_data(new)
    for key in old_data:
        if key not in new_data and key in table:
            del table[key]
    for key, value in new_data.items():
        if old_data.get(key) != value or key not in table:
            table[key] = value


def _master_holds_exactly(chunk: str, expected: MasterSettings) -> bool:
    try:
        data = tomllib.loads(chunk)
    except tomllib.TOMLDecodeError:
        return False
    if set(data) != {"master"}:
        return False
    problems = Problems()
    return schema.master_from_data(data["master"], problems) == expected and not problems


def _master_span(text: str, scanned: Scan, edit: Edit, newline: str) -> tuple[int, int, str]:
    """The span of the ``[master]`` table and its new text; Fallback unless it is one plain table."""
    found = [i for i, h in enumerate(scanned.headers) if h.path == ("master",) and not h.is_array]
    if len(found) != 1 or any(h.path[:1] == ("master",) and len(h.path) > 1 for h in scanned.headers):
        raise Fallback
    start, end = table_span(scanned, found[0], subtables=False)
    chunk = text[start:end]
    if not _master_holds_exactly(chunk, edit.before.master):
        raise Fallback
    try:
        doc = tomlkit.parse(chunk)
        update_master_table(doc["master"], edit.before.master, edit.after.master)
        new_chunk = with_newline(doc.as_string(), newline)
    except TOMLKIT_ERRORS:
        raise Fallback from None
    if not _master_holds_exactly(new_chunk, edit.after.master):
        raise Fallback
    return start, end, new_chunk


def render_new_table(worker: Worker, newline: str = "\n") -> str:
    doc = tomlkit.document()
    workers = tomlkit.table(is_super_table=True)
    table = tomlkit.table()
    update_table(table, None, worker)
    workers.add(worker.name, table)
    doc.add("workers", workers)
    return with_newline(doc.as_string(), newline)


def render_new_invite_table(invite: Invite, newline: str = "\n") -> str:
    doc = tomlkit.document()
    invites = tomlkit.table(is_super_table=True)
    table = tomlkit.table()
    update_invite_table(table, None, invite)
    invites.add(invite.id, table)
    doc.add("invites", invites)
    return with_newline(doc.as_string(), newline)


def _invite_headers(headers: list[Header], ids: Collection[str]) -> dict[str, int]:
    """Index of each invite's header; Fallback unless every invite is one plain
    ``[invites.ID]`` table (no ``[invites]``, no sub-tables, no arrays of tables)."""
    found: dict[str, int] = {}
    for i, header in enumerate(headers):
        path = header.path
        if path[:1] != ("invites",):
            continue
        if len(path) != 2 or header.is_array or path[1] in found:
            raise Fallback
        found[path[1]] = i
    if set(found) != set(ids):
        raise Fallback
    return found


def _holds_exactly(chunk: str, key: str, expected: Worker | Invite, family: str = "workers") -> bool:
    """Whether ``chunk`` alone is a TOML document holding ``[FAMILY.KEY]`` (a worker, or with
    ``family="invites"`` an invite) as ``expected`` and nothing else."""
    try:
        data = tomllib.loads(chunk)
    except tomllib.TOMLDecodeError:
        return False
    tables = data.get(family)
    if set(data) != {family} or not isinstance(tables, dict) or set(tables) != {key}:
        return False
    problems = Problems()
    from_data = schema.worker_from_data if family == "workers" else schema.invite_from_data
    return from_data(key, tables[key], problems) == expected and not problems


def _worker_headers(headers: list[Header], names: Collection[str]) -> dict[str, int]:
    """Index of each worker's main header; Fallback unless every worker has one
    and all of a worker's tables are contiguous."""
    first: dict[str, int] = {}
    last_name = None
    for i, header in enumerate(headers):
        path = header.path
        if path[:1] != ("workers",):
            last_name = None
            continue
        if len(path) == 1 or (len(path) == 2 and header.is_array):
            raise Fallback
        name = path[1]
        if len(path) == 2:
            if name in first:
                raise Fallback
            first[name] = i
        elif name != last_name or name not in first:
            raise Fallback  # a sub-table away from its worker's table
        last_name = name
    if set(first) != set(names):
        raise Fallback
    return first


def _root_mentions_workers(text: str, scanned: Scan, section: str = "workers") -> bool:
    """Whether the keys before the first header define anything in ``section``
    (``workers = {}``, ``workers.NAME.KEY = ...``): then no ``[workers.NAME]``
    table may be added or rewritten on its own (the same for ``invites``)."""
    root = text[: scanned.headers[0].offset] if scanned.headers else text
    try:
        return section in tomllib.loads(root)
    except tomllib.TOMLDecodeError:
        return True


def _skip_blank_lines(text: str, pos: int) -> int:
    """``pos`` moved past the blank lines that start there (and a blank last
    line without a line break)."""
    while True:
        mo = _BLANK_LINE_RE.match(text, pos)
        if mo is None:
            return len(text) if _BLANK_END_RE.match(text, pos) else pos
        pos = mo.end()


def _replace_spans(text: str, spans: list[tuple[int, int, str]]) -> str:
    pieces = []
    pos = 0
    for start, end, replacement in sorted(spans):
        pieces.append(text[pos:start])
        pieces.append(replacement)
        pos = end
    pieces.append(text[pos:])
    return "".join(pieces)


def append_tables(text: str, tables: Sequence[str], newline: str = "\n") -> str:
    """``text`` with ``tables`` appended, each after one blank line (how ``add`` writes)."""
    out = text
    for table in tables:
        if out and not out.endswith("\n"):
            out += newline
        if out and not (out.endswith("\n\n") or out.endswith("\n\r\n")):
            out += newline  # a blank line before the new table
        out += table
    return out


def splice(text: str, edit: Edit) -> str:
    """Make ``edit`` by rewriting only the affected tables of ``text``.

    Raises Fallback when the layout is not one it handles; every table it cuts
    out or writes is checked to hold exactly the worker it should.
    """
    old_workers, workers = edit.before.workers, edit.after.workers
    try:
        scanned = scan(text)
    except ScanError:
        raise Fallback from None
    index = _worker_headers(scanned.headers, old_workers)
    if _root_mentions_workers(text, scanned):
        raise Fallback
    newline = newline_of(text)
    spans = []
    for name, worker in edit.changed.items():
        start, end = table_span(scanned, index[name])
        chunk = text[start:end]
        if not _holds_exactly(chunk, name, old_workers[name]):
            raise Fallback  # the span is not exactly this worker's tables
        if worker is None:
            # take the blank lines after a removed table with it
            spans.append((start, _skip_blank_lines(text, end), ""))
            continue
        try:
            doc = tomlkit.parse(chunk)
            update_table(doc["workers"][name], old_workers[name], worker)
            new_chunk = with_newline(doc.as_string(), newline)
        except TOMLKIT_ERRORS:
            raise Fallback from None
        if not _holds_exactly(new_chunk, name, worker):
            raise Fallback
        spans.append((start, end, new_chunk))
    if edit.before.master != edit.after.master:
        spans.append(_master_span(text, scanned, edit, newline))
    if edit.touches_invites:
        spans += _invite_spans(text, scanned, edit, newline)
    tables = []
    for name in edit.added:
        try:
            table = render_new_table(workers[name], newline)
        except TOMLKIT_ERRORS:
            raise Fallback from None
        if not _holds_exactly(table, name, workers[name]):
            raise Fallback
        tables.append(table)
    for invite_id in edit.invites_added:
        invite = edit.after.invites[invite_id]
        try:
            table = render_new_invite_table(invite, newline)
        except TOMLKIT_ERRORS:
            raise Fallback from None
        if not _holds_exactly(table, invite_id, invite, "invites"):
            raise Fallback
        tables.append(table)
    return append_tables(_replace_spans(text, spans), tables, newline)


def _invite_spans(text: str, scanned: Scan, edit: Edit, newline: str) -> list[tuple[int, int, str]]:
    """The spans of the changed and removed ``[invites.ID]`` tables and their new text."""
    old_invites = edit.before.invites
    index = _invite_headers(scanned.headers, old_invites)
    if _root_mentions_workers(text, scanned, "invites"):
        raise Fallback
    spans = []
    for invite_id, invite in edit.invites_changed.items():
        start, end = table_span(scanned, index[invite_id], subtables=False)
        chunk = text[start:end]
        if not _holds_exactly(chunk, invite_id, old_invites[invite_id], "invites"):
            raise Fallback
        if invite is None:
            spans.append((start, _skip_blank_lines(text, end), ""))
            continue
        try:
            doc = tomlkit.parse(chunk)
            update_invite_table(doc["invites"][invite_id], old_invites[invite_id], invite)
            new_chunk = with_newline(doc.as_string(), newline)
        except TOMLKIT_ERRORS:
            raise Fallback from None
        if not _holds_exactly(new_chunk, invite_id, invite, "invites"):
            raise Fallback
        spans.append((start, end, new_chunk))
    return spans


def _without_workers(
    data: dict[str, Any], names: Collection[str], section: str = "workers"
) -> dict[str, Any]:
    data = dict(data)
    table = data.get(section)
    if isinstance(table, dict):
        table = {key: value for key, value in table.items() if key not in names}
        if table:
            data[section] = table
        else:
            del data[section]
    return data


def _cut_removed_tables(text: str, names: Collection[str], section: str = "workers") -> str:
    """``text`` without the ``[workers.NAME...]`` tables of the workers ``names``.

    tomlkit files the comment and blank lines that end a table (before the next
    header, or at the end of the file) under that table, so deleting a worker
    with tomlkit would take another table's comments with it. Cutting the
    tables out as text keeps them. Parts of a worker defined otherwise (in an
    inline table, by dotted keys) are left for tomlkit. Returns ``text``
    unchanged unless the cut is checked to remove nothing else.
    """
    try:
        scanned = scan(text)
    except ScanError:
        return text
    spans = []
    for i, header in enumerate(scanned.headers):
        if len(header.path) >= 2 and header.path[0] == section and header.path[1] in names:
            start, end = table_span(scanned, i, subtables=False)
            spans.append((start, _skip_blank_lines(text, end), ""))
    if not spans:
        return text
    cut = _replace_spans(text, spans)
    try:
        before, after = tomllib.loads(text), tomllib.loads(cut)
    except tomllib.TOMLDecodeError:
        return text
    if _without_workers(before, names, section) != _without_workers(after, names, section):
        return text
    return cut


def rewrite_whole(text: str, edit: Edit) -> str:
    """The slow, general path: round-trip the whole document through tomlkit.

    Raises LayoutError when tomlkit cannot parse or edit the document. The
    result is not checked here: :func:`apply` reads it back.
    """
    old_workers, workers, changed, added = edit.before.workers, edit.after.workers, edit.changed, edit.added
    removed = [name for name, worker in changed.items() if worker is None]
    source = _cut_removed_tables(text, removed) if removed else text
    removed_invites = [i for i, invite in edit.invites_changed.items() if invite is None]
    if removed_invites:
        source = _cut_removed_tables(source, removed_invites, "invites")
    try:
        doc = tomlkit.parse(source)
        if edit.before.master != edit.after.master:
            update_master_table(doc["master"], edit.before.master, edit.after.master)
        for name, worker in changed.items():
            if worker is None:
                if "workers" in doc and name in doc["workers"]:
                    del doc["workers"][name]  # what the text cut left of it
            else:
                update_table(doc["workers"][name], old_workers[name], worker)
        if added:
            if "workers" not in doc:
                doc.add("workers", tomlkit.table(is_super_table=True))
            table = doc["workers"]
            for name in added:
                # ``workers = {...}`` can only take another inline table
                new = tomlkit.inline_table() if isinstance(table, InlineTable) else tomlkit.table()
                update_table(new, None, workers[name])
                table.add(name, new)
        _rewrite_invites(doc, edit)
        out = doc.as_string()
    except TOMLKIT_ERRORS as e:
        raise LayoutError(f"{type(e).__name__}: {e}") from None
    if "\r\n" in text and text.count("\n") == text.count("\r\n"):
        out = with_newline(out, "\r\n")  # (a file with mixed line breaks is left as tomlkit writes it)
    return out


def _rewrite_invites(doc: Any, edit: Edit) -> None:
    """The invites part of :func:`rewrite_whole` (on the tomlkit document)."""
    old_invites, invites = edit.before.invites, edit.after.invites
    for invite_id, invite in edit.invites_changed.items():
        if invite is None:
            if "invites" in doc and invite_id in doc["invites"]:
                del doc["invites"][invite_id]  # what the text cut left of it
        else:
            update_invite_table(doc["invites"][invite_id], old_invites[invite_id], invite)
    if edit.invites_added:
        if "invites" not in doc:
            doc.add("invites", tomlkit.table(is_super_table=True))
        table = doc["invites"]
        for invite_id in edit.invites_added:
            new = tomlkit.inline_table() if isinstance(table, InlineTable) else tomlkit.table()
            update_invite_table(new, None, invites[invite_id])
            table.add(invite_id, new)
