"""The master's registry writes: one store.edit per batch, retried when the lock is busy,
and safe beside concurrent CLI writers."""

from __future__ import annotations

import threading
import tomllib
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from bbenroll.errors import WorkerNotFound
from bbenroll.fileio import exclusive_lock
from bbenroll.master.writer import RegistryWriter, master_actor, run_here
from bbenroll.registry import audit, model, store
from tests.helpers.cli import FIXED_NOW
from tests.helpers.registry_stub import set_policy


def writer_for(path, clock: Clock, run=run_here, **kwargs: Any) -> RegistryWriter:
    return RegistryWriter(path, now=lambda: FIXED_NOW, run=run, schedule=clock.callLater, **kwargs)


def adding(name: str):
    def edit(editor: store.Editor) -> None:
        editor.add(model.new_worker(name, FIXED_NOW))

    return edit


def workers_on_disk(path) -> dict[str, Any]:
    return tomllib.loads(path.read_text()).get("workers", {})


@pytest.fixture
def edits(monkeypatch) -> list[Any]:
    """Every store.edit call (its arguments), still doing the real edit."""
    calls: list[Any] = []
    real = store.edit

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "edit", counting)
    return calls


def test_fifty_edits_of_one_turn_are_one_write(reg_path, edits):
    clock = Clock()
    written: list[None] = []
    writer = writer_for(reg_path, clock, on_written=lambda: written.append(None))
    done = [writer.submit(adding(f"w{i}")) for i in range(50)]
    assert edits == [] and writer.pending == 50  # nothing before the reactor turn ends
    clock.advance(0)
    assert len(edits) == 1 and writer.writes == 1 and len(written) == 1
    assert set(workers_on_disk(reg_path)) == {f"w{i}" for i in range(50)}
    assert all(d.called for d in done)
    records = audit.read_records(audit.log_path(reg_path))
    assert [r["actor"] for r in records[-50:]] == [master_actor()] * 50
    assert clock.getDelayedCalls() == []


def test_an_edit_that_no_longer_applies_fails_alone(reg_path):
    clock = Clock()
    writer = writer_for(reg_path, clock)
    good = writer.submit(adding("w1"))
    bad = writer.submit(lambda editor: editor.worker("gone"))
    failures: list[Any] = []
    bad.addErrback(failures.append)
    clock.advance(0)
    assert good.called and "w1" in workers_on_disk(reg_path)
    assert failures and failures[0].check(WorkerNotFound)
    assert writer.pending == 0


def test_a_busy_lock_is_retried_on_the_next_flush_and_nothing_is_lost(reg_path):
    clock = Clock()
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        writer = writer_for(reg_path, clock)
        writer.lock_timeout = 0.05
        with exclusive_lock(store.lock_path(store.real_path(reg_path))):
            first = writer.submit(adding("w1"))
            clock.advance(0)
            second = writer.submit(adding("w2"))  # queued behind the failed batch
            writer.flush()  # still locked: fails again, logged once only
            assert not first.called and not second.called
            assert writer.pending == 2 and writer.failures == 2
        warnings = [e for e in events if "cannot write the registry" in str(e.get("log_format"))]
        assert len(warnings) == 1 and "held the lock" in warnings[0]["why"]
        writer.flush()  # the next tick
        assert first.called and second.called and writer.writes == 1
        assert set(workers_on_disk(reg_path)) == {"w1", "w2"}
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert clock.getDelayedCalls() == []


def test_one_batch_at_a_time(reg_path, edits):
    clock = Clock()
    pending: list[tuple[Any, defer.Deferred[Any]]] = []

    def later(function):
        d: defer.Deferred[Any] = defer.Deferred()
        pending.append((function, d))
        return d

    writer = writer_for(reg_path, clock, run=later)
    writer.submit(adding("w1"))
    clock.advance(0)
    writer.submit(adding("w2"))
    writer.submit(adding("w3"))
    writer.flush()  # the first batch is still being written
    assert len(pending) == 1
    function, d = pending.pop()
    d.callback(function())
    clock.advance(0)  # what queued meanwhile goes in the next batch, at once
    assert len(pending) == 1
    function, d = pending.pop()
    d.callback(function())
    assert set(workers_on_disk(reg_path)) == {"w1", "w2", "w3"}
    assert writer.writes == 2
    assert clock.getDelayedCalls() == []


def test_stop_drops_the_scheduled_write(reg_path):
    clock = Clock()
    writer = writer_for(reg_path, clock)
    writer.submit(adding("w1"))
    writer.stop()
    assert clock.getDelayedCalls() == []
    writer.flush()
    assert workers_on_disk(reg_path) == {}


def test_sixteen_cli_writers_while_the_master_rotates_by_policy(world):
    """Every `add` survives and every due worker is rotated: one lock, one edit path."""
    old_names = [f"old{i}" for i in range(24)]
    with store.edit(world.path, now=world.now()) as editor:
        for name in old_names:
            editor.add(model.new_worker(name, world.now()))
    set_policy(world.path, "90d")
    before = {name: entry["swissnum"] for name, entry in workers_on_disk(world.path).items()}
    pool = ThreadPoolExecutor(max_workers=1)  # the master's thread
    running: list[tuple[Future[Any], defer.Deferred[Any]]] = []

    def in_thread(function):
        d: defer.Deferred[Any] = defer.Deferred()
        running.append((pool.submit(function), d))
        return d

    service = world.start(run_write=in_thread)
    service.max_rotations_per_tick = 5
    service.writer.lock_timeout = 60
    later = world.now() + timedelta(days=100)
    go = threading.Barrier(17)
    errors: list[BaseException] = []

    def cli_writer(i: int) -> None:
        try:
            go.wait()
            for j in range(3):
                with store.edit(world.path, timeout=60, now=later) as editor:
                    editor.add(model.new_worker(f"cli{i}-{j}", later))
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=cli_writer, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    go.wait()
    world.advance((later - world.now()).total_seconds())  # one tick: the first bounded batch
    for _ in range(100):
        if not running and service.writer.pending == 0 and not service._rotating and _rotated_all(
            world.path, before, old_names
        ):
            break
        while running:
            future, d = running.pop(0)
            try:
                d.callback(future.result(timeout=60))
            except Exception:
                d.errback()
        world.advance(1.0)
    for thread in threads:
        thread.join(timeout=120)
    pool.shutdown()
    assert errors == []
    after = workers_on_disk(world.path)
    assert {f"cli{i}-{j}" for i in range(16) for j in range(3)} <= set(after)
    assert _rotated_all(world.path, before, old_names)
    assert len(after) == len(old_names) + 48
    batches = world.logged("rotating {count} workers by policy")
    assert [b["count"] for b in batches] == [5, 5, 5, 5, 4]  # bounded per tick
    lines, _ = audit.read_lines(audit.log_path(world.path))
    table = tomllib.loads(world.path.read_text())["audit"]
    assert audit.verify(lines, count=table["count"], head=table["head"]).intact
    world.finish()


def _rotated_all(path, before: dict[str, str], names: list[str]) -> bool:
    after = workers_on_disk(path)
    return all(after[name]["swissnum"] != before[name] for name in names)


def test_close_writes_what_is_queued_first(reg_path):
    clock = Clock()
    writer = writer_for(reg_path, clock)
    writer.submit(adding("last"))  # queued in the stop's own turn: not written yet
    closed: list[Any] = []
    writer.close().addBoth(closed.append)
    assert closed == [None] and "last" in workers_on_disk(reg_path)
    assert clock.getDelayedCalls() == []


def test_close_does_not_wait_forever_for_a_stuck_write(reg_path):
    from bbenroll.master.writer import CLOSE_TIMEOUT

    clock = Clock()
    stuck: list[Any] = []

    def never(function: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        stuck.append(d)
        return d

    writer = writer_for(reg_path, clock, run=never)
    writer.submit(adding("w1"))
    closed: list[Any] = []
    writer.close().addBoth(closed.append)
    assert len(stuck) == 1 and closed == []  # being written: close waits for it
    clock.advance(CLOSE_TIMEOUT - 1)
    assert closed == []
    clock.advance(1)  # a disk that never answers does not hang the master's stop
    assert closed == [None] and clock.getDelayedCalls() == []
