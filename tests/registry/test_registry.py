"""The registry on disk: atomic saves, locking, crash safety."""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import pytest

from bbenroll.errors import RegistryError
from bbenroll.fileio import atomic_write
from bbenroll.registry import model, store
from tests.helpers.cli import FIXED_NOW


def bbenroll_cmd(reg_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "bbenroll", "--registry", str(reg_path), *args]


def test_atomic_write_creates_0600_and_never_widens(tmp_path):
    path = tmp_path / "secret"
    atomic_write(path, b"one")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    os.chmod(path, 0o400)
    atomic_write(path, b"two")
    assert path.read_bytes() == b"two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o400
    os.chmod(path, 0o666)
    atomic_write(path, b"three")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]  # no temp files left


def test_sixteen_concurrent_writers_lose_nothing(reg_path):
    per_process = 3
    procs = []
    for i in range(16):
        script = " && ".join(
            " ".join(bbenroll_cmd(reg_path, "add", f"p{i}-w{j}")) for j in range(per_process)
        )
        procs.append(subprocess.Popen(script, shell=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    errors = [p.communicate()[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 16, errors
    workers = store.load(reg_path).registry.workers
    assert set(workers) == {f"p{i}-w{j}" for i in range(16) for j in range(per_process)}
    assert stat.S_IMODE(reg_path.stat().st_mode) == 0o600


def test_concurrent_rotations_of_one_worker_all_apply(reg_path):
    """Read-modify-write under the lock: each rotation sees the previous one's result."""
    assert subprocess.run(bbenroll_cmd(reg_path, "add", "shared"), capture_output=True).returncode == 0
    procs = [
        subprocess.Popen(
            bbenroll_cmd(reg_path, "rotate", "shared", "--grace", "1d"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(16)
    ]
    furls = [p.communicate()[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    # serialised rotations form one chain: each one's previous secret is another's new secret
    secrets = [f.rsplit("/", 1)[1] for f in furls]
    final = store.load(reg_path).registry.workers["shared"]
    assert final.swissnum in secrets
    assert final.previous is not None and final.previous.swissnum in secrets
    assert len(set(secrets)) == 16


CRASH_SCRIPT = """
import os, sys
from datetime import UTC, datetime
from bbenroll import fileio
from bbenroll.registry import model, store
point = sys.argv[2]
real_replace, real_fsync, real_write = os.replace, os.fsync, fileio.os.fdopen
def crash(*a, **k):
    os._exit(9)
if point == "before-rename":
    fileio.os.replace = crash
elif point == "before-fsync":
    fileio.os.fsync = crash
elif point == "mid-write":
    class Half:
        def __init__(self, f): self.f = f
        def __enter__(self): return self
        def __exit__(self, *a): self.f.close()
        def write(self, data):
            self.f.write(data[: len(data) // 2]); self.f.flush(); os._exit(9)
    fileio.os.fdopen = lambda fd, mode: Half(real_write(fd, mode))
with store.edit(sys.argv[1]) as editor:
    editor.update(model.rotate(editor.worker("w1"), datetime.now(UTC)))
"""


def test_crash_at_any_point_leaves_old_file(reg_path, cli):
    cli("add", "w1")
    before = reg_path.read_bytes()
    for point in ("mid-write", "before-fsync", "before-rename"):
        proc = subprocess.run(
            [sys.executable, "-c", CRASH_SCRIPT, str(reg_path), point], capture_output=True, text=True
        )
        assert proc.returncode == 9, proc.stderr
        assert reg_path.read_bytes() == before
        store.load(reg_path)
    # the next edit still works (the lock died with the process)
    assert cli("rotate", "w1").code == 0


def test_sigkill_storm_never_leaves_a_partial_file(reg_path, cli):
    cli("add", "w1")
    loop = textwrap.dedent("""
        import sys
        from datetime import UTC, datetime
        from bbenroll.registry import model, store
        while True:
            with store.edit(sys.argv[1]) as editor:
                editor.update(model.rotate(editor.worker("w1"), datetime.now(UTC)))
    """)
    rng = random.Random(1234)
    seen = set()
    for _ in range(12):
        proc = subprocess.Popen([sys.executable, "-c", loop, str(reg_path)])
        time.sleep(0.3 + rng.random() * 0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        loaded = store.load(reg_path)  # parses and validates: never partial
        seen.add(loaded.registry.workers["w1"].swissnum)
    assert len(seen) > 1  # the loop really was rewriting the file


def test_editor_refuses_to_save_unreadable_result(reg_path):
    """A worker whose secret collides with another's must never be written."""
    with store.edit(reg_path) as editor:
        editor.add(model.new_worker("a", FIXED_NOW))
    before = reg_path.read_bytes()
    try:
        with store.edit(reg_path) as editor:
            clone = model.new_worker("b", FIXED_NOW)
            from dataclasses import replace

            editor.add(replace(clone, swissnum=editor.worker("a").swissnum))
    except Exception as e:
        assert "same secret as worker 'a'" in str(e)
    else:
        raise AssertionError("saved a registry with a duplicated secret")
    assert reg_path.read_bytes() == before


def test_tubid_matches_identity_and_is_checked(reg_path):
    loaded = store.load(reg_path)
    data = tomllib.loads(reg_path.read_text())
    assert loaded.registry.master.tubid == data["master"]["tubid"]
    # swapping the identity file for another key is caught on load
    other = reg_path.parent / "other"
    other.mkdir()
    store.create(
        other / "workers.toml",
        location=["tcp:localhost:1"],
        listen="tcp:1",
        pb="tcp:2:interface=127.0.0.1",
        identity="master.pem",
    )
    (reg_path.parent / "master.pem").write_bytes((other / "master.pem").read_bytes())
    try:
        store.load(reg_path)
    except store.RegistryError as e:
        assert "does not match the identity" in str(e)
    else:
        raise AssertionError("identity swap not detected")


def test_load_stops_at_the_first_problem_and_check_lists_them_all(reg_path):
    """load and check read the file the same one way: the same problems, the same words."""
    text = reg_path.read_text()
    real = tomllib.loads(text)["master"]["tubid"]
    text = text.replace('listen = "tcp:9989"', "listen = 9989")
    text = text.replace("tubid = ", f'tubid = "{"a" * 32}"\n#')
    reg_path.write_text(text)
    problems = store.check(reg_path)
    assert problems == [
        f"{reg_path}:6: master.listen: must be a string, not an integer",
        f"{reg_path}: master.tubid {'a' * 32} does not match the identity {reg_path.parent / 'master.pem'} "
        f"(its tubid is {real}); was the identity file replaced?",
    ]
    with pytest.raises(RegistryError) as info:
        store.load(reg_path)
    assert str(info.value) == problems[0] + " (and 1 more problems: run 'bbenroll check')"
