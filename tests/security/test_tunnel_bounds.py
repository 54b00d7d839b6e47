"""What an enrolled worker's tunnel may cost the master, over a real Foolscap connection.

The bounds themselves are tested deterministically in tests/tunnel/test_master_side.py
and tests/master/test_sessions_memory.py; here a real worker connection on 127.0.0.1
pushes past the stream cap and a plain listening socket stands in for Buildbot's PB
port, so what is counted is real TCP connections and real file descriptors.
"""

from __future__ import annotations

import os
import time
import tomllib
from datetime import UTC, datetime

import pytest
import pytest_twisted
from foolscap.api import Tub
from twisted.internet import protocol, reactor, task

from bbenroll.endpoints import listen_port
from bbenroll.master.service import EnrollmentService
from bbenroll.tunnel.frames import Reset
from bbenroll.tunnel.master_side import MAX_STREAMS_PER_SESSION
from tests.helpers.cli import run_cli
from tests.helpers.master import Receiver

# process_wide: they count /proc/self/fd, so they run before any background scenario
pytestmark = [pytest.mark.network, pytest.mark.process_wide]

OPENS = 200


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def until(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    """Let the reactor run until ``predicate()`` holds (fails the test after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await task.deferLater(reactor, 0.02, lambda: None)


class PBPort(protocol.Factory):
    """Buildbot's PB port, reduced to counting the connections it accepts."""

    def __init__(self) -> None:
        self.accepted: list[protocol.Protocol] = []
        self.open = 0

    def buildProtocol(self, addr):
        factory = self

        class Counted(protocol.Protocol):
            def connectionMade(self):
                factory.accepted.append(self)
                factory.open += 1

            def connectionLost(self, reason=None):
                factory.open -= 1

        return Counted()


@pytest_twisted.ensureDeferred
async def test_opens_past_the_cap_never_reach_the_pb_port_and_fds_come_back(served_reg_path):
    def cli(*args: str) -> str:
        result = run_cli(["--registry", str(served_reg_path), *args], clock=lambda: datetime.now(UTC))
        assert result.code == 0, result.err
        return result.out.strip()

    furl = cli("add", "w1")
    pb = PBPort()
    pb_endpoint = tomllib.loads(served_reg_path.read_text())["master"]["pb"]
    listening = reactor.listenTCP(listen_port(pb_endpoint), pb, interface="127.0.0.1")
    service = EnrollmentService(served_reg_path, reactor=reactor, clock=reactor, poll_interval=0.1)
    service.startService()
    await service.when_listening()
    tub = Tub()
    try:
        baseline = open_fds()
        tub.setOption("expose-remote-exception-types", False)
        tub.startService()
        ref = await tub.getReference(furl)
        receiver = Receiver()
        answer = await ref.callRemote(
            "open_session", session="hostile", receiver=receiver, received={}, resume=False, deadline=600
        )
        assert answer["status"] == "new"
        for stream in range(1, OPENS + 1):
            ref.callRemoteOnly("frame_open", stream)

        await ref.callRemote("get_worker_config")  # answered after every open was handled
        await until(lambda: len(pb.accepted) >= MAX_STREAMS_PER_SESSION, what="the PB connections")
        await task.deferLater(reactor, 0.3, lambda: None)  # time for any further connection to arrive
        assert len(pb.accepted) == MAX_STREAMS_PER_SESSION  # not one per frame_open
        resets = [f.stream for f in receiver.frames if isinstance(f, Reset)]
        assert resets == list(range(MAX_STREAMS_PER_SESSION + 1, OPENS + 1))
        assert open_fds() > baseline

        cli("revoke", "w1")  # the session ends: its PB connections and the worker's with it
        await until(lambda: pb.open == 0, what="the PB connections to close")
        await tub.stopService()
        await until(lambda: open_fds() == baseline, what=f"fds back to {baseline}")
    finally:
        if tub.running:
            await tub.stopService()
        if service.running:
            await service.stopService()
        await listening.stopListening()
