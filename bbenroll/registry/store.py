"""``workers.toml`` on disk: fast checked reads, safe in-place edits.

Reads use the standard library's ``tomllib`` only. Edits hold an exclusive
lock, re-read the file, and rewrite only the tables of the workers that
changed (with tomlkit, so comments and layout inside them survive); every
other byte of the file is carried over untouched. The new text is checked
before it replaces the old one, atomically.
"""

from __future__ import annotations

import contextlib
import os
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bbenroll.errors import BBEnrollError, IdentityError, RegistryError, WorkerExists, WorkerNotFound
from bbenroll.fileio import atomic_write, exclusive_lock, permission_problem
from bbenroll.identity import load_identity
from bbenroll.registry import DEFAULT_REGISTRY, ENV_REGISTRY, schema
from bbenroll.registry.model import Registry, Worker
from bbenroll.registry.schema import Problems


@dataclass
class LoadedRegistry:
    path: Path
    registry: Registry
    text: str
    warnings: list[str] = field(default_factory=list)

    @property
    def identity_path(self) -> Path:
        return identity_path(self.path, self.registry.master.identity)

    def worker(self, name: str) -> Worker:
        try:
            return self.registry.workers[name]
        except KeyError:
            raise WorkerNotFound(f"{self.path}: no worker named {name!r}") from None


def identity_path(registry_path: Path, identity: str) -> Path:
    return Path(registry_path).parent / os.path.expanduser(identity)


def default_path() -> Path:
    return Path(os.environ.get(ENV_REGISTRY) or DEFAULT_REGISTRY)


def read_text(path: Path) -> str:
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise RegistryError(
            str(path), "not found (create one with 'bbenroll init', or point --registry at it)"
        ) from None
    except IsADirectoryError:
        raise RegistryError(str(path), "is a directory, not a registry file") from None
    except OSError as e:
        raise RegistryError(str(path), f"cannot read: {e.strerror}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise RegistryError(f"{path}:{line}", "not valid UTF-8") from None


_POSITION_RE = re.compile(r"^(.*) \(at line (\d+), column (\d+)\)$", re.S)
_EOF_RE = re.compile(r"^(.*) \(at end of document\)$", re.S)


def parse_text(text: str, where: str) -> dict[str, Any]:
    """``tomllib.loads`` with errors that say ``file:line:column``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message = getattr(e, "msg", None) or str(e)
        lineno, colno = getattr(e, "lineno", None), getattr(e, "colno", None)
        mo = _POSITION_RE.match(str(e))
        if mo:
            message, lineno, colno = mo.group(1), int(mo.group(2)), int(mo.group(3))
        else:
            mo = _EOF_RE.match(str(e))
            if mo:
                message = mo.group(1)
                lineno = text.count("\n") + 1
        place = f"{where}:{lineno}:{colno}" if lineno and colno else where
        raise RegistryError(place, f"invalid TOML: {message}") from None


def locate(text: str, key: str) -> int | None:
    """The line of the table that holds ``key`` (for error messages only)."""
    from bbenroll.registry.tomlscan import ScanError, scan_headers

    try:
        headers = scan_headers(text)
    except ScanError:
        return None
    best = None
    for header in headers:
        dotted = schema.key_path(*header.path)
        if key == dotted or key.startswith(dotted + ".") or key.startswith(dotted + "["):
            if best is None or len(header.path) > len(best.path):
                best = header
    return best.line if best else None


def problem_messages(path: Path, text: str, problems: Problems) -> list[str]:
    out = []
    for key, message in problems.items:
        line = locate(text, key)
        where = f"{path}:{line}" if line else str(path)
        out.append(f"{where}: {key}: {message}")
    return out


def registry_from_text(path: Path, text: str) -> Registry:
    data = parse_text(text, str(path))
    problems = Problems()
    registry = schema.registry_from_data(data, problems)
    if registry is None:
        messages = problem_messages(path, text, problems)
        more = f" (and {len(messages) - 1} more problems: run 'bbenroll check')" if len(messages) > 1 else ""
        where, _, message = messages[0].partition(": ")
        raise RegistryError(where, message + more)
    return registry


def check_identity(path: Path, registry: Registry) -> None:
    ident_path = identity_path(path, registry.master.identity)
    try:
        identity = load_identity(ident_path)
    except IdentityError as e:
        raise RegistryError(f"{path}", f"master.identity: {e}") from None
    if identity.tubid != registry.master.tubid:
        raise RegistryError(
            str(path),
            f"master.tubid {registry.master.tubid} does not match the identity {ident_path} "
            f"(its tubid is {identity.tubid}); was the identity file replaced?",
        )


def load(path: Path | None = None) -> LoadedRegistry:
    """Read and check the registry and its identity. Raises RegistryError."""
    path = Path(path) if path is not None else default_path()
    text = read_text(path)
    registry = registry_from_text(path, text)
    check_identity(path, registry)
    warnings = [
        problem
        for problem in (
            permission_problem(path),
            permission_problem(identity_path(path, registry.master.identity)),
        )
        if problem
    ]
    return LoadedRegistry(path, registry, text, warnings)


def check(path: Path) -> list[str]:
    """Every problem with the registry and its identity, one message each."""
    try:
        text = read_text(path)
        data = parse_text(text, str(path))
    except RegistryError as e:
        return [str(e)]
    problems = Problems()
    registry = schema.registry_from_data(data, problems)
    if registry is not None:
        for worker in registry.workers.values():
            schema.check_buildbot_options(
                dict(worker.buildbot), f"workers.{schema.key_path(worker.name)}.buildbot", problems
            )
    messages = problem_messages(path, text, problems)
    master = data.get("master")
    if isinstance(master, dict) and isinstance(master.get("identity"), str) and master["identity"]:
        ident_path = identity_path(path, master["identity"])
        try:
            identity = load_identity(ident_path)
        except IdentityError as e:
            messages.append(str(e))
        else:
            tubid = master.get("tubid")
            if isinstance(tubid, str) and tubid != identity.tubid:
                messages.append(
                    f"{path}: master.tubid {tubid} does not match the identity {ident_path} "
                    f"(its tubid is {identity.tubid})"
                )
            perm = permission_problem(ident_path)
            if perm:
                messages.append(perm)
    perm = permission_problem(path)
    if perm:
        messages.append(perm)
    return messages


# --- creating ---------------------------------------------------------------


REGISTRY_TEMPLATE = """\
# bbenroll registry: this master's identity and every worker's enrollment.
# Edit it with the bbenroll CLI; comments and layout you add are kept.
# Schema: docs/registry.md. Keep this file private (mode 0600): it holds secrets.
version = 1

[master]
# TLS key and certificate of this master, relative to this file (mode 0600).
identity = {identity}
# Derived from the identity and checked on every load; every FURL pins it.
tubid = {tubid}
# Connection hints written into every FURL: how workers reach this master.
location = {location}
# Where the master's Foolscap service listens (a Twisted server endpoint).
listen = {listen}
# The master's own PB port: loopback only, workers arrive through the tunnel.
pb = {pb}

# One [workers.NAME] table per worker, added by 'bbenroll add'.
"""


def create(
    path: Path,
    *,
    location: list[str],
    listen: str,
    pb: str,
    identity: str,
) -> LoadedRegistry:
    """Write a new registry and a new master identity; refuses to replace either."""
    import tomlkit

    from bbenroll.endpoints import check_listen_endpoint, check_loopback_endpoint
    from bbenroll.errors import FurlError
    from bbenroll.furl import check_hint
    from bbenroll.identity import create_identity

    path = Path(path)
    for hint in location:
        try:
            check_hint(hint)
        except FurlError as e:
            raise RegistryError("--location", str(e)) from None
    for option, value, check_endpoint in (
        ("--listen", listen, check_listen_endpoint),
        ("--pb", pb, check_loopback_endpoint),
    ):
        try:
            check_endpoint(value)
        except BBEnrollError as e:
            raise RegistryError(option, str(e)) from None
    if path.exists():
        raise RegistryError(str(path), "already exists; refusing to overwrite a registry")
    if not path.parent.is_dir():
        raise RegistryError(str(path), f"directory {path.parent} does not exist")
    ident_path = identity_path(path, identity)
    if ident_path.exists():
        raise RegistryError(str(ident_path), "already exists; refusing to overwrite a master identity")
    ident = create_identity(ident_path)

    def toml(value: Any) -> str:
        return tomlkit.item(value).as_string()

    text = REGISTRY_TEMPLATE.format(
        identity=toml(identity),
        tubid=toml(ident.tubid),
        location=toml(list(location)),
        listen=toml(listen),
        pb=toml(pb),
    )
    registry = registry_from_text(path, text)  # never write what we could not read back
    try:
        atomic_write(path, text.encode("utf-8"), exclusive=True)
    except BaseException as e:
        ident_path.unlink()
        if isinstance(e, FileExistsError):
            raise RegistryError(str(path), "already exists; refusing to overwrite a registry") from None
        if isinstance(e, OSError):
            raise RegistryError(str(path), f"cannot write: {e.strerror}") from None
        raise
    return LoadedRegistry(path, registry, text)


# --- editing ----------------------------------------------------------------


def lock_path(path: Path) -> Path:
    return path.parent / f".{path.name}.lock"


class Editor:
    """Changes to one registry, applied to its text by :meth:`render`."""

    def __init__(self, loaded: LoadedRegistry) -> None:
        self.loaded = loaded
        self.path = loaded.path
        self.workers = dict(loaded.registry.workers)
        self._changed: dict[str, Worker | None] = {}  # None: removed
        self._added: list[str] = []

    @property
    def registry(self) -> Registry:
        return Registry(self.loaded.registry.master, self.workers, self.loaded.registry.version)

    def worker(self, name: str) -> Worker:
        try:
            return self.workers[name]
        except KeyError:
            raise WorkerNotFound(f"{self.path}: no worker named {name!r}") from None

    def add(self, worker: Worker) -> None:
        if worker.name in self.workers:
            raise WorkerExists(f"{self.path}: worker {worker.name!r} already exists")
        self.workers[worker.name] = worker
        self._added.append(worker.name)

    def update(self, worker: Worker) -> None:
        self.worker(worker.name)
        self.workers[worker.name] = worker
        if worker.name not in self._added:
            self._changed[worker.name] = worker

    def remove(self, name: str) -> None:
        self.worker(name)
        del self.workers[name]
        if name in self._added:
            self._added.remove(name)
        else:
            self._changed[name] = None

    @property
    def dirty(self) -> bool:
        return bool(self._changed or self._added)

    def render(self) -> str:
        """The new text of the registry, checked to read back as intended."""
        problems = Problems()
        schema.check_unique_secrets(self.workers.values(), problems)
        if problems:
            key, message = problems.items[0]
            raise RegistryError(str(self.path), f"{key}: {message}")
        from bbenroll.registry import tomledit

        text = self.loaded.text
        old = self.loaded.registry.workers
        try:
            # checks every table it cuts out or writes; the rest of the text is kept
            return tomledit.splice(text, old, self._changed, self._added, self.workers)
        except tomledit.Fallback:
            pass
        try:
            new_text = tomledit.rewrite_whole(text, old, self._changed, self._added, self.workers)
        except tomledit.LayoutError as e:
            raise RegistryError(str(self.path), f"cannot edit this layout: {e}; file unchanged") from None
        try:
            reads_back = registry_from_text(self.path, new_text) == self.registry
        except RegistryError as e:
            reads_back, why = False, f" ({e.message})"
        else:
            why = ""
        if not reads_back:
            message = f"the edited text would not read back as intended{why}; file unchanged"
            raise RegistryError(str(self.path), f"cannot edit this layout: {message}")
        return new_text

    def save(self) -> None:
        if not self.dirty:
            return
        text = self.render()
        try:
            atomic_write(self.path, text.encode("utf-8"))
        except OSError as e:
            raise RegistryError(str(self.path), f"cannot write: {e.strerror}") from None


@contextlib.contextmanager
def edit(path: Path | None = None, timeout: float = 30.0) -> Iterator[Editor]:
    """Lock, load, let the caller change things, save atomically if it returns."""
    path = Path(path) if path is not None else default_path()
    if not path.exists():
        read_text(path)  # raises the friendly "not found"
    with exclusive_lock(lock_path(path), timeout=timeout, owned_like=path):
        editor = Editor(load(path))
        yield editor
        editor.save()
