"""Files that hold secrets: atomic durable writes, private modes, a lock.

Stdlib only, so that importing it costs nothing on read paths.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bbenroll.errors import BBEnrollError, LockTimeout

PRIVATE_MODE = 0o600
IS_POSIX = os.name == "posix"


def atomic_write(path: Path, data: bytes, *, exclusive: bool = False, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file.

    temp file in the same directory (created 0600) -> write -> fsync -> rename
    -> fsync the directory. The result is never wider than 0600; an existing
    file's stricter mode and its owner are kept. With ``exclusive`` the call
    fails (FileExistsError) instead of replacing an existing file. Without
    ``durable`` (a cache, which checks what it reads) both fsyncs are skipped:
    readers still see the old file or the new one, but a crash may leave either.
    """
    path = Path(path)
    directory = path.parent
    mode = PRIVATE_MODE
    owner = None
    try:
        st = path.stat()
    except FileNotFoundError:
        st = None
    if st is not None:
        if exclusive:
            raise FileExistsError(errno.EEXIST, "File exists", str(path))
        mode = stat.S_IMODE(st.st_mode) & PRIVATE_MODE or PRIVATE_MODE
        owner = (st.st_uid, st.st_gid)
    fd, tmp = _create_temp(directory, path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        if IS_POSIX:
            os.chmod(tmp, mode)
            keep_owner(tmp, owner)
        if exclusive:
            os.link(tmp, path)  # fails if path appeared meanwhile; never clobbers
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_directory(directory)


# Files bbenroll creates are never opened through a symlink an attacker planted:
# O_NOFOLLOW refuses a symlink as the last component, O_EXCL one at a new name.
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | getattr(os, "O_BINARY", 0)
LOCK_FLAGS = os.O_RDWR | os.O_CREAT | NOFOLLOW | getattr(os, "O_NONBLOCK", 0)


def temp_name(name: str) -> str:
    """A fresh, unguessable name for a temp file beside ``name``."""
    import secrets  # only writes need it

    return f".{name}.{secrets.token_hex(8)}.tmp"


def _create_temp(directory: Path, name: str) -> tuple[int, str]:
    """A new 0600 temp file in ``directory``: never an existing file, never through a symlink."""
    for _ in range(100):
        tmp = os.path.join(directory, temp_name(name))
        try:
            return os.open(tmp, TEMP_FLAGS, PRIVATE_MODE), tmp
        except FileExistsError:
            continue  # taken (or planted): draw another name
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(directory))


def keep_owner(target: int | str, owner: tuple[int, int] | None) -> None:
    """Give ``target`` (a path or an open fd) the ``(uid, gid)`` ``owner``, when root.

    Root editing a file owned by the buildbot user must not steal it: the
    master runs as that user and must still be able to read and edit it.
    """
    if owner is not None and IS_POSIX and os.geteuid() == 0:
        os.chown(target, *owner)


def owner_of(path: Path) -> tuple[int, int] | None:
    """``(uid, gid)`` of ``path``, or None where there is no such thing."""
    if not IS_POSIX:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_uid, st.st_gid


def fsync_directory(directory: Path) -> None:
    if not IS_POSIX:
        return  # Windows has no directory fsync; MoveFileEx is already durable enough
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def permission_problem(path: Path) -> str | None:
    """Say why ``path`` is not private (readable by group or others), or None."""
    if not IS_POSIX:
        return None
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None
    if mode & 0o077:
        return f"{path} is accessible by group or others (mode {mode:04o}); run: chmod 600 {path}"
    return None


class LockWait:
    """How :func:`exclusive_lock` waits for a lock another process holds: it
    polls, backing off from ``first_delay`` to ``max_delay`` seconds. The
    clock and the sleep are injected so that tests need not wait."""

    first_delay = 0.001
    max_delay = 0.05

    def __init__(
        self, monotonic: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.monotonic = monotonic
        self.sleep = sleep


@contextlib.contextmanager
def exclusive_lock(
    path: Path, timeout: float = 30.0, *, owned_like: Path | None = None, wait: LockWait | None = None
) -> Iterator[None]:
    """Hold an exclusive advisory lock on the sidecar file ``path``.

    The registry itself cannot be locked: atomic saves replace its inode.
    The sidecar lock file is left in place (deleting it would race). With
    ``owned_like`` (the registry), the lock file gets that file's owner and
    group when root opens it, like :func:`atomic_write` keeps the registry's:
    a lock file left root-owned (mode 0600) would lock the master's own user
    out of every later edit.
    """
    owner = owner_of(owned_like) if owned_like is not None else None
    try:
        fd = os.open(path, LOCK_FLAGS, PRIVATE_MODE)
    except OSError as e:
        if e.errno == errno.ELOOP or os.path.islink(path):
            raise BBEnrollError(
                f"{path}: the lock file is a symbolic link; refusing to follow it (bbenroll never makes "
                f"one: check who planted it, then remove it: rm {path})"
            ) from None
        hint = _lock_owner_hint(path, owner)
        raise BBEnrollError(f"{path}: cannot open lock file: {e.strerror}{hint}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise BBEnrollError(f"{path}: the lock file is not a regular file; remove it: rm {path}")
        if owner is not None and (st.st_uid, st.st_gid) != owner:
            keep_owner(fd, owner)
    except OSError as e:
        os.close(fd)
        raise BBEnrollError(f"{path}: cannot give the lock file the registry's owner: {e.strerror}") from None
    wait = wait or LockWait()
    deadline = wait.monotonic() + timeout
    try:
        delay = wait.first_delay
        while True:
            try:
                _lock(fd)
                break
            except (BlockingIOError, PermissionError):
                if wait.monotonic() >= deadline:
                    raise LockTimeout(
                        f"{path}: another bbenroll has held the lock for {timeout:.0f}s; try again"
                    ) from None
                wait.sleep(delay)
                delay = min(delay * 2, wait.max_delay)
        try:
            yield
        finally:
            _unlock(fd)
    finally:
        os.close(fd)


def _lock_owner_hint(path: Path, owner: tuple[int, int] | None) -> str:
    """Why a lock file may be out of reach, and the fix, when its owner is the cause."""
    found = owner_of(path)
    if found is None or owner is None or found == owner:
        return ""
    return (
        f" (it belongs to {found[0]}:{found[1]}, the registry to {owner[0]}:{owner[1]}; "
        f"run as root: chown {owner[0]}:{owner[1]} {path})"
    )


if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _lock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            raise BlockingIOError from None

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
