"""Bounds on unauthenticated connections and guessing: the pure policy, then the
service applying it deterministically (in-memory links, one MemoryReactorClock)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from foolscap.api import DeadReferenceError
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from bbenroll.master import gate
from bbenroll.master import guard as guardmod
from bbenroll.master import service as service_module
from bbenroll.master.guard import (
    AUTH_TIMEOUT,
    FAILURE_MEMORY,
    FIRST_FAILURE_DELAY,
    MAX_FAILURE_DELAY,
    MAX_REFUSALS_PER_CONNECTION,
    MAX_SILENT_PER_ADDRESS,
    MAX_UNAUTHENTICATED_PER_ADDRESS,
    NEGOTIATION_TIMEOUT,
    SILENT_TIMEOUT,
    SUMMARY_INTERVAL,
    Guard,
    Progress,
    address_key,
)
from bbenroll.master.tub import EnrollmentNegotiation
from tests.helpers.foolscap import MemoryLink, pump, resolve

# -- the pure policy ----------------------------------------------------------------


def test_the_oldest_connection_over_the_cap_goes():
    guard = Guard()

    def speaks(address, connection):
        arrived = guard.arrived(address, connection)
        return arrived + guard.progressed(address, connection, Progress.NEGOTIATING)

    assert [speaks("10.0.0.1", n) for n in range(MAX_UNAUTHENTICATED_PER_ADDRESS)] == [[]] * 8
    assert speaks("10.0.0.1", "new") == [0]  # the newest (maybe a worker) is never the one
    assert guard.arrived("10.0.0.2", "elsewhere") == []  # per address
    guard.settled("10.0.0.1", 3)  # authenticated or closed
    assert speaks("10.0.0.1", "another") == []
    assert guard.unauthenticated("10.0.0.1") == MAX_UNAUTHENTICATED_PER_ADDRESS
    for n in (1, 2, 4, 5, 6, 7, "new", "another"):
        guard.settled("10.0.0.1", n)
    assert guard.unauthenticated("10.0.0.1") == 0
    assert guard._unauthenticated == {"10.0.0.2": {"elsewhere": Progress.SILENT}}  # no empty entries kept


def test_silent_connections_have_their_own_cap_and_push_out_only_silent_ones():
    guard = Guard()
    cap, silent_cap = MAX_UNAUTHENTICATED_PER_ADDRESS, MAX_SILENT_PER_ADDRESS
    assert silent_cap > 50  # above Twisted's listen backlog: one batch of accepts cannot push a worker out
    assert guard.arrived("10.0.0.1", "worker") == []
    assert guard.progressed("10.0.0.1", "worker", Progress.NEGOTIATING) == []  # it sent at once
    flood = [f"raw{n}" for n in range(3 * silent_cap)]
    dropped = [victim for raw in flood for victim in guard.arrived("10.0.0.1", raw)]
    assert dropped == flood[: len(flood) - silent_cap]  # oldest silent first; the worker stays
    assert guard.unauthenticated("10.0.0.1") == silent_cap + 1
    # the ones that speak count against the smaller cap: least far, then oldest, goes first
    assert guard.progressed("10.0.0.1", "worker", Progress.NEGOTIATED) == []
    speakers = flood[len(flood) - silent_cap:][:cap]
    over = [v for raw in speakers for v in guard.progressed("10.0.0.1", raw, Progress.NEGOTIATING)]
    assert over == [speakers[0]]  # the 8th speaker besides the negotiated worker: the oldest negotiating
    assert guard.progressed("10.0.0.1", "gone", Progress.NEGOTIATED) == []  # unknown: ignored
    assert guard.progressed("10.0.0.1", "worker", Progress.SILENT) == []  # never goes back
    assert guard._unauthenticated["10.0.0.1"]["worker"] is Progress.NEGOTIATED


def test_with_every_other_connection_further_the_oldest_of_them_goes():
    guard = Guard()
    for n in range(MAX_UNAUTHENTICATED_PER_ADDRESS):
        guard.arrived("10.0.0.1", n)
        guard.progressed("10.0.0.1", n, Progress.NEGOTIATED)
    guard.arrived("10.0.0.1", "new")
    assert guard.progressed("10.0.0.1", "new", Progress.NEGOTIATING) == [0]  # never the one that moved


def test_failures_of_an_address_are_answered_later_and_later():
    guard = Guard()
    delays = [guard.refused("10.0.0.1", gate.UNKNOWN, now=100.0 + n).delay for n in range(10)]
    assert delays == [0.0, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]
    assert (FIRST_FAILURE_DELAY, MAX_FAILURE_DELAY) == (0.1, 5.0)
    assert MAX_FAILURE_DELAY <= AUTH_TIMEOUT / 2  # a slow refusal still arrives before the deadline
    assert guard.refused("10.0.0.2", gate.UNKNOWN, now=110.0).delay == 0.0  # not another address
    assert guard.delay_for("10.0.0.1") == MAX_FAILURE_DELAY and guard.delay_for("10.0.0.9") == 0.0
    # quiet for FAILURE_MEMORY (once its counts are logged): forgotten, answered at once again
    guard.summaries(now=109.0 + FAILURE_MEMORY)
    assert guard.refused("10.0.0.1", gate.UNKNOWN, now=109.0 + FAILURE_MEMORY) == guardmod.Refusal(0.0, True)


def test_refusals_are_summarized_per_address_per_interval():
    guard = Guard()
    assert guard.refused("10.0.0.1", gate.UNKNOWN, now=0.0).log_now  # the first: logged at once
    for n in range(5):
        assert not guard.refused("10.0.0.1", gate.UNKNOWN, now=1.0 + n).log_now
    assert not guard.refused("10.0.0.1", gate.REVOKED, now=7.0).log_now
    guard.dropped("10.0.0.1", guardmod.TIMED_OUT, now=8.0)
    assert guard.summaries(now=SUMMARY_INTERVAL - 1) == []  # not due yet
    (line,) = guard.summaries(now=SUMMARY_INTERVAL)
    assert (line.address, line.total, line.seconds) == ("10.0.0.1", 7, SUMMARY_INTERVAL)
    assert line.counts == {gate.UNKNOWN: 5, gate.REVOKED: 1, guardmod.TIMED_OUT: 1}
    assert line.describe() == (
        "no accepted secret in time x1, unknown secret x5, worker revoked x1"
    )
    assert guard.summaries(now=SUMMARY_INTERVAL + 1) == []  # its counts started again
    guard.refused("10.0.0.1", gate.UNKNOWN, now=SUMMARY_INTERVAL + 2)
    assert guard.summaries(now=2 * SUMMARY_INTERVAL - 1) == []  # one line per interval at most
    assert [s.counts for s in guard.summaries(now=2 * SUMMARY_INTERVAL)] == [{gate.UNKNOWN: 1}]


def test_memory_is_bounded_and_forgotten_counts_still_reported():
    guard = Guard()
    guard.max_tracked_addresses = 3
    for n in range(5):
        guard.refused(f"10.0.0.{n}", gate.UNKNOWN, now=0.0)
        guard.refused(f"10.0.0.{n}", gate.UNKNOWN, now=1.0)  # one unlogged count each
    assert guard.tracked() == 3  # the least recently failing two went first
    lines = {s.address: s.counts for s in guard.summaries(now=SUMMARY_INTERVAL)}
    assert lines == {"10.0.0.2": {gate.UNKNOWN: 1}, "10.0.0.3": {gate.UNKNOWN: 1},
                     "10.0.0.4": {gate.UNKNOWN: 1}, guardmod.OTHER_ADDRESSES: {gate.UNKNOWN: 2}}
    guard.summaries(now=1.0 + FAILURE_MEMORY)
    assert guard.tracked() == 0  # quiet addresses are forgotten


def test_address_keys():
    assert address_key("192.0.2.7") == "192.0.2.7"
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") == "2001:db8:1:3::/64"
    assert address_key("not an address") == "not an address"


@pytest.mark.parametrize(("soft", "hard", "target"), [
    (1024, 4096, 4096), (4096, 4096, None), (1024, -1, guardmod.OPEN_FILES_TARGET), (-1, -1, None),
    (100_000, -1, None),
])
def test_open_files_target(soft, hard, target):
    assert guardmod.open_files_target(soft, hard, unlimited=-1) == target


def test_near_open_files_limit():
    assert not guardmod.near_open_files_limit(818, 1024, unlimited=-1)
    assert guardmod.near_open_files_limit(820, 1024, unlimited=-1)
    assert not guardmod.near_open_files_limit(10**6, -1, unlimited=-1)


def test_the_open_files_limit_is_raised_to_the_hard_limit():
    script = """
import json, resource
from bbenroll.master.tub import raise_open_files_limit
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
low = min(256, soft if soft != resource.RLIM_INFINITY else 256)
resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
raised = raise_open_files_limit()
print(json.dumps([low, hard, resource.RLIM_INFINITY, raised, resource.getrlimit(resource.RLIMIT_NOFILE)[0]]))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    low, hard, unlimited, raised, soft = json.loads(result.stdout)
    expected = guardmod.OPEN_FILES_TARGET if hard == unlimited else hard
    assert raised == [low, expected] and soft == expected


# -- the service applying it ----------------------------------------------------------


def test_the_start_says_what_it_did_to_the_open_files_limit(world, monkeypatch):
    monkeypatch.setattr(service_module, "raise_open_files_limit", lambda: (1024, 524288))
    world.start()
    (raised,) = world.logged("raised the open-files limit")
    assert (raised["old"], raised["new"]) == (1024, 524288)
    world.finish()


def test_a_limit_that_cannot_be_raised_is_one_warning(world, monkeypatch):
    def refused() -> None:
        raise ValueError("not allowed")

    monkeypatch.setattr(service_module, "raise_open_files_limit", refused)
    world.start()  # still serves
    (cannot,) = world.logged("cannot raise the open-files limit")
    assert cannot["error"] == "not allowed" and world.service.running
    world.finish()



def reason_of(failure: Failure) -> str:
    """What the master told the client (a RemoteException around its CopiedFailure)."""
    return str(failure.value.failure.value)


def lookup(world, link, swissnum: str) -> list[Any]:
    """Send a lookup without waiting for its answer; the list gets it."""
    answers: list[Any] = []
    link.client.getYourReferenceByName(swissnum).addBoth(answers.append)
    pump(world.clock)
    return answers


def link_from(world, host: str) -> MemoryLink:
    link = MemoryLink(world.service.tub, world.clock, host=host)
    world.links.append(link)
    return link


def test_a_connection_without_a_secret_is_dropped_after_the_timeout(world):
    world.start()
    tub = world.service.tub
    assert (tub.doorkeeper.auth_timeout, tub.doorkeeper.negotiation_timeout) == (10.0, 30.0)
    assert (AUTH_TIMEOUT, NEGOTIATION_TIMEOUT) == (10.0, 30.0)
    assert tub.negotiationClass is EnrollmentNegotiation
    assert tub.doorkeeper.clock is world.clock
    link = world.connect()
    world.advance(AUTH_TIMEOUT - 0.1)
    assert link.connected and tub.doorkeeper.waiting() == 1
    world.advance(0.1)
    assert link.server.transport.aborted and not link.connected
    assert tub.doorkeeper.waiting() == 0
    world.finish()


def test_stopping_aborts_the_connections_still_waiting(world):
    swissnum = world.add("w1")
    world.start()
    waiting = world.connect()
    accepted, _ref = world.accepted(swissnum)
    resolve(world.clock, world.service.stopService())
    world.advance(0)
    assert waiting.server.transport.aborted and not waiting.connected
    assert not accepted.server.transport.aborted  # not the Doorkeeper's to drop
    world.finish()


def test_a_silent_tcp_connection_is_timed_out_in_negotiation_on_the_tub_clock(world):
    """Before any Broker: the Listener's own protocol (Foolscap's negotiation), on a StringTransport."""
    world.start()
    (_port, listener, _backlog, _interface) = world.clock.tcpServers[0]
    transports = []
    for n in range(MAX_SILENT_PER_ADDRESS + 2):
        peer = IPv4Address("TCP", "198.51.100.7", 50000 + n)
        protocol = listener.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        protocol.makeConnection(transport)
        transports.append((protocol, transport))
        if n == 1:  # it speaks at once (the start of a negotiation request) and then stalls
            protocol.dataReceived(b"GET /id/")
    assert isinstance(transports[0][0], EnrollmentNegotiation)
    # the silent cap: the oldest silent one went, not the one that spoke
    assert [t.disconnected for _p, t in transports[:3]] == [True, False, False]
    assert not any(t.disconnected for _p, t in transports[1:])
    assert transports[1][0].negotiationTimer is None  # Foolscap's 120 s one (global reactor): off
    world.advance(SILENT_TIMEOUT - 0.1)
    assert not any(t.disconnected for _p, t in transports[1:])
    world.advance(0.1)  # the silent ones: nothing within SILENT_TIMEOUT
    assert [t.disconnected for _p, t in transports] == [True, False] + [True] * MAX_SILENT_PER_ADDRESS
    world.advance(NEGOTIATION_TIMEOUT - SILENT_TIMEOUT - 0.1)
    assert not transports[1][1].disconnected
    world.advance(0.1)  # the one that spoke: the negotiation's deadline, from its accept
    assert all(t.disconnected for _p, t in transports)
    for protocol, _t in transports:  # what the reactor would do after an abort
        protocol.connectionLost(Failure(ConnectionLost()))
    assert world.service.tub.doorkeeper.waiting() == 0
    world.finish()


def test_an_accepted_connection_has_no_deadline(world):
    swissnum = world.add("w1")
    world.start()
    link, _ref = world.accepted(swissnum)
    world.advance(10 * AUTH_TIMEOUT)
    assert link.connected and world.service.tub.doorkeeper.waiting() == 0
    world.finish()


def test_a_refused_lookup_is_answered_then_its_connection_ends(world):
    world.start()
    link = world.connect()
    (answer,) = lookup(world, link, "a" * 32)
    assert reason_of(answer) == gate.UNKNOWN  # the client sees the reason ...
    assert not link.connected and not link.server.transport.aborted  # ... and a clean close
    world.finish()


def test_an_authenticated_connection_is_dropped_after_a_few_refusals(world):
    swissnum = world.add("w1")
    world.start()
    link, _ref = world.accepted(swissnum)  # e.g. a worker's Tub sharing it with a stale FURL
    for n in range(MAX_REFUSALS_PER_CONNECTION - 1):
        world.advance(FAILURE_MEMORY)  # keep every answer immediate
        assert link.refusal("b" * 32) == gate.UNKNOWN and link.connected, n
    world.advance(FAILURE_MEMORY)
    assert link.refusal("b" * 32) == gate.UNKNOWN
    assert not link.connected
    world.finish()


def test_lookups_past_the_refusal_limit_are_not_looked_up(world):
    world.start()
    link = world.connect()
    decided = []
    real_decide = world.service.gate.decide
    world.service.gate.decide = lambda *a: decided.append(a) or real_decide(*a)
    answers = []
    for n in range(MAX_REFUSALS_PER_CONNECTION + 2):  # pipelined, before any answer
        link.client.getYourReferenceByName(f"{n}" * 32).addBoth(answers.append)
    pump(world.clock)
    assert len({swissnum for swissnum, _now in decided}) == MAX_REFUSALS_PER_CONNECTION
    told = sorted(reason_of(a) for a in answers if not a.check(DeadReferenceError))
    assert told == [guardmod.TOO_MANY_REFUSALS] * 2 + [gate.UNKNOWN]  # the first at once, the extra ones too
    assert not link.connected  # ... and then the connection ended: the rest are never answered
    assert len(answers) == MAX_REFUSALS_PER_CONNECTION + 2
    world.finish()


def test_repeated_failures_are_answered_later_but_a_good_secret_at_once(world):
    swissnum = world.add("w1")
    world.start()
    for _ in range(6):  # 0, 0.1, 0.2, 0.4, 0.8, 1.6 s
        link = world.connect()
        answers = lookup(world, link, "c" * 32)
        world.advance(world.service.guard.max_failure_delay)
        assert reason_of(answers[0]) == gate.UNKNOWN
    link = world.connect()
    answers = lookup(world, link, "c" * 32)
    assert answers == []  # 3.2 s
    world.advance(3.1)
    assert answers == []
    # meanwhile, from the same address (a worker behind the attacker's NAT): no delay
    assert world.call(world.connect().reference(swissnum), "get_worker_config")["name"] == "w1"
    # and another address is not slowed down either
    assert lookup(world, link_from(world, "192.0.2.9"), "d" * 32) != []
    world.advance(0.2)
    assert reason_of(answers[0]) == gate.UNKNOWN and not link.connected
    world.finish()


def test_a_connection_that_goes_drops_its_pending_answer(world):
    world.start()
    for _ in range(4):  # make the next answer wait
        lookup(world, world.connect(), "e" * 32)
        world.advance(MAX_FAILURE_DELAY)
    link = world.connect()
    assert lookup(world, link, "e" * 32) == []
    link.close()
    assert world.clock.getDelayedCalls() != []  # the service's loop, at least
    assert all(getattr(c.func, "__name__", "") != "fire" for c in world.clock.getDelayedCalls())
    world.finish()


def test_the_address_cap_drops_the_oldest_and_lets_a_worker_in(world):
    swissnum = world.add("w1")
    world.start()
    accepted = [world.accepted(swissnum)[0] for _ in range(3)]  # accepted ones do not count
    waiting = [world.connect() for _ in range(MAX_UNAUTHENTICATED_PER_ADDRESS)]
    elsewhere = link_from(world, "192.0.2.9")
    assert all(link.connected for link in accepted + waiting + [elsewhere])
    worker, ref = world.accepted(swissnum)  # one more from the same address: a worker gets in
    assert world.call(ref, "get_worker_config")["name"] == "w1"
    assert not waiting[0].connected and waiting[0].server.transport.aborted
    assert all(link.connected for link in [*accepted, *waiting[1:], elsewhere, worker])
    extra = [world.connect() for _ in range(3)]  # 7 + 3 waiting: the two oldest go
    world.advance(0)
    assert [link.connected for link in waiting[1:4]] == [False, False, True]
    assert all(link.connected for link in [*waiting[3:], *extra, elsewhere])
    assert world.service.guard.unauthenticated("127.0.0.1") == MAX_UNAUTHENTICATED_PER_ADDRESS
    world.finish()


def test_refusals_are_logged_once_then_summarized(world):
    world.start()
    for _ in range(5):
        lookup(world, world.connect(), "f" * 32)
        world.advance(1.0)
    world.connect()
    world.advance(AUTH_TIMEOUT)  # a connection that never looks anything up
    (first,) = world.logged("refused connection from {peer}")
    assert first["why"] == "unknown secret"
    assert world.logged("refused or dropped") == []
    world.advance(SUMMARY_INTERVAL)
    (summary,) = world.logged("refused or dropped")
    assert (summary["address"], summary["total"]) == ("127.0.0.1", 5)
    assert summary["counts"] == "no accepted secret in time x1, unknown secret x4"
    lookup(world, world.connect(), "f" * 32)
    world.advance(MAX_FAILURE_DELAY)  # answered (in steps: one clock jump would reorder timers)
    world.advance(SUMMARY_INTERVAL / 2)
    assert len(world.logged("refused or dropped")) == 1  # one line per interval at most ...
    resolve(world.clock, world.service.stopService())  # ... but all is logged when the master stops
    lines = world.logged("refused or dropped")
    assert (len(lines), lines[-1]["total"], lines[-1]["counts"]) == (2, 1, "unknown secret x1")
    world.finish()


def test_summaries_name_the_worker_of_a_known_secret(world):
    revoked = world.add("w2")
    world.cli("revoke", "w2")
    world.start()
    answers = []
    for _ in range(3):
        answers.append(lookup(world, world.connect(), revoked))
        world.advance(MAX_FAILURE_DELAY)
    assert [reason_of(a) for (a,) in answers] == [gate.REVOKED] * 3
    world.advance(SUMMARY_INTERVAL)
    (summary,) = world.logged("refused or dropped")
    assert summary["counts"] == "worker 'w2': worker revoked x2"
    assert revoked not in json.dumps([str(e) for e in world.events])  # never the secret
    world.finish()


def test_open_files_near_the_limit_are_warned_about_once(world, monkeypatch):
    world.start()
    count = [100]
    monkeypatch.setattr(service_module, "open_files", lambda: (count[0], 1024, -1))
    world.advance(1.0)
    count[0] = 900
    for _ in range(3):
        world.advance(1.0)
    (warning,) = world.logged("open files, near the limit")
    assert (warning["count"], warning["limit"]) == (900, 1024)
    count[0] = 100
    world.advance(1.0)
    count[0] = 1000
    world.advance(1.0)
    assert len(world.logged("open files, near the limit")) == 2  # again after it went down
    world.finish()
