"""The master's attach path with a real buildbot master: the in-process PB leg, startup order.

- A build runs through a tunnel whose PB leg is in-process: the master holds no TCP
  connection to its own PB port, and Buildbot shows the worker's own address.
- The Foolscap port accepts nothing before Buildbot's PB port does (the hook starts
  listening only once Buildbot's startup is over).

(The login binding through an in-process leg, with a real buildbot-worker that sends
another worker's name and password, is tests/security/test_pb_login_binding.py: its
farm's legs are in-process now.)
"""

from __future__ import annotations

import socket
import subprocess
import time
import tomllib

import pytest

from bbenroll.endpoints import listen_port
from bbenroll.registry import store
from tests.helpers.buildbot import BIN, create_master, force_build, step_log, stop_daemon, wait_build
from tests.helpers.cli import run_cli
from tests.helpers.net import free_port
from tests.tunnel.test_e2e import SUCCESS, expected_digest, farm_factory, log_digest, output_script  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.network]

ESTABLISHED = "01"


def tcp_connections(port: int) -> list[tuple[str, str]]:
    """(local, remote) hex addresses of this machine's established TCP connections on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            ports = {int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16)}
            if state == ESTABLISHED and port in ports:
                found.append((local, remote))
    return found


def test_a_build_runs_through_an_in_process_pb_leg(farm_factory):  # noqa: F811
    lines = 2000
    farm = farm_factory(command=output_script(lines, 1.0))
    pb_port = listen_port(tomllib.loads((farm.basedir / "workers.toml").read_text())["master"]["pb"])
    assert pb_port is not None
    build = wait_build(farm.www, force_build(farm.www))
    assert build["results"] == SUCCESS
    assert log_digest(step_log(farm.www, build)) == expected_digest(lines)
    # the worker is attached and building, yet nothing is connected to the PB port: the leg is
    # in-process (a loopback TCP leg would be two established sockets on it)
    assert tcp_connections(pb_port) == []
    log = (farm.basedir / "twistd.log").read_text()
    # Buildbot shows the worker's address: its Foolscap connection's peer (here, the test's proxy)
    assert "worker 'worker1' attaching from IPv4Address(type='TCP', host='127.0.0.1'" in log
    assert "PipeAddress" not in log


def accepts(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        try:
            probe.connect(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_the_foolscap_port_accepts_nothing_before_buildbots_pb_port(tmp_path):
    basedir = tmp_path / "master"
    create_master(basedir, free_port())
    listen, pb = free_port(), free_port()
    store.create(
        basedir / "workers.toml",
        location=[f"tcp:127.0.0.1:{listen}"],
        listen=f"tcp:{listen}:interface=127.0.0.1",
        pb=f"tcp:{pb}:interface=127.0.0.1",
        identity="master.pem",
    )
    assert run_cli(["--registry", str(basedir / "workers.toml"), "add", "worker1"]).code == 0
    starting = subprocess.Popen([str(BIN / "buildbot"), "start", str(basedir)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # probe both ports, PB first, until the Foolscap port accepts: by then the PB port
        # must have accepted (in this round or an earlier one)
        pb_seen = foolscap_seen = False
        deadline = time.monotonic() + 120
        while not foolscap_seen:
            assert time.monotonic() < deadline, "the Foolscap port never opened"
            pb_seen = pb_seen or accepts(pb)
            foolscap_seen = accepts(listen)
            assert not foolscap_seen or pb_seen, "the Foolscap port accepted before Buildbot's PB port"
            time.sleep(0.01)
        assert starting.wait(timeout=120) == 0, starting.stdout.read().decode() if starting.stdout else ""
        log = (basedir / "twistd.log").read_text()
        assert log.index("BuildMaster is running") < log.index("bbenroll: serving 1 workers")
    finally:
        if starting.poll() is None:
            starting.kill()
        if starting.stdout is not None:
            starting.stdout.close()
        stop_daemon("buildbot", basedir)
