"""Rewrite worker tables in registry text with tomlkit, touching nothing else.

Imported only by write paths (tomlkit is slow to import and to parse).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from typing import Any

import tomlkit
from tomlkit.items import Table

from bbenroll import model
from bbenroll.model import Problems, Worker
from bbenroll.tomlsplice import Header, ScanError, scan_headers, table_span


class Fallback(Exception):
    """The fast splice does not apply to this layout; rewrite the whole document."""


def _toml_value(key: str, value: Any) -> Any:
    if key == "previous":
        inline = tomlkit.inline_table()
        inline.update(value)
        return inline
    return value


def update_table(table: Table, old: Worker | None, new: Worker) -> None:
    """Make ``table`` hold ``new``, changing only keys whose value differs."""
    old_data = model.worker_to_data(old) if old is not None else {}
    new_data = model.worker_to_data(new)
    for key in old_data:
        if key not in new_data and key in table:
            del table[key]
    for key, value in new_data.items():
        if key == "buildbot":
            continue  # hand-written Buildbot options are never rewritten
        if old_data.get(key) != value or key not in table:
            table[key] = _toml_value(key, value)


def render_new_table(worker: Worker) -> str:
    doc = tomlkit.document()
    workers = tomlkit.table(is_super_table=True)
    table = tomlkit.table()
    update_table(table, None, worker)
    workers.add(worker.name, table)
    doc.add("workers", workers)
    return doc.as_string()


def _reads_back(chunk: str, name: str, expected: Worker) -> bool:
    try:
        data = tomllib.loads(chunk)
    except tomllib.TOMLDecodeError:
        return False
    entry = data.get("workers", {}).get(name)
    problems = Problems()
    return model.worker_from_data(name, entry, problems) == expected and not problems


def _worker_headers(headers: list[Header], names: Mapping[str, Worker]) -> dict[str, int]:
    """Index of each worker's main header; Fallback unless every worker has one
    and all of a worker's tables are contiguous."""
    first: dict[str, int] = {}
    last_name = None
    for i, header in enumerate(headers):
        path = header.path
        if path[:1] != ("workers",):
            last_name = None
            continue
        if len(path) == 1 or header.is_array:
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


def splice(
    text: str,
    old_workers: Mapping[str, Worker],
    changed: Mapping[str, Worker | None],
    added: list[str],
    workers: Mapping[str, Worker],
) -> str:
    """Apply changes by rewriting only the affected tables of ``text``."""
    if not changed and not added:
        return text
    try:
        headers = scan_headers(text)
    except ScanError:
        raise Fallback from None
    index = _worker_headers(headers, old_workers)
    spans = []
    for name, worker in changed.items():
        start, end = table_span(text, headers, index[name])
        if worker is None:
            # take the blank lines after a removed table with it
            while end < len(text) and text[end] == "\n":
                end += 1
            spans.append((start, end, ""))
            continue
        chunk = text[start:end]
        doc = tomlkit.parse(chunk)
        update_table(doc["workers"][name], old_workers[name], worker)
        new_chunk = doc.as_string()
        if not _reads_back(new_chunk, name, worker):
            raise Fallback
        spans.append((start, end, new_chunk))
    spans.sort()
    pieces = []
    pos = 0
    for start, end, replacement in spans:
        pieces.append(text[pos:start])
        pieces.append(replacement)
        pos = end
    pieces.append(text[pos:])
    out = "".join(pieces)
    for name in added:
        table = render_new_table(workers[name])
        if not _reads_back(table, name, workers[name]):
            raise Fallback
        if out and not out.endswith("\n"):
            out += "\n"
        if out and not out.endswith("\n\n"):
            out += "\n"
        out += table
    return out


def rewrite_whole(
    text: str,
    changed: Mapping[str, Worker | None],
    added: list[str],
    workers: Mapping[str, Worker],
) -> str:
    """The slow, general path: round-trip the whole document through tomlkit."""
    doc = tomlkit.parse(text)
    if "workers" not in doc:
        doc.add("workers", tomlkit.table(is_super_table=True))
    table = doc["workers"]
    for name, worker in changed.items():
        if worker is None:
            del table[name]
        else:
            from bbenroll.model import worker_from_data

            old = worker_from_data(name, table[name].unwrap(), Problems())
            update_table(table[name], old, worker)
    for name in added:
        new = tomlkit.table()
        update_table(new, None, workers[name])
        table.add(name, new)
    return doc.as_string()
