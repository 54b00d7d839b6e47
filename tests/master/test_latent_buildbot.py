"""The latent flow end to end (issue 9, test 6): a real Buildbot master with the hook and a
LocalLatentWorker whose instances are real ``bbenroll worker run`` processes."""

from __future__ import annotations

import pytest

from bbenroll.registry import store
from tests.helpers.buildbot import BIN, force_build, rest, run, stop_daemon, wait_build, wait_for
from tests.helpers.cli import run_cli
from tests.helpers.net import free_port
from tests.helpers.rotation import utc_now

pytestmark = [pytest.mark.slow, pytest.mark.network]

SUCCESS, EXCEPTION = 0, 4
IDLE = 3  # build_wait_timeout: seconds an idle instance lives

MASTER_CFG = """\
from buildbot.plugins import schedulers, steps, util
from bbenroll.latent import LocalLatentWorker
from bbenroll.master import Enrollment

c = BuildmasterConfig = {{}}
enrollment = Enrollment("workers.toml", basedir=basedir)
latent = enrollment.latent(LocalLatentWorker, "local1", build_wait_timeout={idle}, missing_timeout=120,
                           workdir={workdir!r}, command=[{bbenroll!r}, "worker", "run"], stop_timeout=20)
c["workers"] = [latent] + [w for w in enrollment.workers() if w.name not in enrollment.latent_names]
c["protocols"] = {{"pb": {{"port": enrollment.pb_port}}}}
c["services"] = [enrollment.service()]
factory = util.BuildFactory([steps.ShellCommand(command=["echo", "built on", util.Property("workername")])])
c["builders"] = [util.BuilderConfig(name="b", workernames=["local1"], factory=factory)]
c["schedulers"] = [schedulers.ForceScheduler(name="force", builderNames=["b"])]
c["www"] = {{"port": "tcp:{www_port}:interface=127.0.0.1", "plugins": {{}}}}
c["buildbotURL"] = "http://127.0.0.1:{www_port}/"
c["db"] = {{"db_url": "sqlite:///state.sqlite"}}
c["title"] = "bbenroll latent"
c["buildbotNetUsageData"] = None
"""


@pytest.fixture
def latent_master(tmp_path):
    basedir = tmp_path / "master"
    workdir = tmp_path / "instances"
    workdir.mkdir()
    www_port, port = free_port(), free_port()
    run(BIN / "buildbot", "create-master", "--quiet", "--db", "sqlite:///state.sqlite", basedir)
    (basedir / "master.cfg").write_text(MASTER_CFG.format(
        idle=IDLE, workdir=str(workdir), bbenroll=str(BIN / "bbenroll"), www_port=www_port))
    registry = basedir / "workers.toml"
    store.create(registry, location=[f"tcp:127.0.0.1:{port}"], listen=f"tcp:{port}:interface=127.0.0.1",
                 pb=f"tcp:{free_port()}:interface=127.0.0.1", identity="master.pem")
    result = run_cli(["--registry", str(registry), "add", "local1"], clock=utc_now)
    assert result.code == 0, result.err
    try:
        run(BIN / "buildbot", "start", basedir, timeout=120)
        yield basedir, workdir, www_port
    finally:
        stop_daemon("buildbot", basedir)


def registry_of(basedir):
    return store.load(basedir / "workers.toml").registry


def connected(www_port: int) -> bool:
    workers = rest(www_port, "workers?name=local1")["workers"]
    return bool(workers and workers[0]["connected_to"])


def one_build(basedir, workdir, www_port):
    """Force a build; it succeeds on a new instance, which stops after IDLE seconds."""
    brid = force_build(www_port)
    build = wait_build(www_port, brid, timeout=180)
    assert build["results"] == SUCCESS, build
    worker = registry_of(basedir).workers["local1"]
    assert worker.enrolled_by is not None and worker.bound is not None
    # the idle instance stops, its process and basedir are gone
    wait_for(lambda: not connected(www_port), timeout=IDLE + 60, what="the idle instance stopped")
    wait_for(lambda: list(workdir.iterdir()) == [], timeout=30, what="the instance's basedir removed")
    return worker


def test_each_build_gets_a_new_instance_with_a_new_invite_and_key(latent_master):
    basedir, workdir, www_port = latent_master
    before = registry_of(basedir).workers["local1"]
    first = one_build(basedir, workdir, www_port)
    second = one_build(basedir, workdir, www_port)

    # two invites, two enrollments of the same name, two worker keys, two FURLs
    assert first.enrolled_by != second.enrolled_by
    assert first.bound.tubid != second.bound.tubid
    assert len({before.swissnum, first.swissnum, second.swissnum}) == 3
    # the spent invites are gone; the registry holds exactly the one worker
    wait_for(lambda: not getattr(registry_of(basedir), "invites", {}), timeout=30,
             what="the master removing its spent invites")
    assert set(registry_of(basedir).workers) == {"local1"}
    log = (basedir / "twistd.log").read_text(errors="replace")
    assert log.count("bbenroll: starting an instance of latent worker 'local1' with a new invite") == 2
    assert "WORKERPASS" not in log
    # no secret in the master's log, which holds the instances' output too: no FURL at all
    # (an invite's secret is in no file; the workers' own secrets are in the registry)
    assert "pb://" not in log
    for worker in (first, second):
        assert worker.swissnum not in log and worker.password not in log
    # an instance must log in with the password Buildbot already has: re-enrolling keeps it
    # (a new one per instance means a failed first login and a Buildbot reconfig per build)
    assert "invalid login from user 'local1'" not in log
    assert "Traceback" not in log

    # revoked: no instance, no invite, the build ends with an exception (not retried forever)
    result = run_cli(["--registry", str(basedir / "workers.toml"), "revoke", "local1"], clock=utc_now)
    assert result.code == 0, result.err
    build = wait_build(www_port, force_build(www_port), timeout=120)
    assert build["results"] == EXCEPTION, build
    log = (basedir / "twistd.log").read_text(errors="replace")
    assert "not starting an instance of latent worker 'local1': it is revoked in the registry" in log
    assert list(workdir.iterdir()) == [] and not getattr(registry_of(basedir), "invites", {})
