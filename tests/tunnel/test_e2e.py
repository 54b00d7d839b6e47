"""Real builds over the FURL: buildbot master + buildbot-worker processes, tunnel, faults.

Between the worker and the master sits a proxy that can stall, cut and block
the network (tests/helpers/netproxy.py), so the tunnel's resume is tested for real.
"""

from __future__ import annotations

import hashlib
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import pytest

from bbenroll.registry import store
from tests.helpers.buildbot import (
    BIN,
    configured_workers,
    create_master,
    fetch_config,
    force_build,
    rest,
    run,
    step_log,
    stop_daemon,
    wait_build,
    wait_for,
)
from tests.helpers.cli import run_cli
from tests.helpers.net import free_port
from tests.helpers.netproxy import FaultyProxy

pytestmark = [pytest.mark.slow, pytest.mark.network]

SUCCESS, RETRY = 0, 4
MARK = "bbenroll-e2e"


def output_script(lines: int, seconds: float) -> list[str]:
    """A shell step printing ``lines`` deterministic lines over about ``seconds``."""
    code = textwrap.dedent(f"""
        import hashlib, sys, time
        n, t = {lines}, {seconds}
        for i in range(n):
            sys.stdout.write("{MARK} %08d %s\\n" % (i, hashlib.sha256(str(i).encode()).hexdigest() * 3))
            if t and i % max(1, n // 50) == 0:
                sys.stdout.flush()
                time.sleep(t / 50)
    """)
    return [sys.executable, "-c", code]


def expected_digest(lines: int) -> str:
    text = "".join(
        f"{MARK} {i:08d} {hashlib.sha256(str(i).encode()).hexdigest() * 3}\n" for i in range(lines)
    )
    return hashlib.sha256(text.encode()).hexdigest()


def log_digest(raw: bytes) -> str:
    lines = [line + b"\n" for line in raw.split(b"\n") if line.startswith(MARK.encode())]
    return hashlib.sha256(b"".join(lines)).hexdigest()


class Farm:
    """A master with the hook and one worker created by `bbenroll worker create`, via a proxy."""

    def __init__(self, tmp_path: Path, *, command: list[str], resume: int = 600, record: bool = False):
        self.tmp = tmp_path
        self.basedir = tmp_path / "master"
        self.www = free_port()
        listen = free_port()
        self.proxy = FaultyProxy("127.0.0.1", listen, record=record).start()
        create_master(self.basedir, self.www, command=command)
        store.create(
            self.basedir / "workers.toml",
            location=[f"tcp:127.0.0.1:{self.proxy.port}"],
            listen=f"tcp:{listen}:interface=127.0.0.1",
            pb=f"tcp:{free_port()}:interface=127.0.0.1",
            identity="master.pem",
        )
        self.furl = self.cli("add", "worker1")
        self.cli("add", "spare")  # never connects; keeps the builder valid when worker1 is revoked
        run(BIN / "buildbot", "start", self.basedir, timeout=120)
        self.wdir = tmp_path / "worker1"
        proc = run(BIN / "bbenroll", "worker", "create", self.wdir, "-", "--resume", str(resume),
                   check=False, input_text=self.furl)
        assert proc.returncode == 0, proc.stderr
        run(BIN / "buildbot-worker", "start", self.wdir, timeout=60)
        wait_for(self.connected, what="worker1 connected")

    def cli(self, *args: str) -> str:
        result = run_cli(["--registry", str(self.basedir / "workers.toml"), *args])
        assert result.code == 0, result.err
        return result.out.strip()

    def connected(self) -> bool:
        worker = configured_workers(self.www).get("worker1")
        return bool(worker and worker["connected_to"])

    def secrets(self) -> list[bytes]:
        entry = tomllib.loads((self.basedir / "workers.toml").read_text())["workers"]["worker1"]
        return [entry["swissnum"].encode(), entry["password"].encode()]

    def build_started(self, brid: int) -> dict:
        def started():
            builds = rest(self.www, f"builds?buildrequestid={brid}")["builds"]
            return builds[0] if builds else None

        return wait_for(started, timeout=60, what="build started")

    def stop(self) -> None:
        stop_daemon("buildbot-worker", self.wdir)
        stop_daemon("buildbot", self.basedir)
        self.proxy.stop()


@pytest.fixture
def farm_factory(tmp_path):
    farms = []

    def make(**kwargs) -> Farm:
        farm = Farm(tmp_path / f"farm{len(farms)}", **kwargs)
        farms.append(farm)
        return farm

    (tmp_path / "farm0").mkdir()
    for i in range(1, 4):
        (tmp_path / f"farm{i}").mkdir()
    yield make
    for farm in farms:
        farm.stop()


def test_build_through_the_tunnel_delivers_the_log_intact(farm_factory):
    lines = 20_000  # about 4 MB of output
    farm = farm_factory(command=output_script(lines, 0), record=True)
    build = wait_build(farm.www, force_build(farm.www))
    assert build["results"] == SUCCESS
    raw = step_log(farm.www, build)
    assert log_digest(raw) == expected_digest(lines)
    # nothing secret crossed the wire in clear: not the secrets, not the build's output
    wire = farm.proxy.recorded()
    assert len(wire) > 4_000_000  # the whole build went through the proxy
    for secret in [*farm.secrets(), f"{MARK} 00000042".encode(), b"Build number"]:
        assert secret not in wire
    # neither side logs the worker's secret
    swissnum = farm.furl.rsplit("/", 1)[1]
    for log in (farm.wdir / "twistd.log", farm.basedir / "twistd.log"):
        assert swissnum not in log.read_text()
    # buildbot-worker stops cleanly (the tunnel ends its streams like TCP would)
    stop = run(BIN / "buildbot-worker", "stop", farm.wdir, check=False, timeout=60)
    assert stop.returncode == 0 and "is dead" in stop.stdout, stop.stdout + stop.stderr


def test_stall_of_30s_mid_step_and_three_cuts_do_not_break_the_build(farm_factory):
    lines = 6000
    farm = farm_factory(command=output_script(lines, 12))
    brid = force_build(farm.www)
    farm.build_started(brid)
    time.sleep(3)
    farm.proxy.stall()
    time.sleep(30)
    farm.proxy.unstall()
    for _ in range(3):
        time.sleep(1.5)
        farm.proxy.cut()
    build = wait_build(farm.www, brid)
    assert build["results"] == SUCCESS
    assert log_digest(step_log(farm.www, build)) == expected_digest(lines)
    assert farm.proxy.connections_accepted >= 4  # it really reconnected


def test_outage_past_the_resume_deadline_is_a_disconnect_then_the_worker_returns(farm_factory):
    farm = farm_factory(command=output_script(200, 20), resume=8)
    brid = force_build(farm.www)
    farm.build_started(brid)
    time.sleep(2)
    farm.proxy.block()
    wait_for(lambda: not farm.connected(), timeout=60, what="Buildbot to see the disconnect")
    build = wait_build(farm.www, brid)
    assert build["results"] != SUCCESS
    farm.proxy.unblock()
    wait_for(farm.connected, timeout=60, what="the worker to re-attach by itself")


def test_revoking_during_a_build_drops_the_worker_for_good(farm_factory):
    farm = farm_factory(command=output_script(200, 30))
    brid = force_build(farm.www)
    farm.build_started(brid)
    time.sleep(2)
    farm.cli("revoke", "worker1")
    build = wait_build(farm.www, brid, timeout=60)
    assert build["results"] != SUCCESS
    wait_for(lambda: "worker1" not in configured_workers(farm.www), what="worker1 unconfigured")
    assert fetch_config(farm.furl) == {"error": "worker revoked"}
    time.sleep(3)
    worker = {w["name"]: w for w in rest(farm.www, "workers")["workers"]}["worker1"]
    assert not worker["connected_to"]
    # and the master still shuts down (Buildbot hangs if a worker is removed mid-build)
    stop = run(BIN / "buildbot", "stop", farm.basedir, check=False, timeout=60)
    assert stop.returncode == 0 and "is dead" in stop.stdout, stop.stdout + stop.stderr
