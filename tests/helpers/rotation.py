"""A Buildbot master with the bbenroll hook and several real workers, for pushed rotation.

One master (its own builder per worker, so a build can be forced on each), workers
made by ``bbenroll worker create`` and run by ``buildbot-worker``, and the readings
the end-to-end tests of docs/rotation.md and bench/bench_rotation.py need: the
registry's FURLs, serials and delivery, each worker's FURL file, the signals of a
disconnect (logs, REST), builds forced with a deterministic output.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import textwrap
import threading
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bbenroll.registry import store
from tests.helpers.buildbot import BIN, rest, run, stop_daemon, wait_for
from tests.helpers.cli import run_cli
from tests.helpers.net import free_port

SUCCESS = 0
MARK = "bbenroll-rot"

# Every builder runs this with two build properties: how many lines, over how many
# seconds (0: as fast as it can). Line i is a function of i alone, so the whole log
# is known in advance (expected_output) and a lost, repeated or reordered byte shows.
OUTPUT_SCRIPT = textwrap.dedent(f"""
    import hashlib, sys, time
    n, t = int(sys.argv[1]), float(sys.argv[2])
    for i in range(n):
        sys.stdout.write("{MARK} %08d %s\\n" % (i, hashlib.sha256(str(i).encode()).hexdigest() * 2))
        if t and i % max(1, n // 100) == 0:
            sys.stdout.flush()
            time.sleep(t / 100)
""")
LINE_BYTES = len(MARK) + 1 + 8 + 1 + 128 + 1  # 151 bytes a line
# Buildbot (4.3) compacts a log's chunks once the build is complete, and a raw read
# meanwhile can return some lines twice (seen with 46 MB logs, gone 10 s later): a log
# is compared again until it matches, for this long, before it counts as wrong
LOG_SETTLES_WITHIN = 30.0

MASTER_CFG = """\
from buildbot.plugins import schedulers, steps, util
from bbenroll.master import Enrollment

c = BuildmasterConfig = {{}}
enrollment = Enrollment("workers.toml", basedir=basedir)
enrollment.configure(c)
names = sorted(w.name for w in c["workers"])
command = [{python!r}, "-c", {script!r},
           util.Property("lines", default="100"), util.Property("seconds", default="0")]
factory = util.BuildFactory([steps.ShellCommand(command=command)])
c["builders"] = [util.BuilderConfig(name="b-" + n, workernames=[n], factory=factory) for n in names]
c["schedulers"] = [schedulers.ForceScheduler(
    name="force", builderNames=["b-" + n for n in names],
    properties=[util.StringParameter(name="lines", default="100"),
                util.StringParameter(name="seconds", default="0")])]
c["www"] = {{"port": "tcp:{www_port}:interface=127.0.0.1", "plugins": {{}}}}
c["buildbotURL"] = "http://127.0.0.1:{www_port}/"
c["db"] = {{"db_url": "sqlite:///state.sqlite"}}
c["title"] = "bbenroll rotation"
c["buildbotNetUsageData"] = None
"""


def utc_now() -> datetime:
    """The CLI's clock in these tests: the real one, since the master runs on it too."""
    return datetime.now(UTC).replace(microsecond=0)


def expected_output(lines: int) -> bytes:
    return "".join(
        f"{MARK} {i:08d} {hashlib.sha256(str(i).encode()).hexdigest() * 2}\n" for i in range(lines)
    ).encode()


def marked_output(raw: bytes) -> bytes:
    """The lines the build printed, out of Buildbot's raw stdio log (which adds a header)."""
    return b"".join(line + b"\n" for line in raw.split(b"\n") if line.startswith(MARK.encode()))


def read_furl_file(path: Path) -> tuple[str, int]:
    """(FURL, serial) of a worker's bbenroll.furl, read the way docs/rotation.md defines it."""
    furl, serial = None, 0
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            words = line[1:].split()
            if len(words) == 2 and words[0] == "serial":
                serial = int(words[1])
        elif line.strip():
            furl = line.strip()
    assert furl is not None, f"no FURL in {path}"
    return furl, serial


def swissnum(furl: str) -> str:
    return furl.rsplit("/", 1)[1]


def hints(furl: str) -> str:
    return furl.split("@", 1)[1].rsplit("/", 1)[0]


@dataclass
class Build:
    worker: str
    brid: int
    lines: int


class Worker:
    """One buildbot-worker process, made by `bbenroll worker create`."""

    def __init__(self, farm: RotationFarm, name: str, furl: str) -> None:
        self.farm = farm
        self.name = name
        self.basedir = farm.tmp / name
        self.create(furl)

    @property
    def furl_file(self) -> Path:
        return self.basedir / "bbenroll.furl"

    @property
    def log(self) -> Path:
        return self.basedir / "twistd.log"

    def create(self, furl: str, *, force: bool = False) -> None:
        args = ["--force"] if force else []
        proc = run(BIN / "bbenroll", "worker", "create", self.basedir, *args, "-", check=False,
                   input_text=furl, timeout=120)
        assert proc.returncode == 0, proc.stderr

    def start(self, *, refused: bool = False) -> None:
        """``buildbot-worker start``, which waits until the worker is attached; ``refused``: it
        will not be (its FURL is refused), and the start command says so after 10 s."""
        proc = run(BIN / "buildbot-worker", "start", self.basedir, timeout=60, check=not refused)
        assert not refused or proc.returncode != 0, "the worker started although it should be refused"

    def stop(self) -> None:
        stop_daemon("buildbot-worker", self.basedir)

    def pid(self) -> int | None:
        try:
            pid = int((self.basedir / "twistd.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def furl_in_file(self) -> tuple[str, int]:
        return read_furl_file(self.furl_file)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class RotationFarm:
    """A master with the hook on 127.0.0.1 and ``names`` workers, all started and connected."""

    def __init__(self, tmp: Path, names: list[str], *, start_workers: bool = True) -> None:
        """``start_workers=False``: the workers are added to the registry (``self.furls``), not made."""
        self.tmp = tmp
        self.basedir = tmp / "master"
        self.registry = self.basedir / "workers.toml"
        self.www = free_port()
        self.port = free_port()
        self.workers: dict[str, Worker] = {}
        tmp.mkdir(parents=True, exist_ok=True)
        run(BIN / "buildbot", "create-master", "--quiet", "--db", "sqlite:///state.sqlite", self.basedir)
        cfg = MASTER_CFG.format(www_port=self.www, python=sys.executable, script=OUTPUT_SCRIPT)
        (self.basedir / "master.cfg").write_text(cfg)
        store.create(
            self.registry,
            location=[f"tcp:127.0.0.1:{self.port}"],
            listen=f"tcp:{self.port}:interface=127.0.0.1",
            pb=f"tcp:{free_port()}:interface=127.0.0.1",
            identity="master.pem",
        )
        self.furls = furls = {name: self.cli("add", name) for name in names}
        try:
            run(BIN / "buildbot", "start", self.basedir, timeout=120)
            if not start_workers:
                return
            for name in names:
                self.workers[name] = Worker(self, name, furls[name])
                self.workers[name].start()
            for name in names:
                wait_for(lambda n=name: self.connected(n), timeout=60, what=f"{name} connected")
        except BaseException:
            self.stop()
            raise

    # -- the CLI and the registry ------------------------------------------------------

    def cli(self, *args: str, env: dict[str, str | None] | None = None) -> str:
        result = run_cli(["--registry", str(self.registry), *args], clock=utc_now, env=env)
        assert result.code == 0, result.err
        return result.out.strip()

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli("--json", *args))

    def loaded(self) -> Any:
        return store.load(self.registry)

    def entry(self, name: str) -> Any:
        """The registry's Worker ``name``, read now."""
        return self.loaded().registry.workers[name]

    def registry_furl(self, name: str) -> str:
        loaded = self.loaded()
        return loaded.registry.furl(loaded.registry.workers[name])

    def confirmed(self, name: str) -> bool:
        """The registry says the worker confirmed its newest FURL."""
        worker = self.entry(name)
        return worker.serial > 0 and worker.delivered == worker.serial

    def holds_registry_furl(self, name: str) -> bool:
        """The worker's file holds the registry's newest FURL with its serial, and it is confirmed."""
        loaded = self.loaded()
        worker = loaded.registry.workers[name]
        furl, serial = self.workers[name].furl_in_file()
        return (furl, serial) == (loaded.registry.furl(worker), worker.serial) and worker.delivered == serial

    # -- Buildbot's view -------------------------------------------------------------

    def rest_workers(self) -> dict[str, dict[str, Any]]:
        return {w["name"]: w for w in rest(self.www, "workers")["workers"] if w["configured_on"]}

    def connected(self, name: str) -> bool:
        worker = self.rest_workers().get(name)
        return bool(worker and worker["connected_to"])

    def master_log(self) -> str:
        return (self.basedir / "twistd.log").read_text(errors="replace")

    def force(self, name: str, lines: int, seconds: float) -> Build:
        builders = rest(self.www, f"builders?name=b-{name}")["builders"]
        body = json.dumps({"jsonrpc": "2.0", "method": "force", "id": 1, "params": {
            "builderid": builders[0]["builderid"], "lines": str(lines), "seconds": str(seconds)}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.www}/api/v2/forceschedulers/force",
                                         data=body, headers={"Content-Type": "application/json"},
                                         method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.load(response)
        assert "error" not in answer, answer
        return Build(name, answer["result"][0], lines)

    def build(self, build: Build) -> dict[str, Any] | None:
        builds = rest(self.www, f"builds?buildrequestid={build.brid}")["builds"]
        return builds[0] if builds else None

    def wait_started(self, build: Build, timeout: float = 60) -> dict[str, Any]:
        return wait_for(lambda: self.build(build), timeout=timeout, what=f"build on {build.worker} started")

    def wait_output(self, build: Build, lines: int, timeout: float = 60) -> None:
        """Until the running build's log holds at least ``lines`` lines (the rotation comes mid-log)."""
        def far_enough() -> bool:
            current = self.build(build)
            if not current:
                return False
            steps = rest(self.www, f"builds/{current['buildid']}/steps")["steps"]
            if not steps:
                return False
            logs = rest(self.www, f"steps/{steps[-1]['stepid']}/logs")["logs"]
            return any(log["name"] == "stdio" and log["num_lines"] >= lines for log in logs)

        wait_for(far_enough, timeout=timeout, interval=0.2, what=f"{lines} lines of {build.worker}'s build")

    def wait_done(self, build: Build, timeout: float = 300) -> dict[str, Any]:
        def done() -> Any:
            current = self.build(build)
            return current if current and current["complete"] else None

        return wait_for(done, timeout=timeout, interval=0.5, what=f"build on {build.worker}")

    def output(self, finished: dict[str, Any]) -> bytes:
        """The lines a finished build printed (its last step's stdio log)."""
        steps = rest(self.www, f"builds/{finished['buildid']}/steps")["steps"]
        url = (f"http://127.0.0.1:{self.www}/api/v2/builds/{finished['buildid']}/steps/"
               f"{steps[-1]['number']}/logs/stdio/raw")
        with urllib.request.urlopen(url, timeout=60) as response:
            return marked_output(response.read())

    def settled_output(self, finished: dict[str, Any], want: bytes) -> bytes:
        """The build's output once it equals ``want``, or as it stands after LOG_SETTLES_WITHIN."""
        deadline = time.monotonic() + LOG_SETTLES_WITHIN
        while True:
            got = self.output(finished)
            if got == want or time.monotonic() > deadline:
                return got
            time.sleep(1)

    def assert_succeeded(self, build: Build) -> None:
        finished = self.wait_done(build)
        assert finished["results"] == SUCCESS, f"build on {build.worker}: results {finished['results']}"
        want = expected_output(build.lines)
        got = self.settled_output(finished, want)
        assert len(got) == len(want) and got == want, (
            f"build on {build.worker}: log of {len(got)} bytes differs from the {len(want)} expected")

    def stop(self) -> None:
        for worker in self.workers.values():
            worker.stop()
        stop_daemon("buildbot", self.basedir)


class ConnectionWatch:
    """Samples Buildbot's REST view of the workers in a thread; a sample without a
    connection for a watched worker is a disconnect Buildbot saw (or nearly did)."""

    def __init__(self, farm: RotationFarm, names: list[str], interval: float = 0.2) -> None:
        self.farm = farm
        self.names = names
        self.interval = interval
        self.samples = 0
        self.gaps: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ConnectionWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                workers = self.farm.rest_workers()
            except OSError:
                workers = None  # a slow answer is not a disconnect
            if workers is not None:
                self.samples += 1
                for name in self.names:
                    if not (workers.get(name) or {}).get("connected_to"):
                        self.gaps.append((time.monotonic(), name))
            self._stop.wait(self.interval)


def log_marks(farm: RotationFarm) -> dict[str, int]:
    """Where each log ends now: what a test reads afterwards is what happened since."""
    marks = {"master": len(farm.master_log())}
    marks.update({name: len(worker.log_text()) for name, worker in farm.workers.items()})
    return marks


def since(text: str, marks: dict[str, int], key: str) -> str:
    return text[marks[key]:]


def edit_registry(farm: RotationFarm, code: str) -> str:
    """`bbenroll edit` with an "editor" that runs ``code`` on the file's text (``text`` in, ``text`` out)."""
    script = farm.tmp / f"editor-{time.monotonic_ns()}.py"
    script.write_text(textwrap.dedent("""
        import sys
        from pathlib import Path
        path = Path(sys.argv[-1])
        text = path.read_text()
    """) + textwrap.dedent(code) + "\npath.write_text(text)\n")
    return farm.cli("edit", env={"VISUAL": None, "EDITOR": f"{sys.executable} {script}"})
