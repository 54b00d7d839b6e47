"""Real buildbot master and worker processes for end-to-end tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent

MASTER_CFG = """\
from buildbot.plugins import schedulers, steps, util
from bbenroll.master import Enrollment

c = BuildmasterConfig = {{}}
enrollment = Enrollment("workers.toml", basedir=basedir)
enrollment.configure(c)
names = [w.name for w in c["workers"]] or ["nobody"]
factory = util.BuildFactory([steps.ShellCommand(command={command!r})])
c["builders"] = [util.BuilderConfig(name="b", workernames=names, factory=factory)]
c["schedulers"] = [schedulers.ForceScheduler(name="force", builderNames=["b"])]
c["www"] = {{"port": "tcp:{www_port}:interface=127.0.0.1", "plugins": {{}}}}
c["buildbotURL"] = "http://127.0.0.1:{www_port}/"
c["db"] = {{"db_url": "sqlite:///state.sqlite"}}
c["title"] = "bbenroll test"
c["buildbotNetUsageData"] = None
"""


def run(*args: str | Path, cwd: Path | None = None, timeout: float = 120, check: bool = True,
        env: dict[str, str] | None = None, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, input=input_text)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def create_master(basedir: Path, www_port: int, command: list[str] | None = None) -> None:
    run(BIN / "buildbot", "create-master", "--quiet", "--db", "sqlite:///state.sqlite", basedir)
    cfg = MASTER_CFG.format(www_port=www_port, command=command or ["echo", "hi"])
    (basedir / "master.cfg").write_text(cfg)


def rest(www_port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{www_port}/api/v2/{path}", timeout=10) as response:
        return json.load(response)


def wait_for(predicate, timeout: float = 30, interval: float = 0.2, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def configured_workers(www_port: int) -> dict[str, dict[str, Any]]:
    """Workers the running master is configured with, and whether they are connected."""
    workers = rest(www_port, "workers")["workers"]
    return {w["name"]: w for w in workers if w["configured_on"]}


FETCH_CONFIG = textwrap.dedent("""
    import json, sys
    from foolscap.api import Tub
    from twisted.internet import reactor
    tub = Tub()
    tub.setOption("expose-remote-exception-types", False)
    tub.startService()
    result = {}
    def go():
        d = tub.getReference(sys.argv[1])
        d.addCallback(lambda ref: ref.callRemote("get_worker_config"))
        d.addCallback(lambda config: result.update(config=config))
        d.addErrback(lambda f: result.update(error=str(getattr(f.value, "failure", f).value)))
        d.addBoth(lambda _: reactor.stop())
    reactor.callWhenRunning(go)
    reactor.callLater(20, reactor.stop)
    reactor.run()
    print(json.dumps(result))
""")


def fetch_config(furl: str) -> dict[str, Any]:
    """Connect to a FURL in a separate process, as a worker would, and call get_worker_config."""
    return json.loads(run(sys.executable, "-c", FETCH_CONFIG, furl).stdout)


def force_build(www_port: int, builder: str = "b") -> int:
    """Force a build through the REST API; returns the buildrequest id."""
    builders = rest(www_port, f"builders?name={builder}")["builders"]
    body = json.dumps({"jsonrpc": "2.0", "method": "force", "id": 1,
                       "params": {"builderid": builders[0]["builderid"]}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{www_port}/api/v2/forceschedulers/force", data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.load(response)
    if "error" in answer:
        raise AssertionError(f"force failed: {answer['error']}")
    return answer["result"][0]


def wait_build(www_port: int, brid: int, timeout: float = 300) -> dict[str, Any]:
    """Wait until the build for buildrequest ``brid`` is complete; returns the build."""
    def done() -> Any:
        builds = rest(www_port, f"builds?buildrequestid={brid}")["builds"]
        return builds[0] if builds and builds[0]["complete"] else None

    return wait_for(done, timeout=timeout, interval=0.5, what=f"build for request {brid}")


def step_log(www_port: int, build: dict[str, Any], step: int = -1, log: str = "stdio") -> bytes:
    """The raw log of a step (default: the last one) of a build."""
    steps = rest(www_port, f"builds/{build['buildid']}/steps")["steps"]
    number = steps[step]["number"]
    url = f"http://127.0.0.1:{www_port}/api/v2/builds/{build['buildid']}/steps/{number}/logs/{log}/raw"
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read()


def stop_daemon(script: str, basedir: Path) -> None:
    """`buildbot stop` / `buildbot-worker stop`, then SIGKILL whatever is left: tests never leak processes."""
    import signal

    subprocess.run([str(BIN / script), "stop", str(basedir)], capture_output=True, timeout=60)
    pidfile = Path(basedir) / "twistd.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
