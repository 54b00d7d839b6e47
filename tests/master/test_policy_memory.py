"""rotate_every: the running master rotates workers whose secret reached the policy's age
(an injected clock; the write goes through the master's RegistryWriter)."""

from __future__ import annotations

import tomllib
from datetime import timedelta

from bbenroll.master.reloader import POLL_INTERVAL
from bbenroll.master.writer import master_actor, run_here
from bbenroll.registry import audit
from tests.helpers.registry_stub import set_policy

DAY = 24 * 3600


def secrets(world) -> dict[str, str]:
    return {n: w["swissnum"] for n, w in tomllib.loads(world.path.read_text())["workers"].items()}


def test_due_workers_are_rotated_and_the_rest_untouched(world):
    world.add("old")
    world.advance(50 * DAY)
    world.add("young")
    set_policy(world.path, "90d")
    before = secrets(world)
    world.start(run_write=run_here)
    world.advance(60 * DAY)  # old: 110 days; young: 60
    after = secrets(world)
    assert after["old"] != before["old"] and after["young"] == before["young"]
    records = audit.read_records(audit.log_path(world.path))
    assert (records[-1]["action"], records[-1]["worker"], records[-1]["actor"]) == (
        "rotated", "old", master_actor())
    (batch,) = world.logged("rotating {count} workers by policy")
    assert batch["count"] == 1
    previous = tomllib.loads(world.path.read_text())["workers"]["old"]["previous"]
    assert previous["swissnum"] == before["old"]
    assert previous["until"] - world.now() == timedelta(days=7)  # the default grace: pushed, not cut
    world.advance(POLL_INTERVAL)
    assert secrets(world) == after  # rotated once: it is young again
    world.finish()


def test_no_policy_no_rotation(world):
    world.add("old")
    before = secrets(world)
    world.start(run_write=run_here)
    world.advance(1000 * DAY)
    assert secrets(world) == before
    assert world.logged("rotating {count} workers by policy") == []
    world.finish()


def test_a_revoked_worker_is_never_rotated(world):
    world.add("gone")
    world.cli("revoke", "gone")
    set_policy(world.path, "1d")
    before = secrets(world)
    world.start(run_write=run_here)
    world.advance(10 * DAY)
    assert secrets(world) == before
    world.finish()


def test_a_fleet_due_on_one_day_is_rotated_in_bounded_batches(world):
    for i in range(7):
        world.add(f"w{i}")
    set_policy(world.path, "90d")
    before = secrets(world)
    service = world.start(run_write=run_here)
    service.max_rotations_per_tick = 3
    world.advance(91 * DAY)
    assert sum(secrets(world)[n] != before[n] for n in before) == 3
    world.advance(POLL_INTERVAL)
    world.advance(POLL_INTERVAL)
    assert all(secrets(world)[n] != before[n] for n in before)
    assert [b["count"] for b in world.logged("rotating {count} workers by policy")] == [3, 3, 1]
    world.finish()


def test_a_worker_policy_overrides_the_masters(world):
    world.add("fast")
    world.add("slow")
    set_policy(world.path, "90d")
    set_policy(world.path, "10d", worker="fast")
    before = secrets(world)
    world.start(run_write=run_here)
    world.advance(11 * DAY)
    after = secrets(world)
    assert after["fast"] != before["fast"] and after["slow"] == before["slow"]
    world.finish()


def test_a_worker_that_says_never_is_not_rotated(world):
    world.add("pinned")
    set_policy(world.path, "1d")
    set_policy(world.path, "never", worker="pinned")
    before = secrets(world)
    world.start(run_write=run_here)
    world.advance(30 * DAY)
    assert secrets(world) == before
    world.finish()


def test_ages_are_looked_at_only_when_a_rotation_is_due_not_every_tick(world, monkeypatch):
    from bbenroll.registry import model

    world.add("w1")
    set_policy(world.path, "90d")
    looked: list[str] = []
    real = model.rotation_due
    monkeypatch.setattr(model, "rotation_due", lambda w, *a: looked.append(w.name) or real(w, *a))
    world.start(run_write=run_here)
    for _ in range(5):
        world.advance(POLL_INTERVAL)
    world.cli("add", "w2")  # a reload plans the next due time; it does not look at every age
    world.advance(POLL_INTERVAL)
    assert looked == []
    before = secrets(world)
    world.advance(90 * DAY - 10 * POLL_INTERVAL)
    assert looked == [] and secrets(world) == before
    world.advance(10 * POLL_INTERVAL)  # w1's age reached: looked at once, rotated
    assert looked[:2] == ["w1", "w2"] and secrets(world)["w1"] != before["w1"]
    world.finish()
