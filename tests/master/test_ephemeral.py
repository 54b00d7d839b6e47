"""Ephemeral workers: the pure policy, then the service on one task clock (in-memory links)."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bbenroll.master import ephemeral
from bbenroll.master.reloader import POLL_INTERVAL
from bbenroll.registry import model, store

T0 = datetime(2026, 11, 29, 6, 0, tzinfo=UTC)
TIMEOUT = timedelta(minutes=10)


def worker(name: str, *, is_ephemeral: bool = True, created: datetime = T0) -> model.Worker:
    return model.Worker(name=name, swissnum=f"s-{name}", password="p", created=created, rotated=created,
                        ephemeral=is_ephemeral)


def due(workers, now, *, connected=(), last=None, started=T0, busy=lambda name: False):
    return ephemeral.due_for_removal(
        {w.name: w for w in workers}, now=now, timeout=TIMEOUT, connected=set(connected),
        last_connected=last or {}, started=started, busy=busy,
    )


# -- the pure policy --------------------------------------------------------------


def test_only_ephemeral_workers_disconnected_longer_than_the_timeout():
    workers = [worker("eph"), worker("plain", is_ephemeral=False)]
    assert due(workers, T0 + TIMEOUT) == []  # exactly the timeout: not yet
    assert due(workers, T0 + TIMEOUT + timedelta(seconds=1)) == ["eph"]


def test_never_while_connected_nor_busy():
    workers = [worker("a"), worker("b"), worker("c")]
    later = T0 + timedelta(hours=1)
    assert due(workers, later, connected={"a"}, busy=lambda name: name == "b") == ["c"]


def test_busy_is_asked_only_of_workers_otherwise_due():
    asked: list[str] = []
    due([worker("recent", created=T0), worker("old")], T0 + timedelta(minutes=5),
        busy=lambda name: asked.append(name) or False)
    assert asked == []


def test_counts_from_the_last_connection_then_created_then_the_start():
    now = T0 + timedelta(hours=2)
    workers = [
        worker("seen", created=T0),
        worker("new", created=now - timedelta(minutes=5)),  # enrolled after the start
        worker("old", created=T0 - timedelta(days=3)),  # never seen since the start
    ]
    last = {"seen": now - timedelta(minutes=5)}
    assert due(workers, now, last=last, started=now - timedelta(minutes=9)) == []
    assert due(workers, now, last=last, started=now - timedelta(minutes=11)) == ["old"]
    default = ephemeral.timeout_of(dataclasses.replace(_master(), ephemeral_timeout=None))
    assert default == model.DEFAULT_EPHEMERAL_TIMEOUT
    assert ephemeral.timeout_of(dataclasses.replace(_master(), ephemeral_timeout=TIMEOUT)) == TIMEOUT


def _master() -> model.MasterSettings:
    return model.MasterSettings(identity="master.pem", tubid="t", location=("tcp:h:1",), listen="tcp:1")


# -- the service, on one clock -------------------------------------------------------


def make_ephemeral(path: Path, now: datetime, *names: str, timeout: timedelta | None = TIMEOUT) -> None:
    """Mark ``names`` ephemeral (what an --ephemeral invite gives) and set the timeout."""
    with store.edit(path, now=now) as editor:
        for name in names:
            editor.update(dataclasses.replace(editor.worker(name), ephemeral=True))
        editor.set_master(dataclasses.replace(editor.master, ephemeral_timeout=timeout))


def workers_on_disk(path: Path) -> set[str]:
    return set(tomllib.loads(path.read_text()).get("workers", {}))


def removals(path: Path) -> list[dict]:
    audit = path.with_name("workers.audit.jsonl")
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    return [c | {"actor": r.get("actor")} for r in records for c in r.get("changes", [r])
            if c.get("action") == "removed"]


def test_removed_after_the_timeout_and_never_while_connected(world):
    swissnum = world.add("eph")
    world.add("plain")
    make_ephemeral(world.path, world.now(), "eph")
    service = world.start()
    link, _ref = world.accepted(swissnum)
    world.advance(3 * TIMEOUT.total_seconds())  # connected all along: stays
    assert workers_on_disk(world.path) == {"eph", "plain"}
    link.close()
    world.advance(TIMEOUT.total_seconds() - POLL_INTERVAL)
    assert "eph" in workers_on_disk(world.path)
    world.advance(3 * POLL_INTERVAL)
    assert workers_on_disk(world.path) == {"plain"}  # a plain worker is never removed
    assert [e["worker"] for e in world.logged("removing ephemeral worker")] == ["eph"]
    (removal,) = removals(world.path)
    assert removal["worker"] == "eph" and removal["actor"]["by"] == "master"
    assert service.gate.usable_workers(world.now()).keys() == {"plain"}  # Buildbot's view follows
    world.finish()


def test_a_reconnect_resets_the_timer(world):
    swissnum = world.add("eph")
    make_ephemeral(world.path, world.now(), "eph")
    world.start()
    link, _ = world.accepted(swissnum)
    link.close()
    world.advance(TIMEOUT.total_seconds() - 2 * POLL_INTERVAL)
    link, _ = world.accepted(swissnum)  # back just before the timeout
    world.advance(POLL_INTERVAL)
    link.close()
    world.advance(TIMEOUT.total_seconds() - 2 * POLL_INTERVAL)  # well past the first disconnect
    assert workers_on_disk(world.path) == {"eph"}
    world.advance(4 * POLL_INTERVAL)
    assert workers_on_disk(world.path) == set()
    world.finish()


def test_not_while_busy_then_once_the_build_ended(world):
    world.add("eph")
    make_ephemeral(world.path, world.now(), "eph")
    building = {"eph"}
    asked: list[str] = []
    world.start(busy=lambda name: asked.append(name) or name in building)
    world.advance(2 * TIMEOUT.total_seconds())  # never connected since the start, but building
    assert workers_on_disk(world.path) == {"eph"} and "eph" in asked
    building.clear()
    world.advance(2 * POLL_INTERVAL)
    assert workers_on_disk(world.path) == set()
    world.finish()


def test_a_busy_check_that_fails_keeps_the_worker(world):
    world.add("eph")
    make_ephemeral(world.path, world.now(), "eph")
    world.start(busy=lambda name: 1 / 0)
    world.advance(2 * TIMEOUT.total_seconds())
    assert workers_on_disk(world.path) == {"eph"}
    assert world.logged("cannot tell whether") != []
    world.events[:] = [e for e in world.events if "cannot tell whether" not in str(e.get("log_format"))]
    world.finish()


def test_the_default_timeout_counts_from_the_start_of_the_master(world):
    world.add("eph")
    make_ephemeral(world.path, world.now(), "eph", timeout=None)
    world.advance(3600)  # created an hour before the master starts
    world.start()
    world.advance(model.DEFAULT_EPHEMERAL_TIMEOUT.total_seconds() - POLL_INTERVAL)
    assert workers_on_disk(world.path) == {"eph"}
    world.advance(3 * POLL_INTERVAL)
    assert workers_on_disk(world.path) == set()
    assert len(removals(world.path)) == 1  # one removal, not one per tick
    world.finish()
