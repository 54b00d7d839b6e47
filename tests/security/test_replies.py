"""What clients and logs see of bad calls (findings 7 and 4 of the hardening issue).

A call that breaks the schema is told why, and nothing of the master: Foolscap's
own reply names the master's object (``obj=<bbenroll.master.service.
EnrolledWorker object at 0x7f...>``) and often the repr of what broke the rule.
A hostile client here is a RemoteReference whose interface is forgotten, so
Foolscap sends whatever it is given, unchecked. The in-memory tests run on the
World of tests/helpers/master.py (one clock, nothing left scheduled); one test
makes a bad call over real TLS on 127.0.0.1. Wrong PB passwords through a
tunnel (each a traceback in Buildbot's log) are bounded by the master side's
cool-down, tested on a task.Clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import pytest_twisted
from foolscap.api import Referenceable
from twisted.internet import defer, reactor, task
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher

from bbenroll.master import gate
from bbenroll.master.replies import INTERNAL_ERROR
from bbenroll.master.service import EnrollmentService
from bbenroll.tunnel.frames import Ack, Close, Open, Ping
from bbenroll.tunnel.master_side import (
    LOGIN_COOL_DOWN,
    MAX_SHORT_LEGS,
    SHORT_LEG,
    MasterSession,
    master_settings,
)
from bbenroll.tunnel.wire import MAX_PAYLOAD, REFUSED_TYPE_NAMES, start_client_tub
from tests.helpers.cli import run_cli
from tests.helpers.foolscap import eventual_queue_on, resolve
from tests.helpers.master import Receiver, World

# what must never reach a client: addresses, object reprs, our module paths
LEAKS = ("0x", "object at", "bbenroll.master", "bbenroll.tunnel", "bbenroll.service")


@contextmanager
def world_on(reg_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """tests/master's ``world`` fixture, which tests/security has no conftest for."""
    w = World(reg_path)
    eventual_queue_on(w.clock, monkeypatch)
    try:
        yield w
        w.finish()
    finally:
        globalLogPublisher.removeObserver(w.events.append)  # a no-op after finish()
        if w.service is not None and w.service.running:  # failed half-way
            resolve(w.clock, w.service.stopService())


def hostile(ref: Any) -> Any:
    """``ref``, sending any method and arguments unchecked (as a hostile client can)."""
    ref.tracker.interface = None
    return ref


def reply_to(world: World, ref: Any, method: str, *args: Any, **kwargs: Any) -> str:
    """The text the master answers a bad call with; checks nothing else of ours is in the reply."""
    with pytest.raises(Exception) as info:  # RemoteException around the CopiedFailure
        world.call(ref, method, *args, **kwargs)
    copied = info.value.failure
    text = str(copied.value)
    for part in (text, copied.getTraceback(), *copied.parents):
        assert not any(leak in part for leak in LEAKS), part
    assert "<" not in text  # no repr of any kind
    assert copied.check("foolscap.tokens.Violation")
    return text


BAD_CALLS = [
    pytest.param(("frame_data", "one", 0, b"x"), "frame_data(): argument 'stream' must be a 32-bit integer",
                 id="wrong-type"),
    pytest.param(("frame_data", 1, 0, b"x" * (MAX_PAYLOAD + 1)),
                 f"frame_data(): argument 'payload' must be bytes of at most {MAX_PAYLOAD}",
                 id="bytes-too-long"),
    pytest.param(("frame_ack", 1, 2**64),
                 "frame_ack(): argument 'offset' must be an integer of at most 8 bytes",
                 id="number-too-large"),
    pytest.param(("open_session", "s" * 65, Receiver(), {}, False, 10),
                 "open_session(): argument 'session' must be text of at most 64 characters",
                 id="text-too-long"),
    pytest.param(("open_session", "s", 5, {}, False, 10),
                 "open_session(): argument 'receiver' must be a reference to a RITunnelPeer.bbenroll.v1",
                 id="not-a-reference"),
    pytest.param(("no_such_method",), "bad call: no such method in RIEnrolledWorker.bbenroll.v1",
                 id="unknown-method"),
    pytest.param(("frame_open", 1, 2), "frame_open(): takes 1 arguments", id="too-many-arguments"),
    pytest.param(("frame_open",), "frame_open(): argument 'stream' is missing", id="missing-argument"),
]


@pytest.mark.parametrize(("call", "reason"), BAD_CALLS)
def test_a_bad_call_is_told_which_argument_broke_which_rule(reg_path, monkeypatch, call, reason):
    with world_on(reg_path, monkeypatch) as world:
        swissnum = world.add("w1")
        world.start()
        _, ref = world.accepted(swissnum)
        assert reason in reply_to(world, hostile(ref), *call)
        assert world.call(ref, "get_worker_config")["name"] == "w1"  # the connection stays usable


def test_too_many_keys_and_a_non_tunnel_reference_are_told_without_reprs(reg_path, monkeypatch):
    with world_on(reg_path, monkeypatch) as world:
        swissnum = world.add("w1")
        world.start()
        _, ref = world.accepted(swissnum)
        ref = hostile(ref)
        text = reply_to(world, ref, "open_session", "s", Receiver(), {i: 0 for i in range(4097)}, False, 10)
        assert "argument 'received' must be a dict of at most 4096 keys" in text
        # Foolscap's own text here is "'<RemoteReference at 0x...>' does not provide ..."
        text = reply_to(world, ref, "open_session", "s", Referenceable(), {}, False, 10)
        assert "argument 'receiver' must be a reference to a RITunnelPeer.bbenroll.v1" in text


def test_the_object_a_furl_resolves_to_names_its_worker_without_an_address(reg_path, monkeypatch):
    with world_on(reg_path, monkeypatch) as world:
        swissnum = world.add("w1")
        world.start()
        link, _ = world.accepted(swissnum)
        (obj,) = world.service.connections.values()
        assert repr(obj) == f"<EnrolledWorker 'w1' from {link.peer}>"


@pytest.mark.network
@pytest_twisted.ensureDeferred
async def test_a_bad_call_over_tls_shows_no_repr(served_reg_path):
    result = run_cli(["--registry", str(served_reg_path), "add", "w1"])
    assert result.code == 0, result.err
    service = EnrollmentService(served_reg_path, reactor=reactor)
    client = start_client_tub()
    service.startService()
    try:
        await service.when_listening()
        ref = hostile(await client.getReference(result.out.strip()))
        with pytest.raises(Exception) as info:
            await ref.callRemote("frame_data", "one", 0, b"x")
        text = str(info.value.failure.value)
        assert "frame_data(): argument 'stream' must be a 32-bit integer" in text
        assert not any(leak in text for leak in ("0x", "object at", "bbenroll.master"))
    finally:
        await client.stopService()
        await service.stopService()


# -- wrong PB passwords through a tunnel ------------------------------------------------


class RecordingPeer:
    """The worker's end of the link: the frames the master sends it, by method."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []

    def callRemoteOnly(self, method: str, *args: Any) -> None:
        self.sent.append((method, *args))


GREETING = b"pb"  # what LoopbackPB's server says first


class LoopbackPB:
    """Buildbot's PB port as the master's legs meet it: each connect gets a StringTransport."""

    def __init__(self) -> None:
        self.connections: list[StringTransport] = []

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        leg = factory.buildProtocol(None)
        self.connections.append(StringTransport())
        leg.makeConnection(self.connections[-1])
        leg.dataReceived(GREETING)  # a PB server speaks first (a silent leg is reset after 10 s)
        return defer.succeed(leg)


def test_failed_logins_in_a_row_reset_the_sessions_next_streams_for_a_while():
    """Each refused PB login costs Buildbot's log a traceback: a session whose PB
    connections keep ending at once gets its new streams reset for a cool-down."""
    clock = task.Clock()
    pb = LoopbackPB()
    session = MasterSession(worker="w1", session_id="s1", pb_endpoint=pb, clock=clock,
                            settings=master_settings(30.0), on_expired=lambda s: None,
                            on_link_dead=lambda s: None)
    peer = RecordingPeer()
    session.attach(peer, {})
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        def attempt(stream: int, lasts: float) -> bool:
            """Open ``stream``; if it reaches the PB port, Buildbot ends it after ``lasts`` s."""
            before = len(pb.connections)
            session.receive(Open(stream))
            if len(pb.connections) == before:
                return False
            clock.advance(lasts)
            session.receive(Ping())
            session.legs[stream].connectionLost(None)  # Buildbot (or the worker) closed it
            session.receive(Close(stream, 0))  # the worker's end closes in turn,
            session.receive(Ack(stream, len(GREETING) + 1))  # and acknowledges the greeting and the close
            return True

        def wait(seconds: float) -> None:
            """Let time pass on a live link (the worker pings every second)."""
            for _ in range(int(seconds)):
                clock.advance(1)
                session.receive(Ping())

        assert attempt(1, SHORT_LEG)  # a connection that lasted is no failed login
        assert all(attempt(stream, 0.5) for stream in range(2, 2 + MAX_SHORT_LEGS))
        warned = [e for e in events if "failed logins" in e.get("log_format", "")]
        assert len(warned) == 1 and warned[0]["worker"] == "w1"
        # now the next streams never reach the PB port, and are not logged one by one
        assert not attempt(10, 0.5) and not attempt(11, 0.5)
        assert ("frame_reset", 10) in peer.sent and ("frame_reset", 11) in peer.sent
        assert len([e for e in events if "failed logins" in e.get("log_format", "")]) == 1
        wait(LOGIN_COOL_DOWN)
        assert attempt(12, 0.5)  # one more try after the cool-down; still failing: cool down again
        assert not attempt(13, 0.5)
        wait(LOGIN_COOL_DOWN)
        assert attempt(14, SHORT_LEG)  # a connection that lasted: the count starts over
        assert attempt(15, 0.5) and attempt(16, 0.5)
        assert session.link_up
    finally:
        globalLogPublisher.removeObserver(events.append)
    session.terminate("test over")
    assert clock.getDelayedCalls() == []


class Leaky(Exception):
    """An error of ours whose text holds a repr (as a KeyError of an object would)."""


def test_an_internal_error_is_logged_on_the_master_and_told_as_one_line(reg_path, monkeypatch):
    with world_on(reg_path, monkeypatch) as world:
        swissnum = world.add("w1")
        world.start()
        _, ref = world.accepted(swissnum)

        def broken(*args: Any) -> Any:  # a bug in a remote method, standing in for any
            raise Leaky(f"no session for {world.service!r}")

        monkeypatch.setattr(world.service.sessions, "open", broken)
        with pytest.raises(Exception) as info:
            world.call(ref, "open_session", "s", Receiver(), {}, False, 10)
        copied = info.value.failure
        assert str(copied.value) == INTERNAL_ERROR
        assert not any(leak in part for part in (*copied.parents, copied.getTraceback()) for leak in LEAKS)
        (logged,) = world.logged("internal error in a worker's call")
        assert logged["method"] == "open_session" and logged["log_failure"].check(Leaky)
        # a refusal (a lookup is a call too) keeps its type and reason: the worker decides on them
        with pytest.raises(Exception) as info:
            world.connect().reference("a" * 32)
        refusal = info.value.failure
        assert refusal.check(*REFUSED_TYPE_NAMES) and str(refusal.value) == gate.UNKNOWN
