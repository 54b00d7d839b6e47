"""The gradual cut-over with the real thing (issue 10, tests 1-3).

A stock Buildbot master (plain Worker entries, its PB port) and three stock
buildbot-worker processes, all building. Then ``bbenroll import`` and the hook
with ``legacy_pb``: after a reconfig the three still build with their old
passwords. ``worker migrate`` one: it builds through its tunnel with its builder
directory kept, and its old tac is refused on the old port while the others
still build directly. Migrate the others, ``finish-migration``: the old port
refuses connections after the reconfig, and all three build through their FURLs.
"""

from __future__ import annotations

import json
import socket
import tomllib
from pathlib import Path

import pytest

from tests.helpers.buildbot import (
    BIN,
    configured_workers,
    force_build,
    run,
    stop_daemon,
    wait_build,
    wait_for,
)
from tests.helpers.cli import run_cli
from tests.helpers.net import free_port
from tests.helpers.stock_master import StockWorker, create_stock_master, create_stock_worker

pytestmark = [pytest.mark.slow, pytest.mark.network]

SUCCESS = 0
NAMES = ("w1", "w2", "w3")
# appends a line to a file in the builder directory (beside the build's workdir)
COMMAND = ["sh", "-c", "echo built >> ../kept.txt && cat ../kept.txt"]
# one builder per worker, so that each worker's build can be forced
BUILDERS = """
c["builders"] = [
    util.BuilderConfig(name=f"b{{name}}", workernames=[name], factory=factory) for name in {names!r}
]
c["schedulers"] = [schedulers.ForceScheduler(name="force", builderNames=[f"b{{n}}" for n in {names!r}])]
"""

HOOK_CFG = """\
from buildbot.plugins import schedulers, steps, util
from bbenroll.master import Enrollment

c = BuildmasterConfig = {{}}
enrollment = Enrollment("workers.toml", basedir=basedir)
enrollment.configure(c)
factory = util.BuildFactory([steps.ShellCommand(command={command!r})])
c["builders"] = [
    util.BuilderConfig(name=f"b{{name}}", workernames=[name], factory=factory) for name in {names!r}
]
c["schedulers"] = [schedulers.ForceScheduler(name="force", builderNames=[f"b{{n}}" for n in {names!r}])]
c["www"] = {{"port": "tcp:{www_port}:interface=127.0.0.1", "plugins": {{}}}}
c["buildbotURL"] = "http://127.0.0.1:{www_port}/"
c["db"] = {{"db_url": "sqlite:///state.sqlite"}}
c["title"] = "cut-over"
c["buildbotNetUsageData"] = None
"""


def bbenroll(registry: Path, *args: str):
    result = run_cli(["--registry", str(registry), *args])
    assert result.code == 0, result.err
    return result


def build(www_port: int, name: str) -> None:
    done = wait_build(www_port, force_build(www_port, f"b{name}"), timeout=120)
    assert done["results"] == SUCCESS, done


def connected(www_port: int, *names: str) -> bool:
    workers = configured_workers(www_port)
    return all(workers.get(name, {}).get("connected_to") for name in names)


def refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def test_a_gradual_cut_over_with_stock_workers(tmp_path):
    master = tmp_path / "master"
    workers = {name: tmp_path / name for name in NAMES}
    www_port, old_pb = free_port(), free_port()
    old_endpoint = f"tcp:{old_pb}:interface=127.0.0.1"  # "public" in production; loopback in a test
    create_stock_master(
        master, [StockWorker(name, f"old-{name}") for name in NAMES], pb_port=old_endpoint,
        www_port=www_port, command=COMMAND, extra=BUILDERS.format(names=list(NAMES)),
    )
    for name, basedir in workers.items():
        create_stock_worker(basedir, name, f"old-{name}", f"127.0.0.1:{old_pb}", "--maxdelay=3")
    impostor = tmp_path / "stolen-w1"  # a copy of w1's stock tac, kept by someone
    create_stock_worker(impostor, "w1", "old-w1", f"127.0.0.1:{old_pb}", "--maxdelay=3")
    registry = master / "workers.toml"
    try:
        # 0. the stock site, all building
        run(BIN / "buildbot", "start", master, timeout=120)
        for basedir in workers.values():
            run(BIN / "buildbot-worker", "start", basedir, timeout=60)
        wait_for(lambda: connected(www_port, *NAMES), timeout=90, what="three stock workers")
        for name in NAMES:
            build(www_port, name)

        # 1. import, legacy_pb, the hook; a reconfig: still building with the old passwords
        port = free_port()
        bbenroll(registry, "init", "--location", f"tcp:127.0.0.1:{port}", "--listen",
                 f"tcp:{port}:interface=127.0.0.1", "--pb", f"tcp:{free_port()}:interface=127.0.0.1")
        bbenroll(registry, "import", str(master))
        text = registry.read_text()
        registry.write_text(text.replace("\n[master]\n", f'\n[master]\nlegacy_pb = "{old_endpoint}"\n', 1))
        (master / "master.cfg").write_text(HOOK_CFG.format(command=COMMAND, names=list(NAMES),
                                                           www_port=www_port))
        run(BIN / "buildbot", "reconfig", master, timeout=120)
        wait_for(lambda: connected(www_port, *NAMES), timeout=90, what="three workers after the reconfig")
        for name in NAMES:
            build(www_port, name)
        listed = {w["name"]: w for w in json.loads(bbenroll(registry, "list", "--json").out)}
        assert all(listed[n]["legacy"] and listed[n]["moved"] is None for n in NAMES)

        # 2. migrate w1: through its tunnel, its builder directory kept, its old tac refused
        furl = bbenroll(registry, "show", "w1").out.strip()
        run(BIN / "bbenroll", "worker", "migrate", workers["w1"], "-", input_text=furl, timeout=120)
        run(BIN / "buildbot-worker", "restart", workers["w1"], timeout=60)
        wait_for(lambda: tomllib.loads(registry.read_text())["workers"]["w1"].get("moved"), timeout=60,
                 what="w1 moved")
        wait_for(lambda: connected(www_port, "w1"), timeout=90, what="w1 through its tunnel")
        build(www_port, "w1")
        assert (workers["w1"] / "bw1" / "kept.txt").read_text() == "built\n" * 3
        # refused: `start` waits for "attached", which never comes
        run(BIN / "buildbot-worker", "start", impostor, timeout=60, check=False)
        log = master / "twistd.log"
        wait_for(lambda: "refused a direct PB login as 'w1'" in log.read_text(), timeout=60,
                 what="the stolen tac refused")
        stop_daemon("buildbot-worker", impostor)
        for name in ("w2", "w3"):
            build(www_port, name)  # still directly, with their passwords

        # 3. migrate the others; finish-migration: the old port closes, all build through FURLs
        not_yet = run_cli(["--registry", str(registry), "master", "finish-migration"])
        assert not_yet.code == 1 and "w2, w3" in not_yet.err
        for name in ("w2", "w3"):
            furl = bbenroll(registry, "show", name).out.strip()
            run(BIN / "bbenroll", "worker", "migrate", workers[name], "-", input_text=furl, timeout=120)
            run(BIN / "buildbot-worker", "restart", workers[name], timeout=60)
        wait_for(lambda: all(tomllib.loads(registry.read_text())["workers"][n].get("moved") for n in NAMES),
                 timeout=90, what="all moved")
        wait_for(lambda: connected(www_port, *NAMES), timeout=90, what="all through their tunnels")
        bbenroll(registry, "master", "finish-migration")
        wait_for(lambda: refuses_connections(old_pb), timeout=60, what="the old PB port closed")
        for name in NAMES:
            build(www_port, name)
        assert "legacy_pb" not in tomllib.loads(registry.read_text())["master"]
    finally:
        for basedir in [*workers.values(), impostor]:
            stop_daemon("buildbot-worker", basedir)
        stop_daemon("buildbot", master)
