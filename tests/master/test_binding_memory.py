"""FURL-to-key binding on the master (docs/security.md), deterministically: in-memory links
that present a worker key's TubID, one clock, the real CLI."""

from __future__ import annotations

import json

import pytest

from bbenroll.master import binding, gate
from bbenroll.master.reloader import POLL_INTERVAL
from bbenroll.master.writer import run_here
from bbenroll.registry import audit
from tests.helpers.binding import KEY_A, KEY_B, bound_of, keyed_link
from tests.helpers.cli import FIXED_NOW


def start(world):
    return world.start(run_write=run_here)  # the writer's edits in place: answered at once


def bound(world, name: str, key: str):
    """Worker ``name`` accepted on a connection made with ``key``, and bound to it."""
    swissnum = world.path.read_text().split(f"[workers.{name}]\nswissnum = \"", 1)[1].split('"', 1)[0]
    link = keyed_link(world, key)
    ref = link.reference(swissnum)
    answer = world.call(ref, "bind_key")
    return link, ref, answer


def swissnum_of(world, name: str) -> str:
    return json.loads(world.cli("--json", "show", name))["furl"].rsplit("/", 1)[1]


def actions(world) -> list[tuple[str, str | None]]:
    return [(r["action"], r["reason"]) for r in audit.read_records(audit.log_path(world.path))]


def test_bind_key_records_the_connections_key_once_on_disk(world):
    world.add("w1")
    start(world)
    link, ref, answer = bound(world, "w1", KEY_A)
    assert answer == {"status": "bound", "fingerprint": KEY_A}
    assert bound_of(world.path, "w1") == {"tubid": KEY_A, "at": FIXED_NOW}
    assert ("bound", f"worker key {KEY_A}") in actions(world)
    records = len(actions(world))
    assert world.call(ref, "bind_key") == {"status": "already", "fingerprint": KEY_A}
    assert len(actions(world)) == records  # nothing changed: nothing written
    listed = json.loads(world.cli("--json", "list"))[0]
    assert listed["bound"] == {"fingerprint": KEY_A, "at": "2026-11-29T06:00:00Z"}
    assert link.connected
    world.finish()


def test_a_bound_furl_from_another_key_is_refused_with_both_keys_in_the_log(world):
    w1 = world.add("w1")
    start(world)
    bound(world, "w1", KEY_A)
    thief = keyed_link(world, KEY_B)
    message = thief.refusal(w1)
    assert message == (
        f"this FURL is bound to another worker key (this worker's key is {KEY_B}); if the worker "
        "moved to a new machine, ask the master admin for 'bbenroll rebind NAME'"
    )
    assert KEY_A not in message  # the bound key is never told to the client
    (line,) = world.logged("refused connection from")
    assert KEY_A in line["why"] and KEY_B in line["why"] and "'w1'" in line["why"]
    # counted like every refusal: the guard's delay, the audit record, the connection ends
    refused = [reason for action, reason in actions(world) if action == "refused"]
    assert any(KEY_A in reason and KEY_B in reason for reason in refused)
    world.advance(10)
    assert not thief.connected
    # no key at all (an unauthenticated client) is another key too
    assert keyed_link(world, None).refusal(w1).startswith(str(gate.Reason.WRONG_KEY))
    # the bound key itself still gets in
    assert keyed_link(world, KEY_A).reference(w1) is not None
    world.finish()


def test_an_unbound_worker_accepts_any_key(world):
    w1 = world.add("w1")
    start(world)
    for key in (KEY_A, KEY_B, None):
        link = keyed_link(world, key)
        ref = link.reference(w1)
        assert world.call(ref, "get_worker_config")["name"] == "w1"
    world.advance(3 * POLL_INTERVAL)
    assert all(link.connected for link in world.links)  # no re-check drops them
    assert bound_of(world.path, "w1") is None
    world.finish()


def test_a_connection_without_a_key_cannot_bind(world):
    w1 = world.add("w1")
    start(world)
    ref = keyed_link(world, None).reference(w1)
    with pytest.raises(Exception) as info:
        world.call(ref, "bind_key")
    assert binding.NO_KEY in str(info.value.failure.value)
    assert bound_of(world.path, "w1") is None
    world.finish()


def test_binding_drops_live_connections_of_other_keys_and_rebind_moves_the_worker(world):
    w1 = world.add("w1")
    start(world)
    other = keyed_link(world, KEY_B)
    other.reference(w1)  # connected before the FURL was bound
    old, _, _ = bound(world, "w1", KEY_A)
    world.advance(POLL_INTERVAL)
    assert old.connected and not other.connected  # the re-check: B lost its right
    (dropped,) = world.logged("dropping worker")
    assert dropped["why"] == f"{gate.Reason.WRONG_KEY} (bound to worker key {KEY_A}, presented {KEY_B})"
    # the worker moves to a new machine (key B): the admin rebinds, the new machine binds
    assert keyed_link(world, KEY_B).refusal(w1).startswith(str(gate.Reason.WRONG_KEY))
    result = world.cli("rebind", "w1")
    assert result == ""  # the message is on stderr
    assert bound_of(world.path, "w1") is None
    assert ("unbound", f"worker key {KEY_A}") in actions(world)
    world.advance(POLL_INTERVAL)
    assert old.connected  # unbound: any key, the old one too, until the new one binds
    _, _, answer = bound(world, "w1", KEY_B)
    assert answer == {"status": "bound", "fingerprint": KEY_B}
    world.advance(POLL_INTERVAL)
    assert not old.connected
    assert keyed_link(world, KEY_A).refusal(w1).startswith(str(gate.Reason.WRONG_KEY))
    world.finish()


def test_a_pushed_rotation_to_the_bound_key_keeps_the_binding(world):
    world.add("w1")
    start(world)
    bound(world, "w1", KEY_A)
    world.cli("rotate", "w1")
    world.advance(POLL_INTERVAL)
    new = swissnum_of(world, "w1")
    # the worker's fresh test connection is made with the same key: accepted, confirmed
    ref = keyed_link(world, KEY_A).reference(new)
    assert world.call(ref, "confirm_furl", 1) == {"status": "confirmed"}
    assert bound_of(world.path, "w1")["tubid"] == KEY_A
    assert keyed_link(world, KEY_B).refusal(new).startswith(str(gate.Reason.WRONG_KEY))
    world.finish()


@pytest.mark.parametrize("how", [("rotate", "--compromised"), ("revoke", "restore")])
def test_a_compromised_rotation_and_a_restore_clear_the_binding(world, how):
    world.add("w1")
    start(world)
    bound(world, "w1", KEY_A)
    if how[0] == "rotate":
        world.cli("rotate", "w1", "--compromised")
        expected = ("rotated", "old secret refused at once; PB password changed; key binding cleared")
    else:
        world.cli("revoke", "w1")
        world.cli("restore", "w1")
        expected = ("restored", "key binding cleared")
    assert bound_of(world.path, "w1") is None
    assert expected in actions(world)
    world.advance(POLL_INTERVAL)
    # the thief may hold the old key: the worker admin's `worker create --force` binds afresh
    ref = keyed_link(world, KEY_B).reference(swissnum_of(world, "w1"))
    assert world.call(ref, "bind_key") == {"status": "bound", "fingerprint": KEY_B}
    world.finish()
