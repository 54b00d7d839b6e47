"""Backpressure end to end: a real buildbot master and a real buildbot-worker through the tunnel
and a proxy (tests/helpers/netproxy.py). A build prints as fast as it can while the link is
stalled for ten minutes; the worker holds the command (its pipe fills, it waits), so the worker
process stays within the window plus high_water of its size before the build, and once the link
returns the build ends SUCCESS with every line of its log."""

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
from tests.tunnel.test_e2e import MARK, SUCCESS, farm_factory, log_digest  # noqa: F401 (a fixture)

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


@pytest.mark.timeout(STALL + 420)
def test_a_build_printing_through_a_ten_minute_stall_is_held_and_ends_exact(farm_factory, tmp_path):  # noqa: F811
    started, go = tmp_path / "started", tmp_path / "go"
    farm = farm_factory(command=gated_output_script(started, go), resume=RESUME)
    worker_pid = int((farm.wdir / "twistd.pid").read_text().strip())
    before = rss(worker_pid)
    sampler = RssSampler(worker_pid)
    sampler.start()
    try:
        brid = force_build(farm.www)
        wait_for(started.exists, timeout=60, what="the step to start")
        farm.proxy.stall()
        go.touch()  # prints as fast as it can, into a link that moves nothing
        time.sleep(STALL)
        stalled_peak = sampler.peak
        farm.proxy.unstall()
        build = wait_build(farm.www, brid, timeout=240)
    finally:
        sampler.stop()
    print(f"worker RSS before the build {before / MIB:.1f} MiB; growth: stalled "
          f"{(stalled_peak - before) / MIB:.1f} MiB, whole build {(sampler.peak - before) / MIB:.1f} MiB "
          f"(bound {GROWTH / MIB:.0f} MiB)")
    assert sampler.samples >= STALL  # sampled every second throughout
    assert stalled_peak - before <= GROWTH, f"the worker grew by {(stalled_peak - before) / MIB:.0f} MiB"
    assert sampler.peak - before <= GROWTH, f"the worker grew by {(sampler.peak - before) / MIB:.0f} MiB"
    assert build["results"] == SUCCESS
    assert log_digest(stored_log(farm, build)) == expected_digest()
