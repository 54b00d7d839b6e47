"""Master key rollover on a running master, deterministically: in-memory links, one clock.

``bbenroll master roll-identity`` writes the new identity and ``[master]
previous``; the service serves both, offers every connection on the old TubID
its FURL under the new one, and retires the old identity once every usable
worker confirmed or when the grace ends (docs/rotation.md, "Master key rollover").
"""

from __future__ import annotations

import json
import tomllib

import pytest
from twisted.internet import defer

from bbenroll.furl import parse_furl
from bbenroll.master.reloader import POLL_INTERVAL
from bbenroll.master.service import CONFIRM_OVER_NEW
from bbenroll.master.status import status_path
from bbenroll.master.writer import run_here
from bbenroll.registry import audit
from tests.helpers.foolscap import MemoryLink, resolve
from tests.master.test_push_memory import Updater, subscribe


def master_table(world) -> dict:
    return tomllib.loads(world.path.read_text())["master"]


def records(world) -> list[dict]:
    return audit.read_records(audit.log_path(world.path))


def roll(world, *args: str) -> dict:
    document = json.loads(world.cli("--json", "master", "roll-identity", *args))
    world.advance(POLL_INTERVAL)  # the service's next poll
    return document


def link_to(world, tubid: str) -> MemoryLink:
    link = MemoryLink(world.service.identities.tubs[tubid], world.clock)
    world.links.append(link)
    return link


def test_a_live_roll_serves_both_offers_the_new_tubid_and_retires_the_old_once_confirmed(world):
    secret = world.add("w1")
    service = world.start(run_write=run_here)
    old = service.tub.tubID
    old_link, old_ref = world.accepted(secret)

    rolled = roll(world)
    new = rolled["tubid"]
    assert service.identities.tubids() == [old, new]
    assert service.tub.tubID == new  # new FURLs (and offers) carry it
    assert world.logged("serving master identity")

    # the connection on the old identity reports the newest serial, and is offered all the same
    updater = subscribe(world, old_ref, serial=1)
    ((serial, furl),) = updater.offers
    assert serial == 1
    assert (parse_furl(furl).tubid, parse_furl(furl).swissnum) == (new, secret)  # same secret, new TubID
    with pytest.raises(Exception) as info:  # confirmed over the old identity: not a proof
        world.call(old_ref, "confirm_furl", 1)
    assert str(info.value.failure.value) == CONFIRM_OVER_NEW
    assert "previous" in master_table(world)

    new_link = link_to(world, new)
    new_ref = new_link.reference(secret)
    world.advance(POLL_INTERVAL)  # the status file is written by the tick
    status = json.loads(status_path(world.path).read_text())
    assert status["workers"]["w1"]["tubids"] == ",".join(sorted([old, new]))  # who is on which identity
    assert world.call(new_ref, "confirm_furl", 1) == {"status": "confirmed"}
    world.advance(0)
    # every usable worker confirmed: the old identity retired at once, its connection ended
    assert service.identities.tubids() == [new]
    assert not old_link.connected and new_link.connected
    assert "previous" not in master_table(world)
    assert master_table(world)["tubid"] == new
    retired, dropped = records(world)[-2:]  # one batch of the writer: table changes, then notes
    assert (dropped["action"], dropped["worker"]) == ("connection-dropped", "w1")
    assert dropped["reason"] == "master identity retired" and dropped["actor"]["peer"]
    assert (retired["action"], retired["actor"]["by"]) == ("identity-retired", "master")
    assert retired["reason"] == f"tubid {old} is no longer served"
    world.advance(POLL_INTERVAL)
    assert json.loads(status_path(world.path).read_text())["workers"]["w1"]["tubids"] == new
    assert world.call(new_ref, "get_worker_config")["name"] == "w1"  # the port keeps serving
    again = link_to(world, new)
    assert world.call(again.reference(secret), "get_worker_config")["name"] == "w1"
    world.finish()


def test_the_grace_end_retires_the_old_identity_by_the_masters_clock(world):
    secret = world.add("w1")
    world.add("w2")
    service = world.start(run_write=run_here)
    old = service.tub.tubID
    old_link, _ = world.accepted(secret)
    new = roll(world, "--grace", "1h")["tubid"]
    world.advance(3500)
    assert service.identities.tubids() == [old, new] and old_link.connected
    world.advance(101)  # the hour is over: nobody confirmed
    assert service.identities.tubids() == [new]
    assert not old_link.connected
    assert "previous" not in master_table(world)
    retired = world.logged("retiring master identity")
    assert len(retired) == 1 and "its overlap ended" in retired[0]["why"]
    world.finish()


def test_roll_with_no_grace_stops_serving_the_old_identity_at_once(world):
    secret = world.add("w1")
    service = world.start(run_write=run_here)
    old_link, _ = world.accepted(secret)
    new = roll(world, "--grace", "0")["tubid"]
    assert service.identities.tubids() == [new]
    assert not old_link.connected
    assert world.logged("rolled without an overlap")
    link = link_to(world, new)
    assert world.call(link.reference(secret), "get_worker_config")["name"] == "w1"
    world.finish()


def test_a_tubid_change_that_is_not_a_roll_of_the_running_identity_is_refused(world):
    secret = world.add("w1")
    service = world.start(run_write=run_here)
    old = service.tub.tubID
    link, _ = world.accepted(secret)
    # two rolls before the master looked: the registry's previous is not what it serves
    world.cli("master", "roll-identity", "--grace", "0")
    world.cli("master", "roll-identity")
    world.advance(POLL_INTERVAL)
    (refused,) = world.logged("the changed one is refused")
    assert "master.previous is not the identity being served" in refused["error"]
    assert service.identities.tubids() == [old] and link.connected
    world.finish()


def test_a_master_started_after_the_overlap_serves_only_the_new_identity(world):
    world.add("w1")
    world.cli("master", "roll-identity", "--grace", "1h")
    new = master_table(world)["tubid"]
    world.advance(7200)
    service = world.start(run_write=run_here)
    assert service.identities.tubids() == [new]
    world.advance(POLL_INTERVAL)
    assert "previous" not in master_table(world)  # and the master wrote so
    world.finish()


def test_a_worker_added_after_the_roll_does_not_hold_the_old_identity(world):
    secret = world.add("w1")
    world.add("gone")
    service = world.start(run_write=run_here)
    old = service.tub.tubID
    new = roll(world)["tubid"]
    world.cli("revoke", "gone")  # revoked: does not count
    world.add("late")  # serial 0: its only FURL carries the new TubID
    world.advance(POLL_INTERVAL)
    assert service.identities.tubids() == [old, new]  # w1 has not confirmed yet
    updater = Updater()
    new_ref = link_to(world, new).reference(secret)
    subscribe(world, new_ref, serial=0, updater=updater)
    assert world.call(new_ref, "confirm_furl", 1) == {"status": "confirmed"}
    world.advance(0)
    assert service.identities.tubids() == [new]
    world.finish()


class HeldWrites:
    """A writer's runner that holds each write until the test lets it run."""

    def __init__(self) -> None:
        self.held: list[tuple] = []

    def __call__(self, function):
        d = defer.Deferred()
        self.held.append((function, d))
        return d

    def release_one(self) -> None:
        function, d = self.held.pop(0)
        run_here(function).chainDeferred(d)


def test_a_retired_identity_is_not_served_again_when_a_rotation_races_its_removal(world):
    secret = world.add("w1")
    writes = HeldWrites()
    service = world.start(run_write=writes)
    old = service.tub.tubID
    new = roll(world)["tubid"]
    ref = link_to(world, new).reference(secret)
    confirmed = ref.callRemote("confirm_furl", 1)
    world.advance(0)
    while not confirmed.called:  # the confirmation (and the audit notes before it) written
        writes.release_one()
        world.advance(0)
    assert resolve(world.clock, confirmed) == {"status": "confirmed"}
    assert service.identities.tubids() == [new]  # retired at once; its removal waits to be written
    assert writes.held and "previous" in master_table(world)
    world.cli("rotate", "w1")  # w1's newest FURL is unconfirmed again, `previous` still on disk
    world.advance(POLL_INTERVAL)
    assert service.identities.tubids() == [new]  # and the old identity stays retired
    while writes.held:
        writes.release_one()
        world.advance(0)
    assert "previous" not in master_table(world)
    assert old not in service.identities.tubs
    world.finish()
