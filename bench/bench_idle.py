#!/usr/bin/env python3
"""The master's idle cost: an EnrollmentService with 5,000 registered workers, none connected.

Run from the worktree, with the Python that has bbenroll installed:

    python bench/bench_idle.py [--workers 5000] [--seconds 30] [--reloads 5] [--code DIR] [--markdown FILE]

It builds a real registry in a temporary directory (``store.create``, then the
worker tables ``bbenroll add`` writes, as bench_registry.py builds them) and
runs the service alone (no Buildbot) in a process of its own, with the default
poll interval (1 s). ``--code DIR`` runs the service from another checkout
(its ``bbenroll`` first on ``PYTHONPATH``): the baseline, in the same run.

It reports:

- CPU of the service process over ``--seconds`` of idling, from
  ``/proc/PID/stat`` (utime + stime), as a percentage of one core;
- the cost of one tick (wall time inside ``EnrollmentService.tick``; the mean
  and the longest over the same window);
- for ``--reloads`` changes of the registry (one worker table appended each
  time), the longest block of the event loop: a 10 ms LoopingCall, started only
  for this phase, records how late it runs; the figure is its worst lateness
  around each reload, and beside it the longest garbage collection in the same
  window (a collection stops every thread: the parse's allocations in its thread
  trigger full collections, which the loop waits for too).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench_hostile import free_port
from bench_registry import describe_machine, markdown_table, worker_table

from bbenroll.fileio import atomic_write
from bbenroll.registry import store
from bbenroll.registry.tomledit import append_tables

CPU_TARGET = 0.5  # % of a core, 5,000 registered and none connected (issue #12)
PROBE_INTERVAL = 0.010  # s: the lateness probe of the reload phase
SETTLE = 3.0  # s after the start (and after each reload) before anything is measured
RELOAD_TIMEOUT = 60.0  # s a reload may take on a busy machine

# The service in its own process. SIGUSR2 starts the lateness probe; SIGUSR1 writes the
# figures (JSON) to argv[2] and starts them afresh. Only EnrollmentService's constructor,
# startService and tick are used, so that older checkouts run it unchanged.
CHILD = textwrap.dedent("""
    import gc, json, signal, sys, time
    from twisted.internet import reactor, task
    from twisted.logger import globalLogPublisher
    from bbenroll.master.service import EnrollmentService

    figures = {"ticks": 0, "tick_seconds": 0.0, "tick_max": 0.0, "late_max": 0.0, "reloads": 0,
               "gc_max": 0.0}
    gc_started = [0.0]

    def on_gc(phase, info):  # the longest garbage collection: it stops every thread
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            figures["gc_max"] = max(figures["gc_max"], time.perf_counter() - gc_started[0])

    gc.callbacks.append(on_gc)
    globalLogPublisher.addObserver(
        lambda e: figures.__setitem__("reloads", figures["reloads"] + 1)
        if "reloaded {path}" in str(e.get("log_format", "")) else None)
    service = EnrollmentService(sys.argv[1], reactor=reactor)
    tick = service.tick

    def timed_tick():
        start = time.perf_counter()
        try:
            tick()
        finally:
            spent = time.perf_counter() - start
            figures["ticks"] += 1
            figures["tick_seconds"] += spent
            figures["tick_max"] = max(figures["tick_max"], spent)

    service.tick = timed_tick
    expected = [None]

    def probe():
        now = time.perf_counter()
        if expected[0] is not None:
            figures["late_max"] = max(figures["late_max"], now - expected[0])
        expected[0] = now + INTERVAL

    def report():
        with open(sys.argv[2], "w") as f:
            json.dump(figures, f)
        for key in figures:
            figures[key] = 0 if key in ("ticks", "reloads") else 0.0

    signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(report))
    signal.signal(signal.SIGUSR2, lambda *_: reactor.callFromThread(
        lambda: task.LoopingCall(probe).start(INTERVAL)))
    service.startService()
    print("ready", flush=True)
    reactor.run()
""").replace("INTERVAL", repr(PROBE_INTERVAL))


def build_registry(directory: Path, size: int) -> Path:
    path = directory / "workers.toml"
    port = free_port()
    store.create(path, location=[f"tcp:localhost:{port}"], listen=f"tcp:{port}:interface=127.0.0.1",
                 pb="tcp:1:interface=127.0.0.1", identity="master.pem")
    now = datetime.now(UTC).replace(microsecond=0)
    tables = [worker_table(i, now) for i in range(1, size + 1)]
    atomic_write(path, append_tables(path.read_text(encoding="utf-8"), tables).encode("utf-8"))
    return path


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (fields 14 and 15 of /proc/PID/stat)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    label: str
    workers: int
    seconds: float
    cpu_percent: float
    tick_mean_ms: float
    tick_max_ms: float
    reload_blocks_ms: list[float]
    reload_gc_ms: list[float]


class Service:
    def __init__(self, registry: Path, code: Path | None, figures: Path) -> None:
        env = dict(os.environ)
        if code is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(code), *filter(None, [env.get("PYTHONPATH")])])
        self.figures = figures
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(registry), str(figures)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=registry.parent,
        )
        line = self.proc.stdout.readline().strip() if self.proc.stdout else ""
        if line != "ready":
            self.stop()
            why = self.proc.stderr.read() if self.proc.stderr else ""
            raise SystemExit(f"the service did not start: {why}")

    def read(self) -> dict[str, float]:
        """The child's figures since the last read (and start them afresh)."""
        self.figures.unlink(missing_ok=True)
        self.proc.send_signal(signal.SIGUSR1)
        for _ in range(500):
            if self.figures.exists() and self.figures.stat().st_size:
                time.sleep(0.05)  # written whole by then (a few bytes)
                return json.loads(self.figures.read_text())
            time.sleep(0.01)
        raise SystemExit("the service did not report its figures")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def measure(label: str, code: Path | None, size: int, seconds: float, reloads: int) -> Result:
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
        registry = build_registry(Path(tmp), size)
        service = Service(registry, code, Path(tmp) / "figures.json")
        try:
            time.sleep(SETTLE)
            service.read()
            start_cpu, start = cpu_seconds(service.proc.pid), time.perf_counter()
            time.sleep(seconds)
            cpu = cpu_seconds(service.proc.pid) - start_cpu
            elapsed = time.perf_counter() - start
            idle = service.read()
            service.proc.send_signal(signal.SIGUSR2)  # the lateness probe, from now on
            time.sleep(SETTLE)
            service.read()
            blocks, collections = [], []
            now = datetime.now(UTC).replace(microsecond=0)
            for n in range(reloads):
                text = registry.read_text(encoding="utf-8")
                atomic_write(registry, append_tables(text, [worker_table(size + 1 + n, now)]).encode())
                late = gc_max = 0.0
                for _ in range(int(RELOAD_TIMEOUT / SETTLE)):  # until it reloaded, and SETTLE more
                    time.sleep(SETTLE)
                    figures = service.read()
                    late, gc_max = max(late, figures["late_max"]), max(gc_max, figures["gc_max"])
                    if figures["reloads"] >= 1:
                        break
                else:
                    raise SystemExit(f"{label}: the service did not reload within {RELOAD_TIMEOUT} s")
                time.sleep(SETTLE)
                figures = service.read()
                blocks.append(max(late, figures["late_max"]) * 1000.0)
                collections.append(max(gc_max, figures["gc_max"]) * 1000.0)
        finally:
            service.stop()
    ticks = max(1, int(idle["ticks"]))
    return Result(label, size, elapsed, 100.0 * cpu / elapsed, 1000.0 * idle["tick_seconds"] / ticks,
                  1000.0 * idle["tick_max"], blocks, collections)


def table(results: list[Result]) -> tuple[list[str], list[list[str]]]:
    header = ["code", "workers", "idle CPU (% of a core)", "tick mean (ms)", "tick max (ms)",
              "reload: longest loop block, median / max (ms)",
              "longest garbage collection in that window, median / max (ms)"]
    rows = [
        [r.label, f"{r.workers:,}", f"{r.cpu_percent:.2f}", f"{r.tick_mean_ms:.3f}", f"{r.tick_max_ms:.2f}",
         f"{statistics.median(r.reload_blocks_ms):.0f} / {max(r.reload_blocks_ms):.0f}",
         f"{statistics.median(r.reload_gc_ms):.0f} / {max(r.reload_gc_ms):.0f}"]
        for r in results
    ]
    return header, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--reloads", type=int, default=5)
    parser.add_argument("--code", action="append", default=[],
                        help="LABEL=DIR: also run the service from DIR's checkout (the baseline)")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    runs: list[tuple[str, Path | None]] = []
    for spec in args.code:
        label, _, directory = str(spec).partition("=")
        runs.append((label, Path(directory)) if directory else (label, Path(label)))
    runs.append(("this checkout", None))
    results = []
    for label, code in runs:
        print(f"measuring {label} ({args.workers:,} workers, {args.seconds:.0f} s idle, "
              f"{args.reloads} reloads)...", file=sys.stderr)
        results.append(measure(label, code, args.workers, args.seconds, args.reloads))
    header, rows = table(results)
    text = markdown_table(header, rows)
    print(text)
    print(describe_machine())
    ours = results[-1]
    verdict = ours.cpu_percent <= CPU_TARGET
    print(f"target: idle CPU <= {CPU_TARGET} % of a core with {ours.workers:,} registered, none connected: "
          f"{'met' if verdict else 'NOT met'} ({ours.cpu_percent:.2f} %)")
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
