"""The worker's key in its basedir (``bbenroll.pem``): made once, kept, private, named in the tac."""

from __future__ import annotations

import os
import stat

import pytest

from bbenroll.fileio import atomic_write
from bbenroll.identity import tubid_from_pem
from bbenroll.worker import setup
from bbenroll.worker.setup import (
    KEY_FILE,
    WorkerSetupError,
    create_worker_dir,
    persistent_worker_key,
    read_worker_key,
    worker_key,
)

FURL = "pb://" + "a" * 32 + "@tcp:127.0.0.1:9/" + "b" * 32
CONFIG = {"name": "w1", "password": "secret-password"}


def test_a_new_basedir_gets_a_new_key_that_is_not_written_yet(tmp_path):
    base = tmp_path / "w1"
    first, second = worker_key(base), worker_key(base)
    assert first != second and tubid_from_pem(first) != tubid_from_pem(second)
    assert not base.exists()  # written only with the rest of the basedir


def test_an_existing_key_is_kept_and_bad_ones_are_refused(tmp_path):
    pem = worker_key(tmp_path)
    atomic_write(tmp_path / KEY_FILE, pem)
    assert worker_key(tmp_path) == pem
    (tmp_path / KEY_FILE).write_text("garbage\n")
    with pytest.raises(WorkerSetupError, match="no PEM private key found; move it away"):
        worker_key(tmp_path)
    (tmp_path / KEY_FILE).unlink()
    (tmp_path / KEY_FILE).symlink_to(tmp_path / "elsewhere.pem")
    with pytest.raises(WorkerSetupError, match="symbolic link"):
        worker_key(tmp_path)


def test_create_writes_the_key_privately_and_names_it_in_the_tac(tmp_path):
    base = tmp_path / "w1"
    pem = worker_key(base)
    result = create_worker_dir(base, FURL, dict(CONFIG), resume=600, key=pem)
    assert result["key_file"] == str(base / KEY_FILE)
    assert (base / KEY_FILE).read_bytes() == pem
    if os.name == "posix":
        assert stat.S_IMODE((base / KEY_FILE).stat().st_mode) == 0o600
    named = f":keyfile={setup.escape_endpoint_value(str(base / KEY_FILE))}"
    assert named in (base / "buildbot.tac").read_text()
    # --force (a new FURL after `rotate --compromised`, say) keeps the key the master may be bound to
    again = worker_key(base)
    assert again == pem
    create_worker_dir(base, FURL, dict(CONFIG), resume=600, force=True, key=again)
    assert (base / KEY_FILE).read_bytes() == pem


def test_a_failed_create_leaves_no_key_behind(tmp_path, monkeypatch):
    base = tmp_path / "w1"
    real = setup.atomic_write

    def failing(path, data, **kwargs):
        if path.name == KEY_FILE:
            raise OSError(28, "No space left on device", str(path))
        return real(path, data, **kwargs)

    monkeypatch.setattr(setup, "atomic_write", failing)
    with pytest.raises(WorkerSetupError, match="No space left on device"):
        create_worker_dir(base, FURL, dict(CONFIG), resume=600, key=worker_key(base))
    assert not base.exists()


def test_without_a_key_the_basedir_is_as_before(tmp_path):
    base = tmp_path / "w1"
    result = create_worker_dir(base, FURL, {"name": "w1", "password": "p"}, resume=600)
    assert result["key_file"] is None
    assert not (base / KEY_FILE).exists() and "keyfile" not in (base / "buildbot.tac").read_text()


def test_a_key_others_can_read_or_with_a_foreign_certificate_is_refused_and_kept(tmp_path):
    pem = worker_key(tmp_path)
    path = tmp_path / KEY_FILE
    atomic_write(path, pem)
    path.chmod(0o640)
    with pytest.raises(WorkerSetupError, match=r"by group or others \(mode 0640\); run: chmod 600"):
        read_worker_key(path)
    path.chmod(0o600)
    other = worker_key(tmp_path / "elsewhere")
    marker = b"-----BEGIN CERTIFICATE-----"
    mixed = pem.split(marker)[0] + marker + other.split(marker)[1]
    atomic_write(path, mixed)
    with pytest.raises(WorkerSetupError, match="the certificate is not the key's own"):
        read_worker_key(path)
    assert path.read_bytes() == mixed  # never replaced: the admin decides


def test_the_persistent_key_is_made_once_and_a_racing_writer_wins(tmp_path, monkeypatch):
    path = tmp_path / KEY_FILE
    assert read_worker_key(path) is None
    made = persistent_worker_key(path)
    assert path.read_bytes() == made and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert persistent_worker_key(path) == made
    # another process writes its key between our read and our write: its key is the one
    racer = tmp_path / "race" / KEY_FILE
    racer.parent.mkdir()
    theirs = worker_key(tmp_path / "theirs")
    real = setup.atomic_write

    def they_were_first(target, data, **kwargs):
        real(target, theirs, exclusive=True)
        return real(target, data, **kwargs)

    monkeypatch.setattr(setup, "atomic_write", they_were_first)
    assert persistent_worker_key(racer) == theirs
