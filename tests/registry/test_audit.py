"""The audit log's pure chain and verification, and its file layer (real files)."""

from __future__ import annotations

import itertools
import json
import os
import random
import stat
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bbenroll.errors import BBEnrollError
from bbenroll.registry import audit, model, store
from bbenroll.registry.audit import Change, Line
from tests.helpers.registry import COMMENTS, on_disk

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
ACTOR = {"user": "alice", "host": "farm"}


def records(n: int) -> list[dict]:
    added = [Change("added", f"w{i}", new_secret=f"sha256:{i:016x}") for i in range(1, n)]
    changes = [Change("initialized"), *added]
    return audit.chain(changes, after_seq=0, prev=None, now=NOW, actor=ACTOR)


def lines_of(recs: list[dict], file: str = "workers.audit.jsonl") -> list[Line]:
    return [Line(file, i, audit.canonical(r)) for i, r in enumerate(recs, 1)]


def check(recs_or_lines, count: int, head: str | None, **kw) -> audit.Report:
    lines = recs_or_lines if recs_or_lines and isinstance(recs_or_lines[0], Line) else lines_of(recs_or_lines)
    return audit.verify(lines, count=count, head=head, **kw)


# --- records and chain --------------------------------------------------------


def test_chain_links_every_record_to_the_one_before():
    recs = records(4)
    assert [r["seq"] for r in recs] == [1, 2, 3, 4]
    assert recs[0]["prev"] is None
    for before, after in itertools.pairwise(recs):
        assert after["prev"] == before["hash"]
    for r in recs:
        assert r["hash"] == audit.record_hash(r)
        assert r["time"] == "2026-12-01T12:00:00Z"
        assert list(r) == list(audit.RECORD_KEYS)


def test_fingerprint_is_short_and_not_the_secret():
    secret = "a" * 32
    fp = audit.fingerprint(secret)
    assert fp.startswith("sha256:") and len(fp) == len("sha256:") + 16
    assert secret not in fp
    assert audit.fingerprint("b" * 32) != fp
    assert audit.fingerprint(None) is None


def _worker(name: str = "w1") -> model.Worker:
    return model.new_worker(name, NOW)


def test_diff_derives_the_action_from_the_change():
    w = _worker()
    rotated = model.rotate(w, NOW)
    graced = model.rotate(w, NOW, timedelta(days=1))
    revoked = model.revoke(w, NOW, "stolen")
    restored = model.restore(revoked, NOW)
    tagged = replace(w, tags=("linux",))
    cases = [
        ({}, {"w1": w}, "added"),
        ({"w1": w}, {}, "removed"),
        ({"w1": w}, {"w1": rotated}, "rotated"),
        ({"w1": w}, {"w1": graced}, "rotated"),
        ({"w1": w}, {"w1": revoked}, "revoked"),
        ({"w1": revoked}, {"w1": restored}, "restored"),
        ({"w1": w}, {"w1": tagged}, "changed"),
    ]
    for before, after, action in cases:
        (change,) = audit.diff(before, after)
        assert change.action == action
        assert change.worker == "w1"
    assert audit.diff({"w1": w}, {"w1": w}) == []
    (change,) = audit.diff({"w1": w}, {"w1": revoked})
    assert change.reason == "stolen" and change.old_secret == audit.fingerprint(w.swissnum)
    (change,) = audit.diff({"w1": w}, {"w1": graced})
    assert change.reason == "grace until 2026-12-02T12:00:00Z"
    assert change.new_secret == audit.fingerprint(graced.swissnum)
    compromised = model.rotate(w, NOW, None, compromised=True)
    (change,) = audit.diff({"w1": w}, {"w1": compromised})
    assert change.reason == "old secret refused at once; PB password changed"
    master = model.MasterSettings("m.pem", "a" * 32, ("tcp:h:1",), "tcp:1")
    changes = audit.diff({}, {}, master, replace(master, listen="tcp:2"))
    assert [c.action for c in changes] == ["master-changed"]


# --- verify ---------------------------------------------------------------------


def test_intact_chain():
    recs = records(5)
    report = check(recs, 5, recs[-1]["hash"])
    assert report.intact and report.records == 5 and report.head == recs[-1]["hash"]
    assert report.warnings == [] and report.notes == []


def test_edited_record_is_named():
    recs = records(5)
    recs[2] = dict(recs[2], worker="mallory")
    report = check(recs, 5, recs[-1]["hash"])
    assert not report.intact
    assert (report.problems[0].line, report.problems[0].seq) == (3, 3)
    assert "hash mismatch" in report.problems[0].message


def test_edited_record_with_its_hash_recomputed_breaks_the_next_link():
    recs = records(5)
    forged = dict(recs[2], worker="mallory")
    forged["hash"] = audit.record_hash(forged)
    recs[2] = forged
    report = check(recs, 5, recs[-1]["hash"])
    assert [(p.line, p.seq) for p in report.problems] == [(4, 4)]
    assert "prev does not match" in report.problems[0].message


def test_deleted_record():
    recs = records(5)
    del recs[2]
    report = check(recs, 5, recs[-1]["hash"])
    assert not report.intact
    assert (report.problems[0].line, report.problems[0].seq) == (3, 4)
    assert "deleted" in report.problems[0].message


def test_deleted_first_record():
    recs = records(3)[1:]
    report = check(recs, 3, recs[-1]["hash"])
    assert not report.intact and "starts at record 2" in report.problems[0].message


def test_reordered_records():
    recs = records(5)
    recs[1], recs[2] = recs[2], recs[1]
    report = check(recs, 5, recs[-1]["hash"])
    assert not report.intact
    assert report.problems[0].line == 2 and "reordered" in report.problems[0].message


def test_truncated_log():
    recs = records(5)
    report = check(recs[:3], 5, recs[-1]["hash"])
    assert not report.intact and "truncated" in report.problems[0].message
    assert "ends at record 3" in report.problems[0].message


def test_rewritten_chain_does_not_match_the_registry_head():
    recs = records(5)
    rewritten = audit.chain(
        [Change("initialized")] + [Change("added", f"x{i}") for i in range(1, 5)],
        after_seq=0, prev=None, now=NOW, actor=ACTOR,
    )
    report = check(rewritten, 5, recs[-1]["hash"])
    assert not report.intact and "head" in report.problems[0].message and report.problems[0].seq == 5


def test_log_ahead_of_the_registry_is_an_interrupted_edit_not_tampering():
    recs = records(5)
    report = check(recs, 3, recs[2]["hash"])
    assert report.intact
    (warning,) = report.warnings
    assert (warning.seq, warning.line) == (4, 4)
    assert "records 4-5 were appended" in warning.message


def test_registry_older_than_its_log_starts_the_chain_at_its_next_edit():
    recs = audit.chain([Change("added", "w1")], after_seq=0, prev=None, now=NOW, actor=ACTOR)
    report = check(recs, 1, recs[0]["hash"])
    assert report.intact
    assert report.notes == ["chain starts at record 1, on 2026-12-01T12:00:00Z (the registry is older)"]


def test_rotated_start_is_a_note_not_a_problem():
    recs = records(6)[3:]
    report = check(recs, 6, recs[-1]["hash"], oldest_is_rotated=True)
    assert report.intact
    assert "starts at record 4" in report.notes[0]


def test_any_single_byte_change_is_detected():
    recs = records(6)
    text = "".join(audit.canonical(r) + "\n" for r in recs).encode("ascii")
    rng = random.Random(11)
    for _ in range(400):
        pos = rng.randrange(len(text))
        new = rng.choice([b for b in range(256) if b != text[pos]])
        damaged = text[:pos] + bytes([new]) + text[pos + 1 :]
        parts = damaged.decode("utf-8", errors="replace").split("\n")
        if parts[-1] == "":
            parts.pop()
        lines = [Line("f", i, part) for i, part in enumerate(parts, 1)]
        report = audit.verify(lines, count=6, head=recs[-1]["hash"])
        assert not report.intact, f"byte {pos} changed to {new!r} went unnoticed"


def test_filters():
    recs = records(3)
    assert audit.matches(recs[1], worker="w1") and not audit.matches(recs[1], worker="w2")
    assert audit.matches(recs[1], action="added") and not audit.matches(recs[1], action="removed")
    assert audit.matches(recs[1], since="2026-12-01T11:00:00Z")
    assert not audit.matches(recs[1], since="2026-12-01T13:00:00Z")


# --- files ------------------------------------------------------------------------


def test_append_and_read_back(tmp_path: Path):
    log = tmp_path / "workers.audit.jsonl"
    recs = records(4)
    audit.append(log, recs[:2])
    audit.append(log, recs[2:])
    assert audit.read_records(log) == recs
    assert audit.last_record(log) == recs[-1]
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_append_refuses_a_symlink(tmp_path: Path):
    target = tmp_path / "elsewhere"
    target.write_text("")
    log = tmp_path / "workers.audit.jsonl"
    log.symlink_to(target)
    with pytest.raises(BBEnrollError, match="symbolic link"):
        audit.append(log, records(1))
    assert target.read_text() == ""


def test_log_path_is_beside_the_registry():
    assert audit.log_path(Path("/etc/bb/workers.toml")) == Path("/etc/bb/workers.audit.jsonl")
    assert audit.rotated_path(Path("/x/w.audit.jsonl"), 2) == Path("/x/w.audit.2.jsonl")


def test_rotation_keeps_the_chain_and_drops_the_oldest(tmp_path: Path):
    log = tmp_path / "workers.audit.jsonl"
    recs = records(12)
    for record in recs:
        audit.append(log, [record], max_bytes=1, keep=3)  # every append rotates first
    files = audit.log_files(log, keep=3)
    assert [f.name for f in files] == [
        "workers.audit.3.jsonl", "workers.audit.2.jsonl", "workers.audit.1.jsonl", "workers.audit.jsonl"
    ]
    lines, rotated = audit.read_lines(log, keep=3)
    assert rotated
    report = audit.verify(lines, count=12, head=recs[-1]["hash"], oldest_is_rotated=rotated)
    assert report.intact, report.problems
    assert "starts at record 9" in report.notes[0]
    assert audit.last_record(log) == recs[-1]


def test_store_edit_audits_every_change_under_the_lock(tmp_path: Path):
    path = on_disk(tmp_path, COMMENTS.text)  # a registry made before the audit log: no [audit]
    log = audit.log_path(path)
    log.unlink(missing_ok=True)
    with store.edit(path, now=NOW, actor=ACTOR) as editor:
        editor.update(model.rotate(editor.worker("beta"), NOW))
        editor.remove("alpha")
    recs = audit.read_records(log)
    assert [(r["action"], r["worker"]) for r in recs] == [("removed", "alpha"), ("rotated", "beta")]
    loaded = store.load(path)
    assert loaded.audit == audit.AuditHead(recs[-1]["hash"], 2)
    with store.edit(path, now=NOW, actor=ACTOR):
        pass  # nothing changed: nothing recorded
    assert len(audit.read_records(log)) == 2
    lines, _ = audit.read_lines(log)
    report = audit.verify(lines, count=2, head=recs[-1]["hash"])
    assert report.intact and report.notes[0].startswith("chain starts at record 1")


def test_a_failed_registry_write_leaves_the_log_ahead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = on_disk(tmp_path, COMMENTS.text)
    audit.log_path(path).unlink(missing_ok=True)
    with store.edit(path, now=NOW, actor=ACTOR) as editor:
        editor.remove("alpha")

    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "atomic_write", crash)  # the crash between append and replace
    with pytest.raises(BBEnrollError, match="cannot write"), store.edit(path, now=NOW, actor=ACTOR) as editor:
        editor.remove("beta")
    monkeypatch.undo()
    loaded = store.load(path)
    assert "beta" in loaded.registry.workers and loaded.audit.count == 1
    lines, _ = audit.read_lines(audit.log_path(path))
    report = audit.verify(lines, count=1, head=loaded.audit.head)
    assert report.intact and "record 2 was appended" in report.warnings[0].message
    with store.edit(path, now=NOW, actor=ACTOR) as editor:  # the next edit continues after record 2
        editor.remove("beta")
    loaded = store.load(path)
    lines, _ = audit.read_lines(audit.log_path(path))
    report = audit.verify(lines, count=loaded.audit.count, head=loaded.audit.head)
    assert loaded.audit.count == 3 and report.intact and report.warnings == []


def test_init_starts_the_chain(tmp_path: Path):
    path = tmp_path / "workers.toml"
    store.create(path, location=["tcp:h:9989"], listen="tcp:9989", pb="tcp:9990:interface=127.0.0.1",
                 identity="master.pem", now=NOW, actor=ACTOR)
    (record,) = audit.read_records(audit.log_path(path))
    assert record["action"] == "initialized" and record["actor"] == ACTOR
    assert store.load(path).audit == audit.AuditHead(record["hash"], 1)
    os.unlink(path)
    (tmp_path / "master.pem").unlink()
    with pytest.raises(BBEnrollError, match="audit log of an earlier registry"):
        store.create(path, location=["tcp:h:9989"], listen="tcp:9989", pb="tcp:9990:interface=127.0.0.1",
                     identity="master.pem", now=NOW, actor=ACTOR)
    assert not (tmp_path / "master.pem").exists()


def test_bad_audit_table_is_a_schema_problem(tmp_path: Path):
    path = on_disk(tmp_path, COMMENTS.text + '\n[audit]\nhead = "nope"\ncount = -1\n')
    problems = store.check(path)
    assert any("audit.head" in p for p in problems)
    assert any("audit.count: may not be negative" in p for p in problems)


def test_lines_are_json_objects_with_sorted_keys(tmp_path: Path):
    log = tmp_path / "workers.audit.jsonl"
    audit.append(log, records(2))
    for line in log.read_text().splitlines():
        data = json.loads(line)
        assert list(data) == sorted(data)


def test_a_note_is_recorded_without_changing_any_worker(tmp_path: Path):
    path = on_disk(tmp_path, COMMENTS.text)
    audit.log_path(path).unlink(missing_ok=True)
    workers = store.load(path).registry.workers
    master = {"master": "farm", "peer": "192.0.2.7:4711"}
    with store.edit(path, now=NOW, actor=master) as editor:
        editor.note(Change("connection-dropped", "beta", reason="revoked"))
    (record,) = audit.read_records(audit.log_path(path))
    assert (record["action"], record["worker"], record["actor"]) == ("connection-dropped", "beta", master)
    loaded = store.load(path)
    assert loaded.registry.workers == workers and loaded.audit == audit.AuditHead(record["hash"], 1)


def test_a_torn_last_line_costs_no_later_record(tmp_path: Path):
    log = tmp_path / "workers.audit.jsonl"
    recs = records(3)
    audit.append(log, recs[:1])
    with open(log, "a") as f:
        f.write(audit.canonical(recs[1])[:40])  # a crash in the middle of the write
    assert audit.last_record(log) == recs[0]
    audit.append(log, recs[1:])
    assert audit.read_records(log) == recs
    lines, _ = audit.read_lines(log)
    report = audit.verify(lines, count=3, head=recs[-1]["hash"])
    assert [p.line for p in report.problems] == [2]  # the fragment is damage, and said to be


# --- pushed rotation: confirmations and location changes --------------------------


def test_a_confirmation_is_its_own_record_with_its_serial():
    r = model.rotate(_worker(), NOW)
    confirmed = model.confirm(r, 1, NOW + timedelta(seconds=4))
    (change,) = audit.diff({"w1": r}, {"w1": confirmed})
    assert change == Change("confirmed", "w1", audit.fingerprint(r.previous.swissnum),
                            audit.fingerprint(r.swissnum), "serial 1; previous secret retired")
    r2 = model.rotate(r, NOW)
    stale = model.confirm(r2, 1, NOW)  # an older serial: the grace goes on
    (change,) = audit.diff({"w1": r2}, {"w1": stale})
    assert (change.action, change.old_secret, change.reason) == ("confirmed", None, "serial 1")
    # anything else changed at the same time is not a mere confirmation
    (change,) = audit.diff({"w1": r}, {"w1": replace(confirmed, note="n")})
    assert change.action == "changed"


def test_a_location_change_is_one_record_not_one_per_worker():
    master = model.MasterSettings("m.pem", "a" * 32, ("tcp:h:1",), "tcp:1")
    moved = replace(master, location=("tcp:new:1", "tcp:10.0.0.1:1"))
    before = {f"w{i}": _worker(f"w{i}") for i in range(5)}
    before["gone"] = model.revoke(_worker("gone"), NOW)
    after = {name: (w if w.revoked else model.change_location(w, NOW)) for name, w in before.items()}
    after["w4"] = replace(after["w4"], note="also a note")  # not only the bump: recorded
    changes = audit.diff(before, after, master, moved)
    assert [(c.action, c.worker) for c in changes] == [("location-changed", None), ("changed", "w4")]
    assert changes[0].reason == "tcp:h:1 -> tcp:new:1,tcp:10.0.0.1:1; FURLs of 4 workers changed"
    # a bump without a location change is a plain change, never hidden
    (change,) = audit.diff({"w0": before["w0"]}, {"w0": after["w0"]})
    assert change.action == "changed"
    # another master setting changed as well: both are said
    changes = audit.diff({}, {}, master, replace(moved, listen="tcp:2"))
    assert [c.action for c in changes] == ["master-changed", "location-changed"]


def test_new_actions_chain_and_verify_after_an_old_log(tmp_path):
    """A log written before these actions existed verifies, and so does one that goes on with them."""
    old = records(3)
    new = audit.chain([Change("confirmed", "w1", None, "sha256:0000000000000001", "serial 1"),
                       Change("location-changed", reason="a -> b; FURLs of 1 workers changed")],
                      after_seq=3, prev=old[-1]["hash"], now=NOW, actor={"actor": "master"})
    report = check(old, 3, old[-1]["hash"])
    assert report.intact and not report.warnings
    report = check(old + new, 5, new[-1]["hash"])
    assert report.intact and not report.warnings and report.records == 5
    assert {"confirmed", "location-changed"} <= set(audit.ACTIONS)
