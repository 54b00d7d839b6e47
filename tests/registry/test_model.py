"""Pure logic: worker states, transitions and secret checks, with an injected clock."""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from bbenroll.errors import InvalidName, WrongState
from bbenroll.registry import model, schema
from tests.helpers.cli import FIXED_NOW

NOW = FIXED_NOW
ROOT = Path(__file__).resolve().parents[2]


def test_state_progression_and_acceptance():
    w = model.new_worker("w1", NOW, expires=NOW + timedelta(days=10))
    assert w.state(NOW) == "active"
    assert w.accepts(w.swissnum, NOW)
    assert not w.accepts("a" * 32, NOW)
    assert w.state(NOW + timedelta(days=4)) == "expiring"
    assert w.state(NOW + timedelta(days=10)) == "expired"
    assert not w.accepts(w.swissnum, NOW + timedelta(days=10))

    r = model.rotate(w, NOW, grace=timedelta(days=1))
    assert r.state(NOW) == "rotating"
    assert r.accepts(r.swissnum, NOW) and r.accepts(w.swissnum, NOW)
    later = NOW + timedelta(days=1)
    assert r.accepts(r.swissnum, later) and not r.accepts(w.swissnum, later)
    assert r.state(later) == "active"
    assert (r.created, r.rotated) == (w.created, NOW)
    assert r.password == w.password  # a normal rotation never changes it
    assert model.rotate(r, NOW, compromised=True, grace=None).password != r.password

    v = model.revoke(r, NOW, "lost")
    assert v.state(NOW) == "revoked" and v.previous is None
    assert not v.accepts(r.swissnum, NOW) and not v.accepts(w.swissnum, NOW)
    with pytest.raises(WrongState):
        model.revoke(v, NOW)
    with pytest.raises(WrongState):
        model.rotate(v, NOW)
    s = model.restore(v, NOW)
    assert s.state(NOW) == "active" and s.swissnum not in (v.swissnum, w.swissnum)
    with pytest.raises(WrongState):
        model.restore(s, NOW)


def test_rotation_without_grace_drops_previous():
    w = model.rotate(model.new_worker("w1", NOW), NOW, grace=timedelta(days=1))
    again = model.rotate(w, NOW, grace=None)
    assert again.previous is None and again.password == w.password


def test_default_grace_is_seven_days_and_keeps_the_password():
    w = model.new_worker("w1", NOW)
    r = model.rotate(w, NOW)
    assert model.DEFAULT_GRACE == timedelta(days=7)
    assert r.previous == model.Previous(w.swissnum, NOW + timedelta(days=7))
    assert r.password == w.password and r.swissnum != w.swissnum
    assert r.accepts(w.swissnum, NOW + timedelta(days=7) - timedelta(seconds=1))


def test_compromised_rotation_refuses_the_old_secret_and_changes_the_password():
    w = model.rotate(model.new_worker("w1", NOW), NOW)  # even one still in its grace
    c = model.rotate(w, NOW, None, compromised=True)
    assert c.previous is None and c.password != w.password
    assert not c.accepts(w.swissnum, NOW) and not c.accepts(w.previous.swissnum, NOW)
    assert c.accepts(c.swissnum, NOW) and c.rotated == NOW
    with pytest.raises(ValueError):
        model.rotate(w, NOW, timedelta(hours=1), compromised=True)


@pytest.mark.parametrize("name", ["w", "worker-1", "_x", "wörker", "Ærø_2", "a" * 50])
def test_valid_names(name):
    assert model.check_worker_name(name) == name
    assert model.unsafe_name_reason(name) is None


@pytest.mark.parametrize(
    "name, why",
    [
        ("-x", "starts with '-'"),
        ("--help", "starts with '-'"),
        ("wa\u200b", "holds '\\u200b' (U+200B)"),  # zero-width space: looks like "wa"
        ("w\u202eab", "(U+202E)"),  # right-to-left override: shows as "wba"
        ("w\u0430", "(U+0430)"),  # Cyrillic a
        ("wo\u0308rker", "(U+0308)"),  # a combining diaeresis: looks like "wörker"
        ("日本語", "(U+65E5)"),
        ("a×b", "(U+00D7)"),
    ],
)
def test_names_buildbot_takes_but_new_workers_may_not_have(name, why):
    assert model.check_buildbot_name(name) == name  # a registry holding it still loads
    with pytest.raises(InvalidName, match=re.escape(why)):
        model.check_worker_name(name)
    assert why in model.unsafe_name_reason(name)


@pytest.mark.parametrize("name", ["", "1w", "a b", "a.b", "a/b", "a" * 51, "tab\t", "é\n"])
def test_invalid_names(name):
    for check in (model.check_worker_name, model.check_buildbot_name):
        with pytest.raises(InvalidName):
            check(name)


def test_data_round_trip():
    w = model.rotate(model.new_worker("w1", NOW, tags=["a", "b"], note="n"), NOW, timedelta(hours=2))
    w = model.revoke(w, NOW, "why")
    problems = schema.Problems()
    assert schema.worker_from_data("w1", schema.worker_to_data(w), problems) == w
    assert not problems


def test_problems_are_all_collected():
    problems = schema.Problems()
    data = {"version": 2, "master": {"identity": 3, "location": "x", "extra": 1},
            "workers": {"1bad": {"swissnum": "short", "created": "yesterday"}}, "other": 1}
    assert schema.registry_from_data(data, problems) is None
    keys = [key for key, _ in problems.items]
    for key in ("other", "master.extra", "master.identity", "master.tubid", "master.listen",
                "master.location", "workers.1bad", "workers.1bad.password", "workers.1bad.rotated",
                "workers.1bad.swissnum", "workers.1bad.created"):
        assert key in keys, key


def test_example_registry_matches_schema():
    """workers.toml.example stays in sync with what bbenroll accepts."""
    data = tomllib.loads((ROOT / "workers.toml.example").read_text())
    problems = schema.Problems()
    reg = schema.registry_from_data(data, problems)
    assert not problems.items, problems.items
    assert reg is not None
    assert {w.state(NOW) for w in reg.workers.values()} == {"active", "rotating", "revoked"}


def test_buildbot_options_are_checked():
    problems = schema.Problems()
    options = {"max_builds": 2, "properties": {"os": "linux"}, "notify_on_missing": ["a"]}
    schema.check_buildbot_options(options, "workers.w1.buildbot", problems)
    assert not problems
    schema.check_buildbot_options({"max_build": 2, "max_builds": "2", "keepalive_interval": True},
                                  "workers.w1.buildbot", problems)
    assert problems.items == [
        ("workers.w1.buildbot.max_build", "unknown Buildbot worker option (known: defaultProperties, "
         "keepalive_interval, machine_name, max_builds, missing_timeout, notify_on_missing, properties)"),
        ("workers.w1.buildbot.max_builds", "must be an integer"),
        ("workers.w1.buildbot.keepalive_interval", "must be an integer"),
    ]


def test_check_reports_bad_buildbot_options_but_edits_still_work(cli, reg_path):
    assert cli("add", "w1").code == 0
    reg_path.write_text(reg_path.read_text() + "\n[workers.w1.buildbot]\nmax_build = 2\n")
    result = cli("check")
    assert result.code == 1
    assert "workers.w1.buildbot.max_build: unknown Buildbot worker option" in result.err
    assert cli("rotate", "w1").code == 0  # a newer Buildbot's option must not block editing


def test_states_read_as_their_plain_names():
    """JSON output and tables show a state exactly as the plain string it was."""
    w = model.new_worker("w1", NOW, expires=NOW + timedelta(days=3))
    state = w.state(NOW)
    assert state is model.State.EXPIRING and state == "expiring"
    assert (f"{state}", str(state), json.dumps(state)) == ("expiring", "expiring", '"expiring"')
    summary = json.dumps(model.worker_summary(w, NOW))
    assert '"state": "expiring"' in summary
    assert model.STATES == ("active", "expiring", "rotating", "expired", "revoked")
    assert all(type(s) is str for s in model.STATES)
    assert {model.revoke(w, NOW).state(NOW), w.state(NOW + timedelta(days=3))} == model.REFUSED_STATES


# --- pushed rotation: serials, confirmations, delivery, policy ------------------


def test_every_change_of_a_furl_raises_the_serial():
    w = model.new_worker("w1", NOW)
    assert (w.serial, w.changed, w.delivered) == (0, None, None)
    later = NOW + timedelta(hours=1)
    r = model.rotate(w, later)
    assert (r.serial, r.changed) == (1, later)
    c = model.rotate(r, later + timedelta(hours=1), None, compromised=True)
    assert (c.serial, c.changed) == (2, later + timedelta(hours=1))
    s = model.restore(model.revoke(c, later), later + timedelta(days=1))
    assert (s.serial, s.changed) == (3, later + timedelta(days=1))
    moved = model.change_location(s, later + timedelta(days=2))
    assert (moved.serial, moved.changed) == (4, later + timedelta(days=2))
    assert (moved.swissnum, moved.password, moved.rotated, moved.previous) == (
        s.swissnum, s.password, s.rotated, s.previous)
    with pytest.raises(WrongState):
        model.change_location(model.revoke(s, later), later)
    # settings are not a new FURL
    assert model.change(s, NOW, note="n").serial == 3


def test_confirm_of_the_newest_serial_ends_the_grace_now():
    r = model.rotate(model.new_worker("w1", NOW), NOW)  # grace: 7 days
    old = r.previous.swissnum
    at = NOW + timedelta(minutes=5)
    c = model.confirm(r, 1, at)
    assert (c.delivered, c.delivered_at) == (1, at)
    assert c.previous == model.Previous(old, at)  # kept: the gate says "retired by rotation"
    assert not c.accepts(old, at) and c.accepts(c.swissnum, at)
    assert c.state(at) == "active"


def test_confirm_is_idempotent_and_never_goes_back():
    r = model.rotate(model.new_worker("w1", NOW), NOW)
    c = model.confirm(r, 1, NOW + timedelta(minutes=1))
    assert model.confirm(c, 1, NOW + timedelta(hours=1)) is c  # not even the date changes
    r2 = model.rotate(c, NOW + timedelta(hours=2))
    assert model.confirm(r2, 1, NOW + timedelta(hours=3)) is r2  # stale: 1 was confirmed already
    assert model.confirm(r2, 0, NOW) is r2  # the enrolment FURL is never pushed
    with pytest.raises(WrongState, match="issued only up to 2"):
        model.confirm(r2, 3, NOW)


def test_a_stale_confirm_records_it_but_keeps_the_grace():
    r1 = model.rotate(model.new_worker("w1", NOW), NOW)
    r2 = model.rotate(r1, NOW + timedelta(hours=1))  # serial 2; previous: r1's secret
    at = NOW + timedelta(hours=2)
    c = model.confirm(r2, 1, at)
    assert (c.delivered, c.delivered_at) == (1, at)
    assert c.previous == r2.previous  # the worker is not on the newest FURL yet
    assert model.delivery(c).state == "pending"


def test_confirm_after_the_grace_leaves_previous_alone():
    r = model.rotate(model.new_worker("w1", NOW), NOW, timedelta(hours=1))
    at = NOW + timedelta(hours=2)
    c = model.confirm(r, 1, at)
    assert c.previous == r.previous and c.delivered == 1


def test_delivery_states():
    w = model.new_worker("w1", NOW)
    assert model.delivery(w) == model.Delivery(model.DeliveryState.CURRENT, 0, NOW)
    later = NOW + timedelta(hours=1)
    r = model.rotate(w, later)
    assert model.delivery(r) == model.Delivery("pending", 1, later)
    c = model.confirm(r, 1, later + timedelta(seconds=4))
    assert model.delivery(c) == model.Delivery("confirmed", 1, later + timedelta(seconds=4))
    # a hand-edited serial without `changed`: pending since the last rotation
    assert model.delivery(replace(w, serial=2)) == model.Delivery("pending", 2, NOW)
    assert json.dumps(model.worker_summary(c, later)["delivery"]) == (
        '{"state": "confirmed", "serial": 1, "since": "2026-11-29T07:00:04Z"}')
    assert model.worker_summary(c, later)["serial"] == 1


def test_rotation_due():
    w = model.new_worker("w1", NOW)
    day = timedelta(days=1)
    assert not model.rotation_due(w, None, NOW + 1000 * day)  # no policy
    assert not model.rotation_due(w, 90 * day, NOW + 89 * day)
    assert model.rotation_due(w, 90 * day, NOW + 90 * day)
    own = replace(w, rotate_every=10 * day)  # the worker's own policy wins
    assert model.rotation_due(own, 90 * day, NOW + 10 * day)
    assert model.rotation_due(own, None, NOW + 10 * day)
    never = replace(w, rotate_every=model.NEVER)
    assert not model.rotation_due(never, 90 * day, NOW + 1000 * day)
    assert not model.rotation_due(model.revoke(w, NOW), 90 * day, NOW + 90 * day)
    expiring = replace(w, expires=NOW + 30 * day)
    assert not model.rotation_due(expiring, 10 * day, NOW + 30 * day)  # expired
    assert model.rotation_due(expiring, 10 * day, NOW + 29 * day)
    # mid-grace: the last rotation is still being delivered
    r = model.rotate(replace(w, rotate_every=day), NOW)
    assert not model.rotation_due(r, None, NOW + 3 * day)
    assert model.rotation_due(r, None, NOW + 7 * day)
    assert model.rotation_due(model.confirm(r, 1, NOW + day), None, NOW + day)


def test_change_sets_the_workers_own_policy_and_leaves_the_furl_alone():
    w = model.rotate(model.new_worker("w1", NOW), NOW)
    day = timedelta(days=1)
    own = model.change(w, NOW, rotate_every=30 * day)
    assert own.rotate_every == 30 * day and (own.serial, own.swissnum) == (w.serial, w.swissnum)
    assert model.change(own, NOW, note="n").rotate_every == 30 * day  # kept unless given
    assert model.change(own, NOW, rotate_every=model.NEVER).rotate_every == model.NEVER
    assert model.change(own, NOW, rotate_every=None).rotate_every is None  # back to [master]'s
