"""``bbenroll worker migrate BASEDIR FURL``: a stock buildbot-worker basedir onto its FURL.

In place: builder directories, ``info/``, logs and every setting of the tac (umask,
maxdelay, numcpus, keepalive, allow_shutdown, maxretries, delete_leftover_dirs, log
rotation, anything the admin added) stay as they are. The tac is edited, not
regenerated: only the values of its top-level assignments that must change are
replaced (``connection_string``; ``buildmaster_host`` and ``port`` become None, as
buildbot-worker requires beside a connection string; ``passwd`` only if the master's
differs; ``proxy_connection_string`` only if set, which a connection string excludes),
and the new text is compiled and its assignments read back: equal to the old ones
except for those.

All or nothing (:func:`write_migration`): the new files are written, the old tac is
renamed to ``buildbot.tac.pre-bbenroll`` (the same file, made 0600: it holds the
password), the new tac written, and last the FURL is bound to the worker's key; any
failure puts back exactly what was there.
"""

from __future__ import annotations

import ast
import contextlib
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bbenroll.errors import BBEnrollError
from bbenroll.fileio import atomic_write
from bbenroll.furl import parse_furl
from bbenroll.tunnel.core import RESUME_DEADLINE_DEFAULT
from bbenroll.tunnel.furlfile import furl_file_text
from bbenroll.worker import setup

TAC = "buildbot.tac"
BACKUP = "buildbot.tac.pre-bbenroll"
ASIDE = ".buildbot.tac.bbenroll-migrating"
FURL_ASIDE = ".bbenroll.furl.bbenroll-migrating"
PID_FILE = "twistd.pid"
REQUIRED = ("workername", "passwd", "buildmaster_host", "port", "connection_string")
STEPS = ("furl", "key", "tac", "bind")  # what write_migration does, in order


class MigrateError(BBEnrollError):
    pass


# --- the tac ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Tac:
    """A buildbot.tac as far as migrate reads it: its top-level assignments.

    ``values``: each top-level ``NAME = literal`` (the literal's value); ``others``: the
    source of every other top-level assignment (compared, never changed); ``spans``: where
    each literal's value is in the text, to replace it."""

    text: str
    values: Mapping[str, Any]
    others: Mapping[str, str]
    spans: Mapping[str, tuple[int, int]]

    @property
    def migrated(self) -> bool:
        cs = self.values.get("connection_string")
        return isinstance(cs, str) and cs.startswith("bbenroll:")


def read_tac(text: str, where: str = TAC) -> Tac:
    """Read a buildbot-worker tac; MigrateError (one line) for one migrate cannot understand."""
    try:
        tree = ast.parse(text, where)
    except SyntaxError as e:
        raise MigrateError(f"{where}:{e.lineno}: cannot understand this tac: {e.msg}") from None
    offsets = _line_offsets(text)
    values: dict[str, Any] = {}
    others: dict[str, str] = {}
    spans: dict[str, tuple[int, int]] = {}
    counts: dict[str, int] = {}
    for node in tree.body:
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            continue
        if not isinstance(node.targets[0], ast.Name):
            continue
        name = node.targets[0].id
        counts[name] = counts.get(name, 0) + 1
        value = node.value
        try:
            values[name] = ast.literal_eval(value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            values.pop(name, None)
            others[name] = ast.get_source_segment(text, value) or ""
            continue
        assert value.end_lineno is not None and value.end_col_offset is not None
        first, last = offsets[value.lineno - 1], offsets[value.end_lineno - 1]
        spans[name] = (first + _char_col(text, first, value.col_offset),
                       last + _char_col(text, last, value.end_col_offset))
    for name in REQUIRED:
        if counts.get(name) != 1 or name not in values:
            how = "is not set" if name not in counts else (
                "is set more than once" if counts[name] > 1 else "is not a plain value")
            raise MigrateError(
                f"{where}: cannot understand this tac: {name} {how} (migrate edits the tac "
                "buildbot-worker create-worker writes; use 'bbenroll worker create' for a new basedir)"
            )
    if not _passes_connection_string(tree):
        raise MigrateError(
            f"{where}: cannot understand this tac: its Worker(...) is not given "
            "connection_string=connection_string (an older buildbot-worker's tac?)"
        )
    protocol = values.get("protocol", "pb")
    if protocol != "pb":
        raise MigrateError(f"{where}: protocol is {protocol!r}; bbenroll's tunnel carries PB only")
    return Tac(text, values, others, spans)


def _line_offsets(text: str) -> list[int]:
    offsets, at = [], 0
    for line in text.splitlines(keepends=True):
        offsets.append(at)
        at += len(line)
    offsets.append(at)
    return offsets


def _char_col(text: str, line_start: int, byte_col: int) -> int:
    """ast's columns count UTF-8 bytes: the character column on the line at ``line_start``."""
    end = text.find("\n", line_start)
    line = text[line_start: end if end >= 0 else len(text)]
    return len(line.encode("utf-8")[:byte_col].decode("utf-8", "ignore"))


def _passes_connection_string(tree: ast.Module) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if called == "Worker":
                return any(
                    k.arg == "connection_string" and isinstance(k.value, ast.Name)
                    and k.value.id == "connection_string"
                    for k in node.keywords
                )
    return False


def tac_changes(tac: Tac, connection: str, password: str) -> dict[str, Any]:
    """The assignments migrate must change, and their new values."""
    wanted: dict[str, Any] = {
        "connection_string": connection,
        "buildmaster_host": None,
        "port": None,
        "passwd": password,
    }
    if tac.values.get("proxy_connection_string") is not None:
        wanted["proxy_connection_string"] = None
    return {name: value for name, value in wanted.items() if tac.values.get(name) != value}


def rewrite_tac(tac: Tac, changes: Mapping[str, Any], where: str = TAC) -> str:
    """The tac's text with ``changes`` applied to its assignments, checked: it compiles, and
    its assignments read back equal to the old ones except ``changes``."""
    text = tac.text
    for name in sorted(changes, key=lambda n: tac.spans[n][0], reverse=True):
        start, end = tac.spans[name]
        text = text[:start] + repr(changes[name]) + text[end:]
    try:
        compile(text, where, "exec")
        new = read_tac(text, where)
    except (SyntaxError, MigrateError) as e:
        raise MigrateError(f"{where}: the edited tac does not read back: {e}") from None
    expected = {**tac.values, **changes}
    if dict(new.values) != expected or dict(new.others) != dict(tac.others):
        raise MigrateError(f"{where}: the edited tac does not read back as intended; nothing changed")
    return text


# --- the running worker -------------------------------------------------------------------


def running_pid(basedir: Path) -> int | None:
    """The pid of the worker running from ``basedir`` (twistd.pid naming a live process), or None."""
    try:
        pid = int((Path(basedir) / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid  # alive, another user's
    except OSError:
        return None
    return pid


# --- the writes, all or nothing -------------------------------------------------------------


def write_migration(
    basedir: Path,
    *,
    tac_text: str,
    furl: str,
    key: bytes,
    bind: Callable[[], Any],
    before_step: Callable[[str], None] | None = None,
) -> Any:
    """Write the migrated basedir; a Deferred firing with the master's bind answer.

    ``bind()``: the bind_key call (a Deferred), made once every file is in place, so that
    nothing can fail after the master bound the FURL to the key on disk. ``before_step(name)``
    is called before each of :data:`STEPS` (tests fail them one by one). Any failure
    restores the basedir exactly: the new files removed, a replaced FURL file and the old
    tac renamed back (their own inodes, mtimes and modes).
    """
    from twisted.internet import defer

    basedir = Path(basedir)
    step = before_step or (lambda name: None)
    tac, backup = basedir / TAC, basedir / BACKUP
    furl_file, key_file = basedir / setup.FURL_FILE, basedir / setup.KEY_FILE
    furl_aside = basedir / FURL_ASIDE
    undo: list[Callable[[], None]] = []
    cleanup: list[Path] = []

    def roll_back() -> None:
        for action in reversed(undo):
            with contextlib.suppress(OSError):
                action()

    try:
        step("furl")
        if furl_file.exists() or furl_file.is_symlink():  # a --force'd re-migration
            os.replace(furl_file, furl_aside)
            undo.append(lambda: os.replace(furl_aside, furl_file))
            cleanup.append(furl_aside)
        undo.append(lambda: furl_file.unlink(missing_ok=True))
        atomic_write(furl_file, furl_file_text(furl).encode("ascii"))
        step("key")
        if not key_file.exists():
            undo.append(lambda: key_file.unlink(missing_ok=True))
            atomic_write(key_file, key, exclusive=True)
        step("tac")
        # the old tac itself (inode, mtime) becomes the backup; after an earlier migration the
        # first backup, the stock tac, is kept and this one only set aside until the end
        kept = basedir / ASIDE if backup.exists() or backup.is_symlink() else backup
        mode = stat.S_IMODE(tac.stat().st_mode)
        os.replace(tac, kept)
        undo.append(lambda: os.replace(kept, tac))
        undo.append(lambda: os.chmod(kept, mode))
        os.chmod(kept, 0o600)  # it holds the password
        if kept != backup:
            cleanup.append(kept)
        undo.append(lambda: tac.unlink(missing_ok=True))
        atomic_write(tac, tac_text.encode("utf-8"))
        os.chmod(tac, 0o600)
        step("bind")
    except BaseException as e:
        roll_back()
        if isinstance(e, OSError):
            raise _write_error(e, basedir) from None
        raise

    def bound(answer: Any) -> Any:
        for path in cleanup:  # leftovers only: the migration is complete without this
            with contextlib.suppress(OSError):
                path.unlink()
        return answer

    def failed(failure: Any) -> Any:
        roll_back()
        return failure

    d = defer.maybeDeferred(bind)
    d.addCallbacks(bound, failed)
    return d


def _write_error(e: OSError, basedir: Path) -> MigrateError:
    return MigrateError(f"cannot write {e.filename or basedir}: {e.strerror}; nothing changed")


# --- the whole command ------------------------------------------------------------------------


def migrate_worker(
    basedir: Path,
    furl: str,
    *,
    reactor: Any,
    timeout: float = setup.DEFAULT_TIMEOUT,
    resume: int = RESUME_DEADLINE_DEFAULT,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
    before_step: Callable[[str], None] | None = None,
) -> Any:
    """Migrate ``basedir`` onto ``furl``; a Deferred firing with what was done (a dict).

    Everything local is checked before the master is contacted; the master's answer (the
    worker's name and password) is checked against the tac before anything is written.
    """
    from twisted.internet import defer

    tell = progress or (lambda text: None)
    try:
        parse_furl(furl)
        basedir = Path(basedir).absolute()
        tac = load_tac(basedir, force)
        key = setup.worker_key(basedir)
    except BBEnrollError:
        return defer.fail()
    furl_file, key_file = basedir / setup.FURL_FILE, basedir / setup.KEY_FILE
    result: dict[str, Any] = {}

    def got(config: dict[str, Any]) -> Any:
        name = tac.values["workername"]
        if config["name"] != name:
            raise MigrateError(
                f"this FURL is for worker {config['name']!r}, but {basedir / TAC} is worker {name!r}; "
                "nothing changed"
            )
        changes = tac_changes(tac, setup.connection_string(furl_file, resume, key_file), config["password"])
        text = rewrite_tac(tac, changes, str(basedir / TAC))
        tell(f"writing {basedir}")
        result.update(
            basedir=str(basedir),
            name=name,
            changed=sorted(changes),
            password_changed="passwd" in changes,
            backup=str(basedir / BACKUP),
            furl_file=str(furl_file),
            key_file=str(key_file),
        )
        def bind() -> Any:
            return setup.bind_worker_key(furl, reactor=reactor, timeout=timeout, progress=tell, key=key)

        return write_migration(basedir, tac_text=text, furl=furl, key=key, bind=bind, before_step=before_step)

    def done(bound: Any) -> dict[str, Any]:
        pid = running_pid(basedir)
        result.update(bound=bound, running=pid is not None, pid=pid)
        return result

    d = setup.fetch_worker_config(furl, reactor=reactor, timeout=timeout, progress=tell, key=key)
    d.addCallback(got)
    d.addCallback(done)
    return d


def load_tac(basedir: Path, force: bool) -> Tac:
    """The basedir's tac, checked for migrating (before the master is contacted)."""
    path = Path(basedir) / TAC
    if path.is_symlink():
        raise MigrateError(f"{path} is a symbolic link; refusing to write the worker's password to it")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MigrateError(
            f"{path} not found: not a buildbot-worker basedir (make a new one with 'bbenroll worker create')"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise MigrateError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    tac = read_tac(text, str(path))
    if tac.migrated and not force:
        raise MigrateError(f"{path} already connects through bbenroll; use --force to migrate it again")
    for stale in (ASIDE, FURL_ASIDE):
        if (Path(basedir) / stale).exists():
            raise MigrateError(
                f"{Path(basedir) / stale} exists (an interrupted migrate?): look at it, then remove it"
            )
    return tac
