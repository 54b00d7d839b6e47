#!/usr/bin/env python3
"""A fleet of real buildbot-worker services against one real Buildbot master: stock PB and
bbenroll side by side, in the same run (issue #12, docs/performance.md "Scale: a thousand workers").

Run from the root of a checkout, with the project's venv (its ``[test]`` extra brings buildbot,
buildbot-www and buildbot-worker; the script imports ``tests.helpers`` from the checkout)::

    .venv/bin/python bench/bench_scale.py [--quick] [--sizes 100,300,1000] [--modes stock,bbenroll]
        [--parts attach,idle,restart,outage,rotation,soak] [--per-process 20]
        [--sources per-process|one] [--idle-seconds 60] [--outage-seconds 20] [--outage-share 0.1]
        [--soak-minutes 10] [--soak-workers 3] [--soak-lines 20000] [--timeout 180]
        [--markdown FILE] [--keep]

For each size N and each mode, a fresh master and N workers, ``--per-process`` worker services
per ``twistd`` process (one generated tac that loads each worker basedir's own ``buildbot.tac``):

- stock: ``buildbot-worker create-worker`` basedirs (its API) with a plain PB connection string,
  a master.cfg with ordinary ``worker.Worker`` entries (tests/helpers/stock_master.py).
- bbenroll: a registry with N workers (written as ``bbenroll add`` writes them), the hook in
  master.cfg (tests/helpers/buildbot.py), basedirs made by ``create_worker`` (everything
  ``bbenroll worker create`` does, key and binding included), run in two helper processes.

Both masters' listening ports get ``backlog=1024`` (Twisted's default of 50 overflows under an
attach storm). Each worker process connects from a loopback address of its own (127.1.x.y:
one machine each, so bbenroll's per-address guard applies as to a real fleet; ``--sources one``:
all from 127.0.0.1). A tenth of the workers (``--outage-share``) reach the master through one
``FaultyProxy`` (tests/helpers/netproxy.py), for the outage part; the rest connect directly.

Parts, in this order for each (N, mode):

1. attach: time 0 is the master's ``twistd`` being spawned; the workers' processes are spawned
   once its REST API answers (so stock workers do not start their retry back-off against a
   closed port). ``/api/v2/workers`` is polled every 0.5 s; a worker is attached once its
   ``connected_to`` is non-empty. t50/t90/t100: when half, 90 %, all were first seen attached;
   left behind: not attached after ``--timeout``. Master CPU: utime+stime of the master process
   (not its children) from its start until t100 (or the timeout), and the part after REST answered.
2. idle: once the master's CPU is steady after the attach (at least 20 s, two 5 s probes alike,
   at most 200 s), the master's CPU % of one core over ``--idle-seconds`` (no REST
   polls in the window), then VmRSS and open fds; the workers' processes' CPU too.
3. restart: the master is stopped gracefully (SIGTERM, as ``buildbot stop``) and started again;
   the same times, from the new spawn.
4. outage: the proxy refuses new connections and resets the open ones for ``--outage-seconds``;
   REST is polled every 0.5 s meanwhile. Reports how many of the proxied workers Buildbot saw
   detached (in a poll, and by a ``Worker.detached(NAME)`` line in the master's log), when
   the proxy again carried a connection per proxied worker, and when all were
   attached, both counted from the moment the link returned.
5. rotation (bbenroll only): ``bbenroll rotate --all`` (a fresh process), then the registry is
   read every 0.5 s until every worker's ``delivered`` equals its ``serial``.
6. soak (once, bbenroll only, not per N): ``--soak-workers`` workers, each behind its own proxy
   that resets every connection every 5-20 s (seeded), builds back to back printing
   ``--soak-lines`` deterministic lines, each log checked byte for byte; detaches are what REST
   shows (polled every 0.5 s); "tunnel protocol error" lines counted in the worker logs.

Every process it starts runs in a process group of its own and is killed at the end, also on a
failure, SIGTERM or Ctrl-C. Exit status 1 if a check fails (a worker left behind, a build not
successful or its log wrong).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this checkout's bbenroll and tests.helpers

PYTHON = sys.executable
BIN = Path(PYTHON).parent
LOOP = "127.0.0.1"
POLL = 0.5  # s between REST (and registry) polls, as the issue asks
BACKLOG = 1024  # listen backlog of every port the fleet connects to
SETTLE = 20.0  # s after the attach before the idle window may open (Buildbot finishes the attaches first)
SETTLE_PROBE = 5.0  # s per CPU probe while waiting for the master to settle ...
SETTLE_MAX = 180.0  # ... for at most this long after SETTLE
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROTOCOL_ERROR = "tunnel protocol error"

# One twistd process runs several worker services: it loads each basedir's own buildbot.tac
# (written by create-worker or bbenroll's create_worker_dir) and adopts its Worker service.
GROUP_TAC = """\
import os
from twisted.application import service
from twisted.python.log import FileLogObserver, ILogObserver
from twisted.python.logfile import LogFile

BASEDIRS = {basedirs!r}
application = service.Application("bench-workers")
logfile = LogFile.fromFullPath({log!r}, rotateLength=100_000_000, maxRotatedFiles=2)
application.setComponent(ILogObserver, FileLogObserver(logfile).emit)

SOURCE = {source!r}
if SOURCE:  # this process is one machine of the fleet: its connections come from its own address
    from twisted.internet import reactor

    _connect = reactor.connectTCP

    def connectTCP(host, port, factory, timeout=30, bindAddress=None):
        if bindAddress is None and str(host).startswith("127."):
            bindAddress = (SOURCE, 0)
        return _connect(host, port, factory, timeout, bindAddress)

    reactor.connectTCP = connectTCP

for basedir in BASEDIRS:
    tac = os.path.join(basedir, "buildbot.tac")
    scope = {{"__file__": tac, "__name__": "__tac__"}}
    with open(tac) as f:
        exec(compile(f.read(), tac, "exec"), scope)
    scope["s"].setServiceParent(application)  # leaves the tac's own application
"""

# ``create_worker`` for many basedirs in one reactor, a few at a time (each mints a key)
CREATE = """\
import json, sys
from pathlib import Path
from twisted.internet import defer, task
from bbenroll.worker.enroll import create_worker

def main(reactor):
    jobs = json.load(open(sys.argv[1]))
    gate = defer.DeferredSemaphore(int(sys.argv[2]))
    failures = []
    def one(basedir, furl):
        d = create_worker(Path(basedir), furl, reactor=reactor, resume=600, timeout=300)
        d.addErrback(lambda f: failures.append(basedir + ": " + str(f.value)))
        return d
    d = defer.gatherResults([gate.run(one, b, f) for b, f in jobs])
    d.addCallback(lambda _: print(json.dumps(failures), flush=True))
    return d

task.react(main)
"""


class BenchError(Exception):
    pass


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


# -- processes ---------------------------------------------------------------------------

CHILDREN: list[subprocess.Popen[Any]] = []  # every process group we started, killed on exit


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "BBENROLL_REGISTRY"}
    env["NO_COLOR"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(ROOT)
    return env


def spawn(argv: list[str], cwd: Path, out: Path) -> subprocess.Popen[bytes]:
    with open(out, "ab") as sink:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=child_env(),
            start_new_session=True,
        )
    CHILDREN.append(proc)
    return proc


def kill_group(proc: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    if proc in CHILDREN:
        CHILDREN.remove(proc)


def stop_gracefully(proc: subprocess.Popen[bytes], timeout: float = 120) -> float:
    """SIGTERM (what ``buildbot stop`` sends), wait; SIGKILL after ``timeout``. Seconds taken."""
    start = time.monotonic()
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log(f"pid {proc.pid} ignored SIGTERM for {timeout:.0f}s; killed")
    kill_group(proc)
    return time.monotonic() - start


def kill_all() -> None:
    for proc in list(CHILDREN):
        kill_group(proc)


def interrupted(signum: int, frame: Any) -> None:
    """SIGTERM as Ctrl-C: the ``finally`` blocks stop what was started."""
    raise KeyboardInterrupt


def raise_limits() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # the master holds a few fds per worker; children inherit the limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- /proc --------------------------------------------------------------------------------


def load_average() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process itself (not its children)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- Buildbot's view ----------------------------------------------------------------------


def attached(www: int) -> set[str] | None:
    """Names of the configured workers Buildbot has attached now; None if REST does not answer."""
    url = f"http://{LOOP}:{www}/api/v2/workers?field=name&field=connected_to&field=configured_on"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            workers = json.load(response)["workers"]
    except (OSError, ValueError, urllib.error.URLError):
        return None
    return {w["name"] for w in workers if w["configured_on"] and w["connected_to"]}


def percentile_time(times: list[float], share: float, n: int) -> float | None:
    """When ``share`` of the ``n`` workers had been seen attached (None: never)."""
    need = max(1, round(share * n))
    return sorted(times)[need - 1] if len(times) >= need else None


@dataclass
class Attach:
    ready: float | None = None  # s from spawn until REST answered
    t50: float | None = None
    t90: float | None = None
    t100: float | None = None
    left: int = 0
    cpu: float = 0.0  # master CPU-seconds from its start until t100 (or the timeout)
    cpu_ready: float = 0.0  # of which before REST answered (Buildbot's own start)
    stop: float | None = None  # restart only: how long the graceful stop took
    load: str = ""  # the machine's 1-minute load average as the watch ended (it is shared)


def watch_attach(
    master: Master, names: set[str], t0: float, timeout: float, on_ready: Callable[[], None] | None = None
) -> Attach:
    result = Attach()
    seen: dict[str, float] = {}
    while True:
        now = time.monotonic()
        got = attached(master.www)
        if got is not None and result.ready is None:
            result.ready = now - t0
            result.cpu_ready = cpu_seconds(master.proc.pid)
            if on_ready:
                on_ready()
        for name in (got or set()) & names:
            seen.setdefault(name, time.monotonic() - t0)
        if len(seen) == len(names) or now - t0 > timeout:
            break
        time.sleep(max(0.0, POLL - (time.monotonic() - now)))
    result.cpu = cpu_seconds(master.proc.pid)
    times = list(seen.values())
    result.t50, result.t90, result.t100 = (percentile_time(times, s, len(names)) for s in (0.5, 0.9, 1.0))
    result.left = len(names) - len(seen)
    result.load = load_average()
    return result


# -- the master and the fleet -------------------------------------------------------------


class Master:
    """A Buildbot master basedir run by ``twistd --nodaemon`` in a process group of its own."""

    def __init__(self, basedir: Path, www: int) -> None:
        self.basedir = basedir
        self.www = www
        self.proc: subprocess.Popen[bytes] = None  # type: ignore[assignment]

    def start(self) -> float:
        (self.basedir / "twistd.pid").unlink(missing_ok=True)
        t0 = time.monotonic()
        self.proc = spawn(
            [str(BIN / "twistd"), "--nodaemon", "--no_save", "-y", "buildbot.tac"],
            self.basedir,
            self.basedir / "console.log",
        )
        return t0

    def stop(self) -> float:
        return stop_gracefully(self.proc)

    def log_text(self) -> str:
        path = self.basedir / "twistd.log"
        return path.read_text(errors="replace") if path.exists() else ""


@dataclass
class Fleet:
    mode: str
    n: int
    tmp: Path
    master: Master
    names: list[str]
    proxied: list[str]
    proxy: Any
    groups: list[Path] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    registry: Path | None = None

    def start_workers(self) -> None:
        for group in self.groups:
            self.procs.append(
                spawn(
                    [str(BIN / "twistd"), "--nodaemon", "--no_save", "-y", "group.tac"],
                    group,
                    group / "console.log",
                )
            )

    def workers_cpu(self) -> float:
        total = 0.0
        for proc in self.procs:
            with contextlib.suppress(OSError):
                total += cpu_seconds(proc.pid)
        return total

    def protocol_errors(self) -> int:
        return sum(
            (g / "twistd.log").read_text(errors="replace").count(PROTOCOL_ERROR)
            for g in self.groups
            if (g / "twistd.log").exists()
        )

    def stop(self) -> None:
        for proc in self.procs:
            kill_group(proc)
        if self.master.proc is not None:
            kill_group(self.master.proc)
        if self.proxy is not None:
            self.proxy.stop()


def worker_names(n: int) -> list[str]:
    return [f"w{i:04d}" for i in range(n)]


def proxied_share(names: list[str], share: float) -> list[str]:
    """Every k-th worker: the proxied ones are spread over all the worker processes."""
    if share <= 0:
        return []
    step = max(1, round(1 / share))
    return names[::step]


def write_groups(fleet: Fleet, basedirs: list[Path], args: argparse.Namespace) -> None:
    per_process = args.per_process
    for i in range(0, len(basedirs), per_process):
        number = i // per_process
        # 127.0.0.0/8 is all loopback on Linux: 127.1.x.y needs no set-up
        source = f"127.1.{number // 250}.{number % 250 + 1}" if args.sources == "per-process" else None
        group = fleet.tmp / f"group{number:03d}"
        group.mkdir()
        chunk = [str(b) for b in basedirs[i : i + per_process]]
        (group / "group.tac").write_text(
            GROUP_TAC.format(basedirs=chunk, log=str(group / "twistd.log"), source=source)
        )
        fleet.groups.append(group)


def make_stock(tmp: Path, n: int, args: argparse.Namespace) -> Fleet:
    from buildbot_worker.scripts.create_worker import createWorker
    from buildbot_worker.scripts.runner import CreateWorkerOptions

    from tests.helpers.buildbot import BIN as BB_BIN
    from tests.helpers.buildbot import run
    from tests.helpers.net import free_port
    from tests.helpers.netproxy import FaultyProxy
    from tests.helpers.stock_master import StockWorker, write_stock_master_cfg

    tmp.mkdir(parents=True)
    names = worker_names(n)
    www, pb = free_port(), free_port()
    basedir = tmp / "master"
    run(BB_BIN / "buildbot", "create-master", "--quiet", "--db", "sqlite:///state.sqlite", basedir)
    write_stock_master_cfg(
        basedir,
        [StockWorker(name, f"pw-{name}") for name in names],
        pb_port=f"tcp:{pb}:interface={LOOP}:backlog={BACKLOG}",
        www_port=www,
    )
    proxy = FaultyProxy(LOOP, pb).start()
    proxied = proxied_share(names, args.outage_share)
    fleet = Fleet("stock", n, tmp, Master(basedir, www), names, proxied, proxy)
    basedirs = []
    (tmp / "workers").mkdir()
    for name in names:
        worker_dir = tmp / "workers" / name
        port = proxy.port if name in proxied else pb
        options = CreateWorkerOptions()
        options.parseOptions(["--quiet", "--force", str(worker_dir), f"{LOOP}:{port}", name, f"pw-{name}"])
        with contextlib.redirect_stdout(sys.stderr):
            if createWorker(options) != 0:
                raise BenchError(f"create-worker {worker_dir} failed")
        basedirs.append(worker_dir)
    write_groups(fleet, basedirs, args)
    return fleet


def make_bbenroll(tmp: Path, n: int, args: argparse.Namespace) -> Fleet:
    from bbenroll.fileio import atomic_write
    from bbenroll.registry import model, store
    from bbenroll.registry.tomledit import append_tables, render_new_table
    from tests.helpers.buildbot import create_master, wait_for
    from tests.helpers.net import free_port
    from tests.helpers.netproxy import FaultyProxy
    from tests.helpers.rotation import hints

    tmp.mkdir(parents=True)
    names = worker_names(n)
    www, listen, pb = free_port(), free_port(), free_port()
    basedir = tmp / "master"
    create_master(basedir, www)
    registry = basedir / "workers.toml"
    store.create(
        registry,
        location=[f"tcp:{LOOP}:{listen}"],
        listen=f"tcp:{listen}:interface={LOOP}:backlog={BACKLOG}",
        pb=f"tcp:{pb}:interface={LOOP}:backlog={BACKLOG}",
        identity="master.pem",
    )
    # N workers as `bbenroll add` writes them (N runs of the command would take minutes)
    now = datetime.now(UTC).replace(microsecond=0)
    text = append_tables(
        registry.read_text(), [render_new_table(model.new_worker(name, now)) for name in names]
    )
    atomic_write(registry, text.encode())
    loaded = store.load(registry).registry
    proxy = FaultyProxy(LOOP, listen).start()
    proxied = proxied_share(names, args.outage_share)
    fleet = Fleet("bbenroll", n, tmp, Master(basedir, www), names, proxied, proxy, registry=registry)
    jobs = []
    for name in names:
        furl = loaded.furl(loaded.workers[name])
        if name in proxied:  # the same FURL with the proxy as its one location hint
            furl = furl.replace(f"@{hints(furl)}/", f"@tcp:{LOOP}:{proxy.port}/")
        jobs.append((str(tmp / "workers" / name), furl))
    # create_worker talks to the master: it runs while the basedirs are made
    fleet.master.start()
    try:
        wait_for(lambda: attached(www) is not None, timeout=120, interval=POLL, what="the master's REST API")
        helpers = []
        for i in range(2):  # two processes: minting the keys is CPU-bound
            part = tmp / f"create{i}.json"
            part.write_text(json.dumps(jobs[i::2]))
            helpers.append(
                subprocess.Popen(
                    [PYTHON, "-c", CREATE, str(part), "4"],
                    cwd=ROOT,
                    env=child_env(),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    start_new_session=True,
                )
            )
            CHILDREN.append(helpers[-1])
        for helper in helpers:
            out, err = helper.communicate(timeout=1800)
            failures = json.loads(out.strip().splitlines()[-1]) if out.strip() else [err[-2000:]]
            if helper.returncode != 0 or failures:
                raise BenchError(f"create_worker failed: {failures[:3]}")
            CHILDREN.remove(helper)
    finally:
        fleet.master.stop()
    write_groups(fleet, [Path(b) for b, _ in jobs], args)
    return fleet


# -- the parts ------------------------------------------------------------------------------


@dataclass
class Idle:
    cpu_percent: float
    rss: float
    fds: int
    workers_cpu_percent: float
    attached: int
    load: str
    settled: float  # s from the attach until the window opened


@dataclass
class Outage:
    proxied: int
    detached: int  # seen without connected_to in a REST poll
    logged: int  # with a "Worker.detached(NAME)" line in the master's log
    links_back: float | None  # s after the link returned until the proxy carried one per worker again
    all_attached: float | None  # s after the link returned until Buildbot had every worker attached
    left: int


@dataclass
class Rotation:
    command: float
    t50: float | None
    t100: float | None
    left: int


@dataclass
class Run:
    mode: str
    n: int
    attach: Attach | None = None
    idle: Idle | None = None
    restart: Attach | None = None
    outage: Outage | None = None
    rotation: Rotation | None = None
    protocol_errors: int = 0


def part_attach(fleet: Fleet, timeout: float) -> Attach:
    t0 = fleet.master.start()
    result = watch_attach(fleet.master, set(fleet.names), t0, timeout, on_ready=fleet.start_workers)
    log(
        f"  attach: t50 {fmt(result.t50)} t90 {fmt(result.t90)} t100 {fmt(result.t100)}, left {result.left}, "
        f"master CPU {result.cpu:.1f}s"
    )
    return result


def settle(pid: int) -> float:
    """Wait until the master's CPU is steady (two probes within 0.5 points or 20 % of each other):
    after a storm on a loaded machine Buildbot goes on for a while. Seconds waited."""
    start = time.monotonic()
    time.sleep(SETTLE)
    last = None
    while time.monotonic() - start < SETTLE + SETTLE_MAX:
        before = cpu_seconds(pid)
        time.sleep(SETTLE_PROBE)
        now = 100 * (cpu_seconds(pid) - before) / SETTLE_PROBE
        if last is not None and abs(now - last) <= max(0.5, 0.2 * last):
            break
        last = now
    return time.monotonic() - start


def part_idle(fleet: Fleet, seconds: float) -> Idle:
    pid = fleet.master.proc.pid
    settled = settle(pid)
    cpu0, workers0, t0 = cpu_seconds(pid), fleet.workers_cpu(), time.monotonic()
    time.sleep(seconds)
    cpu1, workers1, t1 = cpu_seconds(pid), fleet.workers_cpu(), time.monotonic()
    result = Idle(
        100 * (cpu1 - cpu0) / (t1 - t0),
        rss_mb(pid),
        open_fds(pid),
        100 * (workers1 - workers0) / (t1 - t0),
        len(attached(fleet.master.www) or ()),
        load_average(),
        settled,
    )
    log(
        f"  idle: master {result.cpu_percent:.2f}% CPU, {result.rss:.0f} MB, {result.fds} fds; "
        f"workers {result.workers_cpu_percent:.1f}%; {result.attached} attached"
    )
    return result


def part_restart(fleet: Fleet, timeout: float) -> Attach:
    stopped = fleet.master.stop()
    t0 = fleet.master.start()
    result = watch_attach(fleet.master, set(fleet.names), t0, timeout)
    result.stop = stopped
    log(
        f"  restart: stop {stopped:.1f}s; t50 {fmt(result.t50)} t90 {fmt(result.t90)} "
        f"t100 {fmt(result.t100)}, left {result.left}"
    )
    return result


def part_outage(fleet: Fleet, seconds: float, timeout: float) -> Outage:
    proxy, subset, everyone = fleet.proxy, set(fleet.proxied), set(fleet.names)
    detached: set[str] = set()

    def sample() -> set[str]:
        got = attached(fleet.master.www)
        if got is not None:
            detached.update(subset - got)
        return got or set()

    mark = len(fleet.master.log_text())
    proxy.block()
    proxy.cut()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sample()
        time.sleep(POLL)
    proxy.unblock()
    back = time.monotonic()
    links = full = None
    while (links is None or full is None) and time.monotonic() - back < timeout:
        now = time.monotonic()
        got = sample()
        if links is None and proxy.connections_active >= len(subset):
            links = now - back
        if full is None and got >= everyone:
            full = now - back
        time.sleep(max(0.0, POLL - (time.monotonic() - now)))
    logged = {name for name in subset if f"Worker.detached({name})" in fleet.master.log_text()[mark:]}
    left = len(everyone - (attached(fleet.master.www) or set()))
    result = Outage(len(subset), len(detached), len(logged), links, full, left)
    log(
        f"  outage: {result.detached}/{result.proxied} detached ({result.logged} in the log); "
        f"links back after {fmt(links)}, "
        f"all attached after {fmt(full)}; left {result.left}"
    )
    return result


def serials(registry: Path) -> dict[str, tuple[int, int | None]]:
    from bbenroll.registry import store

    return {name: (w.serial, w.delivered) for name, w in store.load(registry).registry.workers.items()}


def part_rotation(fleet: Fleet, timeout: float) -> Rotation:
    assert fleet.registry is not None
    before = serials(fleet.registry)
    start = time.monotonic()
    proc = subprocess.run(
        [str(BIN / "bbenroll"), "--registry", str(fleet.registry), "rotate", "--all"],
        capture_output=True,
        text=True,
        timeout=300,
        env=child_env(),
    )
    command = time.monotonic() - start
    if proc.returncode != 0:
        raise BenchError(f"bbenroll rotate --all failed: {proc.stderr.strip()}")
    seen: dict[str, float] = {}
    while len(seen) < len(before) and time.monotonic() - start < timeout:
        now = time.monotonic()
        for name, (serial, delivered) in serials(fleet.registry).items():
            if name not in seen and serial > before[name][0] and delivered == serial:
                seen[name] = now - start
        time.sleep(max(0.0, POLL - (time.monotonic() - now)))
    times = list(seen.values())
    result = Rotation(
        command,
        percentile_time(times, 0.5, len(before)),
        percentile_time(times, 1.0, len(before)),
        len(before) - len(seen),
    )
    log(
        f"  rotation: command {command:.1f}s, t50 {fmt(result.t50)}, t100 {fmt(result.t100)}, "
        f"left {result.left}"
    )
    return result


def one_run(mode: str, n: int, args: argparse.Namespace, parts: set[str], tmp: Path) -> Run:
    log(f"{mode}, {n} workers: setting up")
    fleet = (make_stock if mode == "stock" else make_bbenroll)(tmp / f"{mode}{n}", n, args)
    run = Run(mode, n)
    try:
        log(
            f"{mode}, {n} workers: {len(fleet.groups)} worker processes, "
            f"{len(fleet.proxied)} behind the proxy"
        )
        run.attach = part_attach(fleet, args.timeout)  # every other part needs the fleet up
        if "idle" in parts:
            run.idle = part_idle(fleet, args.idle_seconds)
        if "restart" in parts:
            run.restart = part_restart(fleet, args.timeout)
        if "outage" in parts and fleet.proxied:
            run.outage = part_outage(fleet, args.outage_seconds, args.timeout)
        if "rotation" in parts and mode == "bbenroll":
            run.rotation = part_rotation(fleet, args.timeout)
        run.protocol_errors = fleet.protocol_errors()
    finally:
        fleet.stop()
    return run


# -- the soak ------------------------------------------------------------------------------


@dataclass
class Soak:
    workers: int
    minutes: float
    builds: int = 0
    success: int = 0
    bytes_checked: int = 0
    cuts: int = 0
    detaches: int = 0
    protocol_errors: int = 0
    failures: list[str] = field(default_factory=list)


def part_soak(args: argparse.Namespace, tmp: Path) -> Soak:
    from tests.helpers.buildbot import wait_for
    from tests.helpers.netproxy import FaultyProxy
    from tests.helpers.rotation import SUCCESS, RotationFarm, Worker, expected_output, hints

    names = [f"s{i}" for i in range(args.soak_workers)]
    result = Soak(len(names), args.soak_minutes)
    log(f"soak: {len(names)} workers behind cutting proxies for {args.soak_minutes} min")
    farm = RotationFarm(tmp / "soak", names, start_workers=False)
    proxies: dict[str, Any] = {}
    stop = threading.Event()
    lock = threading.Lock()
    expected = expected_output(args.soak_lines)
    try:
        for name in names:
            proxies[name] = proxy = FaultyProxy(LOOP, farm.port).start()
            furl = farm.furls[name]
            farm.workers[name] = Worker(
                farm, name, furl.replace(f"@{hints(furl)}/", f"@tcp:{LOOP}:{proxy.port}/")
            )
            farm.workers[name].start()
        wait_for(
            lambda: all(farm.connected(n) for n in names), timeout=120, what="the soak's workers attached"
        )

        def cutter(name: str, rng: random.Random) -> None:
            while not stop.wait(rng.uniform(5, 20)):
                proxies[name].cut()
                with lock:
                    result.cuts += 1

        def builder(name: str) -> None:
            while not stop.is_set():
                build = farm.force(name, args.soak_lines, 0)
                finished = farm.wait_done(build, timeout=900)
                ok = finished["results"] == SUCCESS
                same = ok and farm.settled_output(finished, expected) == expected
                with lock:
                    result.builds += 1
                    result.success += ok
                    result.bytes_checked += len(expected) if same else 0
                    if not ok:
                        result.failures.append(f"soak build on {name}: results {finished['results']}")
                    elif not same:
                        result.failures.append(f"soak build on {name}: log differs")

        def watcher() -> None:
            was = set(names)
            while not stop.wait(POLL):
                try:
                    now = {n for n, w in farm.rest_workers().items() if w["connected_to"]}
                except OSError:
                    continue  # a slow answer is not a detach
                with lock:
                    result.detaches += len(was - now)
                was = now

        threads = [
            threading.Thread(target=cutter, args=(n, random.Random(i)), daemon=True)
            for i, n in enumerate(names)
        ]
        threads += [threading.Thread(target=builder, args=(n,), daemon=True) for n in names]
        threads.append(threading.Thread(target=watcher, daemon=True))
        for thread in threads:
            thread.start()
        time.sleep(args.soak_minutes * 60)
        stop.set()  # the builders finish the build they are in
        for thread in threads:
            thread.join(timeout=900)
        result.protocol_errors = sum(farm.workers[n].log_text().count(PROTOCOL_ERROR) for n in names)
    finally:
        stop.set()
        farm.stop()
        for proxy in proxies.values():
            proxy.stop()
    log(
        f"soak: {result.success}/{result.builds} SUCCESS, {result.bytes_checked / 1e6:.1f} MB checked, "
        f"{result.cuts} cuts, {result.detaches} detaches, {result.protocol_errors} protocol errors"
    )
    return result


# -- report ---------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def attach_rows(runs: list[Run], which: str) -> list[list[str]]:
    rows = []
    for run in runs:
        a: Attach | None = getattr(run, which)
        if a is None:
            continue
        row = [
            run.mode,
            str(run.n),
            fmt(a.ready),
            fmt(a.t50),
            fmt(a.t90),
            fmt(a.t100),
            str(a.left),
            fmt(a.cpu),
            fmt(a.cpu - a.cpu_ready),
            a.load,
        ]
        if which == "restart":
            row.insert(2, fmt(a.stop))
        rows.append(row)
    return rows


def report(args: argparse.Namespace, runs: list[Run], soak: Soak | None, failures: list[str]) -> str:
    import buildbot
    import foolscap

    import twisted

    lines = [
        f"Run ending {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on Python {platform.python_version()}, Buildbot "
        f"{buildbot.version}, Twisted {twisted.__version__}, Foolscap {foolscap.__version__}, "
        f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs; {args.per_process} worker "
        f"services per twistd process, connecting from {args.sources_text}; listen backlog {BACKLOG}; "
        "one run per row; load average "
        f"{args.load} at the start (the machine is shared).",
        "",
    ]
    head = [
        "mode",
        "workers",
        "REST up (s)",
        "t50 (s)",
        "t90 (s)",
        "t100 (s)",
        "left behind",
        "master CPU, total (s)",
        "of which after REST up (s)",
        "load avg",
    ]
    if any(r.attach for r in runs):
        lines += [
            "**Cold start: from the master's spawn until Buildbot has each worker attached** "
            f"(workers spawned once REST answers; timeout {args.timeout:.0f} s)",
            "",
        ]
        lines += table(head, attach_rows(runs, "attach"))
    if any(r.idle for r in runs):
        lines += [f"**Idle, every worker attached: the master over {args.idle_seconds:.0f} s**", ""]
        lines += table(
            [
                "mode",
                "workers",
                "master CPU (% of a core)",
                "RSS (MB)",
                "open fds",
                "fds per worker",
                "all worker processes' CPU (%)",
                "settled after (s)",
                "load avg",
            ],
            [
                [
                    r.mode,
                    str(r.n),
                    fmt(r.idle.cpu_percent, 2),
                    fmt(r.idle.rss, 0),
                    str(r.idle.fds),
                    fmt(r.idle.fds / r.n, 2),
                    fmt(r.idle.workers_cpu_percent, 1),
                    fmt(r.idle.settled, 0),
                    r.idle.load,
                ]
                for r in runs
                if r.idle
            ],
        )
    if any(r.restart for r in runs):
        lines += ["**Re-attach after a graceful master restart** (times from the new spawn)", ""]
        lines += table([*head[:2], "stop (s)", *head[2:]], attach_rows(runs, "restart"))
    if any(r.outage for r in runs):
        lines += [
            f"**Outage: the proxy in front of a subset refuses and resets for {args.outage_seconds:.0f} s** "
            "(times from the link's return)",
            "",
        ]
        lines += table(
            [
                "mode",
                "workers",
                "behind the proxy",
                "detached in REST polls",
                "detached in the master's log",
                "links back (s)",
                "all attached (s)",
                "left behind",
            ],
            [
                [
                    r.mode,
                    str(r.n),
                    str(r.outage.proxied),
                    str(r.outage.detached),
                    str(r.outage.logged),
                    fmt(r.outage.links_back),
                    fmt(r.outage.all_attached),
                    str(r.outage.left),
                ]
                for r in runs
                if r.outage
            ],
        )
    if any(r.rotation for r in runs):
        lines += [
            "**Fleet rotation: `bbenroll rotate --all` until every `delivered == serial`** "
            "(times from the command's start)",
            "",
        ]
        lines += table(
            ["mode", "workers", "command (s)", "half confirmed (s)", "all confirmed (s)", "left"],
            [
                [
                    r.mode,
                    str(r.n),
                    fmt(r.rotation.command),
                    fmt(r.rotation.t50),
                    fmt(r.rotation.t100),
                    str(r.rotation.left),
                ]
                for r in runs
                if r.rotation
            ],
        )
    if soak:
        mb = args.soak_lines * 151 / 1e6
        lines += [
            f"**Cut soak: {soak.workers} workers, each behind a proxy resetting every 5-20 s, builds of "
            f"{mb:.1f} MB back to back for {soak.minutes:g} min**",
            "",
        ]
        lines += table(
            ["mode", "builds", "SUCCESS", "bytes checked (MB)", "cuts", "detaches", "tunnel protocol errors"],
            [
                [
                    "bbenroll",
                    str(soak.builds),
                    str(soak.success),
                    fmt(soak.bytes_checked / 1e6),
                    str(soak.cuts),
                    str(soak.detaches),
                    str(soak.protocol_errors),
                ]
            ],
        )
    errors = [f"{r.mode} {r.n}: {r.protocol_errors}" for r in runs if r.protocol_errors]
    if errors:
        lines.append(f'- "{PROTOCOL_ERROR}" lines in the fleet\'s worker logs: {", ".join(errors)}')
    for failure in failures:
        lines.append(f"- **FAIL** {failure}")
    if not failures:
        lines.append("- every worker attached, every soak build successful with its exact log")
    return "\n".join(lines) + "\n"


def check(runs: list[Run], soak: Soak | None) -> list[str]:
    failures = []
    for run in runs:
        for what, a in (("cold start", run.attach), ("restart", run.restart)):
            if a is not None and a.left:
                failures.append(f"{run.mode} {run.n}: {a.left} workers left behind after the {what}")
        if run.outage is not None and run.outage.left:
            failures.append(f"{run.mode} {run.n}: {run.outage.left} workers left behind after the outage")
        if run.rotation is not None and run.rotation.left:
            failures.append(f"{run.mode} {run.n}: {run.rotation.left} rotations not confirmed")
    if soak is not None:
        failures += soak.failures
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N=100, idle 20 s, soak 1 min")
    parser.add_argument("--sizes", help="fleet sizes, comma-separated (default 100,300,1000)")
    parser.add_argument("--modes", default="stock,bbenroll", help="default: %(default)s")
    parser.add_argument(
        "--parts", default="attach,idle,restart,outage,rotation,soak", help="default: %(default)s"
    )
    parser.add_argument("--per-process", type=int, default=20, help="worker services per twistd process")
    parser.add_argument(
        "--sources",
        choices=["per-process", "one"],
        default="per-process",
        help="source addresses of the workers' connections: one per worker process (a machine each, "
        "the default) or 127.0.0.1 for all (one machine, or a NAT: bbenroll's per-address guard applies)",
    )
    parser.add_argument("--idle-seconds", type=float, help="the idle window (default 60, --quick 20)")
    parser.add_argument("--outage-seconds", type=float, default=20.0)
    parser.add_argument("--outage-share", type=float, default=0.1, help="share of the fleet behind the proxy")
    parser.add_argument("--soak-minutes", type=float, help="default 10, --quick 1")
    parser.add_argument("--soak-workers", type=int, default=3)
    parser.add_argument(
        "--soak-lines", type=int, default=20_000, help="lines per soak build (151 bytes each)"
    )
    parser.add_argument("--timeout", type=float, default=180.0, help="s to wait for an attach or a rotation")
    parser.add_argument("--markdown", type=Path, help="also write the tables to FILE")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    args.sizes = [int(s) for s in (args.sizes or ("100" if args.quick else "100,300,1000")).split(",")]
    args.idle_seconds = args.idle_seconds or (20.0 if args.quick else 60.0)
    args.soak_minutes = args.soak_minutes or (1.0 if args.quick else 10.0)
    parts = set(args.parts.split(","))
    modes = args.modes.split(",")

    raise_limits()
    args.load = load_average()
    args.sources_text = (
        "one source address per process (127.1.x.y), except the proxied tenth (127.0.0.1, the proxy's)"
        if args.sources == "per-process"
        else "127.0.0.1 alone"
    )
    signal.signal(signal.SIGTERM, interrupted)
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    runs: list[Run] = []
    soak = None
    failures: list[str] = []
    try:
        if parts & {"attach", "idle", "restart", "outage", "rotation"}:
            for n in args.sizes:
                for mode in modes:
                    runs.append(one_run(mode, n, args, parts, tmp))
        if "soak" in parts:
            soak = part_soak(args, tmp)
    except (BenchError, AssertionError) as e:  # the test helpers' waits fail with AssertionError
        failures.append(str(e))
    except KeyboardInterrupt:
        failures.append("interrupted")
    finally:
        kill_all()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    failures = check(runs, soak) + failures
    text = report(args, runs, soak, failures)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
