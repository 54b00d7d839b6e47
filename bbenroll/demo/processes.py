"""The demo's child processes: started in their own sessions, watched, and never left behind.

Each child runs in its own session (its own process group): the terminal's
Ctrl-C reaches only the demo, which then stops the children in the order they
were started (SIGTERM to each process group; SIGKILL after ``stop_grace``, or
at once on another Ctrl-C while stopping). On Linux they also get SIGTERM if
the demo dies without cleaning up (``PR_SET_PDEATHSIG``).

Signals (SIGINT, SIGTERM, SIGHUP) become exceptions in the main thread, except
while a child is being started and recorded (:meth:`Supervisor.uninterrupted`):
then they are held until it is on the list of processes to stop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bbenroll.demo.errors import DemoError, DemoTerminated
from bbenroll.demo.logs import log_reason
from bbenroll.registry import ENV_REGISTRY


def child_environment() -> dict[str, str]:
    """The children's environment: ours, without a registry override, unbuffered, no colour."""
    env = {k: v for k, v in os.environ.items() if k != ENV_REGISTRY}
    env["NO_COLOR"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def script_command(script: str, module: str) -> list[str]:
    """The console script installed next to ``sys.executable``, or the same through ``-c``."""
    directory = Path(sys.executable).parent
    for name in (script, script + ".exe") if os.name == "nt" else (script,):
        if (directory / name).is_file():
            return [str(directory / name)]
    code = f"import sys; sys.argv[0] = {script!r}; from {module} import run; sys.exit(run())"
    return [sys.executable, "-c", code]


def _linux_parent_death_signal() -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGTERM when we die (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # we died before prctl took effect
            os._exit(1)

    return preexec


def _raise_for(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise DemoTerminated(signum)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        if os.name == "posix":
            os.killpg(proc.pid, sig)
        elif sig == signal.SIGTERM:
            proc.terminate()
        else:
            proc.kill()
    except OSError:  # already gone
        pass


class Supervisor:
    """Starts the demo's children, waits on them within one deadline, and stops them all.

    ``daemons`` maps the names of long-running children to their logs: one of
    them exiting while we wait is an error that quotes its log. ``keep_logs``
    only changes that message (the logs are kept, or they are not).
    ``monotonic`` and ``sleep`` are the clock, injected so that tests can move it.
    The policy is in class attributes (seconds, unless said otherwise).
    """

    stop_grace = 10.0  # a process gets this long to stop after SIGTERM, then SIGKILL
    poll = 0.2  # between two looks while waiting for something
    stop_poll = 0.05  # between two looks while a process stops
    reap_timeout = 5.0  # to wait for a killed process to be reaped
    cleanup_attempts = 5  # signals that may interrupt the cleanup before it gives up

    def __init__(
        self,
        *,
        timeout: float,
        keep_logs: bool = False,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.timeout = timeout
        self.keep_logs = keep_logs
        self.monotonic = monotonic
        self.sleep = sleep
        self.deadline = 0.0
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.daemons: dict[str, Path] = {}
        self.env = child_environment()
        self._critical = 0
        self._pending: int | None = None
        self._cleaning = False
        self._hurry = False
        self._preexec = _linux_parent_death_signal()  # None except on Linux

    def start_clock(self) -> float:
        """Start the deadline for everything that follows; returns the start (``monotonic``)."""
        started = self.monotonic()
        self.deadline = started + self.timeout
        return started

    def remaining(self) -> float:
        return max(1.0, self.deadline - self.monotonic())

    # -- signals ---------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._cleaning:
            self._hurry = True  # a second Ctrl-C: stop the processes the hard way
        elif self._critical:
            self._pending = signum  # raised once the process is registered
        else:
            _raise_for(signum)

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """SIGINT, SIGTERM and SIGHUP become exceptions (in the main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        wanted = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
        previous = {signum: signal.signal(signum, self._on_signal) for signum in wanted}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    @contextlib.contextmanager
    def uninterrupted(self) -> Iterator[None]:
        """Defer signals while a child is started and recorded: none may escape cleanup."""
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1
        if not self._critical and self._pending is not None:
            signum, self._pending = self._pending, None
            _raise_for(signum)

    # -- starting and waiting --------------------------------------------------

    def spawn(
        self, name: str, argv: list[str], *, cwd: Path, log: Path, stdin: bytes | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a child in its own session, output to ``log``, ``stdin`` written then closed."""
        kwargs: dict[str, Any] = {}
        if os.name == "posix":
            kwargs.update(start_new_session=True, preexec_fn=self._preexec)
        else:
            kwargs.update(creationflags=getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0))
        with self.uninterrupted():
            with open(log, "ab") as out:
                proc = subprocess.Popen(
                    argv,
                    cwd=cwd,
                    env=self.env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                    **kwargs,
                )
            self.procs.append((name, proc))
        if stdin is not None and proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write(stdin)
            proc.stdin.close()
        return proc

    def run(self, name: str, argv: list[str], *, cwd: Path, log: Path, stdin: bytes | None = None) -> None:
        """Run a command to completion (it is stopped like the others if we are interrupted)."""
        proc = self.spawn(name, argv, cwd=cwd, log=log, stdin=stdin)
        self.wait(f"{name} to finish", lambda: proc.poll() is not None)
        self.procs.remove((name, proc))
        if proc.returncode != 0:
            why = log_reason(log) or f"exit status {proc.returncode}"
            raise DemoError(f"{name} failed: {why}")

    def _check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None and name in self.daemons:
                log = self.daemons[name]
                why = log_reason(log) or f"exit status {proc.returncode}"
                keep = f" (see {log})" if self.keep_logs else " (run with --keep to read its log)"
                raise DemoError(f"the {name} stopped unexpectedly: {why}{keep}")

    def wait(self, what: str, predicate: Callable[[], Any]) -> Any:
        """Poll ``predicate`` until it gives something true, which is returned.

        Raises :class:`DemoError` at the deadline, or as soon as a daemon has exited.
        """
        while True:
            self._check_alive()
            value = predicate()
            if value:
                return value
            if self.monotonic() > self.deadline:
                raise DemoError(
                    f"timed out after {self.timeout:g}s waiting for {what} (allow longer with --timeout)"
                )
            self.sleep(self.poll)

    # -- stopping --------------------------------------------------------------

    def _stop(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM to the process group; SIGKILL after the grace period (or a second Ctrl-C)."""
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            end = self.monotonic() + self.stop_grace
            while proc.poll() is None and not self._hurry and self.monotonic() < end:
                self.sleep(self.stop_poll)
        # leftovers in the group (a build step, the leader itself if it lingered)
        if os.name == "posix" or proc.poll() is None:
            _signal_group(proc, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=self.reap_timeout)

    def stop_all(self, say: Callable[[str], None]) -> None:
        """Stop every child, in the order they were started; ``say`` announces it."""
        if self.procs:
            names = " and ".join(name for name, _ in self.procs)
            say(f"stopping {names}...")
        while self.procs:
            _name, proc = self.procs[0]
            self._stop(proc)
            self.procs.pop(0)

    def cleanup_until_done(self, cleanup: Callable[[], None]) -> None:
        """Run ``cleanup``; a signal meanwhile makes the stopping hurry and it starts again."""
        self._cleaning = True
        for _attempt in range(self.cleanup_attempts):
            try:
                cleanup()
                return
            except (KeyboardInterrupt, DemoTerminated):
                self._hurry = True
