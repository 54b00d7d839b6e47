#!/usr/bin/env python3
"""Wall time of bbenroll commands on registries of 100 to 5,000 workers.

Run from anywhere, with the Python that has bbenroll installed:

    python bench/bench_registry.py [--sizes 100,1000,5000] [--repeat 7] [--markdown FILE]

For every size N it creates a real registry in a temporary directory
(``bbenroll init``), appends N worker tables rendered by bbenroll's own code
(``model.new_worker`` + ``tomledit.render_new_table``, joined by
``tomledit.append_tables``, exactly as ``bbenroll add`` appends them), and
confirms the file with ``bbenroll check``.

It then times fresh subprocesses: three baselines (a bare interpreter start;
an interpreter start plus a ``tomllib`` parse of the same file, B; and B plus a
``json.dump`` of what it parsed to stdout, C: reading and dumping, what
``list --json`` does at its simplest) next to ``show``, ``list --json`` (as a
user runs it: the registry's read cache is warm, since the last edit wrote it),
``list --json`` with no read cache (removed before each run, untimed: the first
read after another program changed the file), ``add`` and ``rotate``. Each repeat round runs every
command once, in a rotating order, so that noise on a shared machine hits all
commands alike; each figure is the median (and the minimum) over the rounds,
and the ratios compare against the baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bbenroll.fileio import atomic_write
from bbenroll.registry import model

try:
    from bbenroll.registry import readcache
except ImportError:  # an older checkout (PYTHONPATH=...), before the read cache: "no cache" is "list"
    readcache = None  # type: ignore[assignment]
from bbenroll.registry.tomledit import append_tables, render_new_table

PYTHON = sys.executable
LOCATION = "tcp:localhost:9989"
DEFAULT_SIZES = (100, 1000, 5000)
TARGET_SIZE = 5000
READ_RATIO_TARGET = 2.0  # show: at most this many times baseline B
LIST_RATIO_TARGET = 1.5  # list --json: at most this many times baselines B and C (issue #12)
EDIT_MS_TARGET = 500.0  # add and rotate: wall time under this

COMMANDS = ("pass", "tomllib", "dump", "show", "list", "list-cold", "add", "rotate")
HEADINGS = {
    "pass": "python -c pass",
    "tomllib": "python+tomllib",
    "dump": "python+tomllib+json",
    "show": "show",
    "list": "list --json",
    "list-cold": "list --json, no cache",
    "add": "add",
    "rotate": "rotate ONE",
}


def bbenroll_argv() -> list[str]:
    """The console script next to this interpreter, run by this interpreter."""
    script = Path(PYTHON).with_name("bbenroll")
    if script.is_file():
        return [PYTHON, str(script)]
    return [PYTHON, "-m", "bbenroll"]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("BBENROLL_REGISTRY", None)  # --registry is always given
    env["NO_COLOR"] = "1"
    # bytecode as an installed bbenroll has it (pip compiles it; a checkout's first import writes it):
    # without it every run compiles bbenroll's source again, while the baselines' stdlib is compiled
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run(argv: Sequence[str], env: dict[str, str]) -> float:
    """Run ``argv`` to completion; its wall time in milliseconds. Fails loudly."""
    start = time.perf_counter()
    proc = subprocess.run(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    elapsed = (time.perf_counter() - start) * 1000.0
    if proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace")
        raise SystemExit(f"command failed (exit {proc.returncode}): {' '.join(argv)}\n{stderr}")
    return elapsed


# --- building a registry ------------------------------------------------------


def worker_table(index: int, now: datetime) -> str:
    """One worker as ``bbenroll add`` writes it: some with tags, a note, an expiry."""
    tags: list[str] = []
    if index % 3 == 0:
        tags = ["linux", f"rack{index % 12}"]
    elif index % 3 == 1:
        tags = ["macos"]
    note = f"bench worker {index}, rack {index % 12}" if index % 5 == 0 else None
    expires = now + timedelta(days=30 + index % 365) if index % 7 == 0 else None
    worker = model.new_worker(f"worker{index}", now, expires=expires, tags=tags, note=note)
    return render_new_table(worker)


def build_registry(directory: Path, size: int, env: dict[str, str]) -> Path:
    path = directory / "workers.toml"
    bb = bbenroll_argv()
    run([*bb, "--registry", str(path), "init", "--location", LOCATION], env)
    now = datetime.now(UTC).replace(microsecond=0)
    tables = [worker_table(i, now) for i in range(1, size + 1)]
    text = append_tables(path.read_text(encoding="utf-8"), tables)
    atomic_write(path, text.encode("utf-8"))  # mode 0600, like bbenroll's own writes
    run([*bb, "--registry", str(path), "check"], env)  # exits non-zero on any problem
    found = len(tomllib.loads(text).get("workers", {}))
    if found != size:
        raise SystemExit(f"{path}: generated {found} workers instead of {size}")
    return path


# --- measuring ----------------------------------------------------------------


@dataclass
class Result:
    size: int
    file_bytes: int
    times: dict[str, list[float]] = field(default_factory=dict)

    def median(self, command: str) -> float:
        return statistics.median(self.times[command])

    def min(self, command: str) -> float:
        return min(self.times[command])

    def ratio(self, command: str, baseline: str = "tomllib") -> float:
        return self.median(command) / self.median(baseline)


def measure(size: int, repeat: int, env: dict[str, str], keep: bool) -> Result:
    directory = Path(tempfile.mkdtemp(prefix=f"bbenroll-bench-{size}-"))
    try:
        t0 = time.perf_counter()
        path = build_registry(directory, size, env)
        print(
            f"  {size} workers: built and checked {path} ({path.stat().st_size / 1024:.0f} KiB) "
            f"in {time.perf_counter() - t0:.1f}s",
            file=sys.stderr,
        )
        bb = [*bbenroll_argv(), "--registry", str(path)]
        target = f"worker{max(1, size // 2)}"
        parse = f"import tomllib; tomllib.load(open({str(path)!r},'rb'))"
        dump = (
            f"import json, sys, tomllib; json.dump(tomllib.load(open({str(path)!r},'rb')), sys.stdout, "
            "default=str, ensure_ascii=False)"
        )
        cache = readcache.cache_path(path.resolve()) if readcache is not None else None

        def argv(command: str, round_: int | str) -> list[str]:
            return {
                "pass": [PYTHON, "-c", "pass"],
                "tomllib": [PYTHON, "-c", parse],
                "dump": [PYTHON, "-c", dump],
                "show": [*bb, "show", target],
                "list": [*bb, "list", "--json"],
                "list-cold": [*bb, "list", "--json"],
                "add": [*bb, "add", f"new{size}_{round_}"],
                "rotate": [*bb, "rotate", target],
            }[command]

        result = Result(size, path.stat().st_size, {c: [] for c in COMMANDS})

        def timed(command: str, round_: int | str) -> float:
            if command == "list-cold" and cache is not None:
                cache.unlink(missing_ok=True)
            return run(argv(command, round_), env)

        for command in COMMANDS:  # warm-up round, not timed: page cache, .pyc files
            timed(command, "warm")
        for round_ in range(repeat):
            shift = round_ % len(COMMANDS)
            for command in COMMANDS[shift:] + COMMANDS[:shift]:
                result.times[command].append(timed(command, round_))
        # everything we did must have left a valid registry behind
        final = subprocess.run([*bb, "check"], env=env, capture_output=True, text=True)
        if final.returncode != 0:
            raise SystemExit(f"registry invalid after the benchmark:\n{final.stderr}")
        return result
    finally:
        if keep:
            print(f"  kept {directory}", file=sys.stderr)
        else:
            shutil.rmtree(directory, ignore_errors=True)


# --- reporting ----------------------------------------------------------------


def table_rows(results: Sequence[Result]) -> tuple[list[str], list[list[str]]]:
    header = [
        "workers",
        *(f"{HEADINGS[c]} (ms)" for c in COMMANDS),
        "show/B",
        "list/B",
        "list/C",
        "list no cache/B",
    ]
    rows = []
    for r in results:
        cells = [f"{r.size:,}"]
        cells += [f"{r.median(c):.0f} ({r.min(c):.0f})" for c in COMMANDS]
        cells += [
            f"{r.ratio('show'):.2f}x",
            f"{r.ratio('list'):.2f}x",
            f"{r.ratio('list', 'dump'):.2f}x",
            f"{r.ratio('list-cold'):.2f}x",
        ]
        rows.append(cells)
    return header, rows


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def verdicts(results: Sequence[Result]) -> list[tuple[str, bool]]:
    at = next((r for r in results if r.size == TARGET_SIZE), None)
    if at is None:
        at = max(results, key=lambda r: r.size)
    n = f"{at.size:,} workers"
    out = []
    checks = (
        ("show", "tomllib", READ_RATIO_TARGET),
        ("list", "tomllib", LIST_RATIO_TARGET),
        ("list", "dump", LIST_RATIO_TARGET),
    )
    for command, baseline, target in checks:
        ratio = at.ratio(command, baseline)
        out.append(
            (
                f"{HEADINGS[command]} within {target:.1f}x of {HEADINGS[baseline]} at {n}: {ratio:.2f}x",
                ratio <= target,
            )
        )
    for command in ("add", "rotate"):
        ms = at.median(command)
        out.append(
            (f"{HEADINGS[command]} under {EDIT_MS_TARGET:.0f} ms at {n}: {ms:.0f} ms", ms < EDIT_MS_TARGET)
        )
    return out


def plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def describe_machine() -> str:
    cpus = os.cpu_count()
    return (
        f"Python {platform.python_version()} ({PYTHON}), {platform.system()} {platform.release()}, "
        f"{cpus} CPU{'s' if cpus != 1 else ''}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        default=",".join(map(str, DEFAULT_SIZES)),
        help="comma-separated worker counts (default: %(default)s)",
    )
    parser.add_argument("--repeat", type=int, default=7, help="timed rounds per size (default: %(default)s)")
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="also write the results as markdown")
    parser.add_argument("--keep", action="store_true", help="keep the temporary registries")
    args = parser.parse_args(argv)
    try:
        sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes: not a list of integers: {args.sizes!r}")
    if not sizes or min(sizes) < 1:
        parser.error("--sizes: give positive worker counts")
    if args.repeat < 1:
        parser.error("--repeat: at least 1")

    env = child_env()
    started = datetime.now(UTC)
    print(
        f"bbenroll benchmark: {describe_machine()}; {plural(args.repeat, 'round')} per size", file=sys.stderr
    )
    results = [measure(size, args.repeat, env, args.keep) for size in sizes]

    header, rows = table_rows(results)
    checks = verdicts(results)
    note = (
        f"Median (min) wall time in ms of a fresh process over {plural(args.repeat, 'interleaved round')}; "
        "ratios are medians against python+tomllib (baseline B) or python+tomllib+json (C) from the same run."
    )
    print()
    print(text_table(header, rows))
    print()
    print(note)
    for r in results:
        print(f"  {plural(r.size, 'worker')}: registry file {r.file_bytes / 1024:.0f} KiB")
    print()
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")

    if args.markdown:
        md = [
            f"Run {started:%Y-%m-%d %H:%M} UTC on {describe_machine()}.",
            "",
            markdown_table(header, rows),
            "",
            note
            + " File sizes: "
            + ", ".join(f"{r.size:,} workers {r.file_bytes / 1024:.0f} KiB" for r in results)
            + ".",
            "",
            *(f"- **{'PASS' if ok else 'FAIL'}** {text}" for text, ok in checks),
            "",
        ]
        args.markdown.write_text("\n".join(md), encoding="utf-8")
        print(f"\nwrote {args.markdown}", file=sys.stderr)
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
