"""Supervisor: the demo's children start in their own process group, are watched, and all stop.

Waiting and the stop's grace period run on an injected clock (``SleepingClock``), so
timeouts are exact and take no time; the processes themselves are real.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from bbenroll.demo.errors import DemoError, DemoTerminated
from bbenroll.demo.processes import Supervisor, child_environment, script_command
from tests.helpers.clock import SleepingClock

POLL, STOP_GRACE, STOP_POLL = Supervisor.poll, Supervisor.stop_grace, Supervisor.stop_poll
posix_only = pytest.mark.skipif(os.name != "posix", reason="process groups and signals are POSIX")


def supervisor(
    clock: SleepingClock | None = None, *, timeout: float = 30.0, keep_logs: bool = False
) -> Supervisor:
    if clock is None:
        sup = Supervisor(timeout=timeout, keep_logs=keep_logs)
    else:
        sup = Supervisor(timeout=timeout, keep_logs=keep_logs, monotonic=clock.monotonic, sleep=clock.sleep)
    sup.start_clock()
    return sup


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def wait_for_file(path: Path, timeout: float = 10.0) -> str:
    end = time.monotonic() + timeout
    while not path.exists() or not path.read_text():
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.01)
    return path.read_text()


def alive(pid: int) -> bool:
    """The process runs (a zombie, killed and waiting for its reaper, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        return stat.read_text().rpartition(")")[2].split()[0] != "Z"
    return True


def gone(pid: int, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


# --- waiting, on the fake clock ------------------------------------------------


def test_wait_returns_the_first_true_value() -> None:
    clock = SleepingClock(1000.0)
    sup = supervisor(clock)
    answers = iter([None, {}, {"masters": [1]}])
    assert sup.wait("the master", lambda: next(answers)) == {"masters": [1]}
    assert clock.sleeps == [POLL, POLL]


def test_wait_gives_up_at_the_deadline() -> None:
    clock = SleepingClock(1000.0)
    sup = supervisor(clock, timeout=1.5)
    start = clock.now
    with pytest.raises(DemoError) as e:
        sup.wait("the moon", lambda: None)
    assert str(e.value) == "timed out after 1.5s waiting for the moon (allow longer with --timeout)"
    assert start + 1.5 < clock.now <= start + 1.5 + POLL


def test_remaining_is_never_below_one_second() -> None:
    clock = SleepingClock(1000.0)
    sup = supervisor(clock, timeout=10)
    assert sup.remaining() == 10
    clock.now += 9.5
    assert sup.remaining() == 1.0


# --- real children ---------------------------------------------------------------


def test_a_failed_command_is_one_line_with_the_reason_from_its_log(tmp_path: Path) -> None:
    sup = supervisor()
    argv = python("import sys; print('working'); print('ValueError: the answer is 41'); sys.exit(3)")
    with pytest.raises(DemoError) as e:
        sup.run("the tool", argv, cwd=tmp_path, log=tmp_path / "tool.log")
    assert str(e.value) == "the tool failed: ValueError: the answer is 41"
    assert sup.procs == []


def test_a_command_reads_its_stdin_and_succeeds(tmp_path: Path) -> None:
    sup = supervisor()
    argv = python("import sys; sys.stdout.write(sys.stdin.read().upper())")
    sup.run("upper", argv, cwd=tmp_path, log=tmp_path / "upper.log", stdin=b"pb://secret\n")
    assert (tmp_path / "upper.log").read_text() == "PB://SECRET\n"
    assert sup.procs == []


@pytest.mark.parametrize("keep_logs", [False, True])
def test_a_daemon_that_exits_stops_the_wait_and_quotes_its_log(tmp_path: Path, keep_logs: bool) -> None:
    sup = supervisor(keep_logs=keep_logs)
    log = tmp_path / "twistd.log"
    sup.daemons["master"] = log
    sup.spawn("master", python("print('CannotListenError: port in use'); raise SystemExit(1)"),
              cwd=tmp_path, log=log)
    with pytest.raises(DemoError) as e:
        sup.wait("the master to start", lambda: None)
    hint = f"(see {log})" if keep_logs else "(run with --keep to read its log)"
    assert str(e.value) == f"the master stopped unexpectedly: CannotListenError: port in use {hint}"
    said: list[str] = []
    sup.stop_all(said.append)
    assert said == ["stopping master..."] and sup.procs == []


STUBBORN = """\
import os, signal, subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import signal, time\\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
    "print('ready', flush=True)\\n"
    "time.sleep(120)"], stdout=subprocess.PIPE, text=True)
assert grandchild.stdout.readline() == "ready\\n"
if sys.argv[1] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
open(sys.argv[2], "w").write("%d %d" % (os.getpid(), grandchild.pid))
time.sleep(120)
"""


def spawn_family(sup: Supervisor, tmp_path: Path, name: str, *, stubborn: bool) -> tuple[int, int]:
    """A child (ignoring SIGTERM if ``stubborn``) with a grandchild that always ignores it."""
    pids = tmp_path / f"{name}.pids"
    argv = [*python(STUBBORN), "stubborn" if stubborn else "polite", str(pids)]
    sup.spawn(name, argv, cwd=tmp_path, log=tmp_path / f"{name}.log")
    child, grandchild = (int(pid) for pid in wait_for_file(pids).split())
    return child, grandchild


@posix_only
def test_stop_all_stops_every_child_and_its_whole_group_in_order(tmp_path: Path) -> None:
    sup = supervisor()  # the real clock: the children need real time to die of SIGTERM
    families = [spawn_family(sup, tmp_path, name, stubborn=False) for name in ("master", "worker")]
    procs = [proc for _name, proc in sup.procs]
    said: list[str] = []
    sup.stop_all(said.append)
    assert said == ["stopping master and worker..."]
    assert sup.procs == []
    assert [proc.returncode for proc in procs] == [-signal.SIGTERM, -signal.SIGTERM]
    for child, grandchild in families:
        assert gone(child) and gone(grandchild), "SIGKILL to the group reaches what ignored SIGTERM"


@dataclass
class Stubborn:
    """A supervised "master" that ignores SIGTERM, as does its grandchild; the fake clock."""

    clock: SleepingClock
    sup: Supervisor
    proc: subprocess.Popen[bytes]
    pids: tuple[int, int]

    def all_gone(self) -> bool:
        return all(gone(pid) for pid in self.pids)


@pytest.fixture
def stubborn(tmp_path: Path) -> Stubborn:
    clock = SleepingClock(1000.0)
    sup = supervisor(clock)
    pids = spawn_family(sup, tmp_path, "master", stubborn=True)
    ((_name, proc),) = sup.procs
    return Stubborn(clock, sup, proc, pids)


@posix_only
def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_period(stubborn: Stubborn) -> None:
    start = stubborn.clock.now
    stubborn.sup.stop_all(lambda text: None)
    assert stubborn.proc.returncode == -signal.SIGKILL
    assert STOP_GRACE <= stubborn.clock.now - start <= STOP_GRACE + STOP_POLL
    assert stubborn.all_gone()


@posix_only
def test_a_signal_during_cleanup_makes_it_hurry(stubborn: Stubborn) -> None:
    """A second Ctrl-C while stopping: SIGKILL at once, not after the grace period."""
    calls: list[str] = []

    def cleanup() -> None:
        calls.append("cleanup")
        if len(calls) == 1:
            raise KeyboardInterrupt
        stubborn.sup.stop_all(calls.append)

    stubborn.sup.cleanup_until_done(cleanup)
    assert calls == ["cleanup", "cleanup", "stopping master..."]
    assert stubborn.proc.returncode == -signal.SIGKILL
    assert stubborn.clock.sleeps == []  # hurried: no grace period at all
    assert stubborn.all_gone()


# --- signals ---------------------------------------------------------------------


@posix_only
def test_signals_become_exceptions_and_the_handlers_come_back() -> None:
    sup = supervisor(SleepingClock(1000.0))
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    with sup.signals():
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        for signum in (signal.SIGTERM, signal.SIGHUP):
            with pytest.raises(DemoTerminated) as e:
                signal.raise_signal(signum)
            assert e.value.exit_code == 128 + signum
            assert str(e.value) == f"terminated by {signal.Signals(signum).name}"
    assert {signum: signal.getsignal(signum) for signum in before} == before


@posix_only
def test_a_signal_while_a_child_is_recorded_waits_until_it_is() -> None:
    sup = supervisor(SleepingClock(1000.0))
    done: list[str] = []
    with sup.signals(), pytest.raises(DemoTerminated):
        with sup.uninterrupted():
            with sup.uninterrupted():  # nested: held until the outermost ends
                signal.raise_signal(signal.SIGTERM)
                done.append("inner")
            done.append("outer")
        done.append("never")
    assert done == ["inner", "outer"]


# --- how children are started ------------------------------------------------------


def test_child_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BBENROLL_REGISTRY", "/somewhere/workers.toml")
    monkeypatch.setenv("SOME_SETTING", "kept")
    monkeypatch.delenv("NO_COLOR", raising=False)
    env = child_environment()
    assert "BBENROLL_REGISTRY" not in env
    assert env["SOME_SETTING"] == "kept"
    assert env["NO_COLOR"] == "1" and env["PYTHONUNBUFFERED"] == "1"


def test_script_command_prefers_the_console_script_next_to_python(tmp_path: Path) -> None:
    assert script_command("bbenroll", "bbenroll.cli") == [str(Path(sys.executable).parent / "bbenroll")]
    argv = script_command("no-such-script", "bbenroll.cli")
    assert argv[:2] == [sys.executable, "-c"]
    assert "sys.argv[0] = 'no-such-script'" in argv[2] and "from bbenroll.cli import run" in argv[2]
