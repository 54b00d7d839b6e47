"""The master's service, deterministically: in-memory Foolscap links and one task clock."""

from __future__ import annotations

import json
import tomllib

import pytest
from foolscap.api import DeadReferenceError
from twisted.internet import defer

from bbenroll.master import gate
from bbenroll.master.guard import FAILURE_MEMORY
from bbenroll.master.identities import ServedIdentities
from bbenroll.master.reloader import POLL_INTERVAL
from bbenroll.master.service import EnrollmentService
from bbenroll.master.status import BATCH_INTERVAL, status_path
from bbenroll.master.tub import DISCONNECT_TIMEOUT, KEEPALIVE, MAX_SWISSNUM_LENGTH, SHUTDOWN_GRACE
from tests.helpers.foolscap import resolve


def test_lookup_gives_worker_config(world):
    swissnum = world.add("worker1")
    world.start()
    ref = world.connect().reference(swissnum)
    config = world.call(ref, "get_worker_config")
    entry = tomllib.loads(world.path.read_text())["workers"]["worker1"]
    assert config == {"name": "worker1", "password": entry["password"], "protocol": 1, "keepalive": KEEPALIVE}
    world.finish()



def test_a_worker_added_since_the_last_poll_is_found_at_once(world):
    """`bbenroll add` then `worker create` within one poll interval: no 'unknown secret'."""
    world.start()
    swissnum = world.add("newcomer")  # no tick has run since: only the lookup can see it
    assert world.call(world.connect().reference(swissnum), "get_worker_config")["name"] == "newcomer"
    assert world.logged("refused connection from {peer}") == []
    world.finish()


def test_serving_is_logged_once_the_port_is_bound(world):
    world.add("worker1")
    world.start()
    (port, _factory, _backlog, interface) = world.clock.tcpServers[0]
    assert (port, interface) == (9989, "")
    (serving,) = world.logged("bbenroll: serving {count} workers")
    assert serving["count"] == 1 and serving["listen"] == "tcp:9989"
    assert json.loads(status_path(world.path).read_text())["running"] is True
    world.finish()
    assert json.loads(status_path(world.path).read_text())["running"] is False


def test_each_refusal_reason(world):
    good = world.add("good")
    revoked = world.add("revoked")
    world.cli("revoke", "revoked")
    expired = world.add("expired", "--expires", "2h")
    old = world.add("rotated")
    world.cli("rotate", "rotated", "--grace", "1h")
    world.start()
    world.advance(3 * 3600)  # expiry and grace have passed
    refusals = []
    for swissnum in ("a" * 32, revoked, expired, old):
        refusals.append(world.connect().refusal(swissnum))  # a refused lookup ends its connection
        world.advance(FAILURE_MEMORY)  # each one the first in a while: answered and logged at once
    assert refusals[:3] == [gate.UNKNOWN, gate.REVOKED, gate.EXPIRED]
    # a retired secret tells the worker admin when it was rotated and what to do
    rotated_on = json.loads(world.cli("--json", "show", "rotated"))["rotated"]
    assert refusals[3] == f"secret retired by rotation on {rotated_on}; ask the master admin for a new FURL"
    looked_up = []
    real_decide = world.service.gate.decide
    world.service.gate.decide = lambda *a: looked_up.append(a) or real_decide(*a)
    assert world.connect().refusal("x" * (MAX_SWISSNUM_LENGTH + 1)) == gate.UNKNOWN
    assert looked_up == []  # refused by its length alone
    assert world.call(world.connect().reference(good), "get_worker_config")["name"] == "good"
    whys = [e["why"] for e in world.logged("refused connection from {peer}")]
    assert whys[:4] == ["unknown secret", "worker 'revoked': worker revoked",
                        "worker 'expired': worker enrollment expired",
                        "worker 'rotated': secret retired by rotation"]
    assert {e["peer"].split(":")[0] for e in world.logged("refused connection from {peer}")} == {"127.0.0.1"}
    world.finish()


def test_previous_secret_works_during_grace(world):
    old = world.add("w1")
    new = world.cli("rotate", "w1", "--grace", "1h").rsplit("/", 1)[1]
    world.start()
    for swissnum in (old, new):
        assert world.call(world.connect().reference(swissnum), "get_worker_config")["name"] == "w1"
    (accepted_old, accepted_new) = world.logged("accepted worker {worker!r}")
    assert (accepted_old["which"], accepted_new["which"]) == ("previous", "current")
    world.finish()


def test_revoking_a_connected_worker_drops_it_on_the_next_tick(world):
    w1 = world.add("w1")
    bystander = world.add("bystander")
    world.start()
    link, other = world.connect(), world.connect()
    link.reference(w1)
    other.reference(bystander)
    link.server.transport.hold_on_close = True  # a peer that never completes the TLS close
    world.cli("revoke", "w1")
    world.advance(POLL_INTERVAL)
    assert link.server.disconnected and not link.server.transport.aborted
    world.advance(SHUTDOWN_GRACE)  # then the socket is aborted
    assert link.server.transport.aborted and not link.connected
    assert other.connected
    assert world.connect().refusal(w1) == gate.REVOKED
    (dropped,) = world.logged("dropping worker {worker!r}")
    assert (dropped["worker"], dropped["why"]) == ("w1", gate.REVOKED)
    world.finish()


def test_a_peer_that_closes_by_itself_leaves_no_abort_timer(world):
    w1 = world.add("w1")
    world.start()
    link, _ref = world.accepted(w1)
    world.cli("revoke", "w1")
    world.advance(POLL_INTERVAL)  # the kick: the peer completes the close at once
    assert not link.connected and not link.server.transport.aborted
    pending = [getattr(call.func, "__name__", "") for call in world.clock.getDelayedCalls()]
    assert "abort_if_still_open" not in pending  # cancelled when the connection closed
    world.finish()


def test_a_call_after_revocation_drops_the_connection_before_the_tick(world):
    w1 = world.add("w1")
    world.start()
    link, ref = world.accepted(w1)
    world.cli("revoke", "w1")
    world.service._reload()  # the registry changed, the loop has not run yet
    with pytest.raises(DeadReferenceError):  # the master hangs up instead of answering
        world.call(ref, "get_worker_config")
    assert not link.connected
    (dropped,) = world.logged("dropping worker {worker!r}")
    assert dropped["why"] == gate.REVOKED
    world.finish()


def test_removed_worker_and_ended_grace_are_dropped(world):
    w1 = world.add("w1")
    old = world.add("w2")
    world.start()
    first, second = world.connect(), world.connect()
    first.reference(w1)
    world.cli("rotate", "w2", "--grace", "1h")
    world.advance(POLL_INTERVAL)
    second.reference(old)  # the old secret still works during the grace
    world.cli("remove", "w1", "--yes")
    world.advance(POLL_INTERVAL)
    assert (first.connected, second.connected) == (False, True)
    world.advance(3600 - 2 * POLL_INTERVAL - 1)  # the grace ends an hour after the rotation
    assert second.connected
    world.advance(1)
    assert not second.connected
    assert [e["why"] for e in world.logged("dropping worker")] == [gate.UNKNOWN, gate.RETIRED]
    world.finish()


def test_a_broken_registry_is_refused_once_and_the_last_good_one_kept(world):
    w1 = world.add("w1")
    world.start()
    ref = world.connect().reference(w1)
    good = world.path.read_text()
    world.path.write_text(good.replace("[workers.w1]", "[workers.w1"))
    for _ in range(3):
        world.advance(POLL_INTERVAL)
    assert world.call(ref, "get_worker_config")["name"] == "w1"
    world.connect().reference(w1)
    (error,) = world.logged("keeping the last good registry")
    assert "invalid TOML" in error["error"]
    world.path.write_text(good)  # fixing the file is picked up again
    world.cli("revoke", "w1")
    world.advance(POLL_INTERVAL)
    assert world.connect().refusal(w1) == gate.REVOKED
    text = "".join(json.dumps(e, default=str) for e in world.events)
    assert w1 not in text  # never the secret in the log
    world.finish()


def test_a_vanished_registry_is_refused_once(world):
    w1 = world.add("w1")
    world.start()
    text = world.path.read_text()
    world.path.unlink()
    world.advance(POLL_INTERVAL)
    world.advance(POLL_INTERVAL)
    (error,) = world.logged("keeping the last good registry")
    assert "disappeared" in error["error"]
    assert world.call(world.connect().reference(w1), "get_worker_config")["name"] == "w1"
    world.path.write_text(text)
    world.finish()


def test_a_changed_tubid_is_refused(world):
    world.add("w1")
    world.start()
    text = world.path.read_text()
    tubid = tomllib.loads(text)["master"]["tubid"]
    world.path.write_text(text.replace(tubid, "a" * len(tubid)))
    world.advance(POLL_INTERVAL)
    (error,) = world.logged("keeping the last good registry")
    assert "tubid" in error["error"]
    world.finish()


def test_a_listen_change_is_warned_about_once(world):
    world.add("w1")
    world.start()
    world.path.write_text(world.path.read_text().replace('listen = "tcp:9989"', 'listen = "tcp:9979"'))
    world.advance(POLL_INTERVAL)
    world.add("w2")
    world.advance(POLL_INTERVAL)
    assert len(world.logged("listen/location/pb changed")) == 1
    assert len(world.logged("bbenroll: reloaded")) == 2
    world.finish()


def test_buildbot_is_told_when_usable_workers_change(world):
    world.add("w1")
    changes = []
    world.start(on_workers_changed=lambda workers: changes.append(sorted(workers)))
    world.advance(POLL_INTERVAL)
    assert changes == []
    world.add("w2")
    world.advance(POLL_INTERVAL)
    world.cli("revoke", "w1")
    world.advance(POLL_INTERVAL)
    world.advance(POLL_INTERVAL)
    assert changes == [["w1", "w2"], ["w2"]]
    world.finish()


def test_status_file_follows_connections(world):
    w1 = world.add("w1")
    world.add("w2")
    world.start()
    path = status_path(world.path)
    assert json.loads(path.read_text())["workers"] == {}
    link = world.connect()
    link.reference(w1)
    assert json.loads(path.read_text())["workers"] == {}  # not at once: batched
    world.advance(BATCH_INTERVAL)
    entry = json.loads(path.read_text())["workers"]["w1"]
    assert (entry["state"], entry["peer"]) == ("connected", link.peer)
    assert "attached" not in entry  # no Buildbot: nothing known
    status = {w["name"]: w for w in json.loads(world.cli("status", "--json"))["workers"]}
    assert (status["w1"]["state"], status["w2"]["state"]) == ("connected", "disconnected")
    link.close()
    world.advance(BATCH_INTERVAL)
    assert json.loads(path.read_text())["workers"]["w1"]["state"] == "disconnected"
    world.finish()


def test_the_tub_uses_the_one_set_of_options(world):
    world.add("w1")
    tub = world.start().tub
    assert (tub.keepaliveTimeout, tub.disconnectTimeout) == (KEEPALIVE, DISCONNECT_TIMEOUT)
    assert tub.unsafeTracebacks is False and tub._expose_remote_exception_types is False
    assert tub.accept_gifts is False
    assert (tub.logLocalFailures, tub.logRemoteFailures) == (False, False)
    assert tub.clock is world.clock  # the brokers' shutdown abort runs on the injected clock
    world.finish()


def test_stopping_before_the_port_is_bound_starts_nothing(world, monkeypatch):
    world.add("w1")
    world.service = EnrollmentService(world.path, reactor=world.clock, clock=world.clock)
    pending = defer.Deferred()
    monkeypatch.setattr(ServedIdentities, "listen", lambda self, reactor, description: pending)
    world.service.startService()  # the bind has not finished yet
    resolve(world.clock, world.service.stopService())

    class Port:
        closed = False

        def stopListening(self):
            self.closed = True

    port = Port()
    pending.callback(port)
    assert world.logged("bbenroll: serving") == [] and world.service._loop is None
    assert port.closed  # a port bound after the stop is closed, not leaked
    world.finish()


def test_a_port_that_cannot_be_bound_is_told_to_waiters_and_to_no_one_else(world, monkeypatch):
    """Run on its own, nobody waits: no 'Unhandled error in Deferred' on top of the one line."""
    from twisted.python.failure import Failure

    from bbenroll.master.tub import ListenError

    world.add("w1")
    world.service = EnrollmentService(world.path, reactor=world.clock, clock=world.clock)
    pending = defer.Deferred()
    monkeypatch.setattr(ServedIdentities, "listen", lambda self, reactor, description: pending)
    assert world.service.startService() is None
    early = world.service.when_listening()
    pending.errback(Failure(ListenError("tcp:9989", "Address already in use")))
    failures = []
    early.addErrback(failures.append)
    world.service.when_listening().addErrback(failures.append)  # asked after the fact
    assert [f.type for f in failures] == [ListenError, ListenError]
    assert not world.service.running
    world.finish()
