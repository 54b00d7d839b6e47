"""LocalLatentWorker's process handling, with a real child process standing in for
``bbenroll worker run`` (the real one runs in test_latent_buildbot.py)."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from buildbot.config.errors import ConfigErrors
from twisted.internet import defer, reactor, task

from bbenroll.latent import LocalLatentWorker
from bbenroll.master.hook import Enrollment

INVITE = "pb://tubid@tcp:127.0.0.1:1/secret"

# records its argv, cwd and environment, then waits for SIGTERM (or, stubborn, ignores it)
CHILD = textwrap.dedent("""
    import json, os, signal, sys, time
    basedir = sys.argv[-1]
    os.makedirs(basedir)
    with open(sys.argv[1], "w") as f:
        json.dump({"argv": sys.argv, "cwd": os.getcwd(), "env": dict(os.environ)}, f)
    stubborn = sys.argv[2] == "stubborn"
    signal.signal(signal.SIGTERM, signal.SIG_IGN if stubborn else (lambda *a: sys.exit(0)))
    print("child up", flush=True)
    while True:
        time.sleep(0.05)
""")


class Master:
    """The parent Buildbot gives a worker: here only ``master.reactor`` is used."""

    def __init__(self) -> None:
        self.master = self
        self.reactor = reactor


@pytest.fixture
def enrollment(cli, reg_path):
    cli("add", "local1")
    return Enrollment(reg_path)


def make(enrollment: Enrollment, tmp_path: Path, mode: str = "polite", stop_timeout: float = 30) -> Any:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    options = {"workdir": str(tmp_path), "env": {"EXTRA": "1", "BBENROLL_INVITE": "not this one"},
               "command": [sys.executable, str(script), str(tmp_path / "seen.json"), mode],
               "stop_timeout": stop_timeout}
    worker = enrollment.latent(LocalLatentWorker, "local1", **options)
    # what its reconfigService sets (the rest of it registers with a real master)
    worker._configure(**options)
    worker.parent = Master()
    worker.bbenroll_invite = INVITE  # what start_instance of the enrolled class sets first
    return worker


async def wait_for(path: Path) -> None:
    for _ in range(200):
        if path.exists() and path.stat().st_size:
            return
        await task.deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"{path} never appeared")


def test_needs_enrollment_latent():
    with pytest.raises(ConfigErrors, match=r"make it with enrollment.latent\(LocalLatentWorker, 'w'"):
        LocalLatentWorker("w", "password")


@pytest_twisted.ensureDeferred
async def test_an_instance_runs_in_a_fresh_basedir_with_the_invite_and_is_removed(enrollment, tmp_path,
                                                                                 monkeypatch):
    monkeypatch.setenv("BBENROLL_FURL", "pb://must-not-leak")
    worker = make(enrollment, tmp_path)
    assert await defer.maybeDeferred(LocalLatentWorker.start_instance, worker, None) is True
    await wait_for(tmp_path / "seen.json")
    seen = json.loads((tmp_path / "seen.json").read_text())
    directory = Path(seen["cwd"])
    assert directory.parent == tmp_path and seen["argv"][-1] == str(directory / "worker")
    assert seen["env"]["BBENROLL_INVITE"] == INVITE and seen["env"]["WORKERNAME"] == "local1"
    assert seen["env"]["EXTRA"] == "1" and "BBENROLL_FURL" not in seen["env"]
    assert "WORKERPASS" not in seen["env"]
    assert worker.check_instance() == (True, "")
    assert await worker.stop_instance() is True
    assert not directory.exists()
    assert worker.instance is None


@pytest_twisted.ensureDeferred
async def test_sigkill_after_the_stop_timeout(enrollment, tmp_path):
    worker = make(enrollment, tmp_path, "stubborn", stop_timeout=0.5)
    await defer.maybeDeferred(LocalLatentWorker.start_instance, worker, None)
    await wait_for(tmp_path / "seen.json")
    instance = worker.instance
    directory = instance.directory
    await worker.stop_instance()
    assert instance.exited and instance.exit_code is None  # killed by a signal
    assert not directory.exists()


@pytest_twisted.ensureDeferred
async def test_an_instance_that_ended_fails_the_check(enrollment, tmp_path):
    worker = make(enrollment, tmp_path)
    worker.command = [sys.executable, "-c", "import sys; sys.exit(3)"]
    await defer.maybeDeferred(LocalLatentWorker.start_instance, worker, None)
    await worker.instance.ended
    assert worker.check_instance() == (False, "the instance ended with status 3; see the master's log")
    directory = worker.instance.directory
    await worker.stop_instance()
    assert not directory.exists()
