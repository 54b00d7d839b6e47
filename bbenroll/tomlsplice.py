"""Find table headers in TOML text without parsing all of it.

tomlkit needs seconds to parse a registry of thousands of workers, so edits
re-parse only the edited worker's tables and splice the result back; the rest
of the file is carried over byte for byte. This module finds where each table
starts. It tracks just enough of TOML's lexical structure (multi-line strings,
arrays spanning lines, comments) to tell a real ``[header]`` line from one
inside a string or an array.
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
    headers: list[Header] = []
    in_string: str | None = None  # the open multi-line delimiter
    depth = 0  # open [ and { outside strings
    offset = 0
    for lineno, line in enumerate(text.split("\n"), 1):
        line_offset = offset
        offset += len(line) + 1
        pos = 0
        if in_string:
            end = _closing(line, 0, in_string)
            if end < 0:
                continue
            in_string = None
            pos = end
        elif depth == 0 and line.lstrip(" \t").startswith("["):
            path, is_array = header_path(line)
            headers.append(Header(line_offset, lineno, path, is_array))
            continue
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
    return headers


def table_span(text: str, headers: list[Header], index: int) -> tuple[int, int]:
    """``[start, end)`` of the table whose header is ``headers[index]``, with its sub-tables.

    The end stops before any comment lines and blank lines that directly
    precede the next header (they describe the next table) or end the file.
    """
    head = headers[index]
    prefix = head.path
    j = index + 1
    while j < len(headers) and headers[j].path[: len(prefix)] == prefix:
        j += 1
    end = headers[j].offset if j < len(headers) else len(text)
    # back up over the comment/blank block that introduces the next table
    # (or trails the file): it is not part of this table
    lines = text[head.offset : end].split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    keep = len(lines)
    while keep > 1 and (not lines[keep - 1].strip() or lines[keep - 1].lstrip().startswith("#")):
        keep -= 1
    end = min(end, head.offset + sum(len(line) + 1 for line in lines[:keep]))
    return head.offset, end
