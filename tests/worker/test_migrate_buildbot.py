"""import + worker migrate with the real thing: a stock master and a stock worker (made by
``buildbot-worker create-worker``, non-default settings) that has built once; the master is
imported and switched to the bbenroll hook, the running worker migrated in place and
restarted: it attaches through the tunnel, a forced build succeeds, and the file the earlier
build left in its builder directory is still there."""

from __future__ import annotations

import tomllib

import pytest

from bbenroll.worker.migrate import BACKUP, read_tac
from tests.helpers.buildbot import (
    BIN,
    MASTER_CFG,
    configured_workers,
    force_build,
    run,
    step_log,
    stop_daemon,
    wait_build,
    wait_for,
)
from tests.helpers.cli import run_cli
from tests.helpers.net import free_port
from tests.helpers.stock_master import (
    NON_DEFAULT_WORKER_OPTIONS,
    StockWorker,
    create_stock_master,
    create_stock_worker,
)

pytestmark = [pytest.mark.slow, pytest.mark.network]

SUCCESS = 0
# appends a line to a file in the builder directory (b/, beside the build's workdir b/build)
COMMAND = ["sh", "-c", "echo built >> ../kept.txt && cat ../kept.txt"]


def bbenroll(registry, *args):
    result = run_cli(["--registry", str(registry), *args])
    assert result.code == 0, result.err
    return result


def build_once(www_port: int) -> dict:
    build = wait_build(www_port, force_build(www_port), timeout=120)
    assert build["results"] == SUCCESS, build
    return build


def test_a_stock_worker_migrated_in_place_keeps_building(tmp_path):
    master, worker = tmp_path / "master", tmp_path / "worker"
    www_port, old_pb = free_port(), free_port()
    create_stock_master(master, [StockWorker("w1", "old-password", {"max_builds": 1})],
                        pb_port=f"tcp:{old_pb}:interface=127.0.0.1", www_port=www_port, command=COMMAND)
    create_stock_worker(worker, "w1", "old-password", f"127.0.0.1:{old_pb}", *NON_DEFAULT_WORKER_OPTIONS)
    stock_tac = read_tac((worker / "buildbot.tac").read_text())
    try:
        run(BIN / "buildbot", "start", master, timeout=120)
        run(BIN / "buildbot-worker", "start", worker, timeout=60)
        wait_for(lambda: configured_workers(www_port)["w1"]["connected_to"], timeout=60, what="w1 connected")
        build_once(www_port)
        assert (worker / "b" / "kept.txt").read_text() == "built\n"
        stop_daemon("buildbot", master)  # the worker keeps running, retrying its old port

        # the master: its registry, the import, then the bbenroll hook instead of c['workers']
        registry = master / "workers.toml"
        port = free_port()
        bbenroll(registry, "init", "--location", f"tcp:127.0.0.1:{port}", "--listen",
                 f"tcp:{port}:interface=127.0.0.1", "--pb", f"tcp:{free_port()}:interface=127.0.0.1")
        imported = bbenroll(registry, "import", str(master))
        assert "imported 1 workers" in imported.err
        entry = tomllib.loads(registry.read_text())["workers"]["w1"]
        assert (entry["password"], entry["legacy"]) == ("old-password", True)
        assert entry["buildbot"] == {"max_builds": 1}
        (master / "master.cfg").write_text(MASTER_CFG.format(www_port=www_port, command=COMMAND))
        run(BIN / "buildbot", "start", master, timeout=120)

        # the worker, in place, while it runs; then restarted as migrate says
        furl = bbenroll(registry, "show", "w1").out.strip()
        proc = run(BIN / "bbenroll", "worker", "migrate", worker, "-", input_text=furl, timeout=120)
        assert f"restart it with: buildbot-worker restart {worker}" in proc.stderr
        run(BIN / "buildbot-worker", "restart", worker, timeout=60)
        wait_for(lambda: configured_workers(www_port).get("w1", {}).get("connected_to"), timeout=90,
                 what="w1 connected through the tunnel")
        build = build_once(www_port)
        assert b"built\nbuilt\n" in step_log(www_port, build)
        assert (worker / "b" / "kept.txt").read_text() == "built\nbuilt\n"  # the earlier build's file
    finally:
        stop_daemon("buildbot-worker", worker)
        stop_daemon("buildbot", master)
    tac = read_tac((worker / "buildbot.tac").read_text())
    connection = ("connection_string", "buildmaster_host", "port")
    kept = {k: v for k, v in stock_tac.values.items() if k not in connection}
    assert {k: tac.values[k] for k in kept} == kept
    assert tac.migrated and (worker / BACKUP).read_text() == stock_tac.text
    log = (master / "twistd.log").read_text()
    assert "accepted worker 'w1'" in log and furl.rsplit("/", 1)[1] not in log
