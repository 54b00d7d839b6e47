"""Hostile files and failures on disk: worker create leaves nothing behind; registries behind symlinks."""

from __future__ import annotations

import errno
import os
import stat
import tomllib
from pathlib import Path

import pytest

from bbenroll import fileio
from bbenroll.errors import BBEnrollError, LockTimeout
from bbenroll.registry import model, store
from bbenroll.worker import setup
from bbenroll.worker.setup import FURL_FILE, create_worker_dir
from tests.helpers.cli import FIXED_NOW, run_cli

FURL = f"pb://{'a' * 32}@tcp:127.0.0.1:9989/{'b' * 32}"
CONFIG = {"name": "worker1", "password": "pb-password"}


def create(basedir: Path, furl: str = FURL, force: bool = False) -> dict:
    return create_worker_dir(basedir, furl, CONFIG, resume=300, force=force)


# --- worker create: all or nothing -------------------------------------------


def test_a_furl_with_other_digits_writes_nothing(tmp_path: Path) -> None:
    """The issue's case: the FURL passed the parser, then its ASCII encoding failed after buildbot.tac."""
    basedir = tmp_path / "w"
    with pytest.raises(BBEnrollError, match="printable ASCII only"):
        create(basedir, FURL.replace("9989", "\u0669\u0669\u0668\u0669"))
    assert not basedir.exists()
    assert create(basedir)["name"] == "worker1"  # a rerun with the right FURL works


def test_a_failed_create_removes_the_basedir_it_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    basedir = tmp_path / "new" / "w"
    monkeypatch.setattr(setup, "atomic_write", disk_full)
    with pytest.raises(BBEnrollError) as failed:
        create(basedir)
    assert str(failed.value) == f"cannot write {basedir / FURL_FILE}: No space left on device"
    assert list(tmp_path.iterdir()) == []  # nor the parent it made
    monkeypatch.undo()
    assert create(basedir)["tac"] == str(basedir / "buildbot.tac")
    assert (basedir / FURL_FILE).read_text() == FURL + "\n"


def test_a_failed_create_leaves_an_existing_basedir_as_it_was(tmp_path: Path) -> None:
    basedir = tmp_path / "w"
    basedir.mkdir()
    (basedir / "notes.txt").write_text("mine")
    (basedir / FURL_FILE).mkdir()  # a real failure: the FURL file cannot replace a directory
    with pytest.raises(BBEnrollError, match=f"cannot write .*{FURL_FILE}"):
        create(basedir)
    assert sorted(p.name for p in basedir.iterdir()) == [FURL_FILE, "notes.txt"]  # no tac, no info/
    assert (basedir / "notes.txt").read_text() == "mine"


def test_a_failed_force_puts_the_old_tac_back(tmp_path: Path) -> None:
    basedir = tmp_path / "w"
    basedir.mkdir()
    (basedir / "buildbot.tac").write_text("# the old worker\n")
    (basedir / "info").mkdir()
    (basedir / FURL_FILE).mkdir()
    with pytest.raises(BBEnrollError):
        create(basedir, force=True)
    assert sorted(p.name for p in basedir.iterdir()) == [FURL_FILE, "buildbot.tac", "info"]
    assert (basedir / "buildbot.tac").read_text() == "# the old worker\n"
    (basedir / FURL_FILE).rmdir()
    create(basedir, force=True)
    assert "worker1" in (basedir / "buildbot.tac").read_text()
    assert sorted(p.name for p in basedir.iterdir()) == [FURL_FILE, "buildbot.tac", "info"]


# --- registries behind symlinks, and files planted in the registry's directory --


def worker_names(path: Path) -> list[str]:
    return sorted(tomllib.loads(path.read_text()).get("workers", {}))


def test_add_through_a_symlink_edits_the_real_file(reg_path: Path) -> None:
    """It used to replace the symlink with a regular file: the master, reading the real one, saw nothing."""
    elsewhere = reg_path.parent / "etc"
    elsewhere.mkdir()
    link = elsewhere / "workers.toml"
    link.symlink_to(reg_path)
    (elsewhere / "master.pem").symlink_to(reg_path.parent / "master.pem")
    result = run_cli(["--registry", str(link), "add", "w1"])
    assert result.code == 0, result.err
    assert link.is_symlink() and link.resolve() == reg_path
    assert worker_names(reg_path) == ["w1"]
    assert stat.S_IMODE(reg_path.stat().st_mode) == 0o600
    assert store.lock_path(reg_path).exists() and not store.lock_path(link).exists()
    assert sorted(p.name for p in elsewhere.iterdir()) == ["master.pem", "workers.toml"]  # no temp left


def test_two_paths_to_one_registry_share_one_lock(reg_path: Path) -> None:
    link = reg_path.parent / "current.toml"
    link.symlink_to(reg_path.name)
    with store.edit(link) as editor:
        editor.add(model.new_worker("w1", FIXED_NOW))
        with pytest.raises(LockTimeout), store.edit(reg_path, timeout=0):
            pass  # timeout 0: one try, no sleeping
    assert worker_names(reg_path) == ["w1"] and link.is_symlink()


def test_a_symlink_planted_at_the_lock_path_is_refused(reg_path: Path) -> None:
    victim = reg_path.parent / "victim"
    victim.write_text("precious\n")
    lock = store.lock_path(reg_path)
    lock.symlink_to(victim)
    result = run_cli(["--registry", str(reg_path), "add", "w1"])
    assert result.code == 1
    assert result.err == (
        f"error: {lock}: the lock file is a symbolic link; refusing to follow it (bbenroll never makes one: "
        f"check who planted it, then remove it: rm {lock})\n"
    )
    assert victim.read_text() == "precious\n" and worker_names(reg_path) == []
    dangling = reg_path.parent / "nothing-here"
    lock.unlink()
    lock.symlink_to(dangling)  # O_CREAT alone would create the symlink's target
    assert run_cli(["--registry", str(reg_path), "add", "w1"]).code == 1
    assert not dangling.exists()


def test_a_lock_path_that_is_not_a_regular_file_is_refused(reg_path: Path) -> None:
    lock = store.lock_path(reg_path)
    os.mkfifo(lock)
    with pytest.raises(BBEnrollError, match="the lock file is not a regular file"), store.edit(reg_path):
        pass


def test_temp_files_never_open_an_existing_name_or_a_symlink(tmp_path: Path, monkeypatch) -> None:
    assert fileio.TEMP_FLAGS & os.O_EXCL and fileio.TEMP_FLAGS & os.O_NOFOLLOW
    assert fileio.LOCK_FLAGS & os.O_NOFOLLOW
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "planted.tmp").symlink_to(victim)
    names = iter(["planted.tmp", "fresh.tmp"])
    monkeypatch.setattr(fileio, "temp_name", lambda name: next(names))
    fileio.atomic_write(tmp_path / "secret", b"s3cret")
    assert (tmp_path / "secret").read_bytes() == b"s3cret"
    assert victim.read_text() == "precious\n" and (tmp_path / "planted.tmp").is_symlink()
    assert not (tmp_path / "fresh.tmp").exists()  # renamed into place


@pytest.mark.parametrize("force", [False, True])
def test_a_symlink_planted_as_buildbot_tac_is_refused(tmp_path: Path, force: bool) -> None:
    """buildbot-worker writes buildbot.tac with open(..., "w"): a dangling symlink would get the password."""
    basedir = tmp_path / "w"
    basedir.mkdir()
    target = tmp_path / "collected"
    (basedir / "buildbot.tac").symlink_to(target)
    with pytest.raises(BBEnrollError, match="is a symbolic link; refusing to write the worker's password"):
        create(basedir, force=force)
    assert not target.exists()
    assert sorted(p.name for p in basedir.iterdir()) == ["buildbot.tac"]
