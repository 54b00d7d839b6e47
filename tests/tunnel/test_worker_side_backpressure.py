"""Backpressure end to end: a real buildbot master and a real buildbot-worker through the tunnel
and a proxy (tests/helpers/netproxy.py). A build prints as fast as it can while the link is
stalled for ten minutes; the worker holds the command (its pipe fills, it waits), so the worker
process stays within the window plus high_water of its size before the build, and once the link
returns the build ends SUCCESS with every line of its log.

The scenario runs in a thread: its first test starts it at the beginning of the session
and its last test checks it at the end, so a full run spends the ten minutes on the other
tests (the ``first`` and ``last`` markers, tests/conftest.py). Run alone, the last test
starts it and waits."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from bbenroll.tunnel.core import Settings
from tests.helpers.buildbot import force_build, rest, wait_build, wait_for
from tests.tunnel.test_e2e import MARK, SUCCESS, log_digest

pytestmark = [pytest.mark.slow, pytest.mark.network]

STALL = 600.0  # seconds the link is stalled while the build prints
# 26,000 lines of 3,863 bytes: about 100 MB, more than the bound below. Long lines, since
# Buildbot's master spends its time per line (it would take minutes over half a million short ones).
LINES = 26_000
HASHES = 60  # sha256 hex digests per line
MIB = 1024 * 1024
# what the worker may grow by: the core's window and high_water, and a small constant for
# the build itself (the step's objects, buildbot-worker's buffers, Foolscap's queue)
GROWTH = Settings().window + Settings().high_water + 64 * MIB
RESUME = 900  # the tunnel keeps the session through the stall (the default, 600, would not)


def gated_output_script(started: Path, go: Path) -> list[str]:
    """Say it started, wait for ``go``, then print LINES lines (:func:`expected_digest`) at full speed."""
    code = textwrap.dedent(f"""
        import hashlib, os, sys, time
        open({str(started)!r}, "w").close()
        while not os.path.exists({str(go)!r}):
            time.sleep(0.05)
        write = sys.stdout.write
        for i in range({LINES}):
            write("{MARK} %08d %s\\n" % (i, hashlib.sha256(str(i).encode()).hexdigest() * {HASHES}))
    """)
    return [sys.executable, "-c", code]


def expected_digest() -> str:
    digest = hashlib.sha256()
    for i in range(LINES):
        digest.update(f"{MARK} {i:08d} {hashlib.sha256(str(i).encode()).hexdigest() * HASHES}\n".encode())
    return digest.hexdigest()


def stored_log(farm, build: dict) -> bytes:
    """The build's last step's stdio log as the master stored it, read from its database.

    Not through the REST API's raw log: with lines this long Buildbot 4.3 serves some lines of
    it twice (seen here: five runs of about 400 lines repeated, while the database held each
    line once, in order).
    """
    from buildbot.db.logs import LogsConnectorComponent

    steps = rest(farm.www, f"builds/{build['buildid']}/steps")["steps"]
    logs = rest(farm.www, f"steps/{steps[-1]['stepid']}/logs")["logs"]
    (logid,) = [log["logid"] for log in logs if log["slug"] == "stdio"]
    with contextlib.closing(sqlite3.connect(farm.basedir / "state.sqlite")) as db:
        rows = db.execute(
            "SELECT compressed, content FROM logchunks WHERE logid = ? ORDER BY first_line", (logid,)
        ).fetchall()
    text = b"\n".join(LogsConnectorComponent.COMPRESSION_BYID[kind].read(content) for kind, content in rows)
    # each line of a stdio log starts with its channel ("o" for stdout)
    return b"".join(line[1:] + b"\n" for line in text.split(b"\n") if line)


def rss(pid: int) -> int:
    """The process's resident set (/proc/PID/status VmRSS), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class RssSampler(threading.Thread):
    """Samples a process's RSS every second until stopped; keeps the largest."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = rss(pid)
        self.samples = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(1.0):
            self.peak = max(self.peak, rss(self.pid))
            self.samples += 1

    def stop(self) -> None:
        self._done.set()
        self.join(5)


class StallRun(threading.Thread):
    """The whole scenario after the farm is up: force the build, stall the link for STALL
    seconds while the build prints, let the link go, wait for the build. In a thread, so
    that in a full test run the ten minutes pass while the other tests run (``first`` and
    ``last`` markers, tests/conftest.py): CI would otherwise spend them waiting."""

    def __init__(self, farm, started: Path, go: Path) -> None:
        super().__init__(daemon=True)
        self.farm, self.started, self.go = farm, started, go
        worker_pid = int((farm.wdir / "twistd.pid").read_text().strip())
        self.before = rss(worker_pid)
        self.sampler = RssSampler(worker_pid)
        self.stalled = threading.Event()
        self.stalled_peak = 0
        self.build: dict | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        self.sampler.start()
        try:
            brid = force_build(self.farm.www)
            wait_for(self.started.exists, timeout=120, what="the step to start")
            self.farm.proxy.stall()
            self.go.touch()  # prints as fast as it can, into a link that moves nothing
            self.stalled.set()
            time.sleep(STALL)
            self.stalled_peak = self.sampler.peak
            self.farm.proxy.unstall()
            self.build = wait_build(self.farm.www, brid, timeout=600)
        except BaseException as e:  # reported by the checking test
            self.error = e
        finally:
            self.stalled.set()
            self.sampler.stop()


_run: StallRun | None = None
_farms: list = []


def start_run(tmp: Path) -> StallRun:
    global _run
    if _run is None:
        from tests.tunnel.test_e2e import Farm

        (tmp / "farm").mkdir(parents=True, exist_ok=True)
        started, go = tmp / "started", tmp / "go"
        farm = Farm(tmp / "farm", command=gated_output_script(started, go), resume=RESUME)
        _farms.append(farm)
        _run = StallRun(farm, started, go)
        _run.start()
    return _run


@pytest.fixture(scope="session", autouse=True)
def _stop_the_farm():
    # session scope: the module's tests run first and last, far apart (its module scope
    # would end right after the first one)
    yield
    for farm in _farms:
        farm.stop()


@pytest.mark.first
def test_a_build_starts_printing_into_a_stalled_link(tmp_path_factory):
    run = start_run(tmp_path_factory.mktemp("stall"))
    assert run.stalled.wait(240), "the build did not start"
    assert run.error is None, run.error


@pytest.mark.last
@pytest.mark.timeout(STALL + 900)
def test_a_build_printing_through_a_ten_minute_stall_is_held_and_ends_exact(tmp_path_factory):
    run = start_run(tmp_path_factory.mktemp("stall"))  # started already, unless run alone
    run.join(STALL + 840)
    assert not run.is_alive(), "the scenario did not end"
    if run.error is not None:
        raise run.error
    build, before, sampler = run.build, run.before, run.sampler
    print(f"worker RSS before the build {before / MIB:.1f} MiB; growth: stalled "
          f"{(run.stalled_peak - before) / MIB:.1f} MiB, whole build {(sampler.peak - before) / MIB:.1f} MiB "
          f"(bound {GROWTH / MIB:.0f} MiB)")
    assert sampler.samples >= STALL  # sampled every second throughout
    stalled_growth = run.stalled_peak - before
    assert stalled_growth <= GROWTH, f"the worker grew by {stalled_growth / MIB:.0f} MiB"
    assert sampler.peak - before <= GROWTH, f"the worker grew by {(sampler.peak - before) / MIB:.0f} MiB"
    assert build["results"] == SUCCESS
    assert log_digest(stored_log(run.farm, build)) == expected_digest()
