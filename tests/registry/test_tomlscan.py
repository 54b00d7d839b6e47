"""The header scanner: real table headers only, and where each table ends.

Checked against tomllib on random documents (hypothesis) and on the
hand-written layouts of ``tests/helpers/registry.py``.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bbenroll.registry.tomlscan import scan, scan_headers, table_span
from tests.helpers.registry import COMMENTS, HASH_LINE_STRING, crlf


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


# --- scan_headers against tomllib, on random documents -----------------------

NAME_CHARS = st.one_of(
    st.sampled_from(list("abcXYZ_-019")), st.characters(min_codepoint=0xA0, exclude_categories=("Cs",))
)
table_names = st.text(NAME_CHARS, min_size=1, max_size=12).filter(lambda n: not n.startswith("val_"))
TRICKY = [*"[]{}#=,.'\"\\ äé€", "[workers.x]", "[[a]]", "'''", '"""', "# c", "a"]
tricky_plain = st.lists(st.sampled_from(TRICKY), max_size=6).map("".join)
spaces = st.sampled_from(["", " ", "\t", "  "])


def toml_key(key: str, style: int) -> str:
    """A key, bare if possible (style 0), else a basic (1) or literal (2) string."""
    bare = all(c.isascii() and (c.isalnum() or c in "_-") for c in key)
    if style == 0 and bare:
        return key
    if style == 2 and "'" not in key:
        return f"'{key}'"
    return json.dumps(key, ensure_ascii=False)


@st.composite
def headers(draw: st.DrawFn, path: tuple[str, ...], is_array: bool) -> str:
    keys = [toml_key(k, draw(st.integers(0, 2))) for k in path]
    dotted = "".join((draw(spaces) + "." + draw(spaces) if i else "") + k for i, k in enumerate(keys))
    opener, closer = ("[[", "]]") if is_array else ("[", "]")
    comment = draw(st.sampled_from(["", "  # [not.this]", ' # """', " #'''"]))
    return f"{draw(spaces)}{opener}{draw(spaces)}{dotted}{draw(spaces)}{closer}{comment}"


ML_BASIC_PIECES = [
    "[workers.fake]",
    "  [[workers.fake]]",
    "[master]",
    "# no comment",
    "'''",
    "''",
    '""',
    '\\"""',
    "a \\",
    'x = "y"',
    "]",
    "[",
    "{",
    "é",
]
ML_LITERAL_PIECES = ["[workers.fake]", '"""', '""', "\\", "# x", "''", "[[a]]", "]", "["]


@st.composite
def multiline_string(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        pieces = draw(st.lists(st.sampled_from(ML_BASIC_PIECES), max_size=5))
        text = "\n".join(pieces)
        newline_close = draw(st.booleans()) or text.endswith("\\")
        return '"""' + draw(st.sampled_from(["", "\n"])) + text + ("\n" if newline_close else "") + '"""'
    pieces = draw(st.lists(st.sampled_from(ML_LITERAL_PIECES), max_size=5))
    text = "\n".join(pieces)
    return "'''" + draw(st.sampled_from(["", "\n"])) + text + ("\n" if draw(st.booleans()) else "") + "'''"


scalars = st.one_of(
    st.sampled_from(["1", "true", "2026-01-01T00:00:00Z", "-3.5"]),
    tricky_plain.map(lambda s: json.dumps(s, ensure_ascii=False)),
    tricky_plain.filter(lambda s: "'" not in s).map(lambda s: f"'{s}'"),
)
inline_tables = st.lists(st.tuples(st.sampled_from(["a", "b", '"[x]"', "'#'"]), scalars), max_size=3).map(
    lambda kv: "{ " + ", ".join(f"{k} = {v}" for k, v in dict(kv).items()) + " }"
)
one_line_arrays = st.lists(st.one_of(scalars, st.just('["]", [1]]')), max_size=3).map(
    lambda items: "[" + ", ".join(items) + "]"
)


@st.composite
def multiline_array(draw: st.DrawFn) -> str:
    lines = ["["]
    for _ in range(draw(st.integers(0, 4))):
        item = draw(st.one_of(scalars, one_line_arrays, multiline_string(), inline_tables))
        comment = draw(st.sampled_from(["", "  # ] [", ' # """', "  # [workers.x]"]))
        lines.append(draw(spaces) + item + "," + comment)
        if draw(st.booleans()):
            lines.append(draw(st.sampled_from(["# [workers.comment]", "", "  # ]"])))
    lines.append(draw(spaces) + "]")
    return "\n".join(lines)


values = st.one_of(scalars, inline_tables, one_line_arrays, multiline_string(), multiline_array())


@st.composite
def table_body(draw: st.DrawFn, counter: list[int]) -> list[str]:
    lines = []
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.integers(0, 4))
        counter[0] += 1
        if kind == 0:
            lines.append(draw(st.sampled_from(["", "# [workers.in_comment]", "  # ]]", "#"])))
        elif kind == 1:  # a dotted key: defines a table without a header
            lines.append(f"val_{counter[0]}.sub = {draw(scalars)}")
        else:
            comment = draw(st.sampled_from(["", " # [x]", ' # """']))
            lines.append(f"val_{counter[0]}{draw(spaces)}={draw(spaces)}{draw(values)}{comment}")
    return lines


@dataclass
class Doc:
    text: str
    headers: list[tuple[tuple[str, ...], bool, int]]  # (path, is_array, 1-based line)


@st.composite
def documents(draw: st.DrawFn) -> Doc:
    names = draw(st.lists(table_names, min_size=0, max_size=4, unique=True))
    plan: list[tuple[tuple[str, ...], bool]] = [(("master",), False)]
    for name in names:
        plan.append((("workers", name), False))
        if draw(st.booleans()):
            plan.append((("workers", name, "buildbot"), False))
            if draw(st.booleans()):
                plan.append((("workers", name, "buildbot", "env"), False))
        for _ in range(draw(st.integers(0, 2))):
            plan.append((("workers", name, "buildbot", "locks"), True))
    for _ in range(draw(st.integers(0, 2))):
        plan.append((("extra",), True))
    if draw(st.booleans()):
        plan = draw(st.permutations(plan))
    counter = [0]
    chunks: list[str] = ["version = 2", *draw(table_body(counter))]
    header_chunks = []
    for path, is_array in plan:
        header_chunks.append((len(chunks), path, is_array))
        chunks.append(draw(headers(path, is_array)))
        chunks.extend(draw(table_body(counter)))
    text = "\n".join(chunks) + draw(st.sampled_from(["", "\n", "\n\n# end\n"]))
    expected = []
    for index, path, is_array in header_chunks:
        line = 1 + sum(chunk.count("\n") + 1 for chunk in chunks[:index])
        expected.append((path, is_array, line))
    return Doc(text, expected)


def tomllib_tables(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Paths of every table tomllib reports, except values of the generated ``val_`` keys."""
    out = set()
    for key, value in data.items():
        if key.startswith("val_"):
            continue
        path = (*prefix, key)
        if isinstance(value, dict):
            out.add(path)
            out |= tomllib_tables(value, path)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            out.add(path)
            for item in value:
                out |= tomllib_tables(item, path)
    return out


def check_scan(text: str, doc: Doc) -> None:
    data = tomllib.loads(text)  # the generator makes valid TOML
    found = scan_headers(text)
    assert [(h.path, h.is_array, h.line) for h in found] == doc.headers
    for h in found:
        assert h.offset == 0 or text[h.offset - 1] == "\n"
        assert text[h.offset :].lstrip(" \t").startswith("[")
    # and against tomllib: headers and the tables they imply are all the tables there are
    implied = {h.path[:i] for h in found for i in range(1, len(h.path) + 1)}
    assert implied == tomllib_tables(data)


# (not @pytest.mark.parametrize: pytest-twisted re-wraps a @given test once per
# parametrization and the second one then fails inside its own greenlet)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=documents())
def test_scan_headers_finds_exactly_the_real_headers(doc: Doc) -> None:
    check_scan(doc.text, doc)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=documents())
def test_scan_headers_finds_exactly_the_real_headers_crlf(doc: Doc) -> None:
    check_scan(doc.text.replace("\n", "\r\n"), doc)
