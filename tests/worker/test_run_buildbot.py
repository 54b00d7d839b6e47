"""``bbenroll worker run`` end to end: a real Buildbot master with the hook, real processes."""

from __future__ import annotations

import json
import signal
import stat
import time

import pytest

from bbenroll.worker.run import EXIT_REFUSED, REFUSED_MARKER
from tests.helpers.buildbot import wait_for
from tests.helpers.run import RunFarm, WorkerRun, processes_in, stop_farm, wait_gone

pytestmark = [pytest.mark.slow, pytest.mark.network]

NAMES = ["w1", "w2", "w4"]
EXITS_WITHIN = 10.0  # s from `revoke`/`remove` to `worker run` gone with 3 ("within a few seconds")


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    farm = RunFarm(tmp_path_factory.mktemp("run"), NAMES)
    farm.runs = []
    yield farm
    stop_farm(farm, farm.runs)


def start(farm, name: str, env: dict[str, str]) -> WorkerRun:
    r = WorkerRun(farm.tmp / name, env)
    farm.runs.append(r)
    return r


def attached(farm, r: WorkerRun, name: str) -> None:
    def up() -> bool:
        assert r.proc.poll() is None, f"worker run exited {r.proc.returncode}: {r.stderr()}"
        return farm.connected(name)

    wait_for(up, timeout=60, what=f"{name} connected")


def test_run_creates_builds_stops_on_sigterm_and_restarts_without_creating(farm):
    basedir = farm.tmp / "w1"
    r = start(farm, "w1", {"BBENROLL_FURL": farm.furls["w1"]})
    attached(farm, r, "w1")
    assert "created worker 'w1'" in r.stderr()
    assert (basedir / "buildbot.tac").exists()
    assert not (basedir / "twistd.pid").exists()  # --pidfile=: nothing stale for a container restart
    farm.assert_succeeded(farm.force("w1", 50, 0))
    assert "Connected to buildmaster" in r.stdout()  # twistd.log is followed on stdout
    assert farm.furls["w1"] not in r.stdout() + r.stderr()

    r.terminate()
    assert r.wait(timeout=30) == 0, r.stderr()
    wait_gone(basedir)
    wait_for(lambda: not farm.connected("w1"), timeout=30, what="w1 disconnected")

    tac = (basedir / "buildbot.tac").read_bytes()
    furl_file = (basedir / "bbenroll.furl").read_bytes()
    again = start(farm, "w1", {"BBENROLL_FURL": farm.furls["w1"]})
    attached(farm, again, "w1")
    assert "nothing consumed" in again.stderr()
    assert (basedir / "buildbot.tac").read_bytes() == tac
    assert (basedir / "bbenroll.furl").read_bytes() == furl_file
    farm.assert_succeeded(farm.force("w1", 10, 0))

    # revoked: the master drops the worker, the tunnel is refused for good, run exits 3
    started = time.monotonic()
    farm.cli("revoke", "w1", "--reason", "stolen laptop")
    assert again.wait(timeout=EXITS_WITHIN + 30) == EXIT_REFUSED, again.stderr()
    assert time.monotonic() - started < EXITS_WITHIN, "worker run took too long to give up"
    err = again.stderr()
    assert "refused this worker for good" in err and "revoked" in err, err
    marker = basedir / REFUSED_MARKER
    assert stat.S_IMODE(marker.stat().st_mode) == 0o600
    assert marker.read_text().count("\n") == 1
    assert farm.furls["w1"].rsplit("/", 1)[1] not in marker.read_text()
    wait_gone(basedir)


def test_removed_worker_exits_3(farm):
    basedir = farm.tmp / "w2"
    r = start(farm, "w2", {"BBENROLL_FURL": farm.furls["w2"]})
    attached(farm, r, "w2")
    started = time.monotonic()
    farm.cli("remove", "--yes", "w2")
    assert r.wait(timeout=EXITS_WITHIN + 30) == EXIT_REFUSED, r.stderr()
    assert time.monotonic() - started < EXITS_WITHIN
    assert "refused this worker for good" in r.stderr()
    assert (basedir / REFUSED_MARKER).exists()
    wait_gone(basedir)
    assert processes_in(basedir) == []
    # a stale marker does not decide the next run: it is removed before the child starts
    again = start(farm, "w2", {})
    assert again.wait(timeout=60) == EXIT_REFUSED
    assert "refused this worker for good" in again.stderr()




def make_invite(farm, name: str) -> tuple[str, str]:
    """A one-use invite for worker ``name``, written to the registry as `bbenroll invite` would:
    (its ID, its FURL)."""
    from bbenroll.furl import build_furl
    from bbenroll.registry import invites, store
    from tests.helpers.rotation import utc_now

    invite, secret = invites.new_invite(utc_now(), name=name, by="test")
    with store.edit(farm.registry, now=utc_now()) as editor:
        editor.add_invite(invite)
    master = farm.loaded().registry.master
    return invite.id, build_furl(master.tubid, master.location, secret)


def test_an_invite_is_consumed_by_the_first_run_only(farm):
    invite_id, invite = make_invite(farm, "w3")
    basedir = farm.tmp / "w3"
    r = start(farm, "w3", {"BBENROLL_INVITE": invite})
    wait_for(lambda: "w3" in farm.loaded().registry.workers, timeout=60, what="w3 enrolled")
    attached(farm, r, "w3")
    assert "created worker 'w3'" in r.stderr()
    used = farm.loaded().registry.invites[invite_id]
    assert (used.used, used.uses) == (1, 0)
    assert farm.entry("w3").enrolled_by == invite_id
    assert invite.rsplit("/", 1)[1] not in r.stdout() + r.stderr()
    r.terminate()
    assert r.wait(timeout=30) == 0, r.stderr()
    wait_gone(basedir)

    again = start(farm, "w3", {"BBENROLL_INVITE": invite})  # the same (used up) invite: not read
    attached(farm, again, "w3")
    assert "nothing consumed" in again.stderr()
    assert farm.loaded().registry.invites[invite_id].used == 1
    again.terminate()
    assert again.wait(timeout=30) == 0, again.stderr()
    wait_gone(basedir)


def test_a_basedir_half_written_by_a_crash_is_created_again(farm):
    basedir = farm.tmp / "w4"
    (basedir / "info").mkdir(parents=True)
    (basedir / "buildbot.tac").write_text("# a crash came before bbenroll.furl was written\n")
    r = start(farm, "w4", {"BBENROLL_FURL": farm.furls["w4"]})
    attached(farm, r, "w4")
    assert "created worker 'w4'" in r.stderr()
    assert "bbenroll:furlfile=" in (basedir / "buildbot.tac").read_text()
    assert (basedir / "bbenroll.furl").exists() and (basedir / "bbenroll.pem").exists()
    r.terminate()
    assert r.wait(timeout=30) == 0, r.stderr()
    wait_gone(basedir)

    # --json: stdout holds exactly one document, at the end; the worker's log goes to stderr
    j = WorkerRun(basedir, {}, "--json")
    farm.runs.append(j)
    attached(farm, j, "w4")
    j.terminate()
    assert j.wait(timeout=30) == 0, j.stderr()
    document = json.loads(j.stdout())
    assert document == {"basedir": str(basedir), "created": False, "name": None, "exit": 0,
                        "signal": int(signal.SIGTERM)}
    assert "Connected to buildmaster" in j.stderr()
    wait_gone(basedir)
