"""`bbenroll worker create BASEDIR INVITE` as a worker admin runs it: real processes against a
real master service in its own process (issue 9 tests 1-2, from the worker's side)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from bbenroll.registry import store
from tests.helpers.buildbot import BIN, run
from tests.helpers.invites_master import make_invite
from tests.helpers.service_process import serving

pytestmark = pytest.mark.network


@pytest.fixture
def master(served_reg_path):
    """The Foolscap service alone (no Buildbot), in its own process, logging to master.log."""
    with serving(served_reg_path, served_reg_path.parent / "master.log"):
        yield served_reg_path


def create(basedir, *args, env=None, input_text=None):
    return run(BIN / "bbenroll", "worker", "create", basedir, *args, check=False, env=env,
               input_text=input_text, timeout=120)


def test_create_from_bbenroll_invite_enrolls_and_binds_the_new_key(master, tmp_path):
    invite_id, invite = make_invite(master, prefix="ci")
    proc = create(tmp_path / "w1", "--json", env={"BBENROLL_INVITE": invite})
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    registry = store.load(master).registry
    (name,) = registry.workers
    worker = registry.workers[name]
    assert name.startswith("ci-") and document["name"] == name and document["enrolled_by"] == invite_id
    assert worker.enrolled_by == invite_id
    assert worker.bound is not None and document["bound"]["fingerprint"] == worker.bound.tubid
    # the basedir holds the worker's own FURL, never the invite
    assert (tmp_path / "w1" / "bbenroll.furl").read_text().strip() == registry.furl(worker)
    # the same invite again: refused for good, one line, nothing written
    again = create(tmp_path / "w2", "-", input_text=invite)
    assert again.returncode == 1
    assert again.stderr.endswith("invite already used\n") and again.stderr.count("\n") == 1, again.stderr
    assert "Traceback" not in again.stderr and not (tmp_path / "w2").exists()


def test_local_checks_come_before_the_invite_is_consumed(master, tmp_path):
    invite_id, invite = make_invite(master, name="careful")
    base = tmp_path / "w1"
    base.mkdir()
    (base / "buildbot.tac").write_text("# someone else's worker\n")
    proc = create(base, env={"BBENROLL_INVITE": invite})
    assert proc.returncode == 1 and "already exists; use --force" in proc.stderr, proc.stderr
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = create(blocker / "w", env={"BBENROLL_INVITE": invite})
    assert proc.returncode == 1 and "cannot write" in proc.stderr, proc.stderr
    assert store.load(master).registry.invites[invite_id].used == 0  # nothing consumed
    assert create(tmp_path / "w2", env={"BBENROLL_INVITE": invite}).returncode == 0


def test_both_environment_variables_are_one_clear_error(master, tmp_path):
    _, invite = make_invite(master, name="x")
    proc = create(tmp_path / "w", env={"BBENROLL_INVITE": invite, "BBENROLL_FURL": invite})
    assert proc.returncode == 1 and proc.stderr == (
        "error: both BBENROLL_INVITE and BBENROLL_FURL are set: set only one\n"
    )


def test_ten_concurrent_creates_with_one_single_use_invite(master, tmp_path):
    invite_id, invite = make_invite(master, prefix="race")
    with ThreadPoolExecutor(10) as pool:
        procs = list(pool.map(lambda i: create(tmp_path / f"w{i}", "-", input_text=invite), range(10)))
    ok = [p for p in procs if p.returncode == 0]
    refused = [p for p in procs if p.returncode != 0]
    assert len(ok) == 1 and len(refused) == 9, [p.stderr for p in procs]
    for proc in refused:
        assert proc.returncode == 1 and proc.stderr.endswith("invite already used\n"), proc.stderr
    registry = store.load(master).registry  # valid
    assert len(registry.workers) == 1 and registry.invites[invite_id].used == 1
    assert store.check(master) == []
    assert sum((tmp_path / f"w{i}").exists() for i in range(10)) == 1


def test_an_invite_from_bbenroll_invite_then_revoked(master, tmp_path):
    """The admin's real commands: `bbenroll invite`, `worker create` with it, `invite revoke`."""
    from tests.helpers.cli import run_cli
    from tests.helpers.invites_master import utc_now

    made = run_cli(["--registry", str(master), "invite", "--uses", "2", "--prefix", "cli"], clock=utc_now)
    assert made.code == 0, made.err
    invite = made.out.strip().splitlines()[0]
    assert invite.startswith("pb://")
    proc = create(tmp_path / "w1", "-", input_text=invite)
    assert proc.returncode == 0, proc.stderr
    assert "with invite inv-" in proc.stderr
    (invite_id,) = store.load(master).registry.invites
    revoked = run_cli(["--registry", str(master), "invite", "revoke", invite_id], clock=utc_now)
    assert revoked.code == 0, revoked.err
    proc = create(tmp_path / "w2", "-", input_text=invite)
    assert proc.returncode == 1 and proc.stderr.endswith("invite revoked\n"), proc.stderr


def test_a_bound_furl_recreates_its_own_basedir_and_an_invite_after_it_still_works(master, tmp_path):
    """``worker create --force`` with a FURL already bound to the basedir's key: the first
    connection (which tells a FURL from an invite) is made with that key, or a bound FURL
    would be refused as "bound to another worker key" (found by the pushed-rotation tests)."""
    added = run(BIN / "bbenroll", "--registry", master, "--json", "add", "w1", timeout=60)
    furl = json.loads(added.stdout)["furl"]
    first = create(tmp_path / "w1", "-", input_text=furl)
    assert first.returncode == 0, first.stderr
    assert store.load(master).registry.workers["w1"].bound is not None
    again = create(tmp_path / "w1", "--force", "-", input_text=furl)
    assert again.returncode == 0, again.stderr
    # an invite into a basedir whose key exists: redeemed over a throwaway key, bound to the basedir's
    invite_id, invite = make_invite(master, name="w2")
    (tmp_path / "w2").mkdir()
    (tmp_path / "w2" / "bbenroll.pem").write_bytes((tmp_path / "w1" / "bbenroll.pem").read_bytes())
    (tmp_path / "w2" / "bbenroll.pem").chmod(0o600)
    third = create(tmp_path / "w2", "-", input_text=invite)
    assert third.returncode == 0, third.stderr
    registry = store.load(master).registry
    assert registry.workers["w2"].enrolled_by == invite_id
    assert registry.workers["w2"].bound == registry.workers["w1"].bound.__class__(
        registry.workers["w1"].bound.tubid, registry.workers["w2"].bound.at
    )
