"""Pushed rotation on the master, deterministically: in-memory links, one clock (docs/rotation.md)."""

from __future__ import annotations

import json
import tomllib

import pytest
from foolscap.api import Referenceable
from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from bbenroll.master import gate
from bbenroll.master.reloader import POLL_INTERVAL
from bbenroll.master.service import CONFIRM_OVER_NEW, OFFER_RETRY
from bbenroll.master.status import status_path
from bbenroll.master.writer import run_here
from bbenroll.registry import audit
from bbenroll.tunnel.wire import RIFurlUpdater
from tests.helpers.master import Receiver
from tests.helpers.registry_stub import delivered_of, set_policy
from tests.helpers.registry_stub import serial_of as registry_serial


@implementer(RIFurlUpdater)
class Updater(Referenceable):
    """The worker's updater: records offers and does nothing with them (a lost push)."""

    def __init__(self, fail: bool = False) -> None:
        self.offers: list[tuple[int, str]] = []
        self.fail = fail

    def remote_offer_furl(self, serial: int, furl: str) -> None:
        self.offers.append((serial, furl))
        if self.fail:
            raise ValueError("cannot\x1b[31m take it")


def entry(world, name: str) -> dict:
    return tomllib.loads(world.path.read_text())["workers"][name]


def furl_of(world, name: str) -> str:
    return json.loads(world.cli("--json", "show", name))["furl"]


def serial_of(world, name: str) -> int:
    return registry_serial(world.path, name)


def start(world):
    return world.start(run_write=run_here)


def subscribe(world, ref, serial: int = 0, updater: Updater | None = None) -> Updater:
    updater = updater or Updater()
    world.call(ref, "subscribe_updates", updater, serial)
    return updater


def rotated(world, name: str = "w1", *args: str) -> tuple[str, str]:
    """``bbenroll rotate`` at the world's time, then one poll: (old swissnum, new swissnum)."""
    old = entry(world, name)["swissnum"]
    world.cli("rotate", name, *args)
    world.advance(POLL_INTERVAL)
    return old, entry(world, name)["swissnum"]


def test_a_current_worker_is_not_offered_anything(world):
    w1 = world.add("w1")
    start(world)
    _, ref = world.accepted(w1)
    updater = subscribe(world, ref, serial_of(world, "w1"))
    world.advance(10 * OFFER_RETRY)
    assert updater.offers == []
    world.finish()


def test_the_previous_secret_is_offered_the_new_furl_at_once_and_again_only_after_offer_retry(world):
    old = world.add("w1")
    start(world)
    _, ref = world.accepted(old)
    rotated(world)
    updater = subscribe(world, ref)
    assert updater.offers == [(serial_of(world, "w1"), furl_of(world, "w1"))]
    subscribe(world, ref, updater=updater)  # repeated
    newer = subscribe(world, ref, updater=Updater())  # or a new updater: no way around the bound
    world.advance(OFFER_RETRY - 2 * POLL_INTERVAL)
    assert (len(updater.offers), newer.offers) == (1, [])
    world.advance(2 * POLL_INTERVAL)  # the offer was lost: it is made again, to the newer updater
    assert len(updater.offers) == 1
    assert newer.offers == updater.offers
    status = json.loads(status_path(world.path).read_text())["workers"]["w1"]
    assert status["offer_pending"] == f"serial {serial_of(world, 'w1')}"
    (row,) = [w for w in json.loads(world.cli("--json", "status"))["workers"] if w["name"] == "w1"]
    assert row["offer_pending"] == status["offer_pending"] and row["tubids"] == [world.service.tub.tubID]
    assert f"offered serial {serial_of(world, 'w1')}" in world.cli("status")
    world.finish()


def test_a_rotation_while_subscribed_is_pushed_on_the_next_poll(world):
    old = world.add("w1")
    start(world)
    _, ref = world.accepted(old)
    updater = subscribe(world, ref, serial_of(world, "w1"))
    assert updater.offers == []
    rotated(world)
    assert updater.offers == [(serial_of(world, "w1"), furl_of(world, "w1"))]
    world.finish()


def test_confirm_over_the_old_secret_is_refused(world):
    old = world.add("w1")
    start(world)
    _, ref = world.accepted(old)
    rotated(world)
    subscribe(world, ref)
    before = world.path.read_text()
    with pytest.raises(Exception) as info:  # RemoteException around the master's Refused
        world.call(ref, "confirm_furl", serial_of(world, "w1"))
    assert str(info.value.failure.value) == CONFIRM_OVER_NEW
    world.advance(POLL_INTERVAL)
    assert world.path.read_text() == before  # nothing recorded, the old secret keeps its grace
    assert world.call(world.accepted(old)[1], "get_worker_config")["name"] == "w1"
    world.finish()


def test_confirm_writes_the_delivery_ends_the_grace_and_retires_the_old_secret(world):
    old = world.add("w1")
    start(world)
    old_link, old_ref = world.accepted(old)
    _, new = rotated(world)
    subscribe(world, old_ref)
    before = world.path.read_text()
    audit_before = len(audit.read_records(audit.log_path(world.path)))
    serial = serial_of(world, "w1")
    _, new_ref = world.accepted(new)
    assert world.call(new_ref, "confirm_furl", serial) == {"status": "confirmed"}
    assert world.path.read_text() != before  # on disk, through store.edit
    records = audit.read_records(audit.log_path(world.path))[audit_before:]
    # the new connection's acceptance, then the confirmation: both the master's
    assert [r["action"] for r in records][:2] == ["accepted", "confirmed"]
    assert {r["actor"]["by"] for r in records} == {"master"} and records[-1]["worker"] == "w1"
    assert serial == 1 and delivered_of(world.path, "w1") == 1
    world.advance(POLL_INTERVAL)
    assert not old_link.connected  # the tick's re-check dropped the old-secret connection
    (dropped,) = [r for r in audit.read_records(audit.log_path(world.path))[audit_before:]
                  if r["action"] == "connection-dropped"]  # once, however many ticks the close takes
    assert dropped["worker"] == "w1"
    assert dropped["old_secret"] == audit.fingerprint(old) and "retired" in dropped["reason"]
    refusal = world.connect().refusal(old)
    assert refusal.startswith(str(gate.RETIRED))
    assert world.call(new_ref, "get_worker_config")["name"] == "w1"
    world.finish()


def test_dropping_the_old_connection_keeps_the_session_that_moved(world):
    old = world.add("w1")
    start(world)
    old_link, old_ref = world.accepted(old)
    world.call(old_ref, "open_session", "s1", Receiver(), {}, False, 600)
    _, new = rotated(world)
    subscribe(world, old_ref)
    _, new_ref = world.accepted(new)
    answer = world.call(new_ref, "open_session", "s1", Receiver(), {}, True, 600)
    assert answer["status"] == "resumed"
    session = world.service.sessions.sessions[("w1", "s1")]
    world.call(new_ref, "confirm_furl", serial_of(world, "w1"))
    world.advance(POLL_INTERVAL)
    assert not old_link.connected
    assert world.service.sessions.sessions.get(("w1", "s1")) is session and session.peer is not None
    world.finish()


def test_a_repeated_confirm_writes_nothing_more(world):
    old = world.add("w1")
    start(world)
    _, new = rotated(world)
    _, new_ref = world.accepted(new)
    serial = serial_of(world, "w1")
    world.call(new_ref, "confirm_furl", serial)
    world.advance(POLL_INTERVAL)
    writes = world.service.writer.writes
    assert world.call(new_ref, "confirm_furl", serial) == {"status": "confirmed"}
    assert world.service.writer.writes == writes
    assert old
    world.finish()


def test_the_previous_secret_after_two_rotations_is_offered_the_newest(world):
    world.add("w1")
    start(world)
    _, first = rotated(world)
    rotated(world)
    _, ref = world.accepted(first)  # FURL 1's secret: the previous one now
    updater = subscribe(world, ref, 1)
    assert updater.offers == [(2, furl_of(world, "w1"))]
    world.finish()


def test_a_confirm_of_an_older_serial_over_the_current_secret_is_stale(world):
    world.add("w1")
    start(world)
    _, current = rotated(world)
    assert serial_of(world, "w1") == 1
    _, ref = world.accepted(current)
    updater = subscribe(world, ref, 0)  # it holds the current secret, but an older FURL (hints)
    assert updater.offers == [(1, furl_of(world, "w1"))]
    assert world.call(ref, "confirm_furl", 0) == {"status": "stale"}
    assert updater.offers == [(1, furl_of(world, "w1"))] * 2  # offered again at once
    world.finish()


def test_a_failed_update_keeps_the_old_secret_is_in_status_and_is_offered_again(world):
    old = world.add("w1")
    start(world)
    _, ref = world.accepted(old)
    rotated(world)
    updater = subscribe(world, ref)
    world.call(ref, "furl_update_failed", serial_of(world, "w1"), "cannot write\nbbenroll.furl\x07")
    (line,) = world.logged("could not move to FURL serial")
    assert line["why"] == "cannot write bbenroll.furl"
    world.advance(POLL_INTERVAL)
    status = json.loads(status_path(world.path).read_text())["workers"]["w1"]
    assert status["update_failure"] == f"serial {serial_of(world, 'w1')}: cannot write bbenroll.furl"
    shown = json.loads(world.cli("--json", "status"))  # `bbenroll status` shows it
    (row,) = [w for w in shown["workers"] if w["name"] == "w1"]
    assert shown["running"] is True and row["update_failure"] == status["update_failure"]
    assert "failed" in world.cli("status") and "cannot write bbenroll.furl" in world.cli("status")
    _, again = world.accepted(old)  # the old secret still works
    assert world.call(again, "get_worker_config")["name"] == "w1"
    assert len(updater.offers) == 1
    world.advance(OFFER_RETRY)
    assert len(updater.offers) == 2
    world.finish()


def test_a_compromised_rotation_drops_the_connection_and_offers_nothing(world):
    old = world.add("w1")
    start(world)
    link, ref = world.accepted(old)
    updater = subscribe(world, ref, serial_of(world, "w1"))
    rotated(world, "w1", "--compromised")
    world.advance(OFFER_RETRY)
    assert not link.connected
    assert updater.offers == []
    world.finish()


def test_a_failing_offer_is_logged_once_per_connection_and_never_raises(world):
    old = world.add("w1")
    start(world)
    _, ref = world.accepted(old)
    rotated(world)
    updater = subscribe(world, ref, updater=Updater(fail=True))
    for _ in range(3):
        world.advance(OFFER_RETRY)
    assert len(updater.offers) == 4
    (line,) = world.logged("FURL offer failed")
    assert "\x1b" not in line["why"]
    world.finish()


def test_a_revoked_worker_is_not_offered_again(world):
    old = world.add("w1")
    start(world)
    link, ref = world.accepted(old)
    rotated(world)
    updater = subscribe(world, ref)
    assert len(updater.offers) == 1
    world.cli("revoke", "w1")
    for _ in range(2):
        world.advance(OFFER_RETRY)
    assert not link.connected
    assert len(updater.offers) == 1
    world.finish()


def test_a_location_change_is_pushed_over_the_current_secret(world):
    current = world.add("w1")
    start(world)
    _, ref = world.accepted(current)
    updater = subscribe(world, ref, 0)
    assert updater.offers == []
    world.cli("master", "set-location", "tcp:ci.example.org:9989")
    world.advance(POLL_INTERVAL)
    assert updater.offers == [(1, furl_of(world, "w1"))]
    assert "tcp:ci.example.org:9989" in updater.offers[0][1] and current in updater.offers[0][1]
    assert world.call(ref, "confirm_furl", 1) == {"status": "confirmed"}
    assert delivered_of(world.path, "w1") == 1
    world.finish()


def test_a_policy_rotation_is_pushed_and_confirmed(world):
    old = world.add("w1")
    set_policy(world.path, "90d")
    start(world)
    _, ref = world.accepted(old)
    updater = subscribe(world, ref, 0)
    world.advance(91 * 24 * 3600)  # the tick rotates; the reload after the write pushes
    ((serial, furl),) = updater.offers
    assert serial == 1 and serial_of(world, "w1") == 1
    new = furl.rsplit("/", 1)[1]
    assert world.call(world.accepted(new)[1], "confirm_furl", 1) == {"status": "confirmed"}
    world.advance(POLL_INTERVAL)
    assert world.connect().refusal(old).startswith(str(gate.RETIRED))
    world.finish()


def test_a_confirm_whose_worker_was_revoked_before_the_write_is_refused(world):
    from twisted.internet import defer

    held: list[tuple] = []
    holding = [True]

    def later(function):
        if not holding[0]:
            return defer.maybeDeferred(function)
        d = defer.Deferred()
        held.append((function, d))
        return d

    world.add("w1")
    world.start(run_write=later)
    _, new = rotated(world)
    _, ref = world.accepted(new)
    answer = ref.callRemote("confirm_furl", 1)
    world.advance(0)
    ((function, d),) = held
    world.cli("revoke", "w1")  # under the lock, before the master's write
    holding[0] = False  # later writes (the master's audit records) go through at once
    d.callback(function())
    results: list = []
    answer.addBoth(results.append)
    world.advance(0)
    assert isinstance(results[0], Failure)  # refused, or dropped with the revoked connection
    assert delivered_of(world.path, "w1") is None  # nothing recorded for a revoked worker
    assert world.logged("dropping worker {worker!r}")
    world.finish()


@implementer(RIFurlUpdater)
class SilentUpdater(Referenceable):
    """An updater whose answer never comes (a worker stuck in the call, or a lost answer)."""

    def __init__(self) -> None:
        self.offers: list[tuple[int, str]] = []

    def remote_offer_furl(self, serial: int, furl: str) -> defer.Deferred:
        self.offers.append((serial, furl))
        return defer.Deferred()  # never fires


def test_an_offer_whose_answer_never_comes_is_made_again_after_offer_retry(world):
    old = world.add("w1")
    start(world)
    _, ref = world.accepted(old)
    rotated(world)
    updater = SilentUpdater()
    world.call(ref, "subscribe_updates", updater, 0)
    assert len(updater.offers) == 1
    world.advance(OFFER_RETRY - 2 * POLL_INTERVAL)
    assert len(updater.offers) == 1  # in flight: not repeated before OFFER_RETRY
    world.advance(2 * POLL_INTERVAL)
    assert len(updater.offers) == 2  # the stuck one counts as lost: offered again, once
    world.advance(POLL_INTERVAL)
    assert len(updater.offers) == 2
    world.finish()


def test_a_fleet_rotation_offers_at_most_max_offers_in_flight_at_once(world):
    names = [f"w{i}" for i in range(5)]
    secrets = {name: world.add(name) for name in names}
    start(world)
    world.service.max_offers_in_flight = 2
    refs = {name: world.accepted(secrets[name])[1] for name in names}
    updaters = {name: subscribe(world, refs[name], serial_of(world, name)) for name in names}
    world.cli("rotate", "--all")
    world.advance(POLL_INTERVAL)
    offered = [name for name in names if updaters[name].offers]
    assert len(offered) == 2  # the others wait for a place
    world.advance(5 * POLL_INTERVAL)
    assert [name for name in names if updaters[name].offers] == offered
    # a confirmation frees a place: the next worker is offered at the next tick
    first = offered[0]
    _, new_ref = world.accepted(entry(world, first)["swissnum"])
    assert world.call(new_ref, "confirm_furl", serial_of(world, first)) == {"status": "confirmed"}
    world.advance(POLL_INTERVAL)
    assert len([name for name in names if updaters[name].offers]) == 3
    # a failed move frees one too
    second = offered[1]
    world.call(refs[second], "furl_update_failed", serial_of(world, second), "no route")
    world.advance(POLL_INTERVAL)
    assert len([name for name in names if updaters[name].offers]) == 4
    # and an offer that is never answered gives its place up after OFFER_RETRY
    world.advance(OFFER_RETRY)
    assert all(updaters[name].offers for name in names)
    world.finish()
