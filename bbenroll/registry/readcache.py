"""A cache of the checked registry, so that reads skip the ``tomllib`` parse.

Parsing ``workers.toml`` and building its model is most of what a read
costs (about 160 ms of a 5,000-worker ``list --json``). The file itself stays
the only source of truth: this cache holds nothing that the file does not say,
it is used only when it was made from exactly the bytes the reader has just
read, and removing it changes nothing but speed.

- **Where:** ``.NAME.cache`` beside the real registry file (like its lock), mode
  0600, written by :func:`~bbenroll.fileio.atomic_write`, so a reader sees the
  old cache or the new one, never half of one. Not fsync'd (two fsyncs cost
  10-50 ms here): the file starts with the SHA-256 of the rest, so what a
  crash may leave behind is a miss.
- **What:** the :class:`~bbenroll.registry.model.Registry` and the ``[audit]``
  head that :func:`bbenroll.registry.store.inspect` built from the text, pickled.
  Only registries without a problem are cached; the checks that depend on other
  files (the identity, permissions) run on every read.
- **When it is used:** its key must match the file just read: the stat
  signature (device, inode, size, ``mtime_ns``, ``ctime_ns``) *and* the SHA-256
  of the bytes. The signature alone is not enough: file system timestamps come
  from a coarse clock, so two same-size writes within one tick can leave all of
  it equal (and ``touch`` can restore an mtime). The digest of the bytes read
  makes a stale answer impossible, for about 1 ms per MB. The key also holds
  :data:`CACHE_FORMAT`, the Python version and the stat of the modules whose
  classes are pickled, so a changed model never meets an old pickle.
- **Whose:** a cache is read only if it is a regular file owned by the
  effective user and not accessible by group or others, and it is unpickled with
  an allow-list of classes (the registry's dataclasses and ``datetime``'s), so
  the cache can never run code. A cache is written only by the registry file's
  owner (root reading the buildbot user's registry does not leave a root-owned
  file beside it).

Every failure here (no permission, a full disk, a corrupt file) is a cache
miss, never an error: the caller then parses the file as if there were none.
Standard library only; ``pickle`` is imported only when a cache is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
import sys
from dataclasses import dataclass, is_dataclass
from pathlib import Path
from typing import Any

from bbenroll.fileio import NOFOLLOW, atomic_write

# bump when the pickled tuple's layout changes
CACHE_FORMAT = 1
# the file: MAGIC, the SHA-256 of the payload, the payload (the pickle)
MAGIC = b"bbenroll-registry-cache\n"
_HEADER = len(MAGIC) + 32
# a cache larger than this is not read (a registry of 5,000 workers pickles to about 1.1 MB)
MAX_CACHE_BYTES = 256 * 1024 * 1024
# the modules whose classes a cache may hold: their dataclasses, and datetime's value types
_MODEL_MODULES = (
    "bbenroll.registry.model",
    "bbenroll.registry.invites",
    "bbenroll.registry.audit",
)
_STDLIB_CLASSES = {"datetime": frozenset({"datetime", "date", "timedelta", "timezone"})}


def cache_path(real: Path) -> Path:
    """Where the cache of the registry file ``real`` (symlinks resolved) lives."""
    return real.parent / f".{real.name}.cache"


@dataclass(frozen=True)
class Key:
    """What a cache entry must match to be used: the file's identity, its bytes, the code."""

    signature: tuple[int, int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns
    digest: bytes  # SHA-256 of the bytes read
    code: tuple[Any, ...]  # CACHE_FORMAT, Python version, the model modules' stat

    def as_tuple(self) -> tuple[Any, ...]:
        """As stored: plain values, so the unpickler needs no class of this module."""
        return (self.signature, self.digest, self.code)


def signature(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _code_key() -> tuple[Any, ...]:
    """The code that made the pickle: an edited (or upgraded) model module changes it."""
    parts: list[Any] = [CACHE_FORMAT, sys.version_info[:3]]
    for name in _MODEL_MODULES:
        module = sys.modules.get(name)
        file = getattr(module, "__file__", None)
        if file is None:
            parts.append((name, None))
            continue
        try:
            st = os.stat(file)
        except OSError:
            parts.append((name, None))
        else:
            parts.append((name, st.st_size, st.st_mtime_ns))
    return tuple(parts)


def key_of(st: os.stat_result, data: bytes) -> Key:
    """The key of the registry bytes ``data``, read from a file whose ``fstat`` is ``st``."""
    return Key(signature(st), hashlib.sha256(data).digest(), _code_key())


def _allowed() -> dict[str, frozenset[str]]:
    allowed = dict(_STDLIB_CLASSES)
    for name in _MODEL_MODULES:
        module = sys.modules.get(name)
        if module is not None:
            classes = vars(module).items()
            allowed[name] = frozenset(
                attr for attr, value in classes if isinstance(value, type) and is_dataclass(value)
            )
    return allowed


def _unpickle(data: bytes | memoryview) -> Any:
    import pickle

    allowed = _allowed()

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if name not in allowed.get(module, ()):
                raise pickle.UnpicklingError(f"{module}.{name} is not a registry class")
            return super().find_class(module, name)

    return Unpickler(io.BytesIO(data)).load()


def _read_own(path: Path) -> bytes | None:
    """The cache file's bytes, if it is a regular file of ours, private, and not huge."""
    try:
        fd = os.open(path, os.O_RDONLY | NOFOLLOW)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_CACHE_BYTES:
            return None
        if hasattr(os, "geteuid") and (st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077):
            return None  # someone else's file: never unpickled
        with open(fd, "rb", closefd=False) as f:
            return f.read()
    except OSError:
        return None
    finally:
        os.close(fd)


def lookup(real: Path, key: Key) -> tuple[Any, Any] | None:
    """``(registry, audit head)`` cached for exactly ``key``, or None (a miss)."""
    data = _read_own(cache_path(real))
    if data is None or len(data) < _HEADER or not data.startswith(MAGIC):
        return None
    payload = memoryview(data)[_HEADER:]
    if hashlib.sha256(payload).digest() != data[len(MAGIC) : _HEADER]:
        return None  # torn by a crash (it is not fsync'd), or damaged
    try:
        stored = _unpickle(payload)
    except Exception:  # corrupt, truncated, another layout: a miss, and the next store replaces it
        return None
    if not (isinstance(stored, tuple) and len(stored) == 3 and stored[0] == key.as_tuple()):
        return None
    return stored[1], stored[2]


def store(real: Path, key: Key, registry: Any, audit: Any) -> None:
    """Remember ``(registry, audit)`` for ``key``; best effort, and only by the registry's owner."""
    import pickle

    try:
        if hasattr(os, "geteuid") and os.stat(real).st_uid != os.geteuid():
            return
        payload = pickle.dumps((key.as_tuple(), registry, audit), protocol=pickle.HIGHEST_PROTOCOL)
        data = MAGIC + hashlib.sha256(payload).digest() + payload
        path = cache_path(real)
        if hasattr(os, "geteuid"):
            with contextlib.suppress(FileNotFoundError):
                if os.lstat(path).st_uid != os.geteuid():
                    os.unlink(path)  # atomic_write would keep a stranger's ownership
        atomic_write(path, data, durable=False)  # a crash's torn cache fails its checksum: a miss
    except (OSError, pickle.PicklingError, TypeError, AttributeError, RecursionError):
        pass  # a read-only directory, a full disk: the next read parses again
