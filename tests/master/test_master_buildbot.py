"""The master.cfg hook in a real buildbot master process."""

from __future__ import annotations

import socket
import tomllib

import pytest

from bbenroll.master.tub import KEEPALIVE
from tests.helpers.buildbot import (
    BIN,
    configured_workers,
    create_master,
    fetch_config,
    run,
    stop_daemon,
    wait_for,
)
from tests.helpers.cli import run_cli
from tests.helpers.net import free_port

pytestmark = [pytest.mark.slow, pytest.mark.network]


@pytest.fixture
def master_dir(tmp_path, served_reg_path):
    basedir = tmp_path / "master"
    www_port = free_port()
    create_master(basedir, www_port)
    for name in ("workers.toml", "master.pem"):
        (served_reg_path.parent / name).rename(basedir / name)
    yield basedir, www_port
    stop_daemon("buildbot", basedir)


def bbenroll(basedir, *args):
    result = run_cli(["--registry", str(basedir / "workers.toml"), *args])
    assert result.code == 0, result.err
    return result.out.strip()


def test_checkconfig_refuses_a_pb_port_open_to_the_network(master_dir):
    basedir, _ = master_dir
    bbenroll(basedir, "add", "worker1")
    assert run(BIN / "buildbot", "checkconfig", basedir).returncode == 0
    path = basedir / "workers.toml"
    pb = tomllib.loads(path.read_text())["master"]["pb"]
    path.write_text(path.read_text().replace(pb, "tcp:9990"))
    proc = run(BIN / "buildbot", "checkconfig", basedir, check=False)
    assert proc.returncode != 0
    assert "master.pb 'tcp:9990' listens on every interface" in proc.stdout + proc.stderr
    path.write_text(path.read_text().replace("tcp:9990", "tcp:9990:interface=0.0.0.0"))
    proc = run(BIN / "buildbot", "checkconfig", basedir, check=False)
    assert "listens on 0.0.0.0, which is not a loopback address" in proc.stdout + proc.stderr


def test_real_master_serves_furls_and_picks_up_new_workers_live(master_dir, tmp_path):
    basedir, www_port = master_dir
    furl1 = bbenroll(basedir, "add", "worker1")
    run(BIN / "buildbot", "start", basedir, timeout=120)

    # the hook declared the worker, and the Foolscap service serves its FURL
    assert set(configured_workers(www_port)) == {"worker1"}
    registry = tomllib.loads((basedir / "workers.toml").read_text())
    config = fetch_config(furl1)
    assert config == {"config": {"name": "worker1", "password": registry["workers"]["worker1"]["password"],
                                 "protocol": 1, "keepalive": KEEPALIVE}}

    # a worker added with the CLI becomes known to the running master, no restart
    furl2 = bbenroll(basedir, "add", "worker2")
    wait_for(lambda: "worker2" in configured_workers(www_port), what="worker2 configured")
    config2 = fetch_config(furl2)["config"]

    # and a real buildbot-worker with those credentials attaches (through the loopback PB port)
    pb_port = registry["master"]["pb"].split(":")[1]
    wdir = tmp_path / "worker2"
    run(BIN / "buildbot-worker", "create-worker", "--quiet", wdir, f"127.0.0.1:{pb_port}",
        config2["name"], config2["password"])
    run(BIN / "buildbot-worker", "start", wdir, timeout=60)
    try:
        wait_for(lambda: configured_workers(www_port)["worker2"]["connected_to"], what="worker2 connected")
        # revoking takes it out of the running master's configuration and off the FURL service
        bbenroll(basedir, "revoke", "worker2")
        wait_for(lambda: "worker2" not in configured_workers(www_port), what="worker2 unconfigured")
        assert fetch_config(furl2) == {"error": "worker revoked"}
    finally:
        stop_daemon("buildbot-worker", wdir)
    log = (basedir / "twistd.log").read_text()
    assert "accepted worker 'worker1'" in log
    for secret in (furl1.rsplit("/", 1)[1], furl2.rsplit("/", 1)[1]):
        assert secret not in log


def test_a_taken_port_stops_the_master_with_one_bbenroll_line(master_dir):
    basedir, _ = master_dir
    bbenroll(basedir, "add", "worker1")
    listen = tomllib.loads((basedir / "workers.toml").read_text())["master"]["listen"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", int(listen.split(":")[1])))
        taken.listen()
        proc = run(BIN / "buildbot", "start", basedir, check=False, timeout=120)
    assert proc.returncode == 1
    assert "startup failed" in proc.stdout
    log = (basedir / "twistd.log").read_text()
    ours = [line for line in log.splitlines() if "bbenroll:" in line]
    assert [line.split(" [-] ", 1)[1] for line in ours] == [
        f"bbenroll: cannot listen on {listen}: Address already in use"
    ]
    assert log.index(ours[0]) < log.index("BuildMaster startup failed")
