"""``bbenroll demo``: the whole story on this machine, in a throwaway directory.

A registry, one enrolled worker and a real Buildbot master (with the master.cfg
hook) start on free 127.0.0.1 ports (Buildbot refuses to start without a
worker, so the worker is enrolled first); its FURL is shown, turned into a
buildbot-worker by ``bbenroll worker create`` (the FURL on stdin, never on a
command line), which attaches through the tunnel; one build is forced through
the REST API and its result reported. Then everything is stopped and the
directory removed, also on an error, Ctrl-C (SIGINT), SIGTERM or SIGHUP.

The master and the worker run in the foreground (``--nodaemon``) as our own
children, each in its own session: the terminal's Ctrl-C reaches only this
process, which then stops them, the master first (SIGTERM to each process
group; SIGKILL after a grace period, or at once on another Ctrl-C while
stopping). On Linux they also get SIGTERM if this process dies without cleaning
up (``PR_SET_PDEATHSIG``).

Only the standard library is imported here until the demo runs; Buildbot
itself is never imported in this process.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bbenroll.errors import BBEnrollError

DEFAULT_TIMEOUT = 180.0  # seconds for the whole demo; a run takes 5-10 s
STOP_GRACE = 10.0  # seconds a process gets to stop after SIGTERM before SIGKILL
POLL = 0.2
LOG_TAIL_LINES = 8
WORKER_NAME = "demo-worker"
BUILDER_NAME = "demo"
STEP_NAME = "hello"
RESULT_NAMES = ("success", "warnings", "failure", "skipped", "exception", "retry", "cancelled")
EXTRAS = (("buildbot", "buildbot"), ("buildbot_worker", "buildbot-worker"), ("buildbot_www", "buildbot-www"))

# What the demo build runs on the worker: portable (the worker's own Python), short, visible.
BUILD_SCRIPT = """\
import platform, sys, time
print("Hello from the bbenroll demo build!")
print("Python %s (%s) on %s %s" % (platform.python_version(), platform.python_implementation(),
                                   platform.system(), platform.machine()))
for i in range(1, 4):
    print("working... %d/3" % i)
    sys.stdout.flush()
    time.sleep(0.4)
print("This worker reached its master with one string: the FURL.")
"""

MASTER_CFG = """\
# The bbenroll demo master: everything on 127.0.0.1, thrown away afterwards.
from buildbot.plugins import schedulers, steps, util

from bbenroll.master import Enrollment

c = BuildmasterConfig = {{}}
enrollment = Enrollment("workers.toml")
enrollment.configure(c)  # workers, the loopback PB port, the FURL service

names = enrollment.names()  # the registry's usable workers (the service reconfigures on changes)
factory = util.BuildFactory([
    steps.ShellCommand(name={step!r}, command={command!r}, description="saying hello"),
])
c["builders"] = [util.BuilderConfig(name={builder!r}, workernames=names, factory=factory)]
c["schedulers"] = [schedulers.ForceScheduler(name="force", builderNames=[{builder!r}])]
c["www"] = {{"port": "tcp:{www_port}:interface=127.0.0.1", "plugins": {{}}}}
c["buildbotURL"] = "http://127.0.0.1:{www_port}/"
c["db"] = {{"db_url": "sqlite:///state.sqlite"}}
c["title"] = "bbenroll demo"
c["buildbotNetUsageData"] = None
"""


class DemoError(BBEnrollError):
    pass


class DemoInterrupted(BBEnrollError):
    """Ctrl-C, reported once the demo has cleaned up."""

    exit_code = 128 + signal.SIGINT

    def __init__(self) -> None:
        super().__init__("interrupted (the demo's processes were stopped)")


class DemoTerminated(BBEnrollError):
    """SIGTERM or SIGHUP arrived (Ctrl-C is a KeyboardInterrupt, as everywhere)."""

    def __init__(self, signum: int) -> None:
        self.exit_code = 128 + signum
        super().__init__(f"terminated by {signal.Signals(signum).name}")


class Events(Protocol):
    """What the demo tells its user interface as it goes."""

    def progress(self, text: str) -> None: ...

    def furl(self, name: str, furl: str) -> None: ...

    def build_done(self, build: BuildResult) -> None: ...


@dataclass
class BuildResult:
    number: int
    builder: str
    worker: str
    result: str  # one of RESULT_NAMES
    duration: float | None  # seconds, as Buildbot recorded it
    log_tail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.result == "success"


@dataclass
class DemoResult:
    build: BuildResult
    furl: str  # redacted
    directory: str | None  # kept directory, or None when it was removed
    elapsed: float  # seconds, end to end

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.build.ok,
            "result": self.build.result,
            "build": asdict(self.build),
            "worker": self.build.worker,
            "furl": self.furl,
            "directory": self.directory,
            "kept": self.directory is not None,
            "elapsed": round(self.elapsed, 3),
        }


# --- requirements and helpers -------------------------------------------------


def missing_extras() -> list[str]:
    """Distributions the demo needs that this interpreter cannot import."""
    missing = []
    for module, dist in EXTRAS:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(dist)
    return missing


def check_extras() -> None:
    missing = missing_extras()
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise DemoError(f"{', '.join(missing)} {verb} not installed: pip install 'bbenroll[all]'")


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def script_command(script: str, module: str) -> list[str]:
    """The console script installed next to ``sys.executable``, or the same through ``-c``."""
    directory = Path(sys.executable).parent
    for name in (script, script + ".exe") if os.name == "nt" else (script,):
        if (directory / name).is_file():
            return [str(directory / name)]
    code = f"import sys; sys.argv[0] = {script!r}; from {module} import run; sys.exit(run())"
    return [sys.executable, "-c", code]


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "an unknown time"
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds == int(seconds) else f"{seconds:.1f}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s"


LOG_REASON_WINDOW = 80  # lines at the end of a log that may explain a failure
_EXCEPTION_RE = re.compile(r"^(?:[A-Za-z_][\w]*\.)*([A-Za-z_]\w*(?:Error|Exception)): (.+)$")


def _strip_twistd_prefix(line: str) -> str:
    # twistd: "2026-01-02 03:04:05+0000 [-] message"
    head, sep, rest = line.partition("] ")
    return rest if sep and head.count("[") == 1 and len(head) < 80 else line


def log_reason(path: Path) -> str:
    """The gist of why a process failed, from its log, on one line (for error messages)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    lines = [_strip_twistd_prefix(line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return ""
    if "Configuration Errors:" in lines:  # Buildbot lists them, indented, after this line
        start = len(lines) - 1 - lines[::-1].index("Configuration Errors:")
        errors = []
        for line in lines[start + 1 :]:
            if line in ("Halting master.", "BuildMaster startup failed"):
                break
            errors.append(line)
        if errors:
            return "configuration errors: " + "; ".join(errors)
    recent = lines[-LOG_REASON_WINDOW:]
    for line in reversed(recent):  # the exception at the end of a traceback says it best
        mo = _EXCEPTION_RE.match(line)
        if mo:
            return f"{mo.group(1)}: {mo.group(2)}"
    for line in reversed(recent):
        if any(word in line for word in ("Error", "error:", "failed", "refused")):
            return line
    return lines[-1]


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


class Rest:
    """A tiny client for the master's REST API (loopback: never through a proxy)."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}/api/v2/"
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(self, path: str, timeout: float = 10) -> Any:
        with self.opener.open(self.base + path, timeout=timeout) as response:
            return json.load(response)

    def raw(self, path: str) -> bytes:
        with self.opener.open(self.base + path, timeout=30) as response:
            return response.read()

    def try_get(self, path: str) -> Any:
        """For polling: None until the answer is there (and never a long wait)."""
        try:
            return self.get(path, timeout=2)
        except (OSError, ValueError):  # URLError, HTTPError, refused, not JSON yet
            return None

    def rpc(self, path: str, method: str, **params: Any) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "method": method, "id": 1, "params": params}).encode()
        request = urllib.request.Request(  # noqa: S310 (always http://127.0.0.1)
            self.base + path, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with self.opener.open(request, timeout=30) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as e:
            answer = json.loads(e.read() or b"{}")
        if "error" in answer:
            error = answer["error"]
            message = error.get("message", error) if isinstance(error, dict) else error
            raise DemoError(f"the master refused to {method} a build: {message}")
        return answer.get("result")


# --- the demo -----------------------------------------------------------------


class Demo:
    def __init__(self, events: Events, *, timeout: float = DEFAULT_TIMEOUT, keep: bool = False) -> None:
        self.events = events
        self.timeout = timeout
        self.keep = keep
        self.directory: Path | None = None
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.deadline = 0.0
        self.daemons: dict[str, Path] = {}  # long-running children and their logs
        self._critical = 0
        self._pending: int | None = None
        self._cleaning = False
        self._hurry = False
        self._preexec = _linux_parent_death_signal() if os.name == "posix" else None
        self.env = {k: v for k, v in os.environ.items() if k != "BBENROLL_REGISTRY"}
        self.env["NO_COLOR"] = "1"
        self.env["PYTHONUNBUFFERED"] = "1"

    # -- signals ---------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._cleaning:
            self._hurry = True  # a second Ctrl-C: stop the processes the hard way
        elif self._critical:
            self._pending = signum  # raised once the process is registered
        else:
            self._raise_for(signum)

    @staticmethod
    def _raise_for(signum: int) -> None:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise DemoTerminated(signum)

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
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
    def _uninterrupted(self) -> Iterator[None]:
        """Defer signals while a child is started and recorded: none may escape cleanup."""
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1
        if not self._critical and self._pending is not None:
            signum, self._pending = self._pending, None
            self._raise_for(signum)

    # -- processes -------------------------------------------------------------

    def _spawn(
        self, name: str, argv: list[str], *, cwd: Path, log: Path, stdin: bytes | None = None
    ) -> subprocess.Popen[bytes]:
        kwargs: dict[str, Any] = {}
        if os.name == "posix":
            kwargs.update(start_new_session=True, preexec_fn=self._preexec)
        else:
            kwargs.update(creationflags=getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0))
        with self._uninterrupted():
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

    def _run(self, name: str, argv: list[str], *, cwd: Path, log: Path, stdin: bytes | None = None) -> None:
        """Run a command to completion (it is stopped like the others if we are interrupted)."""
        proc = self._spawn(name, argv, cwd=cwd, log=log, stdin=stdin)
        self._wait(f"{name} to finish", lambda: proc.poll() is not None)
        self.procs.remove((name, proc))
        if proc.returncode != 0:
            why = log_reason(log) or f"exit status {proc.returncode}"
            raise DemoError(f"{name} failed: {why}")

    def _check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None and name in self.daemons:
                log = self.daemons[name]
                why = log_reason(log) or f"exit status {proc.returncode}"
                keep = f" (see {log})" if self.keep else " (run with --keep to read its log)"
                raise DemoError(f"the {name} stopped unexpectedly: {why}{keep}")

    def _wait(self, what: str, predicate: Callable[[], Any]) -> Any:
        while True:
            self._check_alive()
            value = predicate()
            if value:
                return value
            if time.monotonic() > self.deadline:
                raise DemoError(
                    f"timed out after {self.timeout:g}s waiting for {what} (allow longer with --timeout)"
                )
            time.sleep(POLL)

    def _remaining(self) -> float:
        return max(1.0, self.deadline - time.monotonic())

    def _signal_group(self, proc: subprocess.Popen[bytes], sig: int) -> None:
        try:
            if os.name == "posix":
                os.killpg(proc.pid, sig)
            elif sig == signal.SIGTERM:
                proc.terminate()
            else:
                proc.kill()
        except OSError:  # already gone
            pass

    def _stop(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM to the process group; SIGKILL after the grace period (or a second Ctrl-C)."""
        if proc.poll() is None:
            self._signal_group(proc, signal.SIGTERM)
            end = time.monotonic() + STOP_GRACE
            while proc.poll() is None and not self._hurry and time.monotonic() < end:
                time.sleep(0.05)
        # leftovers in the group (a build step, the leader itself if it lingered)
        if os.name == "posix" or proc.poll() is None:
            self._signal_group(proc, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)

    def _say(self, text: str) -> None:
        """Progress during cleanup: a closed stderr must not stop us from cleaning up."""
        with contextlib.suppress(Exception):
            self.events.progress(text)

    def _cleanup(self) -> None:
        if self.procs:
            names = " and ".join(name for name, _ in self.procs)
            self._say(f"stopping {names}...")
        # The master first: its clean shutdown stops a running build through the live worker.
        # Stopped first, the worker's tunnel could leave the master waiting for it to resume.
        while self.procs:
            _name, proc = self.procs[0]
            self._stop(proc)
            self.procs.pop(0)
        if self.directory is not None and self.directory.exists():
            if self.keep:
                self._say(f"kept the demo directory: {self.directory}")
            else:
                shutil.rmtree(self.directory, ignore_errors=True)
                if self.directory.exists():
                    self._say(f"warning: could not remove {self.directory}")
                else:
                    self._say(f"removed {self.directory}")

    def _cleanup_until_done(self) -> None:
        self._cleaning = True
        for _attempt in range(5):
            try:
                self._cleanup()
                return
            except (KeyboardInterrupt, DemoTerminated):
                self._hurry = True

    # -- the story -------------------------------------------------------------

    def run(self) -> DemoResult:
        check_extras()
        started = time.monotonic()
        self.deadline = started + self.timeout
        with self._signals():
            try:
                with self._uninterrupted():
                    self.directory = Path(tempfile.mkdtemp(prefix="bbenroll-demo-")).resolve()
                build, furl = self._story(self.directory)
            finally:
                self._cleanup_until_done()
        from bbenroll.furl import parse_furl

        return DemoResult(
            build=build,
            furl=parse_furl(furl).redacted(),
            directory=str(self.directory) if self.keep else None,
            elapsed=time.monotonic() - started,
        )

    def _story(self, tmp: Path) -> tuple[BuildResult, str]:
        from bbenroll.registry import store

        progress = self.events.progress
        basedir, wdir = tmp / "master", tmp / "worker"
        www_port, listen_port, pb_port = free_port(), free_port(), free_port()
        rest = Rest(www_port)

        progress(f"creating a Buildbot master and a registry in {tmp}...")
        self._run(
            "buildbot create-master",
            [
                *script_command("buildbot", "buildbot.scripts.runner"),
                "create-master",
                "--quiet",
                "--db",
                "sqlite:///state.sqlite",
                str(basedir),
            ],
            cwd=tmp,
            log=tmp / "create-master.log",
        )
        store.create(
            basedir / "workers.toml",
            location=[f"tcp:127.0.0.1:{listen_port}"],
            listen=f"tcp:{listen_port}:interface=127.0.0.1",
            pb=f"tcp:{pb_port}:interface=127.0.0.1",
            identity="master.pem",
        )
        command = [sys.executable, "-c", BUILD_SCRIPT]
        (basedir / "master.cfg").write_text(
            MASTER_CFG.format(www_port=www_port, step=STEP_NAME, builder=BUILDER_NAME, command=command),
            encoding="utf-8",
        )

        # Buildbot will not start without a worker: enroll it first, show its FURL once the master runs
        furl = self._enroll(basedir / "workers.toml")

        progress("starting master...")
        self.daemons["master"] = basedir / "twistd.log"
        self._spawn(
            "master",
            [*script_command("buildbot", "buildbot.scripts.runner"), "start", "--nodaemon", str(basedir)],
            cwd=basedir,
            log=tmp / "master.out",
        )
        self._wait("the master to start", lambda: rest.try_get("masters"))
        progress(
            f"master running: http://127.0.0.1:{www_port}/ (REST API under /api/v2/), "
            f"FURL service on 127.0.0.1:{listen_port}"
        )

        self.events.furl(WORKER_NAME, furl)
        self._wait(
            "the master to configure the worker",
            lambda: self._worker(rest, configured=True) and self._builder(rest),
        )

        progress("creating the worker from nothing but its FURL (bbenroll worker create)...")
        self._run(
            "bbenroll worker create",
            [
                sys.executable,
                "-m",
                "bbenroll",
                "worker",
                "create",
                str(wdir),
                "-",
                "--timeout",
                f"{min(60.0, self._remaining()):.0f}",
            ],
            cwd=tmp,
            log=tmp / "worker-create.log",
            stdin=(furl + "\n").encode("ascii"),
        )
        progress("starting worker...")
        self.daemons["worker"] = wdir / "twistd.log"
        self._spawn(
            "worker",
            [
                *script_command("buildbot-worker", "buildbot_worker.scripts.runner"),
                "start",
                "--nodaemon",
                str(wdir),
            ],
            cwd=wdir,
            log=tmp / "worker.out",
        )
        self._wait("the worker to attach", lambda: self._worker(rest, connected=True))
        progress("worker attached (through the FURL's encrypted, authenticated tunnel)")

        build = self._build(rest)
        self.events.build_done(build)
        return build, furl

    def _enroll(self, path: Path) -> str:
        from datetime import UTC, datetime

        from bbenroll.registry import model, store

        now = datetime.now(UTC).replace(microsecond=0)
        worker = model.new_worker(WORKER_NAME, now, note="bbenroll demo")
        with store.edit(path) as editor:
            editor.add(worker)
            furl = editor.registry.furl(worker)
        return furl

    @staticmethod
    def _worker(rest: Rest, *, configured: bool = False, connected: bool = False) -> bool:
        answer = rest.try_get(f"workers?name={WORKER_NAME}")
        for worker in (answer or {}).get("workers", []):
            if worker.get("name") != WORKER_NAME:
                continue
            if configured and not worker.get("configured_on"):
                return False
            if connected and not worker.get("connected_to"):
                return False
            return True
        return False

    @staticmethod
    def _builder(rest: Rest) -> dict[str, Any] | None:
        builders = (rest.try_get(f"builders?name={BUILDER_NAME}") or {}).get("builders") or []
        return next((b for b in builders if b.get("masterids")), None)

    def _build(self, rest: Rest) -> BuildResult:
        progress = self.events.progress
        builder = self._wait("the demo builder", lambda: self._builder(rest))
        progress("forcing a build through the REST API...")
        result = rest.rpc("forceschedulers/force", "force", builderid=builder["builderid"])
        brid = result[0] if isinstance(result, list) else result

        def build(complete: bool) -> Any:
            answer = rest.try_get(f"builds?buildrequestid={brid}")
            builds = (answer or {}).get("builds") or []
            if builds and (builds[0].get("complete") or not complete):
                return builds[0]
            return None

        running = self._wait("the build to start", lambda: build(complete=False))
        progress(f"build {running['number']} running...")
        done = self._wait(f"build {running['number']} to finish", lambda: build(complete=True))
        code = done.get("results")
        name = RESULT_NAMES[code] if isinstance(code, int) and 0 <= code < len(RESULT_NAMES) else str(code)
        duration = None
        if done.get("started_at") is not None and done.get("complete_at") is not None:
            duration = float(done["complete_at"] - done["started_at"])
        return BuildResult(
            number=done["number"],
            builder=BUILDER_NAME,
            worker=WORKER_NAME,
            result=name,
            duration=duration,
            log_tail=self._log_tail(rest, done),
        )

    @staticmethod
    def _log_tail(rest: Rest, build: dict[str, Any]) -> list[str]:
        try:
            steps = rest.get(f"builds/{build['buildid']}/steps")["steps"]
            step = next((s for s in steps if s.get("name") == STEP_NAME), steps[-1])
            raw = rest.raw(f"builds/{build['buildid']}/steps/{step['number']}/logs/stdio/raw")
        except (OSError, ValueError, KeyError, IndexError, StopIteration):
            return []
        lines = [line.rstrip() for line in raw.decode("utf-8", "replace").splitlines()]
        return [line for line in lines if line.strip()][-LOG_TAIL_LINES:]


def run_demo(events: Events, *, timeout: float = DEFAULT_TIMEOUT, keep: bool = False) -> DemoResult:
    return Demo(events, timeout=timeout, keep=keep).run()
