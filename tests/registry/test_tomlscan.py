"""The text splicer: edits rewrite only the edited worker's table, byte for byte elsewhere.

Registries here are hand-written text (no identity file needed: ``Editor.render``
only turns text into text). Each fixture is a list of segments, each owned by a
worker or by nobody; an edit of worker W may change W's segments only.
"""

from __future__ import annotations

import copy
import json
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bbenroll.registry import model, schema, store
from bbenroll.registry.model import Worker
from bbenroll.registry.store import Editor, LoadedRegistry, registry_from_text
from bbenroll.registry.tomlscan import scan_headers

TUBID = "pw5oewkytqcf2pqdvhfhtrcgq2wsftzt"
NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
PATH = Path("workers.toml")


def secret(n: int) -> str:
    return "abcdefghijklmnopqrstuvwxyz234567"[n % 32] * 32


MASTER = f"""\
# Top of file: hand-written comment. [workers.not-a-header]
version = 1  # trailing comment

# about the master
[master]
identity = "master.pem"  # relative
tubid = "{TUBID}"
location = [
  "tcp:buildbot.example.org:9989",  # primary [the one]
  "tcp:10.0.0.1:9989",  # ]]
]
listen = "tcp:9989"
pb = "tcp:9990:interface=127.0.0.1"

"""


MASTER_HEAD, _, _rest = MASTER.partition("# about the master\n")
MASTER_TABLE = "# about the master\n" + _rest


def body(n: int, extra: str = "") -> str:
    return (
        f'swissnum = "{secret(n)}"  # the secret\n'
        f'password = "pw-{n}"\n'
        "created = 2026-11-29T06:00:00Z\n"
        "# hand-written, inside the table\n"
        "rotated = 2026-11-29T06:00:00Z\n"
        f"{extra}"
    )


@dataclass
class Layout:
    name: str
    segments: list[tuple[str | None, str]]  # (owning worker or None, text)
    fallback: bool = False  # the splice does not apply; only data and comments are checked

    @property
    def text(self) -> str:
        return "".join(text for _, text in self.segments)

    @property
    def workers(self) -> list[str]:
        return list(dict.fromkeys(owner for owner, _ in self.segments if owner))

    def outside(self, name: str) -> tuple[str, str]:
        """The text before and after worker ``name``'s own (contiguous) segments."""
        owned = [i for i, (owner, _) in enumerate(self.segments) if owner == name]
        assert owned == list(range(owned[0], owned[-1] + 1))
        before = "".join(text for _, text in self.segments[: owned[0]])
        after = "".join(text for _, text in self.segments[owned[-1] + 1 :])
        return before, after


def crlf(layout: Layout) -> Layout:
    return Layout(
        layout.name + "-crlf",
        [(owner, text.replace("\n", "\r\n")) for owner, text in layout.segments],
        layout.fallback,
    )


def no_final_newline(layout: Layout) -> Layout:
    segments = list(layout.segments)
    owner, text = segments[-1]
    assert text.endswith("\n")
    segments[-1] = (owner, text.rstrip("\n"))
    return Layout(layout.name + "-no-final-newline", segments, layout.fallback)


COMMENTS = Layout(
    "comments",
    [
        (None, MASTER + "# --- workers ---\n\n# alpha: the linux box\n"),
        (
            "alpha",
            "[workers.alpha]  # header comment [x]\n# first line of alpha\n"
            + body(1, 'tags = ["linux", "x86[64]"]\nnote = "rack 3 # not a comment"\n')
            + "\n",
        ),
        (None, "# beta: next\n"),
        ("beta", "[workers.beta]\n" + body(2, "expires = 2027-01-01T00:00:00Z\n")),
        (None, "# trailing comment of beta, kept\n\n# gamma\n"),
        ("gamma", "  [ workers . gamma ]   # spaced header\n" + body(3) + "\n"),
        (None, "# end of file comment\n"),
    ],
)

STRINGS = Layout(
    "strings",
    [
        (None, MASTER),
        (
            "alpha",
            "[workers.alpha]\n"
            + body(
                1,
                'note = """\n[workers.fake]\n  [[workers.fake]]  # looks like a header\n'
                '\'\'\'\n\\""" still the note\n[master]\n"""\n'
                "tags = [\n"
                '  "a[",   # comment with [ and "\n'
                "  '''[b]''',\n"
                '  "]",\n'
                '  """c\n[workers.fake3]\n]""",\n'
                "]\n",
            )
            + "\n",
        ),
        (
            "beta",
            "[workers.beta]\n"
            + body(2, "note = '''\n[[workers.fake4]]\n\"\"\"\n# not a comment\n'''\n")
            + "\n",
        ),
        ("gamma", "[workers.gamma]\n" + body(3, 'note = """ends with quotes"""""\n')),
    ],
)

QUOTED = Layout(
    "quoted",
    [
        (None, MASTER + "# workers with names that need quotes\n"),
        ("wörker-1", '[workers."wörker-1"]\n' + body(1, 'tags = ["ü"]\n') + "\n"),
        (
            "ç-2",
            "[workers.'ç-2']\n"
            + body(2)
            + "# Buildbot options of ç-2, hand-written\n"
            + "[workers.'ç-2'.buildbot]\n"
            + 'max_builds = 2\nproperties = { os = "linux", "[x]" = "y" }\n\n'
            + '[workers . "ç-2" . buildbot . env]\nPATH = "/usr/bin"\n\n',
        ),
        (None, "# another\n"),
        (
            "plain",
            "[workers.plain]\n"
            + body(
                3,
                'previous = {swissnum = "' + secret(9) + '", until = 2026-12-08T00:00:00Z}\n',
            )
            + "\n",
        ),
    ],
)

# Buildbot options holding an array of tables
ARRAY_SUBTABLE = Layout(
    "array-subtable",
    [
        (None, MASTER),
        (
            "alpha",
            "[workers.alpha]\n"
            + body(1)
            + '[[workers.alpha.buildbot.locks]]\nname = "one"\n'
            + '[[workers.alpha.buildbot.locks]]\nname = "two"\n\n',
        ),
        ("beta", "[workers.beta]\n" + body(2)),
    ],
)

# A hand-written multi-line string whose closing line starts with '#'.
HASH_LINE_STRING = Layout(
    "hash-line-string",
    [
        (None, MASTER),
        ("alpha", "[workers.alpha]\n" + body(1, "note = '''build notes:\n# run make'''\n") + "\n"),
        ("beta", "[workers.beta]\n" + body(2)),
    ],
)

SPLICE_LAYOUTS = [
    COMMENTS,
    STRINGS,
    QUOTED,
    ARRAY_SUBTABLE,
    HASH_LINE_STRING,
    no_final_newline(COMMENTS),
    no_final_newline(STRINGS),
    no_final_newline(QUOTED),
    crlf(COMMENTS),
    crlf(QUOTED),
]

FALLBACK_LAYOUTS = [
    Layout(
        "inline-workers",
        [
            (None, MASTER_HEAD + "# workers as one inline table, before [master]\n"),
            (
                "alpha",
                "workers = { alpha = { "
                + f'swissnum = "{secret(1)}", password = "p", created = 2026-11-29T06:00:00Z, '
                + "rotated = 2026-11-29T06:00:00Z }, beta = { "
                + f'swissnum = "{secret(2)}", password = "q", created = 2026-11-29T06:00:00Z, '
                + "rotated = 2026-11-29T06:00:00Z } }\n",
            ),
            (None, "# after the inline table\n\n" + MASTER_TABLE),
        ],
        fallback=True,
    ),
    Layout(
        "separated-subtable",
        [
            (None, MASTER + "# alpha\n"),
            ("alpha", "[workers.alpha]\n" + body(1) + "\n"),
            (None, "# beta\n"),
            ("beta", "[workers.beta]\n" + body(2) + "\n"),
            (None, "# alpha's options, far from alpha\n"),
            ("alpha.buildbot", "[workers.alpha.buildbot]\nmax_builds = 1\n"),
            (None, "# end\n"),
        ],
        fallback=True,
    ),
    Layout(
        "workers-header-dotted-keys",
        [
            (None, MASTER + "# all workers below\n[workers]\n# gamma as dotted keys\n"),
            (
                "gamma",
                f'gamma.swissnum = "{secret(3)}"\ngamma.password = "g"\n'
                "gamma.created = 2026-11-29T06:00:00Z\ngamma.rotated = 2026-11-29T06:00:00Z\n\n",
            ),
            (None, "# alpha as a table\n"),
            ("alpha", "[workers.alpha]\n" + body(1)),
        ],
        fallback=True,
    ),
]


def editor_for(text: str) -> Editor:
    return Editor(LoadedRegistry(PATH, registry_from_text(PATH, text), text))


def apply(text: str, op: str, name: str) -> tuple[str, Worker | None]:
    """Edit ``text`` through the real Editor; returns the new text and the edited worker."""
    editor = editor_for(text)
    if op == "add":
        worker = model.new_worker(name, NOW, tags=["new", 'q"uote'], note="line 1\n[workers.x]\n# 2")
        editor.add(worker)
    elif op == "rotate":
        worker = model.rotate(editor.worker(name), NOW, timedelta(days=7))
        editor.update(worker)
    elif op == "revoke":
        worker = model.revoke(editor.worker(name), NOW, 'lost "laptop" [#3]\nsecond line')
        editor.update(worker)
    else:
        worker = None
        editor.remove(name)
    assert editor.dirty
    return editor.render(), worker


def expected_data(text: str, name: str, worker: Worker | None) -> dict[str, Any]:
    data = copy.deepcopy(tomllib.loads(text))
    if worker is None:
        del data["workers"][name]
    else:
        data.setdefault("workers", {})[name] = schema.worker_to_data(worker)
    return data


def comment_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("#")]


def cases(layouts: list[Layout]) -> list[Any]:
    out = []
    for layout in layouts:
        for name in layout.workers:
            if "." in name:
                continue  # a sub-table placed away from its worker, not a worker
            for op in ("rotate", "revoke", "remove"):
                out.append(pytest.param(layout, op, name, id=f"{layout.name}-{op}-{name}"))
        out.append(pytest.param(layout, "add", "new-wörker", id=f"{layout.name}-add"))
    return out


def test_layouts_are_valid_registries() -> None:
    for layout in SPLICE_LAYOUTS + FALLBACK_LAYOUTS:
        workers = registry_from_text(PATH, layout.text).workers
        owners = {n for n in layout.workers if "." not in n}
        # (one segment may hold several workers when the layout allows no finer split)
        assert owners <= set(workers) and len(workers) >= 2, layout.name


@pytest.mark.parametrize("layout,op,name", cases(SPLICE_LAYOUTS))
def test_splice_touches_only_the_edited_table(layout: Layout, op: str, name: str) -> None:
    old = layout.text
    new, worker = apply(old, op, name)
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
    new, worker = apply(old, op, name)
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
        new, _ = apply(old, op, name)
        assert "\n" not in new.replace("\r\n", ""), f"{op}: bare LF line endings in a CRLF file"


def test_edit_on_disk_keeps_layout(tmp_path: Path) -> None:
    """Through store.edit on a real registry: the file's other bytes are carried over."""
    path = tmp_path / "workers.toml"
    created = store.create(
        path,
        location=["tcp:buildbot.example.org:9989"],
        listen="tcp:9989",
        pb="tcp:1:interface=127.0.0.1",
        identity="master.pem",
    )
    tubid = created.registry.master.tubid
    path.write_bytes(COMMENTS.text.replace(TUBID, tubid).encode())
    with store.edit(path) as editor:
        editor.update(model.rotate(editor.worker("beta"), NOW))
    new = path.read_text(encoding="utf-8")
    before, after = COMMENTS.outside("beta")
    assert new.startswith(before.replace(TUBID, tubid))
    assert new.endswith(after)
    loaded = store.load(path)
    assert loaded.registry.workers["beta"].rotated == NOW
    assert loaded.registry.workers["alpha"] == registry_from_text(PATH, COMMENTS.text).workers["alpha"]


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
    chunks: list[str] = ["version = 1", *draw(table_body(counter))]
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
