"""Findings 1 and 4 of the hardening issue, over real sockets on 127.0.0.1: peers
without a secret cannot hold the master's file descriptors, and cannot guess fast.

The master runs in this process (an EnrollmentService on the real reactor), so
``/proc/self/fd`` counts its descriptors plus the test's own client sockets,
which the tests account for. The timeouts are shortened through the policy's
attributes to keep each test short; their defaults are checked in
tests/master/test_guard.py.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_twisted
from foolscap.api import Tub
from foolscap.referenceable import SturdyRef
from twisted.internet import defer, reactor, task

from bbenroll.master import gate
from bbenroll.master.guard import (
    AUTH_TIMEOUT,
    MAX_SILENT_PER_ADDRESS,
    MAX_UNAUTHENTICATED_PER_ADDRESS,
    OVER_CAP,
)
from bbenroll.master.service import EnrollmentService
from bbenroll.tunnel.wire import start_client_tub
from tests.helpers.cli import run_cli

# process_wide: they count /proc/self/fd, so they run before any background scenario
pytestmark = [pytest.mark.network, pytest.mark.process_wide]

TIMEOUT = 1.0  # the shortened negotiation and authentication timeouts of these tests


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def until(condition: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await sleep(0.05)


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:  # reset: the master aborted it
        return True


class Served:
    """A real EnrollmentService with short timeouts, and the client Tubs made for it."""

    def __init__(self, path) -> None:
        self.path = path
        self.service = EnrollmentService(path, reactor=reactor, poll_interval=0.1)
        self.clients: list[Tub] = []

    def add(self, name: str) -> str:
        result = run_cli(["--registry", str(self.path), "add", name], clock=lambda: datetime.now(UTC))
        assert result.code == 0, result.err
        return result.out.strip()

    async def start(self, timeout: float = TIMEOUT) -> None:
        self.service.startService()
        await self.service.when_listening()
        keeper = self.service.tub.doorkeeper
        keeper.negotiation_timeout = keeper.auth_timeout = keeper.silent_timeout = timeout

    @property
    def port(self) -> int:
        return self.service.port.getHost().port

    def waiting(self) -> int:
        return self.service.tub.doorkeeper.waiting()

    def client(self) -> Tub:
        """A Tub as the worker's (its options), stopped with the master."""
        self.clients.append(start_client_tub())
        return self.clients[-1]

    async def broker(self, furl: str) -> Any:
        """A TLS-negotiated Foolscap connection to the master that looks nothing up."""
        return await self.client().getBrokerForTubRef(SturdyRef(furl).getTubRef())


@pytest_twisted.async_yield_fixture
async def served(served_reg_path):
    """A Served master; afterwards its client Tubs and the service are stopped."""
    s = Served(served_reg_path)
    yield s
    await defer.gatherResults([tub.stopService() for tub in s.clients])
    if s.service.running:
        await s.service.stopService()


@pytest_twisted.ensureDeferred
async def test_silent_tcp_connections_are_capped_and_timed_out(served):
    """100 raw TCP connections that never say anything (stuck before Foolscap's negotiation)."""
    await served.start()
    count, cap = 100, MAX_SILENT_PER_ADDRESS
    before = open_fds()
    socks = []
    try:
        for n in range(count):
            sock = socket.create_connection(("127.0.0.1", served.port))
            sock.setblocking(False)
            socks.append(sock)
            if n % 20 == 19:  # let the master accept them: the listen backlog holds 50
                await sleep(0.05)
        await until(lambda: served.waiting() == cap
                    and sum(map(closed_by_peer, socks)) >= count - cap, within=3)
        # Foolscap's own 120 s negotiation timer (on the global reactor) is not used
        assert not [c for c in reactor.getDelayedCalls() if "negotiationTimedOut" in repr(c.func)]
        # the master holds at most the silent cap: ours are 100, its own at most 64 (+1 for slack)
        assert open_fds() <= before + count + cap + 1
        started = time.monotonic()
        await until(lambda: served.waiting() == 0, within=TIMEOUT + 2)
        assert time.monotonic() - started <= TIMEOUT + 1
        await until(lambda: open_fds() <= before + count, within=2)  # only our own remain
        assert all(closed_by_peer(sock) for sock in socks)
    finally:
        for sock in socks:
            sock.close()
    assert open_fds() <= before


@pytest_twisted.ensureDeferred
async def test_tls_connections_without_a_lookup_are_capped_and_timed_out(served):
    furl = served.add("w1")
    await served.start()
    before = open_fds()
    brokers, aborted = [], []
    for _ in range(20):
        try:
            brokers.append(await served.broker(furl))
        except Exception as e:  # the master aborted it before the client's negotiation was done
            aborted.append(e)
    assert len(brokers) + len(aborted) == 20 and len(brokers) >= MAX_UNAUTHENTICATED_PER_ADDRESS
    assert served.waiting() <= MAX_UNAUTHENTICATED_PER_ADDRESS
    await until(lambda: sum(not b.disconnected for b in brokers) <= MAX_UNAUTHENTICATED_PER_ADDRESS, within=2)
    # meanwhile, a worker from the same address still gets in at once
    started = time.monotonic()
    ref = await served.client().getReference(furl)
    assert (await ref.callRemote("get_worker_config"))["name"] == "w1"
    assert time.monotonic() - started < 2
    await until(lambda: all(b.disconnected for b in brokers), within=TIMEOUT + 2)
    assert served.waiting() == 0 and not ref.tracker.broker.disconnected  # the worker stays
    # left: the worker's connection, both ends (the client Tubs have no listeners)
    await until(lambda: open_fds() <= before + 2, within=2)


@pytest_twisted.ensureDeferred
async def test_a_silent_flood_from_the_workers_address_does_not_push_its_enrollment_out(served):
    """Silent TCP connections opened as fast as the loop allows, from the worker's own
    address, while it enrolls 20 times. With the oldest dropped whatever its progress,
    about a third of the enrollments failed (docs/performance.md)."""
    furl = served.add("w1")
    await served.start(timeout=5.0)
    socks: list[socket.socket] = []

    def flood() -> None:
        for _ in range(4):
            sock = socket.socket()
            sock.setblocking(False)
            try:
                sock.connect(("127.0.0.1", served.port))
            except BlockingIOError:
                pass
            socks.append(sock)
        while len(socks) > 64:  # keep our own descriptors bounded
            socks.pop(0).close()

    over_cap = []
    count_drop = served.service.guard.dropped
    served.service.guard.dropped = lambda address, reason, now: (
        over_cap.append(reason) if reason == OVER_CAP else None, count_drop(address, reason, now))
    flooding = task.LoopingCall(flood)
    flooding.start(0.001)
    outcomes = []
    try:
        for _ in range(20):
            tub = start_client_tub()  # a fresh connection each time, like a new worker process
            try:
                ref = await tub.getReference(furl)
                outcomes.append((await ref.callRemote("get_worker_config"))["name"])
            except Exception as e:
                outcomes.append(type(e).__name__)
            finally:
                await tub.stopService()
    finally:
        flooding.stop()
        for sock in socks:
            sock.close()
    assert outcomes == ["w1"] * 20, outcomes
    assert len(over_cap) > 100  # the flood really pressed on the cap


@pytest_twisted.ensureDeferred
async def test_a_refusal_is_told_then_the_connection_ends(served):
    furl = served.add("w1")
    await served.start()
    wrong = furl.rsplit("/", 1)[0] + "/" + "a" * 32
    broker = await served.broker(furl)
    answers: list[Any] = []
    for _ in range(30):  # 30 guesses at once on one connection
        broker.getYourReferenceByName("a" * 32).addBoth(answers.append)
    await until(lambda: len(answers) == 30 and broker.disconnected, within=3)
    told = [str(a.value.failure.value) for a in answers if hasattr(a.value, "failure")]
    assert told.count(gate.UNKNOWN) == 1  # one guess was looked up and answered, then it closed
    assert served.waiting() == 0
    # a plain client also gets the reason, and its connection is closed
    client = served.client()
    with pytest.raises(Exception) as info:
        await client.getReference(wrong)
    assert str(info.value.failure.value) == gate.UNKNOWN
    await until(lambda: client.brokers == {}, within=2)


@pytest_twisted.ensureDeferred
async def test_guesses_get_slower_answers_but_a_good_secret_does_not(served):
    furl = served.add("w1")
    await served.start(timeout=AUTH_TIMEOUT)  # a slow answer must come before the deadline
    guard = served.service.guard
    guard.first_failure_delay, guard.max_failure_delay = 0.1, 1.0
    wrong = furl.rsplit("/", 1)[0] + "/" + "b" * 32
    started = time.monotonic()
    for _ in range(6):  # answered after 0, 0.1, 0.2, 0.4, 0.8, 1.0 s
        with pytest.raises(Exception) as info:
            await served.client().getReference(wrong)
        assert str(info.value.failure.value) == gate.UNKNOWN
    assert time.monotonic() - started >= 2.5
    assert guard.delay_for("127.0.0.1") == 1.0
    started = time.monotonic()
    ref = await served.client().getReference(furl)  # same address: not delayed
    assert (await ref.callRemote("get_worker_config"))["name"] == "w1"
    assert time.monotonic() - started < 1.0
