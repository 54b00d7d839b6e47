"""The master's own audit records: acceptances, dropped connections, refusal summaries.

In-memory links and an injected clock (tests/helpers/master.py); the records are
read back from the real audit log, whose chain must verify.
"""

from __future__ import annotations

from bbenroll.master.guard import SUMMARY_INTERVAL
from bbenroll.master.reloader import POLL_INTERVAL
from bbenroll.registry import audit


def records(world, since=0):
    return audit.read_records(audit.log_path(world.path))[since:]


def test_an_accepted_connection_is_recorded_by_the_master_with_its_peer(world):
    w1 = world.add("w1")
    world.start()
    before = len(records(world))
    world.accepted(w1)
    world.advance(0)
    (accepted,) = records(world, before)
    assert accepted["action"] == "accepted" and accepted["worker"] == "w1"
    assert accepted["actor"]["by"] == "master"
    assert accepted["new_secret"] == audit.fingerprint(w1) and w1 not in str(accepted)
    assert accepted["reason"] == "current secret"
    assert accepted["actor"]["peer"].startswith("127.0.0.1:")  # the master, and who it let in
    assert "chain intact" in world.cli("audit", "verify")  # one chain with the CLI's records
    world.finish()


def test_a_revoked_workers_live_connection_is_recorded_as_dropped_once(world):
    w1 = world.add("w1")
    world.start()
    link, _ = world.accepted(w1)
    link.server.transport.hold_on_close = True  # its close takes several ticks
    world.cli("revoke", "w1")
    before = len(records(world))
    for _ in range(4):
        world.advance(POLL_INTERVAL)
    dropped = [r for r in records(world, before) if r["action"] == "connection-dropped"]
    assert len(dropped) == 1
    assert dropped[0]["worker"] == "w1" and dropped[0]["old_secret"] == audit.fingerprint(w1)
    assert dropped[0]["reason"] == "worker revoked" and dropped[0]["actor"]["peer"]
    assert len(world.logged("dropping worker {worker!r}")) == 1  # and logged once, not per tick
    world.finish()


def test_guesses_are_recorded_as_one_summary_per_address_not_one_per_guess(world):
    world.add("w1")
    service = world.start()
    service.guard.first_failure_delay = service.guard.max_failure_delay = 0  # answers at once
    before = len(records(world))
    for i in range(12):
        world.connect().refusal(f"wrong{i:02d}" + "x" * 22)
        world.advance(1)
    world.advance(SUMMARY_INTERVAL + 2 * POLL_INTERVAL)
    refused = [r for r in records(world, before) if r["action"] == "refused"]
    assert len(refused) == 2  # the first refusal at once, the summary of the rest one interval later
    assert sum(int(r["reason"].split()[0]) for r in refused) == 12
    assert all(r["worker"] is None and r["actor"]["by"] == "master" for r in refused)
    assert {r["actor"]["peer"].split(":")[0] for r in refused} == {"127.0.0.1"}
    assert "wrong" not in str(refused)  # never the guessed secrets
    world.finish()


def test_refusals_not_summarized_yet_are_recorded_when_the_master_stops(world):
    world.add("w1")
    service = world.start()
    service.guard.first_failure_delay = service.guard.max_failure_delay = 0
    before = len(records(world))
    for i in range(3):
        world.connect().refusal(f"wrong{i:02d}" + "x" * 22)
    world.advance(POLL_INTERVAL)
    world.finish()  # the two after the first summary are not due yet: written at the stop
    refused = [r for r in records(world, before) if r["action"] == "refused"]
    assert sum(int(r["reason"].split()[0]) for r in refused) == 3


def test_bbenroll_audit_shows_the_masters_records_with_their_peer(world):
    w1 = world.add("w1")
    world.start()
    world.accepted(w1)
    world.advance(0)
    table = world.cli("audit", "--action", "accepted")
    (row,) = [line for line in table.splitlines() if "accepted" in line]
    assert "master@" in row and "(peer 127.0.0.1:" in row and "w1" in row
    world.finish()
