"""The sidecar lock file: it belongs to the registry's owner, not to whoever
edited first, and a held lock is waited for, then given up on.

The tests run as root (like the admin who edits the master's registry with
sudo); the master's own user is played by uid/gid 65534 (``nobody``), for
real: :func:`as_owner` switches this process's effective uid and gid to it
(a child process would not do: uid 65534 cannot reach this interpreter).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from bbenroll.errors import BBEnrollError, LockTimeout
from bbenroll.fileio import LockWait, exclusive_lock
from bbenroll.registry import model, store
from tests.helpers.cli import FIXED_NOW
from tests.helpers.clock import SleepingClock

OTHER = (65534, 65534)



def owner(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid


@pytest.fixture
def foreign_registry(reg_path: Path) -> Iterator[Path]:
    """A registry with one worker, owned with its identity and directory by uid 65534.

    It lives in a directory of its own under /tmp: pytest's tmp_path is inside
    root's private /tmp/pytest-of-root, where uid 65534 cannot go.
    """
    with store.edit(reg_path) as editor:
        editor.add(model.new_worker("w1", FIXED_NOW))
    directory = Path(tempfile.mkdtemp(prefix="bbenroll-lock-"))
    try:
        os.chmod(directory, 0o755)
        for name in ("workers.toml", "master.pem"):
            shutil.copy2(reg_path.parent / name, directory / name)
            os.chown(directory / name, *OTHER)
        os.chown(directory, *OTHER)
        yield directory / "workers.toml"
    finally:
        shutil.rmtree(directory)


@contextlib.contextmanager
def as_owner() -> Iterator[None]:
    """Run the body with the effective uid, gid and groups of uid 65534."""
    groups = os.getgroups()
    os.setgroups([])
    os.setegid(OTHER[1])
    os.seteuid(OTHER[0])
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(groups)


def rotate_as_owner(path: Path) -> None:
    """An edit by the registry's owner (the modules it needs are imported already)."""
    with as_owner(), store.edit(path) as editor:
        editor.update(model.rotate(editor.worker("w1"), FIXED_NOW + timedelta(hours=1)))


def test_root_edit_gives_the_lock_file_the_registry_owner(foreign_registry: Path) -> None:
    lock = store.lock_path(foreign_registry)
    assert not lock.exists()
    with store.edit(foreign_registry) as editor:
        editor.update(model.rotate(editor.worker("w1"), FIXED_NOW))
    assert owner(lock) == OTHER
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600
    assert owner(foreign_registry) == OTHER  # (kept by atomic_write, as before)
    # the bug: afterwards the master's own user could not edit any more
    rotate_as_owner(foreign_registry)
    assert store.load(foreign_registry).registry.workers["w1"].rotated == FIXED_NOW + timedelta(hours=1)


def test_root_edit_fixes_a_root_owned_lock_file(foreign_registry: Path) -> None:
    lock = store.lock_path(foreign_registry)
    lock.touch(mode=0o600)  # left behind by an older bbenroll run by root
    assert owner(lock) == (0, 0)
    with store.edit(foreign_registry) as editor:
        editor.update(model.rotate(editor.worker("w1"), FIXED_NOW))
    assert owner(lock) == OTHER
    rotate_as_owner(foreign_registry)


def test_owner_blocked_by_a_root_owned_lock_file_is_told_how_to_fix_it(foreign_registry: Path) -> None:
    lock = store.lock_path(foreign_registry)
    lock.touch(mode=0o600)
    before = foreign_registry.read_bytes()
    with pytest.raises(BBEnrollError) as info:
        rotate_as_owner(foreign_registry)
    assert str(info.value) == (
        f"{lock}: cannot open lock file: Permission denied (it belongs to 0:0, the registry to "
        f"65534:65534; run as root: chown 65534:65534 {lock})"
    )
    assert foreign_registry.read_bytes() == before


def test_lock_without_a_reference_file_keeps_its_creator(tmp_path: Path) -> None:
    lock = tmp_path / ".lock"
    with exclusive_lock(lock):
        pass
    assert owner(lock) == (os.geteuid(), os.getegid())


def test_unreachable_lock_file_is_a_one_line_error(tmp_path: Path) -> None:
    lock = tmp_path / "missing-dir" / ".lock"
    with pytest.raises(BBEnrollError) as info:
        with exclusive_lock(lock, owned_like=tmp_path):
            pass
    assert str(info.value) == f"{lock}: cannot open lock file: No such file or directory"


def test_a_held_lock_is_waited_for_with_backoff_then_times_out(tmp_path: Path) -> None:
    """Deterministic: the wait's clock is injected, nothing really sleeps."""
    import fcntl

    lock = tmp_path / ".lock"
    clock = SleepingClock(100.0)
    with open(lock, "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)  # another open file: flock conflicts even in one process
        with pytest.raises(LockTimeout) as info:
            with exclusive_lock(lock, timeout=0.2, wait=LockWait(clock.monotonic, clock.sleep)):
                raise AssertionError("got a lock someone else holds")
    assert str(info.value) == f"{lock}: another bbenroll has held the lock for 0s; try again"
    assert clock.sleeps[:7] == [0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.05]
    assert set(clock.sleeps[6:]) == {LockWait.max_delay}
    assert clock.now >= 100.2 and clock.now - clock.sleeps[-1] < 100.2
    # released: the next caller gets it at once, without sleeping
    after = SleepingClock(100.0)
    with exclusive_lock(lock, wait=LockWait(after.monotonic, after.sleep)):
        pass
    assert after.sleeps == []
