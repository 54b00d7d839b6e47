"""``bench_hostile.py --build``: enrollment, attach and builds of real workers under attack.

One real Buildbot master (the bbenroll master.cfg hook, sqlite, buildbot-www for
the REST API) runs on free 127.0.0.1 ports. Its registry starts with one worker,
``seed``, that never connects (Buildbot does not start without a worker). A
worker ``attached`` is then enrolled and runs ``--warmup-builds`` untimed builds
(a fresh master's first builds are slower), and stays connected to the end.

Each phase then goes through what a worker admin does, on a fresh worker NAME:

1. ``bbenroll add NAME`` on the running master's registry, and the wait until
   the master has configured the worker and its builder ``b-NAME`` (the hook
   reconfigures Buildbot on its own);
2. enroll: ``bbenroll worker create WDIR -``, the FURL on stdin, timed as a
   command (Python's start included); a failed one is retried, at most
   ``--create-attempts`` times in all, and the time covers every attempt;
3. attach: ``buildbot-worker start --nodaemon WDIR`` until the REST API shows the
   worker connected;
4. ``--builds`` forced builds on ``b-NAME`` and as many on ``b-attached``, one at
   a time, the two taking turns; each is a shell step printing
   ``--output-lines`` lines, timed from the force request until the REST API
   shows it complete (polled every ``POLL`` s, so times are good to about that),
   and it counts as a success only if its log holds every line, in order;
5. NAME's buildbot-worker is stopped.

A baseline phase (workers ``baseline1``, ...) has nothing else running; an
attack phase (``attack1``, ...) first starts the attacker of bench_hostile.py
(raw silent connections and wrong swissnums, from 127.0.0.1 like the workers)
and waits ``ATTACK_RAMP`` s. ``--rounds`` pairs of them take turns, so that the
load of a shared machine falls on both alike. The master's open fds are read
from /proc/PID/fd and its CPU time from /proc/PID/stat.

Every phase has its own deadline (``--phase-timeout``), the attacker stops by
``--attack-seconds`` at the latest, and every process started here is stopped
at the end (its process group SIGKILLed if it lingers), also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this checkout's bbenroll, not an installed one

from bbenroll.demo.errors import DemoError  # noqa: E402
from bbenroll.demo.processes import Supervisor, script_command  # noqa: E402
from bbenroll.demo.rest import Rest  # noqa: E402

POLL = 0.05  # s between two REST looks while timing (the resolution of every time here)
FDS_POLL = 0.1  # s between two looks at the master's open fds
ATTACK_RAMP = 3.0  # s the attacker runs before the attacked worker is enrolled
ATTACKER_READY_TIMEOUT = 60.0  # s for the attacker to report that it is running
ATTACKER_REPORT_TIMEOUT = 60.0  # s for its report once told to stop
SETTLE = 2.0  # s after the attack before the master's fds are read again
SEED = "seed"  # in the registry from the start, never connects
ATTACHED = "attached"  # enrolled before the baseline, connected all along, builds in both phases
EXTRAS = (("buildbot", "buildbot"), ("buildbot_worker", "buildbot-worker"), ("buildbot_www", "buildbot-www"))

MASTER_CFG = """\
# bench_hostile.py --build: everything on 127.0.0.1, thrown away afterwards.
from buildbot.plugins import schedulers, steps, util

from bbenroll.master import Enrollment

c = BuildmasterConfig = {{}}
enrollment = Enrollment("workers.toml", basedir=basedir)
enrollment.configure(c)

# one builder per worker, so that each phase's builds run on the phase's worker
names = enrollment.names()
factory = util.BuildFactory([steps.ShellCommand(name="print", command={command!r})])
c["builders"] = [util.BuilderConfig(name="b-" + n, workernames=[n], factory=factory) for n in names]
c["schedulers"] = [schedulers.ForceScheduler(name="force", builderNames=["b-" + n for n in names])]
c["www"] = {{"port": "tcp:{www_port}:interface=127.0.0.1", "plugins": {{}}}}
c["buildbotURL"] = "http://127.0.0.1:{www_port}/"
c["db"] = {{"db_url": "sqlite:///state.sqlite"}}
c["title"] = "bbenroll bench"
c["buildbotNetUsageData"] = None
"""


def shell_script(lines: int) -> str:
    """The build step: ``lines`` lines of output, then a last line the log must end with."""
    return (f'i=0; while [ "$i" -lt {lines} ]; do i=$((i + 1)); '
            f'echo "bench output line $i of {lines}: the quick brown fox jumps over the lazy dog"; done; '
            f'echo "bench build done"')


def last_line() -> str:
    return "bench build done"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time the process has used so far (/proc/PID/stat), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def spent(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else round(after - before, 2)


class FdSampler:
    """The peak of a process's open fds, sampled in a thread between ``start`` and ``stop``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, open_fds(self.pid))
            self._stop.wait(FDS_POLL)

    def start(self) -> FdSampler:
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.peak


def summary(times: list[float]) -> dict[str, float | None]:
    return {"median": statistics.median(times) if times else None, "max": max(times) if times else None,
            "min": min(times) if times else None}


class BuildBench:
    """One run: the master, the phases, the attacker; ``out`` collects every figure."""

    def __init__(self, args: argparse.Namespace, attacker_argv: Callable[[str], list[str]]) -> None:
        self.args = args
        self.attacker_argv = attacker_argv
        self.children = Supervisor(timeout=args.phase_timeout)
        self.children.poll = POLL
        self.children.stop_grace = 15.0
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-hostile-build-")).resolve()
        self.basedir = self.tmp / "master"
        self.registry = self.basedir / "workers.toml"
        self.www_port = free_port()
        self.rest = Rest(self.www_port)
        self.master_pid = -1
        self.attacker: subprocess.Popen[str] | None = None
        self.out: dict[str, Any] = {"rounds": []}
        self.current = ""

    # -- running -----------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        children = self.children
        with children.signals():
            try:
                self._run()
            except DemoError as e:  # a phase failed or timed out: report what was measured
                self.out["error"] = f"{self.current}: " + str(e).replace("--timeout", "--phase-timeout")
            finally:
                children.cleanup_until_done(self._cleanup)
        return self.out

    def _run(self) -> None:
        self.out["loadavg_start"] = os.getloadavg()
        self._phase_start("starting the master")
        seed_furl = self._start_master()
        self.out["fds_idle"] = open_fds(self.master_pid)

        # warm-up: the master's first builds are slower than later ones, which would flatter the
        # attack phase; ATTACHED stays connected and builds in every phase
        self._phase_start("warm-up")
        self.out["warmup"] = self._enroll(ATTACHED)
        self.out["warmup"]["builds"] = self._builds([ATTACHED], self.args.warmup_builds)[ATTACHED]
        self.out["fds_attached"] = open_fds(self.master_pid)

        # the phases take turns, so that the load of a shared machine falls on both alike
        for number in range(1, self.args.rounds + 1):
            rnd: dict[str, Any] = {}
            self.out["rounds"].append(rnd)
            self._phase_start(f"round {number}: baseline")
            sampler = FdSampler(self.master_pid).start()
            started, cpu = time.monotonic(), cpu_seconds(self.master_pid)
            rnd["baseline"] = self._phase(f"baseline{number}")
            rnd["baseline_phase_seconds"] = round(time.monotonic() - started, 1)
            rnd["baseline_master_cpu"] = spent(cpu, cpu_seconds(self.master_pid))
            rnd["fds_baseline_peak"] = sampler.stop()
            rnd["fds_after_baseline"] = open_fds(self.master_pid)

            self._phase_start(f"round {number}: attack")
            sampler = FdSampler(self.master_pid).start()
            started, cpu = time.monotonic(), cpu_seconds(self.master_pid)
            self._start_attacker(seed_furl)
            try:
                self.children.sleep(ATTACK_RAMP)
                rnd["attack"] = self._phase(f"attack{number}")
            finally:
                rnd["attack_phase_seconds"] = round(time.monotonic() - started, 1)
                rnd["attack_master_cpu"] = spent(cpu, cpu_seconds(self.master_pid))
                rnd["attacker_ran_throughout"] = self.attacker is not None and self.attacker.poll() is None
                rnd["fds_peak"] = sampler.stop()
                rnd["attacker"] = self._stop_attacker()
            rnd["attached_still_connected"] = bool(self._worker(ATTACHED, connected=True))
            self.children.sleep(SETTLE)
            rnd["fds_after_attack"] = open_fds(self.master_pid)
        self.out["loadavg_end"] = os.getloadavg()

    def _phase(self, name: str) -> dict[str, Any]:
        """A fresh worker ``name`` enrolls and attaches; it and ATTACHED build, taking turns; it stops."""
        phase = {"new": self._enroll(name)}
        builds = self._builds([name, ATTACHED], self.args.builds)
        phase["new"]["builds"] = builds[name]
        phase["attached"] = {"worker": ATTACHED, "builds": builds[ATTACHED]}
        self._stop_worker(name)  # so that every phase starts with the same processes running
        return phase

    def _stop_worker(self, name: str) -> None:
        key = f"worker {name}"
        del self.children.daemons[key]  # its exit is no longer an error
        for entry in [e for e in self.children.procs if e[0] == key]:
            proc = entry[1]
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=self.children.stop_grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            self.children.procs.remove(entry)

    def _phase_start(self, name: str) -> None:
        print(f"bench: {name}...", file=sys.stderr, flush=True)
        self.current = name
        self.children.start_clock()  # each phase has the whole --phase-timeout

    def _cleanup(self) -> None:
        if self.attacker is not None and self.attacker.poll() is None:
            self.attacker.kill()
            self.attacker.wait(timeout=10)
        # the master first: its clean shutdown ends a running build through the live worker
        self.children.stop_all(lambda text: print(f"bench: {text}", file=sys.stderr, flush=True))
        if self.args.keep:
            print(f"bench: kept {self.tmp}", file=sys.stderr, flush=True)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- the master --------------------------------------------------------------

    def _start_master(self) -> str:
        from bbenroll.registry import store

        buildbot = script_command("buildbot", "buildbot.scripts.runner")
        self.children.run("buildbot create-master",
                          [*buildbot, "create-master", "--quiet", "--db", "sqlite:///state.sqlite",
                           str(self.basedir)], cwd=self.tmp, log=self.tmp / "create-master.log")
        port, pb_port = free_port(), free_port()
        store.create(self.registry, location=[f"tcp:127.0.0.1:{port}"],
                     listen=f"tcp:{port}:interface=127.0.0.1", pb=f"tcp:{pb_port}:interface=127.0.0.1",
                     identity="master.pem")
        seed_furl, _ = self._bbenroll_add(SEED)
        command = ["sh", "-c", shell_script(self.args.output_lines)]
        (self.basedir / "master.cfg").write_text(MASTER_CFG.format(www_port=self.www_port, command=command))
        self.children.daemons["master"] = self.basedir / "twistd.log"
        # --nodaemon: twistd runs in this very process, so its pid is the master's
        proc = self.children.spawn("master", [*buildbot, "start", "--nodaemon", str(self.basedir)],
                                   cwd=self.basedir, log=self.tmp / "master.out")
        self.master_pid = proc.pid
        self.children.wait("the master to start", lambda: self.rest.try_get("masters"))
        self.children.wait("the master to configure the seed worker", lambda: self._builder(SEED))
        return seed_furl

    def _bbenroll_add(self, name: str) -> tuple[str, float]:
        """``bbenroll add NAME`` as an admin runs it; its FURL and how long it took."""
        start = time.monotonic()
        argv = [sys.executable, "-m", "bbenroll", "--registry", str(self.registry), "add", name]
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=self.children.env,
                              timeout=self.children.remaining())
        if proc.returncode != 0:
            raise DemoError(f"bbenroll add {name} failed: {proc.stderr.strip()}")
        return proc.stdout.strip(), time.monotonic() - start

    # -- one worker's story ------------------------------------------------------

    def _enroll(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = {"worker": name}
        furl, result["add_seconds"] = self._bbenroll_add(name)
        start = time.monotonic()
        self.children.wait(f"the master to configure {name}",
                           lambda: self._worker(name, configured=True) and self._builder(name))
        result["configure_seconds"] = time.monotonic() - start

        wdir = self.tmp / name
        start = time.monotonic()
        errors = []
        for _attempt in range(self.args.create_attempts):
            shutil.rmtree(wdir, ignore_errors=True)
            log = self.tmp / f"worker-create-{name}.log"
            try:
                self.children.run("bbenroll worker create",
                                  [sys.executable, "-m", "bbenroll", "worker", "create", str(wdir), "-",
                                   "--timeout", f"{max(10.0, min(60.0, self.children.remaining())):.0f}"],
                                  cwd=self.tmp, log=log, stdin=(furl + "\n").encode("ascii"))
                break
            except DemoError as e:
                if self.children.monotonic() > self.children.deadline:
                    raise  # the phase's time is up: no more tries
                errors.append(str(e))
        result["create_seconds"] = time.monotonic() - start
        result["create_attempts"] = len(errors) + (1 if len(errors) < self.args.create_attempts else 0)
        result["create_errors"] = errors
        if len(errors) == self.args.create_attempts:
            raise DemoError(f"bbenroll worker create {name} failed {len(errors)} times: {errors[-1]}")

        start = time.monotonic()
        self.children.daemons[f"worker {name}"] = wdir / "twistd.log"
        self.children.spawn(f"worker {name}",
                            [*script_command("buildbot-worker", "buildbot_worker.scripts.runner"), "start",
                             "--nodaemon", str(wdir)], cwd=wdir, log=self.tmp / f"worker-{name}.out")
        self.children.wait(f"worker {name} to attach", lambda: self._worker(name, connected=True))
        result["attach_seconds"] = time.monotonic() - start
        return result

    def _builds(self, names: list[str], count: int) -> dict[str, list[dict[str, Any]]]:
        """``count`` builds on each of ``names``' builders, one at a time, the workers taking turns."""
        builders = {name: self._builder(name) for name in names}
        for name, builder in builders.items():
            if not builder:
                raise DemoError(f"the master has no builder for {name}")
        builds: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for name in [name for _ in range(count) for name in names]:
            builder = builders[name]
            start = time.monotonic()
            answer = self.rest.rpc("forceschedulers/force", "force", builderid=builder["builderid"])
            brid = answer[0] if isinstance(answer, list) else answer

            def complete(brid: Any = brid) -> Any:
                found = (self.rest.try_get(f"builds?buildrequestid={brid}") or {}).get("builds") or []
                return found[0] if found and found[0].get("complete") else None

            build = self.children.wait(f"a build on {name} to complete", complete)
            seconds = time.monotonic() - start
            builds[name].append({"seconds": seconds, "result": build.get("results"),
                                 "output_complete": self._log_ends_well(build)})
        return builds

    def _log_ends_well(self, build: dict[str, Any]) -> bool:
        """Whether the step's log came through whole: every line the script printed, in order."""
        try:
            steps = self.rest.get(f"builds/{build['buildid']}/steps")["steps"]
            step = next(s for s in steps if s.get("name") == "print")
            raw = self.rest.raw(f"builds/{build['buildid']}/steps/{step['number']}/logs/stdio/raw")
        except (OSError, ValueError, KeyError, StopIteration):
            return False
        text = raw.decode("utf-8", "replace")
        lines = [line for line in text.splitlines() if line.startswith("bench ")]
        count = self.args.output_lines
        numbered = enumerate(lines[:-1], 1)
        return (len(lines) == count + 1 and lines[-1] == last_line()
                and all(line.startswith(f"bench output line {i} of {count}:") for i, line in numbered))

    def _worker(self, name: str, *, configured: bool = False, connected: bool = False) -> bool:
        for worker in (self.rest.try_get(f"workers?name={name}") or {}).get("workers", []):
            if worker.get("name") == name:
                return (not configured or bool(worker.get("configured_on"))) and (
                    not connected or bool(worker.get("connected_to")))
        return False

    def _builder(self, name: str) -> dict[str, Any] | None:
        builders = (self.rest.try_get(f"builders?name=b-{name}") or {}).get("builders") or []
        return next((b for b in builders if b.get("masterids")), None)

    # -- the attacker ------------------------------------------------------------

    def _start_attacker(self, furl: str) -> None:
        # stdin stays open: closing it tells the attacker to stop (as in bench_hostile.py's own mode)
        self.attacker = subprocess.Popen(self.attacker_argv(furl), cwd=ROOT, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True, start_new_session=True)
        line = self._read_line(ATTACKER_READY_TIMEOUT)
        if line.strip() != "ready":
            raise DemoError(f"the attacker did not start (said {line.strip()!r})")

    def _read_line(self, timeout: float) -> str:
        assert self.attacker is not None and self.attacker.stdout is not None
        ready, _, _ = select.select([self.attacker.stdout], [], [], timeout)
        return self.attacker.stdout.readline() if ready else ""

    def _stop_attacker(self) -> dict[str, Any]:
        import json

        if self.attacker is None:
            return {"error": "not started"}
        assert self.attacker.stdin is not None
        self.attacker.stdin.close()
        line = self._read_line(ATTACKER_REPORT_TIMEOUT)
        try:
            self.attacker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.attacker.kill()
            self.attacker.wait(timeout=10)
        return json.loads(line) if line.strip() else {"error": "no report"}


# -- the report ----------------------------------------------------------------------


def figures(workers: list[dict[str, Any]]) -> dict[str, Any]:
    """A kind of worker's figures in one kind of phase, over the rounds.

    The enrollment figures are medians over the rounds (one each); the builds are pooled.
    """
    if not workers:
        return {}

    def median(key: str) -> float | None:
        values = [w[key] for w in workers if w.get(key) is not None]
        return statistics.median(values) if values else None

    for w in workers:
        if "add_seconds" in w and "configure_seconds" in w:
            w["add_and_configure_seconds"] = w["add_seconds"] + w["configure_seconds"]
    builds = [b for w in workers for b in w.get("builds", [])]
    good = [b for b in builds if b["result"] == 0 and b["output_complete"]]
    return {"configure": median("add_and_configure_seconds"), "create": median("create_seconds"),
            "attempts": sum(w.get("create_attempts", 0) for w in workers), "attach": median("attach_seconds"),
            "ok": len(good), "builds": len(builds), **summary([b["seconds"] for b in builds])}


def report(out: dict[str, Any], args: argparse.Namespace) -> bool:
    """Print the markdown tables; whether every phase ran and every build succeeded."""
    import json

    rounds = out["rounds"]
    kinds = ("baseline", "attack")
    new = {k: figures([r[k]["new"] for r in rounds if k in r]) for k in kinds}
    held = {k: figures([r[k]["attached"] for r in rounds if k in r]) for k in kinds}
    attackers = [r["attacker"] for r in rounds if "attacker" in r]
    expected = args.rounds * args.builds

    def s(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f} s"

    def row(label: str, f: dict[str, dict[str, Any]], key: str) -> None:
        b, t = f["baseline"].get(key), f["attack"].get(key)
        ratio = f"{t / b:.2f}" if t is not None and b else "-"
        cells = [s(b), s(t)]
        if key == "create":
            cells = [f"{cell} ({f[k].get('attempts', '-')})" for cell, k in zip(cells, kinds, strict=True)]
        print(f"| {label} | {cells[0]} | {cells[1]} | {ratio} |")

    def ok(f: dict[str, Any]) -> str:
        return f"{f['ok']}/{expected}" if f else f"0/{expected}"

    def total(key: str) -> Any:
        values = [a.get(key) for a in attackers if a.get(key) is not None]
        return sum(values) if values else None

    def each(key: str) -> str:
        return " + ".join(str(r.get(key)) for r in rounds) or "-"

    per = f"median of {args.rounds} rounds" if args.rounds > 1 else "one round"
    lines = args.output_lines
    print(f"| measure ({per}; builds: all {expected}) | baseline | under attack | ratio |\n|---|---|---|---|")
    row("new worker: `bbenroll add` until the master has configured it", new, "configure")
    row("new worker: enroll, `bbenroll worker create` (attempts in all)", new, "create")
    row("new worker: attach, `buildbot-worker start` until connected", new, "attach")
    row(f"new worker: build ({lines} lines of output), median", new, "median")
    row("new worker: build, max", new, "max")
    row("new worker: build, min (the least disturbed by other load)", new, "min")
    print(f"| new worker: builds that succeeded with their whole log | {ok(new['baseline'])} "
          f"| {ok(new['attack'])} | |")
    row(f"attached worker: build ({lines} lines), median", held, "median")
    row("attached worker: build, max", held, "max")
    row("attached worker: build, min", held, "min")
    print(f"| attached worker: builds that succeeded with their whole log | {ok(held['baseline'])} "
          f"| {ok(held['attack'])} | |")
    every = "error" not in out and all(f.get("ok") == expected for f in [*new.values(), *held.values()])
    print()
    print("| measure | value |\n|---|---|")
    print(f"| every build succeeded | {'yes' if every else '**no**'} |")
    peaks = [r["fds_peak"] for r in rounds if "fds_peak" in r]
    base_peaks = [r["fds_baseline_peak"] for r in rounds if "fds_baseline_peak" in r]
    after = [r["fds_after_attack"] for r in rounds if "fds_after_attack" in r]
    print(f"| master open fds: idle / attached worker connected / peak in baseline / peak under attack / "
          f"{SETTLE:g} s after the (last) attack | {out.get('fds_idle')} / {out.get('fds_attached')} / "
          f"{max(base_peaks, default='-')} / {max(peaks, default='-')} / {after[-1] if after else '-'} |")
    print(f"| attacker raw connections (all rounds): opens / connected / dropped by master | "
          f"{total('opens')} / {total('connected')} / {total('dropped_by_master')} |")
    medians = " + ".join(f"{a.get('open_median_after_ramp', 0):g}" for a in attackers) or "-"
    print(f"| attacker raw connections held open: peak / median after ramp | "
          f"{max((a.get('open_peak', 0) for a in attackers), default='-')} / {medians} |")
    outcomes: dict[str, int] = {}
    for a in attackers:
        for k, v in (a.get("guess_outcomes") or {}).items():
            outcomes[k] = outcomes.get(k, 0) + v
    print(f"| wrong-swissnum lookups sent (all rounds) / outcomes | {total('guesses_sent')} / {outcomes} |")
    print(f"| phase length, s: baseline / under attack ({ATTACK_RAMP:g} s ramp included) | "
          f"{each('baseline_phase_seconds')} / {each('attack_phase_seconds')} |")
    print(f"| master CPU time in the phase, s: baseline / under attack | {each('baseline_master_cpu')} / "
          f"{each('attack_master_cpu')} |")
    attacked = [r for r in rounds if "attack_phase_seconds" in r]
    ran = bool(attacked) and all(r.get("attacker_ran_throughout") for r in attacked)
    held_for = "held throughout" if ran else "**ended before the phase did**"
    last_guess = " + ".join(str(a.get("last_guess_answered_after")) for a in attackers)
    print(f"| the attack | raw connections {held_for}; last guess answered {last_guess} s after the "
          f"attacker started |")
    still = all(r.get("attached_still_connected") for r in rounds) and bool(rounds)
    print(f"| attached worker still connected after every attack | {'yes' if still else '**no**'} |")
    load = [f"{x:.2f}" for x in (*out.get("loadavg_start", ()), *out.get("loadavg_end", ()))]
    print(f"| load average (1, 5, 15 min) at start / end | {' '.join(load[:3])} / {' '.join(load[3:])} |")
    for number, r in enumerate(rounds, 1):
        for k in kinds:
            errors = (r.get(k) or {}).get("new", {}).get("create_errors")
            if errors:
                print(f"round {number}, {k}: worker create failures: {errors}")
    if "error" in out:
        print(f"stopped early: {out['error']}")
    print(json.dumps(out, default=str), file=sys.stderr)
    return every


def missing_extras() -> list[str]:
    return [dist for module, dist in EXTRAS if importlib.util.find_spec(module) is None]


def build_bench(args: argparse.Namespace, attacker_argv: Callable[[str], list[str]]) -> None:
    missing = missing_extras()
    if missing:
        raise SystemExit(f"--build needs {', '.join(missing)}: pip install -e '.[test]'")
    try:
        out = BuildBench(args, attacker_argv).run()
    except KeyboardInterrupt:
        raise SystemExit("interrupted (every process the bench started was stopped)") from None
    if not report(out, args):
        raise SystemExit(1)
