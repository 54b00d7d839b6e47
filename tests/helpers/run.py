"""``bbenroll worker run`` as a real process against a real Buildbot master with the hook."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests.helpers.buildbot import BIN, stop_daemon, wait_for
from tests.helpers.rotation import RotationFarm


class RunFarm(RotationFarm):
    """RotationFarm's master (a builder per worker), with its workers added but not started:
    the tests start them with ``worker run``."""

    def __init__(self, tmp: Path, names: list[str]) -> None:
        super().__init__(tmp, names, start_workers=False)


class WorkerRun:
    """One ``bbenroll worker run BASEDIR`` process; its stdout and stderr go to files."""

    def __init__(self, basedir: Path, env: dict[str, str], *args: str) -> None:
        self.basedir = basedir
        self.out = basedir.parent / f"{basedir.name}.run.out"
        self.err = basedir.parent / f"{basedir.name}.run.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [str(BIN / "bbenroll"), "worker", "run", str(basedir), *args],
                stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                env={**os.environ, **env},
            )

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Whatever is left (a failed test): the run, then every process in its basedir."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in processes_in(self.basedir):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def processes_in(basedir: Path) -> list[int]:
    """The processes whose working directory is ``basedir`` (the worker and its builds)."""
    found = []
    target = os.path.realpath(basedir)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if cwd == target or cwd.startswith(target + os.sep):
            found.append(int(entry))
    return found


def wait_gone(basedir: Path, timeout: float = 10) -> None:
    wait_for(lambda: not processes_in(basedir), timeout=timeout, what=f"no process left in {basedir}")


def stop_farm(farm: RunFarm, runs: list[WorkerRun]) -> None:
    for r in runs:
        r.kill()
    stop_daemon("buildbot", farm.basedir)
