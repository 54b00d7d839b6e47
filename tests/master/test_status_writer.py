"""The status file's writer: batched, off the loop, O(changes) to render. One task clock."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta

from twisted.internet.task import Clock

from bbenroll.master import status as status_module
from bbenroll.master.status import BATCH_INTERVAL, HEARTBEAT, StatusBook, StatusWriter, read_status
from bbenroll.master.writer import run_here
from tests.helpers.held import Held

START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class Setup:
    def __init__(self, tmp_path, run=run_here) -> None:
        self.clock = Clock()
        self.book = StatusBook()
        self.errors: list[str] = []
        self.path = tmp_path / "workers.status.json"
        self.writer = StatusWriter(
            self.path, self.book, now=self.now, listen=lambda: "tcp:9989", run=run,
            schedule=self.clock.callLater, on_error=self.errors.append,
        )

    def now(self) -> datetime:
        return START + timedelta(seconds=int(self.clock.seconds()))

    def connect(self, count: int) -> None:
        for n in range(count):
            self.book.connected(f"w{n}", f"127.0.0.1:{1000 + n}", self.now())
            self.writer.changed()

    def document(self) -> dict:
        return json.loads(self.path.read_text())


def count_entries(monkeypatch) -> list[object]:
    rendered: list[object] = []
    real = status_module._entry
    monkeypatch.setattr(status_module, "_entry", lambda link: rendered.append(link) or real(link))
    return rendered


def test_a_burst_of_a_thousand_connects_is_one_write_of_a_private_file(tmp_path):
    s = Setup(tmp_path)
    s.connect(1000)
    assert s.writer.writes == 0 and not s.path.exists()
    s.clock.advance(BATCH_INTERVAL)
    assert s.writer.writes == 1
    workers = s.document()["workers"]
    assert len(workers) == 1000 and {w["state"] for w in workers.values()} == {"connected"}
    assert stat.S_IMODE(s.path.stat().st_mode) == 0o600
    assert s.clock.getDelayedCalls() == []


def test_rendering_costs_the_changed_workers_only(tmp_path, monkeypatch):
    rendered = count_entries(monkeypatch)
    s = Setup(tmp_path)
    s.connect(1000)
    s.clock.advance(BATCH_INTERVAL)
    assert len(rendered) == 1000  # each worker once for the whole burst
    s.clock.advance(HEARTBEAT.total_seconds())
    s.writer.heartbeat()
    assert s.writer.writes == 2 and len(rendered) == 1000  # a heartbeat re-renders nobody
    s.book.disconnected("w3", s.now())
    s.writer.changed()
    s.clock.advance(BATCH_INTERVAL)
    assert len(rendered) == 1001 and s.document()["workers"]["w3"]["state"] == "disconnected"
    assert s.clock.getDelayedCalls() == []


def test_the_rendered_file_is_the_books_document(tmp_path):
    s = Setup(tmp_path)
    s.connect(3)
    s.book.offered("w1", 4)
    s.book.update_failed("w2", 4, "no route", s.now())
    s.book.set_attached("w0", True)
    s.book.set_attached("w1", False)
    rendered = json.loads(s.book.render(s.now(), listen="tcp:9989"))
    assert rendered == s.book.to_json(s.now(), listen="tcp:9989")
    assert rendered["workers"]["w0"]["attached"] is True and "attached" not in rendered["workers"]["w2"]


def test_changes_during_a_write_go_with_the_next_batch(tmp_path):
    held = Held()
    s = Setup(tmp_path, run=held)
    s.connect(1)
    s.clock.advance(BATCH_INTERVAL)
    assert len(held) == 1  # one write in flight
    s.connect(5)  # meanwhile: no timer, no second write
    assert s.clock.getDelayedCalls() == [] and len(held) == 1
    held.run_one()
    s.clock.advance(BATCH_INTERVAL)  # the next batch carries the five
    held.run_one()
    assert len(s.document()["workers"]) == 5 and s.writer.writes == 2
    assert s.clock.getDelayedCalls() == []


def test_the_stop_writes_last_after_the_write_in_flight(tmp_path):
    s = Setup(tmp_path)
    s.connect(2)  # a batch is scheduled
    closed = s.writer.close()
    assert closed.called and s.clock.getDelayedCalls() == []
    document = s.document()
    assert document["running"] is False and len(document["workers"]) == 2
    s.writer.changed()  # nothing after the stop
    assert s.clock.getDelayedCalls() == []


def test_a_failing_write_is_reported_and_retried_with_the_heartbeat_not_at_once(tmp_path):
    s = Setup(tmp_path)
    s.path.mkdir()  # a directory where the file should be: every write fails
    s.connect(1)
    s.clock.advance(BATCH_INTERVAL)
    assert len(s.errors) == 1 and "cannot write" in s.errors[0]
    s.connect(1)
    s.writer.heartbeat()
    assert s.clock.getDelayedCalls() == [] and s.writer.writes == 1
    s.clock.advance(HEARTBEAT.total_seconds())
    s.writer.heartbeat()
    assert s.writer.writes == 2 and len(s.errors) == 2


def test_the_reader_accepts_attached_as_a_boolean(tmp_path):
    s = Setup(tmp_path)
    s.connect(1)
    s.book.set_attached("w0", True)
    s.clock.advance(BATCH_INTERVAL)
    assert read_status(s.path)["workers"]["w0"]["attached"] is True
