"""bbenroll edit: the registry in $VISUAL/$EDITOR, saved only if it is valid (like visudo).

The registry's lock is held for the whole session, so neither another
``bbenroll`` nor the running master can write in between and have its change
lost when the edited copy replaces the file. The copy lives in the
registry's own directory so that a relative ``identity`` resolves as it will
in the real file, and it is private (0600): it holds every secret.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from bbenroll.cli.app import App
from bbenroll.cli.check import plural
from bbenroll.cli.output import Output, Result
from bbenroll.cli.params import output_options
from bbenroll.errors import BBEnrollError

DEFAULT_EDITOR = "vi"
LOCK_TIMEOUT = 30.0


class EditFailed(BBEnrollError):
    pass


def editor_command() -> list[str]:
    """``$VISUAL``, else ``$EDITOR``, else vi; split like a shell would (``code --wait``)."""
    spec = os.environ.get("VISUAL") or os.environ.get("EDITOR") or DEFAULT_EDITOR
    try:
        words = shlex.split(spec)
    except ValueError as e:
        raise EditFailed(f"cannot read the editor command {spec!r}: {e}") from None
    if not words:
        raise EditFailed("the editor command ($VISUAL / $EDITOR) is empty")
    return words


@contextlib.contextmanager
def private_copy(real: Path, data: bytes) -> Iterator[Path]:
    """A 0600 copy of ``data`` next to ``real``; always removed afterwards."""
    fd, name = tempfile.mkstemp(prefix=f".{real.name}.edit-", suffix=".toml", dir=real.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield Path(name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def run_editor(command: list[str], path: Path) -> None:
    try:
        status = subprocess.run([*command, str(path)], check=False).returncode
    except OSError as e:
        raise EditFailed(f"cannot run the editor {command[0]!r}: {e.strerror}; registry unchanged") from None
    if status != 0:
        raise EditFailed(f"the editor {command[0]!r} exited with status {status}; registry unchanged")


def summary(changes: list[Any] | None) -> dict[str, Any]:
    """What an edit changed, from its audit records: workers added, removed and changed,
    and whether the master's settings changed (None: the old file did not load)."""
    if changes is None:
        return {"added": [], "removed": [], "changed": [], "master": None}
    named = [c for c in changes if c.worker is not None]
    return {
        "added": [c.worker for c in named if c.action == "added"],
        "removed": [c.worker for c in named if c.action == "removed"],
        "changed": [c.worker for c in named if c.action not in ("added", "removed")],
        "master": any(c.action in ("master-changed", "location-changed") for c in changes),
    }


def describe(diff: dict[str, Any]) -> str:
    parts = [
        f"{label} {', '.join(repr(n) for n in diff[key])}"
        for key, label in (("added", "added"), ("removed", "removed"), ("changed", "changed"))
        if diff[key]
    ]
    if diff["master"]:
        parts.append("changed the master settings")
    if diff["master"] is None:
        return "saved (the registry did not load before this edit)"
    return "saved: " + ("; ".join(parts) if parts else "layout or comments only")


def interactive() -> bool:
    """Someone at a terminal who can answer "edit again?"."""
    return sys.stdin.isatty() and sys.stderr.isatty()


@click.command("edit")
@output_options
@click.pass_obj
def command(app: App) -> Result:
    """Edit the registry in $VISUAL/$EDITOR with the lock held; saved only if valid."""
    from bbenroll.fileio import exclusive_lock
    from bbenroll.registry import store

    path = Path(app.registry_path)
    store.read_text(path)  # the friendly "not found" before anything else
    real = store.real_path(path)
    editor = editor_command()
    with exclusive_lock(store.lock_path(real), timeout=LOCK_TIMEOUT, owned_like=real):
        original = real.read_bytes()  # under the lock: what nobody can change until we are done
        with private_copy(real, original) as copy:
            while True:
                run_editor(editor, copy)
                edited = copy.read_bytes()
                if edited == original:
                    document = {"registry": str(path), "saved": False}
                    return Result(document, lambda out: out.info("no changes; registry untouched"))
                # exactly the checks of 'bbenroll check', on the copy, as if it were the registry
                inspection = store.inspect(path, strict=True, real=copy)
                if not inspection.problems:
                    break
                for problem in inspection.problems:
                    app.out.error(str(problem))
                if not interactive() or app.out.json_mode:
                    found = plural(len(inspection.problems), "problem")
                    raise EditFailed(f"{path}: {found}; registry unchanged")
                if not click.confirm("edit again?", default=True, err=True):
                    raise EditFailed(f"{path}: not saved; registry unchanged")
            try:  # audited like every other edit; the [audit] table is put back as it must be
                recorded = store.replace_text(path, real, edited.decode("utf-8"), now=app.now())
            except store.RegistryError as e:
                raise EditFailed(f"{e}; registry unchanged") from None
    diff = summary(recorded)
    document = {"registry": str(path), "saved": True, **diff}

    def show(out: Output) -> None:
        out.info(f"{path}: {describe(diff)}")

    return Result(document, show)
