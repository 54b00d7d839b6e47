"""``bbenroll demo``: the whole story on this machine, in a throwaway directory.

A registry, one enrolled worker and a real Buildbot master (with the master.cfg
hook) start on free 127.0.0.1 ports (Buildbot refuses to start without a
worker, so the worker is enrolled first); its FURL is shown, turned into a
buildbot-worker by ``bbenroll worker create`` (the FURL on stdin, never on a
command line), which attaches through the tunnel; one build is forced through
the REST API and its result reported. Then everything is stopped and the
directory removed, also on an error, Ctrl-C (SIGINT), SIGTERM or SIGHUP.

The master and the worker run in the foreground (``--nodaemon``) as our own
children, supervised by :mod:`bbenroll.demo.processes`; the master's REST API
is read with :mod:`bbenroll.demo.rest`.

Only the standard library is imported here until the demo runs; Buildbot
itself is never imported in this process.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from bbenroll.demo.errors import DemoError
from bbenroll.demo.limits import DEFAULT_TIMEOUT
from bbenroll.demo.processes import Supervisor, script_command
from bbenroll.demo.rest import Rest
from bbenroll.demo.results import BuildResult, DemoResult, Events, result_name

LOG_TAIL_LINES = 8  # lines of the build's log shown with its result
WORKER_NAME = "demo-worker"
BUILDER_NAME = "demo"
STEP_NAME = "hello"
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
enrollment = Enrollment("workers.toml", basedir=basedir)
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


# --- requirements -------------------------------------------------------------


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


# --- the demo -----------------------------------------------------------------


class Demo:
    """One run of the story; ``children`` are its processes, ``directory`` its throwaway home."""

    def __init__(self, events: Events, *, timeout: float = DEFAULT_TIMEOUT, keep: bool = False) -> None:
        self.events = events
        self.keep = keep
        self.directory: Path | None = None
        self.children = Supervisor(timeout=timeout, keep_logs=keep)

    def run(self) -> DemoResult:
        check_extras()
        children = self.children
        started = children.start_clock()
        with children.signals():
            try:
                with children.uninterrupted():
                    self.directory = Path(tempfile.mkdtemp(prefix="bbenroll-demo-")).resolve()
                build, furl = self._story(self.directory)
            finally:
                children.cleanup_until_done(self._cleanup)
        from bbenroll.furl import parse_furl

        return DemoResult(
            build=build,
            furl=parse_furl(furl).redacted(),
            directory=str(self.directory) if self.keep else None,
            elapsed=children.monotonic() - started,
        )

    def _say(self, text: str) -> None:
        """Progress during cleanup: a closed stderr must not stop us from cleaning up."""
        with contextlib.suppress(Exception):
            self.events.progress(text)

    def _cleanup(self) -> None:
        # The master first (children stop in the order they started): its clean shutdown
        # stops a running build through the live worker. Stopped first, the worker's
        # tunnel could leave the master waiting for it to resume.
        self.children.stop_all(self._say)
        if self.directory is not None and self.directory.exists():
            if self.keep:
                self._say(f"kept the demo directory: {self.directory}")
            else:
                shutil.rmtree(self.directory, ignore_errors=True)
                if self.directory.exists():
                    self._say(f"warning: could not remove {self.directory}")
                else:
                    self._say(f"removed {self.directory}")

    # -- the story -------------------------------------------------------------

    def _story(self, tmp: Path) -> tuple[BuildResult, str]:
        from bbenroll.registry import store

        progress = self.events.progress
        basedir, wdir = tmp / "master", tmp / "worker"
        www_port, listen_port, pb_port = free_port(), free_port(), free_port()
        rest = Rest(www_port)

        progress(f"creating a Buildbot master and a registry in {tmp}...")
        self.children.run(
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
        self.children.daemons["master"] = basedir / "twistd.log"
        self.children.spawn(
            "master",
            [*script_command("buildbot", "buildbot.scripts.runner"), "start", "--nodaemon", str(basedir)],
            cwd=basedir,
            log=tmp / "master.out",
        )
        self.children.wait("the master to start", lambda: rest.try_get("masters"))
        progress(
            f"master running: http://127.0.0.1:{www_port}/ (REST API under /api/v2/), "
            f"FURL service on 127.0.0.1:{listen_port}"
        )

        self.events.furl(WORKER_NAME, furl)
        self.children.wait(
            "the master to configure the worker",
            lambda: self._worker(rest, configured=True) and self._builder(rest),
        )

        progress("creating the worker from nothing but its FURL (bbenroll worker create)...")
        self.children.run(
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
                f"{min(60.0, self.children.remaining()):.0f}",
            ],
            cwd=tmp,
            log=tmp / "worker-create.log",
            stdin=(furl + "\n").encode("ascii"),
        )
        progress("starting worker...")
        self.children.daemons["worker"] = wdir / "twistd.log"
        self.children.spawn(
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
        self.children.wait("the worker to attach", lambda: self._worker(rest, connected=True))
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
        builder = self.children.wait("the demo builder", lambda: self._builder(rest))
        progress("forcing a build through the REST API...")
        result = rest.rpc("forceschedulers/force", "force", builderid=builder["builderid"])
        brid = result[0] if isinstance(result, list) else result

        def build(complete: bool) -> Any:
            answer = rest.try_get(f"builds?buildrequestid={brid}")
            builds = (answer or {}).get("builds") or []
            if builds and (builds[0].get("complete") or not complete):
                return builds[0]
            return None

        running = self.children.wait("the build to start", lambda: build(complete=False))
        progress(f"build {running['number']} running...")
        done = self.children.wait(f"build {running['number']} to finish", lambda: build(complete=True))
        duration = None
        if done.get("started_at") is not None and done.get("complete_at") is not None:
            duration = float(done["complete_at"] - done["started_at"])
        return BuildResult(
            number=done["number"],
            builder=BUILDER_NAME,
            worker=WORKER_NAME,
            result=result_name(done.get("results")),
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
