"""Hostile files and failures on disk: worker create leaves nothing behind; registries behind symlinks."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from bbenroll.errors import BBEnrollError
from bbenroll.worker import setup
from bbenroll.worker.setup import FURL_FILE, create_worker_dir

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
    assert not basedir.exists()
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
