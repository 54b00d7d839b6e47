"""The tick costs what changed, not the fleet (issue #12): due times, not walks. One task clock."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from bbenroll.fileio import atomic_write
from bbenroll.master import reloader as reloader_module
from bbenroll.master import schedule
from bbenroll.master.reloader import POLL_INTERVAL
from bbenroll.master.status import BATCH_INTERVAL, HEARTBEAT, status_path
from bbenroll.master.writer import run_here
from bbenroll.registry import model, store
from bbenroll.registry.tomledit import append_tables, render_new_table
from tests.helpers.foolscap import pump, resolve
from tests.helpers.held import Held

DAY = 24 * 3600


def fleet_registry(world, count: int) -> None:
    """``count`` workers w0, w1, ... added at once (as ``bbenroll add`` writes them)."""
    tables = [render_new_table(model.new_worker(f"w{i}", world.now())) for i in range(count)]
    atomic_write(world.path, append_tables(world.path.read_text(), tables).encode())


def count_calls(monkeypatch, owner, name):
    calls: list[object] = []
    real = getattr(owner, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def test_an_idle_tick_is_one_stat_and_no_walk_over_the_workers(world, monkeypatch):
    fleet_registry(world, 300)
    world.start()
    world.accepted(store.load(world.path).registry.workers["w7"].swissnum)
    world.advance(HEARTBEAT.total_seconds())  # settle: the first ticks and writes
    stats = count_calls(monkeypatch, reloader_module, "file_signature")
    states = count_calls(monkeypatch, model.Worker, "state")
    for _ in range(10):
        world.advance(POLL_INTERVAL)
    assert len(stats) == 10  # one per tick
    assert states == []  # no worker (not even the connected one) looked at
    world.finish()


def test_an_expiry_drops_its_connection_at_its_time_and_only_then(world):
    swissnum = world.add("w1", "--expires", "2h")
    world.add("w2")
    world.start()
    link, _ = world.accepted(swissnum)
    expires = store.load(world.path).registry.workers["w1"].expires
    assert world.service._event_at == expires.timestamp()  # planned, not looked for each second
    world.advance(2 * 3600 - 2 * POLL_INTERVAL)
    assert link.connected
    world.advance(2 * POLL_INTERVAL)
    assert not link.connected
    assert world.service._event_at is None  # nothing else is due by the clock
    world.finish()


def test_the_end_of_a_grace_drops_the_previous_secret_at_its_time(world):
    old = world.add("w1")
    world.cli("rotate", "w1", "--grace", "1h")
    world.start()
    link, _ = world.accepted(old)
    world.advance(3600 - 2 * POLL_INTERVAL)
    assert link.connected
    world.advance(2 * POLL_INTERVAL)
    assert not link.connected
    world.finish()


def test_a_reload_rechecks_only_the_changed_workers_connections(world, monkeypatch):
    secrets = {name: world.add(name) for name in ("w1", "w2", "w3")}
    world.start()
    links = {name: world.accepted(secret)[0] for name, secret in secrets.items()}
    checked = count_calls(monkeypatch, world.service.gate.__class__, "still_allowed")
    world.cli("revoke", "w2")
    world.advance(POLL_INTERVAL)
    assert {args[1] for args in checked} == {"w2"}  # w2's connection; w1's and w3's are not looked at
    assert [name for name, link in links.items() if link.connected] == ["w1", "w3"]
    world.finish()


def test_an_ephemeral_removal_is_due_a_timeout_after_its_disconnect(world):
    swissnum = world.add("eph")
    text = world.path.read_text().replace('[workers.eph]\n', '[workers.eph]\nephemeral = true\n', 1)
    world.path.write_text(text)
    world.start()
    link, _ = world.accepted(swissnum)
    world.advance(POLL_INTERVAL)
    assert world.service._ephemeral_at is None  # connected: nothing due
    link.close()
    world.advance(POLL_INTERVAL)
    timeout = model.DEFAULT_EPHEMERAL_TIMEOUT.total_seconds()
    due = world.service._ephemeral_at
    assert due is not None and due - world.clock.seconds() <= timeout + 1
    world.advance(timeout - 3 * POLL_INTERVAL)
    assert "eph" in store.load(world.path).registry.workers
    world.advance(4 * POLL_INTERVAL)
    assert "eph" not in store.load(world.path).registry.workers
    world.finish()


def test_a_burst_of_connects_is_one_status_write(world):
    fleet_registry(world, 200)
    held = Held()  # the registry writer's (audit) writes wait
    world.start(run_write=held)
    writer = world.service.status_writer
    world.advance(HEARTBEAT.total_seconds() - POLL_INTERVAL)
    before = writer.writes
    workers = store.load(world.path).registry.workers
    for worker in workers.values():
        world.accepted(worker.swissnum)
    assert writer.writes == before  # none on the accept path
    world.advance(BATCH_INTERVAL)
    assert writer.writes == before + 1
    entries = json.loads(status_path(world.path).read_text())["workers"]
    assert len(entries) == 200 and {e["state"] for e in entries.values()} == {"connected"}
    world.service.writer.run = run_here  # the audit records of the 200 accepts, written now
    held.run_all()
    world.finish()


def test_status_reports_buildbot_attachment_and_counts_the_stuck(world):
    attached: set[str] = set()
    one, two = world.add("w1"), world.add("w2")
    world.add("w3")
    world.start(attached=lambda name: name in attached)
    world.accepted(one)
    world.accepted(two)
    world.advance(POLL_INTERVAL + BATCH_INTERVAL)
    entries = json.loads(status_path(world.path).read_text())["workers"]
    assert (entries["w1"]["attached"], entries["w2"]["attached"]) == (False, False)
    attached.add("w1")  # Buildbot's Worker w1 attached: seen at the next tick, written batched
    world.advance(POLL_INTERVAL)
    world.advance(BATCH_INTERVAL)
    entries = json.loads(status_path(world.path).read_text())["workers"]
    assert (entries["w1"]["attached"], entries["w2"]["attached"]) == (True, False)
    document = json.loads(world.cli("--json", "status"))
    rows = {row["name"]: row for row in document["workers"]}
    assert [rows[n]["attached"] for n in ("w1", "w2", "w3")] == [True, False, None]
    assert document["counts"] == {"connected": 2, "attached": 1, "connected_not_attached": 1}
    human = world.cli("status")
    assert "attached" in human.splitlines()[0]
    attached.discard("w1")  # a detach is seen within a heartbeat
    for _ in range(int(HEARTBEAT.total_seconds() + BATCH_INTERVAL)):
        world.advance(POLL_INTERVAL)
    entries = json.loads(status_path(world.path).read_text())["workers"]
    assert entries["w1"]["attached"] is False
    world.finish()


def test_rotation_due_at_matches_rotation_due():
    now = datetime(2027, 1, 1, tzinfo=UTC)
    every = timedelta(days=30)
    worker = model.Worker("w", "s" * 32, "p", created=now, rotated=now - timedelta(days=10))
    due = schedule.rotation_due_at(worker, every, now)
    assert due == now + timedelta(days=20)
    assert not model.rotation_due(worker, every, due - timedelta(seconds=1))
    assert model.rotation_due(worker, every, due)
    graced = model.Worker("w", "s" * 32, "p", created=now, rotated=now - timedelta(days=40),
                          previous=model.Previous("t" * 32, now + timedelta(days=2)))
    assert schedule.rotation_due_at(graced, every, now) == now + timedelta(days=2)
    expiring = model.Worker("w", "s" * 32, "p", created=now, rotated=now, expires=now + timedelta(days=5))
    assert schedule.rotation_due_at(expiring, every, now) is None
    assert schedule.rotation_due_at(worker, None, now) is None
    assert schedule.rotation_due_at(worker, model.NEVER, now) is None


def test_one_reload_in_flight_and_the_newer_change_is_taken_by_the_next_tick(world):
    world.add("w1")
    world.start()
    held = Held()
    world.service.run_off_loop = held  # the reload's "thread": runs when the test says so
    world.add("w2")
    world.advance(POLL_INTERVAL)
    assert len(held) == 1  # the parse of the changed file is off the loop
    world.add("w3")  # a newer change while it is in flight
    for _ in range(3):
        world.advance(POLL_INTERVAL)
    assert len(held) == 1  # ticks wait: one load at a time
    held.run_one()
    assert "w2" in world.service.gate.registry.workers
    world.advance(POLL_INTERVAL)  # the next tick sees the newer file
    held.run_one()
    assert "w3" in world.service.gate.registry.workers
    world.finish()


def test_a_lookup_of_a_secret_newer_than_the_registry_waits_for_the_off_loop_reload(world):
    world.start()
    held = Held()
    world.service.run_off_loop = held
    swissnum = world.add("newcomer")  # no tick since: only the lookup can see it
    link = world.connect()
    answer = link.client.getYourReferenceByName(swissnum)
    pump(world.clock)
    assert len(held) == 1 and not answer.called  # no parse on the loop: the answer waits
    held.run_one()
    ref = resolve(world.clock, answer)
    assert world.call(ref, "get_worker_config")["name"] == "newcomer"
    world.finish()
