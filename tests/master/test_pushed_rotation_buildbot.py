"""Pushed rotation with the real thing (docs/rotation.md, issue 8 "Tests with the real thing").

One Buildbot master with the bbenroll hook and three buildbot-worker processes made
by ``bbenroll worker create``, shared by the tests of this module (each test starts
by settling the farm: every worker running, connected, holding the registry's FURL).
Builds print a deterministic log of a few MB, so a lost or repeated byte shows.
"""

from __future__ import annotations

import json
import stat
import time

import pytest

from bbenroll.master import gate
from bbenroll.times import format_time
from tests.helpers.buildbot import fetch_config, wait_for
from tests.helpers.rotation import (
    LINE_BYTES,
    SUCCESS,
    ConnectionWatch,
    RotationFarm,
    edit_registry,
    hints,
    log_marks,
    since,
    swissnum,
    utc_now,
)

pytestmark = [pytest.mark.slow, pytest.mark.network]

NAMES = ["w1", "w2", "w3"]
LINES = 20_000  # 3 MB of log per build
assert LINES * LINE_BYTES > 3_000_000
DELIVERED_WITHIN = 10.0  # s from `rotate` to every worker's file holding its new FURL (the issue)
DROPPED_WITHIN = 2.0  # s from `rotate --compromised` to the connection gone (the issue)
# Buildbot's log lines for a worker's PB connection coming and going: one of each
# per connection, so a moved session must add neither
ATTACHED = "Connected to buildmaster; worker is ready"  # the worker's twistd.log


def detached(name: str) -> str:
    return f"Worker.detached({name})"  # the master's twistd.log


def retired_message(rotated) -> str:
    return f"secret retired by rotation on {format_time(rotated)}; ask the master admin for a new FURL"


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    farm = RotationFarm(tmp_path_factory.mktemp("rotation"), NAMES)
    yield farm
    farm.stop()


def settle(farm: RotationFarm) -> None:
    """Every worker running, connected and holding the registry's FURL; a worker a failed
    test left broken is re-created, so one failure does not take the others with it."""
    for name, worker in farm.workers.items():
        held = swissnum(worker.furl_in_file()[0])
        entry = farm.entry(name)
        in_grace = entry.previous is not None and entry.previous.until > utc_now()
        will_update = in_grace and held == entry.previous.swissnum  # the master will push it
        if worker.pid() is None or not (held == entry.swissnum or will_update):
            worker.stop()
            worker.create(farm.registry_furl(name), force=True)
            worker.start()
    for name in farm.workers:
        wait_for(lambda n=name: farm.connected(n), timeout=60, what=f"{name} connected")
        wait_for(lambda n=name: farm.entry(n).serial == 0 or farm.holds_registry_furl(n), timeout=60,
                 what=f"{name} holding the registry's FURL")


def delivery(farm: RotationFarm) -> dict[str, dict]:
    return {w["name"]: w["delivery"] for w in farm.cli_json("list")}


def assert_no_disconnect(farm: RotationFarm, marks: dict[str, int], watch: ConnectionWatch) -> None:
    assert watch.samples >= 10, "REST was not sampled during the rotation"
    assert watch.gaps == [], f"Buildbot saw workers without a connection: {watch.gaps[:5]}"
    master_log = since(farm.master_log(), marks, "master")
    for name in watch.names:
        assert detached(name) not in master_log
        assert ATTACHED not in since(farm.workers[name].log_text(), marks, name), f"{name} reattached"


def test_rotate_all_mid_build_moves_every_worker_without_a_disconnect(farm):
    settle(farm)
    old = {n: farm.registry_furl(n) for n in NAMES}
    serials = {n: farm.entry(n).serial for n in NAMES}
    tacs = {n: (w.basedir / "buildbot.tac").read_bytes() for n, w in farm.workers.items()}
    pids = {n: w.pid() for n, w in farm.workers.items()}
    marks = log_marks(farm)
    builds = [farm.force(n, LINES, 16) for n in NAMES]
    for build in builds:
        farm.wait_output(build, LINES // 5)

    with ConnectionWatch(farm, NAMES) as watch:
        started = time.monotonic()
        farm.cli("rotate", "--all")
        new = {n: farm.registry_furl(n) for n in NAMES}
        assert all(swissnum(new[n]) != swissnum(old[n]) for n in NAMES)
        assert {n: farm.entry(n).serial for n in NAMES} == {n: serials[n] + 1 for n in NAMES}
        # within 10 s every worker holds its new FURL, numbered, and nobody touched it
        wait_for(lambda: all(farm.workers[n].furl_in_file() == (new[n], serials[n] + 1) for n in NAMES),
                 timeout=DELIVERED_WITHIN - (time.monotonic() - started), interval=0.1,
                 what="every worker's bbenroll.furl to hold its new FURL")
        wait_for(lambda: all(farm.confirmed(n) for n in NAMES), timeout=30, what="every delivery confirmed")
        for build in builds:
            farm.assert_succeeded(build)  # SUCCESS, and the log byte for byte
    assert_no_disconnect(farm, marks, watch)

    for name, worker in farm.workers.items():
        assert worker.furl_file.read_text() == f"# serial {serials[name] + 1}\n{new[name]}\n"
        assert stat.S_IMODE(worker.furl_file.stat().st_mode) == 0o600
        assert (worker.basedir / "buildbot.tac").read_bytes() == tacs[name]  # not re-created
        assert worker.pid() == pids[name]  # not restarted
        # the old secret is refused now that the new one is confirmed, and says why
        assert fetch_config(old[name]) == {"error": retired_message(farm.entry(name).rotated)}
        # and the new FURL stays bound to the worker's key: a copy of it works nowhere else
        assert fetch_config(new[name])["error"].startswith(f"{gate.Reason.WRONG_KEY} (")
        for log in (worker.log_text(), farm.master_log()):
            assert swissnum(new[name]) not in log
    states = delivery(farm)
    assert {n: (states[n]["state"], states[n]["serial"]) for n in NAMES} == {
        n: ("confirmed", serials[n] + 1) for n in NAMES}


def test_set_location_mid_build_moves_every_worker_to_the_new_hints(farm):
    settle(farm)
    old = {n: farm.registry_furl(n) for n in NAMES}
    new_hints = f"tcp:localhost:{farm.port}"  # the same port under another name
    assert all(hints(furl) != new_hints for furl in old.values())
    marks = log_marks(farm)
    builds = [farm.force(n, LINES, 14) for n in NAMES]
    for build in builds:
        farm.wait_output(build, LINES // 5)

    with ConnectionWatch(farm, NAMES) as watch:
        farm.cli("master", "set-location", new_hints)
        wait_for(lambda: all(farm.holds_registry_furl(n) and hints(farm.workers[n].furl_in_file()[0])
                             == new_hints for n in NAMES), timeout=30, interval=0.2,
                 what="every worker holding the FURL with the new hints, confirmed")
        for build in builds:
            farm.assert_succeeded(build)
    assert_no_disconnect(farm, marks, watch)
    for name, worker in farm.workers.items():
        furl, _ = worker.furl_in_file()
        assert swissnum(furl) == swissnum(old[name])  # same secret, new place
        assert furl == old[name].replace(hints(old[name]), new_hints)
    assert {state["state"] for state in delivery(farm).values()} == {"confirmed"}


def test_rotate_every_rotates_and_delivers_by_itself(farm):
    settle(farm)
    serials = {n: farm.entry(n).serial for n in NAMES}
    audit = farm.registry.with_name("workers.audit.jsonl")
    audit_mark = len(audit.read_text())
    build = farm.force("w1", LINES, 12)
    farm.wait_started(build)
    edit_registry(farm, r"""
        import re
        text = re.sub(r"(?m)^\[master\]\n", '[master]\nrotate_every = "3s"\n', text, count=1)
    """)
    try:
        assert farm.loaded().registry.master.rotate_every.total_seconds() == 3
        # nobody runs rotate: the master rotates every worker by itself, and they confirm (one
        # worker at a time: with a policy this short, the master rotates again 3 s later)
        for name in NAMES:
            wait_for(lambda n=name: farm.entry(n).serial > serials[n] and farm.confirmed(n), timeout=60,
                     interval=0.1, what=f"the master to rotate {name} and deliver by itself")
    finally:
        edit_registry(farm, r"""
            import re
            text = re.sub(r'(?m)^rotate_every = "3s"\n', "", text)
        """)
    assert farm.loaded().registry.master.rotate_every is None
    for name in NAMES:  # a rotation the policy started just before it was removed settles too
        wait_for(lambda n=name: farm.holds_registry_furl(n), timeout=30, what=f"{name} confirmed")
    farm.assert_succeeded(build)
    records = [json.loads(line) for line in audit.read_text()[audit_mark:].splitlines()]
    by_master = {r["worker"] for r in records
                 if r["action"] == "rotated" and r["actor"].get("by") == "master"}
    assert by_master == set(NAMES)


def test_a_worker_offline_during_a_rotation_updates_itself_within_the_grace_and_not_after(farm):
    settle(farm)
    worker = farm.workers["w2"]
    worker.stop()
    wait_for(lambda: not farm.connected("w2"), what="w2 disconnected")
    old_file = worker.furl_file.read_bytes()
    farm.cli("rotate", "w2")  # the default grace: 7 days
    new = farm.registry_furl("w2")
    assert worker.furl_file.read_bytes() == old_file  # nothing reached it while it was down

    # back within the grace: it comes in with its old FURL, and updates itself
    worker.start()
    wait_for(lambda: farm.holds_registry_furl("w2"), timeout=30, what="w2 to update itself")
    assert worker.furl_in_file()[0] == new
    farm.assert_succeeded(farm.force("w2", 2000, 0))

    # down again, rotated with a short grace, back after it: refused, with the reason
    worker.stop()
    wait_for(lambda: not farm.connected("w2"), what="w2 disconnected")
    held = worker.furl_file.read_bytes()
    farm.cli("rotate", "w2", "--grace", "2s")
    entry = farm.entry("w2")
    newest = farm.registry_furl("w2")
    wait_for(lambda: utc_now() > entry.previous.until, timeout=10, what="the grace to end")
    time.sleep(1)  # the master's clock has whole seconds: well past it
    mark = len(worker.log_text())
    worker.start(refused=True)
    message = retired_message(entry.rotated)
    wait_for(lambda: message in worker.log_text()[mark:], timeout=30, what="the refusal in w2's log")
    assert not farm.connected("w2")
    assert worker.furl_file.read_bytes() == held

    # the worker admin's fix: worker create --force with the new FURL
    worker.stop()
    worker.create(newest, force=True)
    worker.start()
    wait_for(lambda: farm.connected("w2"), timeout=60, what="w2 connected with its new FURL")
    wait_for(lambda: farm.holds_registry_furl("w2"), timeout=30, what="w2 confirmed")
    farm.assert_succeeded(farm.force("w2", 2000, 0))


def test_a_compromised_rotation_drops_the_worker_within_2s_and_pushes_nothing(farm):
    settle(farm)
    worker = farm.workers["w3"]
    old = farm.registry_furl("w3")
    before = worker.furl_file.read_bytes()
    build = farm.force("w3", LINES, 30)
    farm.wait_output(build, LINES // 10)
    started = time.monotonic()
    new = farm.cli("rotate", "--compromised", "w3")
    wait_for(lambda: not farm.connected("w3"), timeout=10, interval=0.05, what="w3 dropped")
    dropped = time.monotonic() - started
    assert dropped <= DROPPED_WITHIN, f"dropped after {dropped:.1f}s"
    assert farm.wait_done(build, timeout=60)["results"] != SUCCESS
    time.sleep(3)  # an offer, had there been one, would have been written by now
    assert worker.furl_file.read_bytes() == before
    assert fetch_config(old) == {"error": "unknown secret"}
    assert {n: s["state"] for n, s in delivery(farm).items()}["w3"] == "pending"

    worker.stop()
    worker.create(new, force=True)  # the PB password changed too
    worker.start()
    wait_for(lambda: farm.connected("w3"), timeout=60, what="w3 back with its new FURL")
    farm.assert_succeeded(farm.force("w3", 2000, 0))


def test_roll_identity_mid_build_moves_every_worker_to_the_new_tubid(farm):
    """Test 5's second half: `master roll-identity` with builds running. Last in the module:
    the farm's master has a new identity from here on."""
    settle(farm)
    old = {n: farm.registry_furl(n) for n in NAMES}
    old_tubid = farm.loaded().registry.master.tubid
    marks = log_marks(farm)
    builds = [farm.force(n, LINES, 14) for n in NAMES]
    for build in builds:
        farm.wait_output(build, LINES // 5)

    with ConnectionWatch(farm, NAMES) as watch:
        farm.cli("master", "roll-identity", "--grace", "1h")
        new_tubid = farm.loaded().registry.master.tubid
        assert new_tubid != old_tubid
        wait_for(lambda: all(farm.holds_registry_furl(n)
                             and farm.workers[n].furl_in_file()[0].startswith(f"pb://{new_tubid}@")
                             for n in NAMES),
                 timeout=30, interval=0.2, what="every worker holding its FURL under the new TubID")
        for build in builds:
            farm.assert_succeeded(build)  # no build lost, logs byte for byte
    assert_no_disconnect(farm, marks, watch)
    # every worker confirmed: the old identity retires without waiting for the grace
    wait_for(lambda: farm.loaded().registry.master.previous is None, timeout=30, what="old identity retired")
    for name, worker in farm.workers.items():
        furl, _ = worker.furl_in_file()
        assert swissnum(furl) == swissnum(old[name])  # same secret, new master key
        refused = fetch_config(old[name])  # the old TubID is not served any more
        assert "error" in refused and old_tubid in refused["error"], refused
    assert {state["state"] for state in delivery(farm).values()} == {"confirmed"}
