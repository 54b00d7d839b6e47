"""The master's Foolscap service with real connections on 127.0.0.1."""

from __future__ import annotations

import json
import time
import tomllib
from datetime import UTC, datetime, timedelta

import pytest
import pytest_twisted
from foolscap.api import Tub
from twisted.internet import defer, reactor, task
from twisted.logger import globalLogPublisher

from bbenroll.master import gate
from bbenroll.master.service import EnrollmentService
from bbenroll.master.status import status_path
from bbenroll.registry import store
from tests.helpers.cli import run_cli
from tests.helpers.net import free_port

pytestmark = pytest.mark.network


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


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


@pytest.fixture
def master(served_reg_path):
    m = Master(served_reg_path)
    yield m
    pytest_twisted.blockon(defer.ensureDeferred(m.stop()))


@pytest_twisted.ensureDeferred
async def test_valid_furl_gets_worker_config(master):
    furl = master.cli("add", "worker1")
    master.service.startService()
    ref = await master.connect(furl)
    config = await ref.callRemote("get_worker_config")
    entry = tomllib.loads(master.path.read_text())["workers"]["worker1"]
    assert config == {"name": "worker1", "password": entry["password"], "protocol": 1, "keepalive": 15}


@pytest_twisted.ensureDeferred
async def test_refusals_are_distinguishable(master):
    good = master.cli("add", "good")
    revoked = master.cli("add", "revoked")
    master.cli("revoke", "revoked")
    expired = master.cli("add", "expired", "--expires", "2h")
    old = master.cli("add", "rotated")
    master.cli("rotate", "rotated", "--grace", "1h")
    unknown = good.rsplit("/", 1)[0] + "/" + "a" * 32
    # move the service's clock three hours ahead: expiry and grace have passed
    clock = task.Clock()
    clock.advance(time.time() + 3 * 3600)
    master.service = EnrollmentService(master.path, reactor=reactor, clock=clock)
    master.service.startService()
    assert await master.refusal(unknown) == gate.UNKNOWN
    assert await master.refusal(revoked) == gate.REVOKED
    assert await master.refusal(expired) == gate.EXPIRED
    assert await master.refusal(old) == gate.RETIRED
    assert await master.refusal(good.rsplit("/", 1)[0] + "/" + "x" * 5000) == gate.UNKNOWN
    ref = await master.connect(good)
    assert (await ref.callRemote("get_worker_config"))["name"] == "good"


@pytest_twisted.ensureDeferred
async def test_previous_secret_works_during_grace(master):
    old = master.cli("add", "w1")
    new = master.cli("rotate", "w1", "--grace", "1h")
    master.service.startService()
    for furl in (old, new):
        ref = await master.connect(furl)
        assert (await ref.callRemote("get_worker_config"))["name"] == "w1"


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
async def test_revoking_a_connected_worker_drops_it_within_2s(master):
    furl = master.cli("add", "w1")
    master.cli("add", "bystander")
    master.service.startService()
    ref = await master.connect(furl)
    dropped = defer.Deferred()
    ref.notifyOnDisconnect(lambda: dropped.callback(time.monotonic()))
    start = time.monotonic()
    master.cli("revoke", "w1")
    timeout = reactor.callLater(5, dropped.cancel)
    elapsed = (await dropped) - start
    timeout.cancel()
    assert elapsed < 2.0, elapsed
    assert await master.refusal(furl) == gate.REVOKED


@pytest_twisted.ensureDeferred
async def test_removed_worker_and_ended_grace_are_dropped(master):
    furl = master.cli("add", "w1")
    old = master.cli("add", "w2")
    clock = task.Clock()
    clock.advance(time.time())
    master.service = EnrollmentService(master.path, reactor=reactor, clock=clock, poll_interval=0.1)
    master.service.startService()
    ref1 = await master.connect(furl)
    master.cli("rotate", "w2", "--grace", "1h")
    ref2 = await master.connect(old)  # the old secret still works during the grace
    gone = {}
    ref1.notifyOnDisconnect(lambda: gone.setdefault("w1", True))
    ref2.notifyOnDisconnect(lambda: gone.setdefault("w2", True))
    master.cli("remove", "w1", "--yes")
    clock.advance(0.1)  # the service notices the change
    await sleep(0.2)
    assert gone == {"w1": True}
    clock.advance(3601)  # the grace period ends
    await sleep(0.2)
    assert gone == {"w1": True, "w2": True}


@pytest_twisted.ensureDeferred
async def test_broken_registry_keeps_last_good_one(master):
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        furl = master.cli("add", "w1")
        master.service.startService()
        ref = await master.connect(furl)
        good = master.path.read_text()
        master.path.write_text(good.replace("[workers.w1]", "[workers.w1"))
        await sleep(0.5)
        assert (await ref.callRemote("get_worker_config"))["name"] == "w1"
        assert (await master.connect(furl)) is not None
        errors = [e for e in events if "keeping the last good registry" in str(e.get("log_format", ""))]
        assert len(errors) == 1  # one clear error, not one per poll
        assert "invalid TOML" in errors[0]["error"]
        # fixing the file is picked up again
        master.path.write_text(good)
        master.cli("revoke", "w1")
        await sleep(0.5)
        assert await master.refusal(furl) == gate.REVOKED
    finally:
        globalLogPublisher.removeObserver(events.append)
    text = "".join(str(e.get("log_format", "")) + json.dumps(e, default=str) for e in events)
    swissnum = furl.rsplit("/", 1)[1]
    assert swissnum not in text  # never the secret in the log


@pytest_twisted.ensureDeferred
async def test_status_file_follows_connections(master):
    furl = master.cli("add", "w1")
    master.cli("add", "w2")
    master.service.startService()
    path = status_path(master.path)
    doc = json.loads(path.read_text())
    assert doc["running"] is True and doc["workers"] == {}
    ref = await master.connect(furl)
    doc = json.loads(path.read_text())
    assert doc["workers"]["w1"]["state"] == "connected"
    assert doc["workers"]["w1"]["peer"].startswith("127.0.0.1:")
    result = run_cli(["--registry", str(master.path), "status", "--json"], clock=lambda: datetime.now(UTC))
    assert result.code == 0, result.err
    status = {w["name"]: w for w in json.loads(result.out)["workers"]}
    assert status["w1"]["state"] == "connected" and status["w2"]["state"] == "disconnected"
    dropped = defer.Deferred()
    ref.notifyOnDisconnect(dropped.callback, None)
    ref.tracker.broker.transport.loseConnection()
    await dropped
    await sleep(0.2)
    doc = json.loads(path.read_text())
    assert doc["workers"]["w1"]["state"] == "disconnected"
    await master.service.stopService()
    assert json.loads(path.read_text())["running"] is False
    result = run_cli(["--registry", str(master.path), "status"], clock=lambda: datetime.now(UTC))
    assert result.code == 0
    assert "no master is running" in result.err


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


def test_gate_decisions_are_pure():
    from bbenroll.registry import model

    now = datetime(2026, 11, 29, tzinfo=UTC)
    a = model.new_worker("a", now, expires=now + timedelta(days=1))
    b = model.rotate(model.new_worker("b", now), now, timedelta(hours=1))
    c = model.revoke(model.new_worker("c", now), now)
    reg = model.Registry(master=None, workers={"a": a, "b": b, "c": c})  # type: ignore[arg-type]
    g = gate.Gate(reg)
    assert g.decide(a.swissnum, now) == gate.Decision(True, "current", "a")
    assert g.decide(b.previous.swissnum, now) == gate.Decision(True, "previous", "b")
    assert g.decide(b.previous.swissnum, now + timedelta(hours=1)) == gate.Decision(False, gate.RETIRED, "b")
    assert g.decide(c.swissnum, now) == gate.Decision(False, gate.REVOKED, "c")
    assert g.decide(a.swissnum, now + timedelta(days=1)) == gate.Decision(False, gate.EXPIRED, "a")
    assert g.decide("z" * 32, now) == gate.Decision(False, gate.UNKNOWN)
    assert g.still_allowed("b", a.swissnum, now) == gate.Decision(False, gate.UNKNOWN)
    assert set(g.usable_workers(now)) == {"a", "b"}
    assert set(g.usable_workers(now + timedelta(days=2))) == {"b"}


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
async def test_registry_disappearing_is_logged_once_and_last_good_kept(master):
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        furl = master.cli("add", "w1")
        master.service.startService()
        text = master.path.read_text()
        master.path.unlink()
        await sleep(0.5)
        errors = [e for e in events if "keeping the last good registry" in str(e.get("log_format", ""))]
        assert len(errors) == 1 and "disappeared" in errors[0]["error"]
        ref = await master.connect(furl)
        assert (await ref.callRemote("get_worker_config"))["name"] == "w1"
        master.path.write_text(text)
    finally:
        globalLogPublisher.removeObserver(events.append)
