"""The key binding in the registry (docs/security.md): model transitions, the file, the audit log."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from datetime import timedelta

import pytest

from bbenroll.errors import WrongState
from bbenroll.registry import audit, model, schema
from tests.helpers.binding import KEY_A, KEY_B
from tests.helpers.cli import FIXED_NOW

LATER = FIXED_NOW + timedelta(hours=1)


def worker() -> model.Worker:
    return model.new_worker("w1", FIXED_NOW)


def test_bind_is_idempotent_for_the_same_key_and_refuses_another():
    bound = model.bind(worker(), KEY_A, FIXED_NOW)
    assert bound.bound == model.Bound(KEY_A, FIXED_NOW)
    assert model.bind(bound, KEY_A, LATER) is bound  # not even the date changes
    with pytest.raises(WrongState, match="bbenroll rebind w1"):
        model.bind(bound, KEY_B, LATER)
    assert model.unbind(bound).bound is None
    assert model.bind(model.unbind(bound), KEY_B, LATER).bound == model.Bound(KEY_B, LATER)


def test_what_keeps_and_what_clears_the_binding():
    bound = model.bind(worker(), KEY_A, FIXED_NOW)
    assert model.rotate(bound, LATER).bound == bound.bound  # pushed to the same key
    assert model.change_location(bound, LATER).bound == bound.bound
    assert model.confirm(model.rotate(bound, LATER), 1, LATER).bound == bound.bound
    assert model.revoke(bound, LATER).bound == bound.bound  # refused anyway; restore clears it
    assert model.rotate(bound, LATER, None, compromised=True).bound is None
    assert model.restore(model.revoke(bound, LATER), LATER).bound is None


def test_summary_gives_the_fingerprint_and_date_or_null():
    assert model.worker_summary(worker(), FIXED_NOW)["bound"] is None
    summary = model.worker_summary(model.bind(worker(), KEY_A, FIXED_NOW), FIXED_NOW)
    assert summary["bound"] == {"fingerprint": KEY_A, "at": "2026-11-29T06:00:00Z"}


def test_the_file_round_trip_and_its_checks():
    bound = model.bind(worker(), KEY_A, FIXED_NOW)
    data = schema.worker_to_data(bound)
    assert data["bound"] == {"tubid": KEY_A, "at": FIXED_NOW}
    data["bound"] = {"tubid": KEY_A, "at": FIXED_NOW}  # written as tomlkit items; tomllib reads plain ones
    assert "bound" not in schema.worker_to_data(worker())  # written only when bound
    problems = schema.Problems()
    assert schema.worker_from_data("w1", data, problems) == bound and not problems
    for wrong, message in [
        ({"tubid": "short", "at": FIXED_NOW}, "workers.w1.bound.tubid"),
        ({"tubid": KEY_A}, "workers.w1.bound"),
        ("aaaa", "workers.w1.bound"),
    ]:
        problems = schema.Problems()
        assert schema.worker_from_data("w1", {**data, "bound": wrong}, problems) is None
        assert [key for key, _ in problems.items] == [message], (wrong, problems.items)


def test_toml_text_with_a_bound_table_loads():
    text = f'swissnum = "{"a" * 32}"\npassword = "p"\ncreated = 2026-11-29T06:00:00Z\n' \
        f'rotated = 2026-11-29T06:00:00Z\nbound = {{tubid = "{KEY_A}", at = 2026-11-29T06:00:00Z}}\n'
    problems = schema.Problems()
    loaded = schema.worker_from_data("w1", tomllib.loads(text), problems)
    assert not problems and loaded.bound == model.Bound(KEY_A, FIXED_NOW)


def test_audit_records_of_binding():
    plain = worker()
    bound = model.bind(plain, KEY_A, FIXED_NOW)
    assert audit.worker_change(plain, bound) == audit.Change(
        "bound", "w1", new_secret=audit.fingerprint(plain.swissnum), reason=f"worker key {KEY_A}"
    )
    assert audit.worker_change(bound, model.unbind(bound)) == audit.Change(
        "unbound", "w1", old_secret=audit.fingerprint(plain.swissnum), reason=f"worker key {KEY_A}"
    )
    compromised = audit.worker_change(bound, model.rotate(bound, LATER, None, compromised=True))
    assert compromised.action == "rotated" and compromised.reason.endswith("; key binding cleared")
    revoked = model.revoke(bound, LATER)
    restored = audit.worker_change(revoked, model.restore(revoked, LATER))
    assert (restored.action, restored.reason) == ("restored", "key binding cleared")
    unrelated = audit.worker_change(plain, replace(plain, note="x"))
    assert unrelated.action == "changed"
    assert {"bound", "unbound"} <= set(audit.ACTIONS)


def test_the_binding_is_written_inline_and_removed_cleanly(cli, reg_path):
    from bbenroll.registry import store

    cli("add", "w1")
    with store.edit(reg_path, 5, actor={"by": "master", "host": "m"}, now=FIXED_NOW) as editor:
        editor.update(model.bind(editor.worker("w1"), KEY_A, FIXED_NOW))
    text = reg_path.read_text()
    assert f'bound = {{tubid = "{KEY_A}", at = 2026-11-29T06:00:00Z}}\n' in text
    assert tomllib.loads(text)["workers"]["w1"]["bound"]["tubid"] == KEY_A
    assert cli("rebind", "w1").code == 0
    assert "bound" not in reg_path.read_text()
    assert store.load(reg_path).registry.workers["w1"].bound is None
