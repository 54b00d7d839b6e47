"""Who may connect: the gate's decisions (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bbenroll.master import gate
from bbenroll.registry import model


def test_gate_decisions_are_pure():
    now = datetime(2026, 11, 29, tzinfo=UTC)
    a = model.new_worker("a", now, expires=now + timedelta(days=1))
    b = model.rotate(model.new_worker("b", now), now, timedelta(hours=1))
    c = model.revoke(model.new_worker("c", now), now)
    reg = model.Registry(master=None, workers={"a": a, "b": b, "c": c})  # type: ignore[arg-type]
    g = gate.Gate(reg)
    assert g.decide(a.swissnum, now) == gate.Decision(True, "current", "a")
    assert g.decide(b.previous.swissnum, now) == gate.Decision(True, "previous", "b")
    assert g.decide(b.previous.swissnum, now + timedelta(hours=1)) == gate.Decision(False, gate.RETIRED, "b")
    retired = g.decide(b.previous.swissnum, now + timedelta(hours=1))
    assert retired.message == (
        "secret retired by rotation on 2026-11-29T00:00:00Z; ask the master admin for a new FURL"
    )
    assert g.decide(c.swissnum, now) == gate.Decision(False, gate.REVOKED, "c")
    assert g.decide(c.swissnum, now).message == "worker revoked"  # the others are their reason
    assert g.decide(a.swissnum, now + timedelta(days=1)) == gate.Decision(False, gate.EXPIRED, "a")
    assert g.decide("z" * 32, now) == gate.Decision(False, gate.UNKNOWN)
    assert g.still_allowed("b", a.swissnum, now) == gate.Decision(False, gate.UNKNOWN)
    assert set(g.usable_workers(now)) == {"a", "b"}
    assert set(g.usable_workers(now + timedelta(days=2))) == {"b"}
