"""The master's Foolscap service with real connections on 127.0.0.1.

Only what needs real sockets and TLS is here; the service's logic (refusals,
revocation, grace, reloads, sessions) is tested deterministically in
test_service_memory.py and test_sessions_memory.py.
"""

from __future__ import annotations

import socket
import time
import tomllib
from datetime import UTC, datetime

import pytest
import pytest_twisted
from foolscap.api import Tub
from twisted.internet import defer, reactor
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from bbenroll.master import gate
from bbenroll.master.service import EnrollmentService
from bbenroll.master.status import status_path
from bbenroll.master.tub import KEEPALIVE, ListenError
from bbenroll.registry import store
from tests.helpers.cli import run_cli
from tests.helpers.net import free_port

pytestmark = pytest.mark.network


class Master:
    """An EnrollmentService on a real reactor, plus the CLI bound to its registry."""

    def __init__(self, path, clock=None):
        self.path = path
        self.service = EnrollmentService(path, reactor=reactor, clock=clock or reactor, poll_interval=0.1)
        self.clients: list[Tub] = []

    def cli(self, *args, clock=None):
        result = run_cli(["--registry", str(self.path), *args], clock=clock or (lambda: datetime.now(UTC)))
        assert result.code == 0, result.err
        return result.out.strip()

    def client(self) -> Tub:
        tub = Tub()
        tub.setOption("expose-remote-exception-types", False)
        tub.startService()
        self.clients.append(tub)
        return tub

    async def connect(self, furl):
        try:
            return await self.client().getReference(furl)
        except Exception as e:
            copied = getattr(e, "failure", None)
            raise AssertionError(f"refused: {copied.value if copied else e!r}") from None

    async def refusal(self, furl) -> str:
        """The reason a connection is refused (fails the test if it is accepted)."""
        try:
            await self.client().getReference(furl)
        except Exception as e:  # RemoteException wrapping the server's CopiedFailure
            copied = getattr(e, "failure", None)
            assert copied is not None, repr(e)
            trace = copied.getTraceback()
            assert "Traceback unavailable" in trace and "File " not in trace
            return str(copied.value)
        raise AssertionError("connection was accepted")

    async def stop(self):
        for tub in self.clients:
            await tub.stopService()
        if self.service.running:
            await self.service.stopService()


@pytest_twisted.ensureDeferred
async def test_valid_furl_gets_worker_config(master):
    furl = master.cli("add", "worker1")
    master.service.startService()
    ref = await master.connect(furl)
    config = await ref.callRemote("get_worker_config")
    entry = tomllib.loads(master.path.read_text())["workers"]["worker1"]
    assert config == {"name": "worker1", "password": entry["password"], "protocol": 1, "keepalive": KEEPALIVE}


@pytest_twisted.ensureDeferred
async def test_a_refusal_reaches_the_client_without_a_traceback(master):
    good = master.cli("add", "good")
    master.service.startService()
    assert await master.refusal(good.rsplit("/", 1)[0] + "/" + "a" * 32) == gate.UNKNOWN
    ref = await master.connect(good)
    assert (await ref.callRemote("get_worker_config"))["name"] == "good"


@pytest_twisted.ensureDeferred
async def test_client_refuses_master_with_other_identity(master, tmp_path):
    furl = master.cli("add", "w1")
    # an impostor: same host:port, another key, claiming the same worker secret
    other = tmp_path / "impostor"
    other.mkdir()
    listen = tomllib.loads(master.path.read_text())["master"]["listen"]
    location = tomllib.loads(master.path.read_text())["master"]["location"]
    store.create(
        other / "workers.toml",
        location=location,
        listen=listen,
        pb="tcp:1:interface=127.0.0.1",
        identity="m.pem",
    )
    workers_part = "\n[workers." + master.path.read_text().split("\n[workers.", 1)[1]
    (other / "workers.toml").write_text((other / "workers.toml").read_text() + workers_part)
    impostor = Master(other / "workers.toml")
    impostor.service.startService()
    try:
        with pytest.raises(Exception) as info:
            await master.connect(furl)
        assert "TubID" in str(info.value) or "wrong Tub" in str(info.value) or "banana" in str(info.value)
    finally:
        await impostor.stop()


@pytest_twisted.ensureDeferred
async def test_revoking_a_connected_worker_drops_it(master):
    """Over real TLS: the next poll drops the connection (the poll itself is tested in
    test_service_memory.py with a task clock)."""
    furl = master.cli("add", "w1")
    master.service.startService()
    ref = await master.connect(furl)
    dropped = defer.Deferred()
    ref.notifyOnDisconnect(dropped.callback, None)
    master.cli("revoke", "w1")
    await dropped.addTimeout(5, reactor)
    assert await master.refusal(furl) == gate.REVOKED


@pytest_twisted.ensureDeferred
async def test_oversized_preauth_input_is_dropped(master):
    master.cli("add", "w1")
    master.service.startService()
    port = int(tomllib.loads(master.path.read_text())["master"]["listen"].split(":")[1])
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.internet.protocol import Protocol

    closed = defer.Deferred()

    class Flood(Protocol):
        def connectionMade(self):
            self.transport.write(b"GET /id/" + b"x" * 8000 + b" HTTP/1.1\r\n")

        def connectionLost(self, reason):
            closed.callback(None)

    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Flood())
    timeout = reactor.callLater(5, closed.cancel)
    await closed
    timeout.cancel()


def test_free_port_helper_gives_distinct_ports():
    assert len({free_port() for _ in range(5)}) >= 4


@pytest_twisted.ensureDeferred
async def test_huge_name_before_authentication_is_dropped_unread(master):
    """After TLS but before any secret is accepted, a peer may not make us buffer much."""
    furl = master.cli("add", "w1")
    master.service.startService()
    looked_up = []
    real_lookup = master.service.lookup
    master.service.lookup = lambda name, broker: looked_up.append(len(name)) or real_lookup(name, broker)
    huge = furl.rsplit("/", 1)[0] + "/" + "a" * (4 * 1024 * 1024)
    started = time.monotonic()
    with pytest.raises(Exception) as info:
        await master.client().getReference(huge)
    assert time.monotonic() - started < 5
    assert looked_up == []  # the name never reached the lookup
    assert "lost" in str(info.value).lower() or "closed" in str(info.value).lower(), info.value


@pytest_twisted.ensureDeferred
async def test_a_taken_port_is_one_clear_error(served_reg_path):
    listen = tomllib.loads(served_reg_path.read_text())["master"]["listen"]
    port = int(listen.split(":")[1])
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", port))
            taken.listen()
            service = EnrollmentService(served_reg_path, reactor=reactor)
            with pytest.raises(ListenError) as info:
                service.startService()
                await service.when_listening()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert info.value.endpoint == listen
    assert str(info.value) == f"cannot listen on {listen}: Address already in use"
    errors = [e for e in events if e.get("log_level") == LogLevel.error or e.get("isError")]
    expected = f"bbenroll: cannot listen on {listen}: Address already in use"
    assert [formatEvent(e) for e in errors] == [expected]
    assert not any("serving" in str(e.get("log_format")) for e in events)
    assert not service.running and not status_path(served_reg_path).exists()
