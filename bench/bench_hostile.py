"""A legitimate worker's times against a master under a connection and guessing attack.

Run from the root of a checkout (all traffic goes to 127.0.0.1, and every
phase is bounded in count and time, so the script stops by itself)::

    .venv/bin/python bench/bench_hostile.py [--n 20] [--conns 1000] [--guesses 1000]

It creates a throwaway registry with one worker, starts an
``EnrollmentService`` in its own process (the SERVE script of
tests/worker/test_setup.py), and then:

1. baseline: times ``--n`` legitimate ``get_worker_config`` round trips, each
   over a fresh client Tub (``start_client_tub``), one after the other;
2. under attack: starts an attacker process (its own soft RLIMIT_NOFILE
   raised) that holds up to ``--conns`` raw TCP connections to the Foolscap
   port that never send a byte (reopening each one the master drops, at most
   ``--max-opens`` opens in all) and sends ``--guesses`` lookups of wrong
   swissnums from real Foolscap client Tubs, and times the same ``--n``
   round trips meanwhile.

The round trips of each phase are spread over ``--spread`` seconds, so the
attacked ones meet the whole of the attack, not just its first second.

It prints the median and maximum of both phases and their ratio, the
master's open fds (from /proc/PID/fd) before, at peak and after, and how
many of the attacker's connections the master kept open. No Buildbot build.

With ``--build`` it does the same with real Buildbot instead (bench/hostile_build.py):
a master with the bbenroll hook; in each phase a fresh worker is added with
``bbenroll add``, enrolled with ``bbenroll worker create``, started and attached,
and then it and a worker attached all along run ``--builds`` forced builds each;
the attack phase runs the same attacker meanwhile. ``--rounds`` baseline and
attack phases take turns::

    .venv/bin/python bench/bench_hostile.py --build [--rounds 2] [--builds 5] [--conns 1000] [--guesses 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this checkout's bbenroll, not an installed one

SERVE = """
import sys
from twisted.internet import reactor
from bbenroll.master.service import EnrollmentService
service = EnrollmentService(sys.argv[1], reactor=reactor, poll_interval=0.2)
service.startService()
print("ready", flush=True)
reactor.run()
"""

TRIP_TIMEOUT = 60.0  # s: one legitimate round trip, at most
ATTACK_RAMP = 3.0  # s the attacker runs before the legitimate worker starts


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


def raise_nofile(want: int) -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# -- the master ---------------------------------------------------------------------


def make_registry(directory: Path) -> tuple[Path, str]:
    from bbenroll.registry import store

    port, pb_port = free_port(), free_port()
    path = directory / "workers.toml"
    store.create(path, location=[f"tcp:127.0.0.1:{port}"], listen=f"tcp:{port}:interface=127.0.0.1",
                 pb=f"tcp:{pb_port}:interface=127.0.0.1", identity="master.pem")
    out = subprocess.run([sys.executable, "-m", "bbenroll", "--registry", str(path), "add", "worker1"],
                         cwd=ROOT, capture_output=True, text=True, check=True, timeout=60)
    return path, out.stdout.strip()


def start_master(path: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", SERVE, str(path)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline().strip() if proc.stdout else ""
    if line != "ready":
        proc.kill()
        raise SystemExit(f"the master did not start (said {line!r})")
    return proc


# -- the legitimate worker -------------------------------------------------------------


def legit_trips(reactor, furl: str, n: int, interval: float):
    """``n`` round trips, one after the other, started at least ``interval`` s apart.

    A list of (seconds or None, error or None).
    """
    from twisted.internet import defer

    from bbenroll.tunnel.wire import start_client_tub

    @defer.inlineCallbacks
    def run():
        from twisted.internet.task import deferLater

        results = []
        first = time.monotonic()
        for i in range(n):
            wait = first + i * interval - time.monotonic()
            if wait > 0:
                yield deferLater(reactor, wait, lambda: None)
            start = time.monotonic()
            tub = start_client_tub()
            try:
                d = tub.getReference(furl)
                d.addCallback(lambda ref: ref.callRemote("get_worker_config"))
                d.addTimeout(TRIP_TIMEOUT, reactor)
                config = yield d
                assert config["name"] == "worker1"
                results.append((time.monotonic() - start, None))
            except Exception as e:
                results.append((None, f"{type(e).__name__}: {str(e)[:120]}"))
            yield defer.maybeDeferred(tub.stopService)
        return results

    return run()


# -- the attacker (its own process) --------------------------------------------------------


def attacker(args: argparse.Namespace) -> None:
    from twisted.internet import defer, protocol, reactor

    from bbenroll.furl import build_furl, new_swissnum, parse_furl
    from bbenroll.tunnel.wire import start_client_tub

    limits = raise_nofile(args.conns + 4 * args.guess_tubs + 256)
    good = parse_furl(args.furl)
    host, port = "127.0.0.1", int(good.hints[0].rsplit(":", 1)[1])
    stats = {"nofile": list(limits), "opens": 0, "connected": 0, "dropped_by_master": 0, "failed": 0,
             "open_now": 0, "open_peak": 0, "open_samples": [], "guesses_sent": 0, "guess_outcomes": {}}
    stopping = []
    started = time.monotonic()
    deadline = started + args.attack_seconds

    class Silent(protocol.Protocol):
        def connectionMade(self) -> None:
            stats["connected"] += 1
            stats["open_now"] += 1
            stats["open_peak"] = max(stats["open_peak"], stats["open_now"])

        def connectionLost(self, reason=None) -> None:
            stats["open_now"] -= 1
            if not stopping:
                stats["dropped_by_master"] += 1
                reactor.callLater(args.reopen_delay, open_one)

    class Factory(protocol.ClientFactory):
        protocol = Silent

        def clientConnectionFailed(self, connector, reason) -> None:
            stats["failed"] += 1
            if not stopping:
                reactor.callLater(args.reopen_delay, open_one)

    factory = Factory()
    held = []

    def open_one() -> None:
        if stopping or stats["opens"] >= args.max_opens or time.monotonic() > deadline:
            return
        stats["opens"] += 1
        held.append(reactor.connectTCP(host, port, factory, timeout=10))

    tubs = [start_client_tub() for _ in range(args.guess_tubs)]

    @defer.inlineCallbacks
    def guesser(tub):
        while not stopping and stats["guesses_sent"] < args.guesses and time.monotonic() < deadline:
            stats["guesses_sent"] += 1
            bad = build_furl(good.tubid, good.hints, new_swissnum())
            d = tub.getReference(bad)
            d.addTimeout(30, reactor)
            try:
                yield d
                outcome = "ACCEPTED (!)"
            except Exception as e:
                text = str(e)
                if "unknown" in text.lower() or "refus" in text.lower() or "RemoteException" in repr(e):
                    outcome = "refused"
                else:
                    outcome = type(e).__name__
            stats["guess_outcomes"][outcome] = stats["guess_outcomes"].get(outcome, 0) + 1
            if args.timeline:
                stats["last_guess_answered_after"] = round(time.monotonic() - started, 1)

    def sample() -> None:
        stats["open_samples"].append(stats["open_now"])

    def stop() -> None:
        if stopping:
            return
        stopping.append(True)
        for connector in held:
            connector.disconnect()
        d = defer.DeferredList([defer.maybeDeferred(t.stopService) for t in tubs])
        d.addBoth(lambda _: reactor.callLater(0.5, reactor.stop))

    from twisted.internet.task import LoopingCall

    LoopingCall(sample).start(0.25)
    for _ in range(args.conns):
        open_one()
    for i in range(args.guess_concurrency):
        guesser(tubs[i % len(tubs)])
    reactor.callLater(args.attack_seconds, stop)
    # the bench closes our stdin when its measurement is done
    threading.Thread(target=lambda: (sys.stdin.read(), reactor.callFromThread(stop)), daemon=True).start()
    print("ready", flush=True)
    reactor.run()
    samples = stats.pop("open_samples")
    later = samples[int(len(samples) * 0.3):] or [0]  # after the ramp
    stats["open_median_after_ramp"] = statistics.median(later)
    print(json.dumps(stats), flush=True)


# -- the bench -----------------------------------------------------------------------


def summary(results: list[tuple[float | None, str | None]]) -> dict[str, object]:
    times = [t for t, _ in results if t is not None]
    errors = [e for _, e in results if e is not None]
    return {"ok": len(times), "failed": len(errors), "errors": sorted(set(errors)),
            "median": statistics.median(times) if times else None, "max": max(times) if times else None}


def attacker_argv(args: argparse.Namespace, furl: str) -> list[str]:
    """The command line of the attacker process, against the master that serves ``furl``."""
    return [sys.executable, __file__, "--attacker", "--furl", furl, "--conns", str(args.conns),
            "--guesses", str(args.guesses), "--guess-tubs", str(args.guess_tubs),
            "--guess-concurrency", str(args.guess_concurrency), "--max-opens", str(args.max_opens),
            "--reopen-delay", str(args.reopen_delay), "--attack-seconds", str(args.attack_seconds)]


def bench(args: argparse.Namespace) -> None:
    from twisted.internet import defer, task

    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
        path, furl = make_registry(Path(tmp))
        master = start_master(path)
        out: dict[str, object] = {}
        try:
            out["fds_idle"] = open_fds(master.pid)

            async def main(reactor) -> None:
                from twisted.internet.task import LoopingCall, deferLater

                out["baseline"] = summary(await legit_trips(reactor, furl, args.n, args.spread / args.n))
                out["fds_after_baseline"] = open_fds(master.pid)
                att = subprocess.Popen(attacker_argv(args, furl), cwd=ROOT, stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True)
                assert att.stdout is not None and att.stdin is not None
                if att.stdout.readline().strip() != "ready":
                    raise SystemExit("the attacker did not start")
                peak = [0]

                def fds() -> None:
                    peak[0] = max(peak[0], open_fds(master.pid))

                sampler = LoopingCall(fds)
                sampler.start(0.1)
                await deferLater(reactor, ATTACK_RAMP, lambda: None)
                start = time.monotonic()
                out["attack"] = summary(await legit_trips(reactor, furl, args.n, args.spread / args.n))
                out["attack_phase_seconds"] = round(time.monotonic() - start, 1)
                out["fds_during_attack_end"] = open_fds(master.pid)
                sampler.stop()
                out["fds_peak"] = peak[0]
                att.stdin.close()  # tells the attacker to stop
                line = await defer.Deferred.fromCoroutine(_thread(reactor, att.stdout.readline))
                att.wait(timeout=60)
                out["attacker"] = json.loads(line) if line.strip() else {"error": "no report"}
                await deferLater(reactor, 2.0, lambda: None)
                out["fds_2s_after_attack"] = open_fds(master.pid)

            task.react(lambda r: defer.Deferred.fromCoroutine(main(r)))
        except SystemExit as e:
            if e.code not in (0, None):
                raise
        finally:
            master.terminate()
            master.wait(timeout=30)
        report(out, args)


async def _thread(reactor, fn):
    from twisted.internet import threads

    return await threads.deferToThread(fn)


def report(out: dict, args: argparse.Namespace) -> None:
    base, att, a = out["baseline"], out["attack"], out.get("attacker", {})

    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x * 1000:.0f} ms"

    ratio = (att["median"] / base["median"]) if att["median"] and base["median"] else None
    rows = [
        ("legitimate round trips, baseline", f"{base['ok']}/{args.n} ok; median {ms(base['median'])}, "
                                             f"max {ms(base['max'])}"),
        ("legitimate round trips, under attack", f"{att['ok']}/{args.n} ok; median {ms(att['median'])}, "
                                                 f"max {ms(att['max'])}"),
        ("ratio of medians (attack / baseline)", "-" if ratio is None else f"{ratio:.2f}"),
        ("master open fds: idle / peak / 2 s after",
         f"{out['fds_idle']} / {out['fds_peak']} / {out['fds_2s_after_attack']}"),
        ("attacker raw connections: opens / connected / dropped by master",
         f"{a.get('opens')} / {a.get('connected')} / {a.get('dropped_by_master')}"),
        ("attacker raw connections held open: peak / median after ramp",
         f"{a.get('open_peak')} / {a.get('open_median_after_ramp')}"),
        ("wrong-swissnum lookups sent / outcomes", f"{a.get('guesses_sent')} / {a.get('guess_outcomes')}"),
        ("attack phase (legitimate trips)", f"{out['attack_phase_seconds']} s"),
    ]
    print("| measure | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    for phase in ("baseline", "attack"):
        if out[phase]["errors"]:
            print(f"{phase} errors: {out[phase]['errors']}")
    print(json.dumps(out, default=str), file=sys.stderr)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20, help="legitimate round trips per phase (20)")
    p.add_argument("--conns", type=int, default=1000, help="raw silent TCP connections to hold (1000)")
    p.add_argument("--guesses", type=int, default=1000, help="wrong-swissnum lookups (1000)")
    p.add_argument("--guess-tubs", type=int, default=20, help="client Tubs the guesses come from (20)")
    p.add_argument("--guess-concurrency", type=int, default=200, help="guesses in flight at once (200)")
    p.add_argument("--max-opens", type=int, default=20000, help="raw connection opens in all (20000)")
    p.add_argument("--reopen-delay", type=float, default=1.0, help="s before reopening a dropped one (1)")
    p.add_argument("--attack-seconds", type=float, default=None,
                   help="the attacker stops by then (120; with --build 300)")
    p.add_argument("--spread", type=float, default=20.0,
                   help="s over which each phase's round trips are spread (20)")
    build = p.add_argument_group("build mode", "real Buildbot, workers, builds (bench/hostile_build.py)")
    build.add_argument("--build", action="store_true",
                       help="enroll, attach and build with real Buildbot workers instead of round trips")
    build.add_argument("--rounds", type=int, default=2, help="baseline and attack phases, taking turns (2)")
    build.add_argument("--builds", type=int, default=5, help="forced builds per worker and phase (5)")
    build.add_argument("--warmup-builds", type=int, default=2,
                       help="untimed builds before the baseline, on the worker that stays attached (2)")
    build.add_argument("--output-lines", type=int, default=2000, help="lines each build prints (2000)")
    build.add_argument("--create-attempts", type=int, default=3,
                       help="tries of `bbenroll worker create` before a phase fails (3)")
    build.add_argument("--phase-timeout", type=float, default=300.0, help="s each phase may take (300)")
    build.add_argument("--keep", action="store_true", help="keep the directory with the logs")
    p.add_argument("--attacker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--furl", help=argparse.SUPPRESS)
    p.add_argument("--timeline", action="store_true", help=argparse.SUPPRESS)  # the attacker's, --build only
    args = p.parse_args()
    if args.attack_seconds is None:
        args.attack_seconds = 300.0 if args.build else 120.0
    if args.attacker:
        attacker(args)
    elif args.build:
        from hostile_build import build_bench  # bench/, beside this file (sys.path[0])

        build_bench(args, lambda furl: [*attacker_argv(args, furl), "--timeline"])
    else:
        bench(args)


if __name__ == "__main__":
    main()
