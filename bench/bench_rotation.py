#!/usr/bin/env python3
"""How fast pushed rotation reaches a fleet, and what it costs a running build (docs/rotation.md).

Run from the root of a checkout, with the project's venv (its ``[test]`` extra brings
buildbot and buildbot-worker; the script imports ``tests.helpers`` from the checkout)::

    .venv/bin/python bench/bench_rotation.py [--quick] [--parts confirm,builds] [--sizes 1,10,50]
                                              [--repeat N] [--build-lines N] [--heartbeat S]
                                              [--timeout S] [--offer-window K] [--markdown FILE]

1. confirm: for each size N, a throwaway registry with N workers and a real
   ``EnrollmentService`` in its own process (the master's PB port is a TCP sink that
   counts bytes, standing in for Buildbot's; its per-address caps on connections
   without an accepted secret are raised to N, since all N tunnels come from
   127.0.0.1 where a fleet comes from N machines). One client process holds N
   tunnels, one per worker, each opened the way buildbot-worker opens it
   (``clientFromString`` with ``bbenroll:furlfile=...:keyfile=...``, the worker's own
   key as ``worker create`` writes it, so the process's one ``TunnelTable``), each
   with one stream that logs in to the PB port as its worker (the master checks
   that), then writes 1 KiB every ``--heartbeat`` s (0.2). A round runs ``bbenroll rotate --all`` (a fresh
   process, as an admin would) and polls the registry every 20 ms until every worker's
   ``delivered`` equals its ``serial``. Time 0 is just before the command starts. It
   reports the command's own time, the first, median and last worker seen confirmed,
   and whether every stream stayed open (the session moved, nothing reset).
2. builds: a Buildbot master with the hook and one worker made by ``bbenroll worker
   create``. Rounds alternate (in a rotating order) a build printing ``--build-lines``
   deterministic lines as fast as it can, plain, and the same build with
   ``bbenroll rotate --all`` half-way (once REST counts half its lines; the plain
   build is watched the same way). An untimed warm-up build comes first.
   Wall time from the force request until REST says complete, polled every 0.1 s;
   the log is checked byte for byte afterwards (not timed), and the rotated rounds'
   deliveries must be confirmed. The ratio is between medians of the same run.

Figures are medians (and minima) over the rounds. Every process it starts is stopped
at the end, also on failure. Exit status 1 if a check fails (a stream lost, a build not
successful or its log wrong, a delivery not confirmed within --timeout).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this checkout's bbenroll and tests.helpers

PYTHON = sys.executable
BIN = Path(PYTHON).parent
LOOP = "127.0.0.1"
POLL = 0.02  # s between registry reads while waiting for confirmations
HEARTBEAT = 0.2  # s between the 1 KiB writes of each bench stream
START_PER_TUNNEL = 1.5  # s the client process may take per tunnel to have them all open (a loaded machine)

SERVE = """
import sys
from twisted.internet import protocol, reactor
from twisted.logger import globalLogBeginner, textFileLogObserver
from bbenroll.master import guard
from bbenroll.master.service import EnrollmentService

# every bench tunnel comes from 127.0.0.1, where a fleet's come from as many machines: the per-address
# caps on connections without an accepted secret (the worker's test of an offered FURL is one) would
# otherwise refuse all but 8 at a time, which no fleet of separate machines meets
guard.Guard.max_unauthenticated_per_address = int(sys.argv[4])
guard.Guard.max_silent_per_address = max(guard.Guard.max_silent_per_address, int(sys.argv[4]))

window = int(sys.argv[5])
if window:
    # --offer-window: the change proposed for EnrollmentService._offer_due, tried from outside
    # (the bench's master only): at most `window` offers waiting for their confirmation at once;
    # the others stay due, and the writes of the confirmations (_after_write) offer the next ones
    failed = {}
    real_offer, real_failed = EnrollmentService._offer, EnrollmentService.update_failed

    def waiting(service, now):
        return sum(1 for o in service._to_check
                   if o.offered_serial is not None and o.serial < o.offered_serial
                   and failed.get(o) != o.offered_serial and now - o.offered_at < 40.0)

    def paced_offer(service, obj, worker):
        if waiting(service, service.clock.seconds()) < window:
            real_offer(service, obj, worker)

    def noted_failure(service, obj, serial, reason):
        failed[obj] = serial
        real_failed(service, obj, serial, reason)
        service._offer_due()

    EnrollmentService._offer = paced_offer
    EnrollmentService.update_failed = noted_failure

globalLogBeginner.beginLoggingTo([textFileLogObserver(open(sys.argv[3], "a"))], redirectStandardIO=False)

class Sink(protocol.Protocol):  # Buildbot's PB port, for the bench: takes bytes, says nothing
    def dataReceived(self, data):
        pass

reactor.listenTCP(int(sys.argv[2]), protocol.Factory.forProtocol(Sink), interface="127.0.0.1")
service = EnrollmentService(sys.argv[1], reactor=reactor)
service.startService()
print("ready", flush=True)
reactor.run()
"""

CLIENT = """
import json, sys, threading
from pathlib import Path
from twisted.internet import protocol, reactor, task
from twisted.internet.endpoints import clientFromString
from twisted.logger import globalLogBeginner, textFileLogObserver
from bbenroll.worker.setup import KEY_FILE, connection_string
from tests.helpers.pb import login_bytes

globalLogBeginner.beginLoggingTo([textFileLogObserver(open(sys.argv[3], "a"))], redirectStandardIO=False)
paths = sorted(Path(sys.argv[1]).glob("*/bbenroll.furl"))
state = {"open": 0, "lost": 0, "failed": 0}

class Hold(protocol.Protocol):
    def connectionMade(self):
        state["open"] += 1
        # the master lets a stream through to the PB port once it logs in as its own worker
        self.transport.write(login_bytes(self.factory.name))
        self.beat = task.LoopingCall(self.transport.write, b"x" * 1024)
        self.beat.start(float(sys.argv[2]), now=False)
        if state["open"] == len(paths):
            print("ready", flush=True)

    def connectionLost(self, reason=None):
        state["open"] -= 1
        state["lost"] += 1
        if self.beat.running:
            self.beat.stop()

def connect(path):
    # with the worker's key, as `bbenroll worker create` writes it: no Tub mints a key of its own
    endpoint = clientFromString(reactor, connection_string(path, 600, path.parent / KEY_FILE))
    factory = protocol.Factory.forProtocol(Hold)
    factory.name = path.parent.name
    endpoint.connect(factory).addErrback(failed, path)

def failed(f, path):
    # a first connect that timed out on a busy master: buildbot-worker's ClientService retries too
    state["failed"] += 1
    reactor.callLater(1.0, connect, path)

for path in paths:
    connect(path)

def commands():
    for line in sys.stdin:
        if line.strip() == "report":
            reactor.callFromThread(lambda: print(json.dumps(state), flush=True))
    reactor.callFromThread(reactor.stop)

threading.Thread(target=commands, daemon=True).start()
reactor.run()
"""


class BenchError(Exception):
    pass


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOP, 0))
        return s.getsockname()[1]


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "BBENROLL_REGISTRY"}
    env["NO_COLOR"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def bbenroll(registry: Path, *args: str) -> str:
    proc = subprocess.run([str(BIN / "bbenroll"), "--registry", str(registry), *args], capture_output=True,
                          text=True, timeout=120, env=child_env())
    if proc.returncode != 0:
        raise BenchError(f"bbenroll {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def serials(registry: Path) -> dict[str, tuple[int, int | None]]:
    """{worker: (serial, delivered)} as the registry holds them now."""
    from bbenroll.registry import store

    return {name: (w.serial, w.delivered) for name, w in store.load(registry).registry.workers.items()}


def median_min(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f})"


# -- part 1: time to all confirmed -------------------------------------------------------


class Fleet:
    """A master service (own process) and N tunnels in one client process."""

    def __init__(self, directory: Path, n: int, heartbeat: float = HEARTBEAT, offer_window: int = 0) -> None:
        from bbenroll.fileio import atomic_write
        from bbenroll.registry import model, store
        from bbenroll.worker.setup import KEY_FILE

        directory.mkdir(parents=True)
        self.registry = directory / "workers.toml"
        listen, pb = free_port(), free_port()
        store.create(self.registry, location=[f"tcp:{LOOP}:{listen}"],
                     listen=f"tcp:{listen}:interface={LOOP}", pb=f"tcp:{pb}:interface={LOOP}",
                     identity="master.pem")
        clients = directory / "workers"
        now = datetime.now(UTC).replace(microsecond=0)
        # one edit for the whole fleet (N `bbenroll add`s would cost O(N^2): minutes at 1,000)
        with store.edit(self.registry) as editor:
            for i in range(n):
                editor.add(model.new_worker(f"w{i:03d}", now))
            registry = editor.registry
        keys = worker_keys(directory.parent / "keys", n)
        for (name, worker), key in zip(registry.workers.items(), keys, strict=True):
            (clients / name).mkdir(parents=True, mode=0o700)
            furl_file = clients / name / "bbenroll.furl"
            furl_file.write_text(registry.furl(worker) + "\n")
            furl_file.chmod(0o600)
            atomic_write(clients / name / KEY_FILE, key)
        self.procs: list[subprocess.Popen[str]] = []
        # their logs stay in the directory (--keep) for when a round fails
        try:
            self.master = self._start([PYTHON, "-c", SERVE, str(self.registry), str(pb),
                                       str(directory / "master.log"), str(max(n, 8)), str(offer_window)],
                                      "the master")
            # each tunnel's Tub makes its own TLS key and handshake: up to a second each on a busy 2 cores
            self.client = self._start([PYTHON, "-c", CLIENT, str(clients), str(heartbeat),
                                       str(directory / "client.log")], f"{n} tunnels", stdin=True,
                                      timeout=max(120.0, n * START_PER_TUNNEL))
        except BaseException:
            self.stop()  # the caller gets no Fleet to stop: never leave a process behind
            raise

    def _start(self, argv: list[str], what: str, stdin: bool = False,
               timeout: float = 120.0) -> subprocess.Popen[str]:
        proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=child_env())
        self.procs.append(proc)
        line = read_line(proc, timeout)
        if line != "ready":
            raise BenchError(f"{what} did not start (said {line!r})")
        return proc

    def report(self) -> dict[str, int]:
        assert self.client.stdin is not None
        self.client.stdin.write("report\n")
        self.client.stdin.flush()
        return json.loads(read_line(self.client, 30))

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.stdin is not None:
                proc.stdin.close()
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def worker_keys(directory: Path, n: int) -> list[bytes]:
    """N distinct worker keys (``bbenroll.pem``), made once per run and shared by its fleets.

    A real worker has one (``bbenroll worker create``); without it every Tub the tunnel
    starts, the test connection of each pushed FURL too, would mint an RSA key: a
    fifth of a second each, which 1,000 tunnels in one process cannot afford.
    """
    from bbenroll.fileio import atomic_write
    from bbenroll.identity import make_identity_pem

    directory.mkdir(exist_ok=True)
    keys = []
    for i in range(n):
        path = directory / f"k{i:04d}.pem"
        if not path.exists():
            atomic_write(path, make_identity_pem("bbenroll worker"))
        keys.append(path.read_bytes())
    return keys


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """One line of a child's stdout, or "" after ``timeout`` (never blocks the bench for good)."""
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline() if proc.stdout else ""),
                              daemon=True)
    reader.start()
    reader.join(timeout)
    return box[0].strip() if box else ""


def confirm_round(fleet: Fleet, timeout: float) -> dict[str, float]:
    before = serials(fleet.registry)
    seen: dict[str, float] = {}
    start = time.monotonic()
    bbenroll(fleet.registry, "rotate", "--all")
    command = time.monotonic() - start
    after = serials(fleet.registry)
    if any(after[n][0] != before[n][0] + 1 for n in before):
        raise BenchError("rotate --all did not raise every serial by one")
    while len(seen) < len(before):
        now = time.monotonic()
        if now - start > timeout:
            raise BenchError(f"only {len(seen)}/{len(before)} deliveries confirmed after {timeout:.0f}s")
        for name, (serial, delivered) in serials(fleet.registry).items():
            if name not in seen and delivered == serial:
                seen[name] = now - start
        time.sleep(POLL)
    times = sorted(seen.values())
    return {"command": command, "first": times[0], "median": statistics.median(times), "last": times[-1]}


def part_confirm(args: argparse.Namespace, tmp: Path) -> tuple[list[dict[str, Any]], list[str]]:
    rows, failures = [], []
    for n in args.sizes:
        log(f"confirm: {n} workers")
        fleet = Fleet(tmp / f"fleet{n}", n, args.heartbeat, args.offer_window)
        try:
            rounds = []
            for i in range(args.repeat):
                rounds.append(confirm_round(fleet, args.timeout))
                log(f"  round {i + 1}: all confirmed after {rounds[-1]['last']:.2f}s")
                time.sleep(1.0)  # the old Tubs' connections end; the next round starts clean
            state = fleet.report()
        finally:
            fleet.stop()
        if state["lost"] or state["open"] != n:
            failures.append(f"{n} workers: {state['lost']} streams lost, {state['open']}/{n} open at the end")
        rows.append({"n": n, "rounds": rounds, "state": state})
    return rows, failures


# -- part 2: builds with and without a rotation --------------------------------------------


def part_builds(args: argparse.Namespace, tmp: Path) -> tuple[dict[str, Any], list[str]]:
    from tests.helpers.rotation import SUCCESS, RotationFarm, expected_output

    failures: list[str] = []
    farm = RotationFarm(tmp / "builds", ["w1"])
    expected = expected_output(args.build_lines)
    try:
        def one(rotate: bool) -> dict[str, Any]:
            serial = farm.entry("w1").serial
            start = time.monotonic()
            build = farm.force("w1", args.build_lines, 0)
            # both variants watch the log the same way (REST, every 0.2 s); one rotates half-way
            farm.wait_output(build, args.build_lines // 2, timeout=600)
            rotated = time.monotonic()
            if rotate:
                bbenroll(farm.registry, "rotate", "--all")
            confirmed = finished = None
            while finished is None:
                current = farm.build(build)
                if current and current["complete"]:
                    finished, wall = current, time.monotonic() - start
                if rotate and confirmed is None and farm.entry("w1").delivered == serial + 1:
                    confirmed = time.monotonic() - rotated
                time.sleep(0.1)
            during = confirmed is not None
            if rotate and confirmed is None:  # after the build: not part of its wall time
                wait_for(lambda: farm.entry("w1").delivered == serial + 1, args.timeout, "the confirmation",
                         interval=0.05)
                confirmed = time.monotonic() - rotated
            kind = "with" if rotate else "without"
            if finished["results"] != SUCCESS:
                failures.append(f"a build {kind} rotation: results {finished['results']}")
            elif farm.settled_output(finished, expected) != expected:
                failures.append(f"a build {kind} rotation: log differs")
            return {"wall": wall, "confirmed": confirmed, "during": during, "half": rotated - start}

        log("builds: warm-up")
        one(False)
        plain, rotated, paired, confirms, halves, during = [], [], [], [], [], []
        for i in range(args.repeat):
            order = (False, True) if i % 2 == 0 else (True, False)
            got = {kind: one(kind) for kind in order}
            plain.append(got[False]["wall"])
            rotated.append(got[True]["wall"])
            paired.append(got[True]["wall"] / got[False]["wall"])
            confirms.append(got[True]["confirmed"])
            halves.append(got[True]["half"])
            during.append(got[True]["during"])
            log(f"  round {i + 1}: plain {plain[-1]:.2f}s, rotated {rotated[-1]:.2f}s "
                f"(rotated {halves[-1]:.1f}s in, confirmed {confirms[-1]:.2f}s later)")
    finally:
        farm.stop()
    result = {"plain": plain, "rotated": rotated, "paired": paired, "confirms": confirms, "halves": halves,
              "during": during}
    return result, failures


# -- report ------------------------------------------------------------------------------


def report(args: argparse.Namespace, confirm: list[dict[str, Any]] | None, builds: dict[str, Any] | None,
           failures: list[str]) -> str:
    import foolscap

    import twisted
    from tests.helpers.rotation import LINE_BYTES

    lines = [f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on Python {platform.python_version()}, "
             f"Twisted {twisted.__version__}, Foolscap {foolscap.__version__}, {platform.system()} "
             f"{platform.release()}, {os.cpu_count()} CPUs; {args.repeat} rounds.", ""]
    if confirm:
        lines += ["**From `bbenroll rotate --all` to every delivery confirmed** (one master, N tunnels "
                  "in one client process, one open stream each)", "",
                  "| workers | rotate --all command (s) | first confirmed (s) | median worker (s) | "
                  "all confirmed (s) | streams kept |",
                  "|---:|---:|---:|---:|---:|:---|"]
        for row in confirm:
            r, state = row["rounds"], row["state"]
            kept = f"{state['open']}/{row['n']}, {state['lost']} lost"
            lines.append(f"| {row['n']} | {median_min([x['command'] for x in r])} | "
                         f"{median_min([x['first'] for x in r])} | {median_min([x['median'] for x in r])} | "
                         f"{median_min([x['last'] for x in r])} | {kept} |")
        lines += ["", "Median (min) over the rounds; time 0 is just before the `bbenroll rotate --all` "
                  "process starts, so every column includes its run (the first one)."
                  " The registry was polled every 20 ms.", ""]
    if builds:
        ratio = statistics.median(builds["rotated"]) / statistics.median(builds["plain"])
        mb = args.build_lines * LINE_BYTES / 1e6
        lines += [f"**A build printing {mb:.0f} MB ({args.build_lines:,} lines), with and without "
                  "`rotate --all` half-way**", "",
                  "| build | plain (s) | rotated mid-build (s) | rotated/plain | paired | "
                  "rotate → confirmed, during the build (s) |",
                  "|:---|---:|---:|---:|---:|---:|",
                  f"| 1 worker, 1 build | {median_min(builds['plain'])} | {median_min(builds['rotated'])} | "
                  f"{ratio:.3f}x | {statistics.median(builds['paired']):.3f}x | "
                  f"{median_min(builds['confirms'])} |", "",
                  "Wall time from the force request to REST saying complete. The rotation came when "
                  f"REST counted half the log's lines (median {statistics.median(builds['halves']):.1f} s "
                  f"after the force request); {sum(builds['during'])} of {len(builds['during'])} "
                  "deliveries were confirmed before the build ended. "
                  "rotated/plain is the ratio of the medians, paired the median of each round's ratio. "
                  "Every log checked byte for byte.", ""]
    for failure in failures:
        lines.append(f"- **FAIL** {failure}")
    if not failures:
        lines.append("- every stream kept, every build successful with its exact log, "
                     "every delivery confirmed")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="sizes 1,10; 3 rounds; builds of 60,000 lines")
    parser.add_argument("--parts", default="confirm,builds", help="which parts (default: %(default)s)")
    parser.add_argument("--sizes", help="workers per fleet, comma-separated (default 1,10,50)")
    parser.add_argument("--repeat", type=int, help="rounds per part (default 5, --quick 3)")
    parser.add_argument("--build-lines", type=int, help="lines of the build, 151 bytes each "
                        "(default 300000: 45 MB; --quick 60000)")
    parser.add_argument("--timeout", type=float, default=60.0, help="s a rotation may take to be confirmed")
    parser.add_argument("--offer-window", type=int, default=0, metavar="K",
                        help="an experiment: the bench's master keeps at most K offers waiting for their "
                        "confirmation (0: as the service ships, all at once)")
    parser.add_argument("--heartbeat", type=float, default=HEARTBEAT,
                        help="s between the 1 KiB writes of each confirm stream (default: %(default)s)")
    parser.add_argument("--markdown", type=Path, help="also write the tables to FILE")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    args.sizes = [int(s) for s in (args.sizes or ("1,10" if args.quick else "1,10,50")).split(",")]
    args.repeat = args.repeat or (3 if args.quick else 5)
    args.build_lines = args.build_lines or (60_000 if args.quick else 300_000)
    parts = set(args.parts.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="bench-rotation-"))
    failures: list[str] = []
    confirm = builds = None
    try:
        if "confirm" in parts:
            confirm, failed = part_confirm(args, tmp)
            failures += failed
        if "builds" in parts:
            builds, failed = part_builds(args, tmp)
            failures += failed
    except BenchError as e:
        failures.append(str(e))
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    text = report(args, confirm, builds, failures)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
