"""Registries written as text, for the tests of tomlscan and tomledit.

Each layout is a list of segments, each owned by a worker or by nobody; an
edit of worker W may change W's segments only. No identity file is needed to
edit text (``Editor.render`` only turns text into text); :func:`on_disk`
makes a real registry when one is.
"""

from __future__ import annotations

import copy
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bbenroll.registry import model, schema, store
from bbenroll.registry.model import Worker
from bbenroll.registry.store import Editor, LoadedRegistry, registry_from_text

TUBID = "pw5oewkytqcf2pqdvhfhtrcgq2wsftzt"
NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
PATH = Path("workers.toml")


def secret(n: int) -> str:
    return "abcdefghijklmnopqrstuvwxyz234567"[n % 32] * 32


MASTER = f"""\
# Top of file: hand-written comment. [workers.not-a-header]
version = 2  # trailing comment

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


def edit_text(text: str, op: str, name: str) -> tuple[str, Worker | None]:
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


def on_disk(tmp_path: Path, text: str) -> Path:
    """A real registry (with its identity) in ``tmp_path`` holding ``text`` (its tubid swapped in)."""
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
