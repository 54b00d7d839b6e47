"""Find table headers in TOML text without parsing all of it.

tomlkit needs seconds to parse a registry of thousands of workers, so edits
re-parse only the edited worker's tables and splice the result back; the rest
of the file is carried over byte for byte. This module finds where each table
starts. It tracks just enough of TOML's lexical structure (multi-line strings,
arrays spanning lines, comments) to tell a real ``[header]`` line from one
inside a string or an array, and a real comment line from a line of a
multi-line string that happens to start with ``#``. Lines may end in ``\n`` or
``\r\n``; offsets always count every character of the text.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass

# Order matters: at a quote, a whole one-line string wins over a lone quote.
_TOKEN_RE = re.compile(r'"""|\'\'\'|"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\'|#|[\[\]{}]')
_INTERESTING = re.compile(r"[\[\]{}]|\"\"\"|'''")
_BARE_HEADER_RE = re.compile(
    r"^[ \t]*(\[\[?)[ \t]*([A-Za-z0-9_-]+(?:[ \t]*\.[ \t]*[A-Za-z0-9_-]+)*)[ \t]*(\]\]?)[ \t]*(?:#.*)?$"
)


@dataclass(frozen=True)
class Header:
    offset: int  # where the header line starts in the text
    line: int  # 1-based line number
    path: tuple[str, ...]
    is_array: bool
    # where the last content line before this header ends (after its line
    # break): the comment and blank lines between there and ``offset`` are
    # top-level lines that introduce this table, not part of the one before
    content_end: int


@dataclass(frozen=True)
class Scan:
    headers: list[Header]
    content_end: int  # ``Header.content_end`` for the end of the text


class ScanError(Exception):
    """The text is laid out in a way this scanner does not handle."""


def _closing(line: str, start: int, delim: str) -> int:
    """End index of the closing multi-line delimiter at/after ``start``, or -1."""
    i = start
    while True:
        i = line.find(delim, i)
        if i < 0:
            return -1
        if delim == '"""':
            backslashes = len(line[:i]) - len(line[:i].rstrip("\\"))
            if backslashes % 2:
                i += 1
                continue
        end = i + 3
        # up to two quotes right before the delimiter belong to the content
        extra = 0
        while extra < 2 and end < len(line) and line[end] == delim[0]:
            end += 1
            extra += 1
        return end


def header_path(line: str) -> tuple[tuple[str, ...], bool]:
    if line.endswith("\r"):
        line = line[:-1]
    mo = _BARE_HEADER_RE.match(line)
    if mo:
        opener, keys, closer = mo.groups()
        if len(opener) != len(closer):
            raise ScanError(f"malformed header {line!r}")
        return tuple(k.strip() for k in keys.split(".")), opener == "[["
    # quoted keys: a header line is a TOML document of its own
    try:
        node: object = tomllib.loads(line)
    except tomllib.TOMLDecodeError:
        raise ScanError(f"malformed header {line!r}") from None
    path: list[str] = []
    is_array = False
    while isinstance(node, dict) and len(node) == 1:
        key, node = next(iter(node.items()))
        path.append(key)
        if isinstance(node, list):
            is_array = True
            node = node[-1]
    return tuple(path), is_array


def scan_headers(text: str) -> list[Header]:
    return scan(text).headers


def scan(text: str) -> Scan:
    """Every real table header of ``text``, and where its content ends."""
    headers: list[Header] = []
    in_string: str | None = None  # the open multi-line delimiter
    depth = 0  # open [ and { outside strings
    offset = 0
    content_end = 0  # end of the last line that is not a top-level comment/blank line
    crlf = "\r" in text
    for lineno, line in enumerate(text.split("\n"), 1):
        line_offset = offset
        offset += len(line) + 1
        if crlf and line.endswith("\r"):
            line = line[:-1]
        pos = 0
        if in_string:
            end = _closing(line, 0, in_string)
            if end < 0:
                content_end = offset
                continue
            in_string = None
            pos = end
        elif depth == 0:
            first = line.lstrip(" \t")[:1]
            if first == "" or first == "#":
                continue  # a top-level comment or blank line
            if first == "[":
                path, is_array = header_path(line)
                headers.append(Header(line_offset, lineno, path, is_array, content_end))
                content_end = offset
                continue
        content_end = offset
        if depth == 0 and not _INTERESTING.search(line, pos):
            continue
        while True:
            mo = _TOKEN_RE.search(line, pos)
            if mo is None:
                break
            token = mo.group()
            pos = mo.end()
            if token in ('"""', "'''"):
                end = _closing(line, pos, token)
                if end < 0:
                    in_string = token
                    break
                pos = end
            elif token == "#":
                break
            elif token in "[{":
                depth += 1
            elif token in "]}":
                depth -= 1
                if depth < 0:
                    raise ScanError(f"line {lineno}: unbalanced brackets")
    if in_string or depth:
        raise ScanError("unterminated string or bracket at the end of the text")
    return Scan(headers, min(content_end, len(text)))


def table_span(scanned: Scan, index: int, *, subtables: bool = True) -> tuple[int, int]:
    """``[start, end)`` of the table whose header is ``scanned.headers[index]``.

    With ``subtables``, the span runs on over the sub-tables that directly
    follow it. The end is the end of the last content line (after its line
    break): any comment and blank lines after it, up to the next header or the
    end of the text, describe the next table (or the file) and are not part of
    this one. A line inside a multi-line string or array is content, even if
    it starts with ``#``.
    """
    headers = scanned.headers
    head = headers[index]
    j = index + 1
    if subtables:
        prefix = head.path
        while j < len(headers) and headers[j].path[: len(prefix)] == prefix:
            j += 1
    end = headers[j].content_end if j < len(headers) else scanned.content_end
    return head.offset, end
