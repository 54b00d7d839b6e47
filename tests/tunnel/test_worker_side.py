"""The worker's tunnel adapter, deterministically: task.Clock, fake Foolscap references."""

from __future__ import annotations

from foolscap.call import CopiedFailure
from foolscap.tokens import RemoteException
from twisted.internet import defer, error, task
from twisted.internet.protocol import Protocol
from twisted.python import reflect
from twisted.python.failure import Failure

from bbenroll.tunnel import worker_side
from bbenroll.tunnel.failures import FailureKind
from bbenroll.tunnel.frames import Close, Open, Reset
from bbenroll.tunnel.wire import Refused
from bbenroll.tunnel.worker_side import WorkerTunnel

FURL = "pb://" + "a" * 32 + "@tcp:127.0.0.1:9/" + "b" * 32


class FakeRef:
    """The master's EnrolledWorker as the worker sees it."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.sessions = []
        self.frames = []
        self.watchers = []
        self.calls = []  # the other remote calls (subscribe_updates)

    def callRemote(self, name, **kwargs):
        if name != "open_session":
            self.calls.append((name, kwargs))
            return defer.succeed(None)
        self.sessions.append(kwargs)
        return defer.succeed(self.answers.pop(0))

    def callRemoteOnly(self, name, *args):
        self.frames.append((name, *args))

    def notifyOnDisconnect(self, callback, *args):
        self.watchers.append((callback, args))

    def disconnect(self):
        for callback, args in self.watchers:
            callback(*args)


class FakeTub:
    def __init__(self, results):
        self.results = list(results)
        self.attempts = 0

    def stopService(self):
        return defer.succeed(None)

    def getReference(self, furl):
        self.attempts += 1
        result = self.results.pop(0)
        return defer.fail(Failure(result)) if isinstance(result, Exception) else defer.succeed(result)


class Recorder(Protocol):
    def __init__(self):
        self.data = b""
        self.lost = None

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason=None):
        self.lost = reason


def make_tunnel(clock, results):
    tunnel = WorkerTunnel(FURL, reactor=clock, clock=clock, resume_deadline=60)
    tunnel.tub = FakeTub(results)
    return tunnel


def test_reconnect_backoff_is_short_and_capped():
    clock = task.Clock()
    refused = error.ConnectionRefusedError()
    ref = FakeRef([{"status": "new", "received": {}}])
    tunnel = make_tunnel(clock, [refused] * 8 + [ref])
    tunnel._connect()
    delays = []
    while not tunnel.link_up:
        (call,) = [c for c in clock.getDelayedCalls() if c.func == tunnel._connect]
        delays.append(call.getTime() - clock.seconds())
        clock.advance(delays[-1])
    assert len(delays) == 8
    assert all(d <= worker_side.BACKOFF[-1] * worker_side.JITTER[1] for d in delays)
    assert delays[0] < 0.25 and delays[-1] >= worker_side.BACKOFF[-1] * worker_side.JITTER[0]
    assert "cannot reach the master" in (tunnel.last_error or "cannot reach the master")
    tunnel.stop()
    assert clock.getDelayedCalls() == []


def remote_failure(exception: Exception) -> RemoteException:
    """What a client Tub without exposed remote exception types fails with when the
    master raises ``exception``: a RemoteException around a CopiedFailure."""
    copied = CopiedFailure()
    copied.setCopyableState(
        {"type": reflect.qual(type(exception)), "value": str(exception), "traceback": "",
         "parents": Failure(exception).parents}
    )
    return RemoteException(copied)


def test_refused_secret_retries_slowly():
    clock = task.Clock()
    tunnel = make_tunnel(clock, [remote_failure(Refused("worker revoked"))])
    tunnel._connect()
    (call,) = clock.getDelayedCalls()
    assert call.getTime() - clock.seconds() == worker_side.REFUSED_RETRY
    assert tunnel.last_error == "the master refused this FURL: worker revoked"
    tunnel.stop()
    assert clock.getDelayedCalls() == []


def test_other_master_faults_back_off_fast():
    clock = task.Clock()
    tunnel = make_tunnel(clock, [remote_failure(KeyError("boom"))])
    tunnel._connect()
    (call,) = clock.getDelayedCalls()
    assert call.getTime() - clock.seconds() <= worker_side.BACKOFF[0] * worker_side.JITTER[1]
    assert tunnel.last_error == "the master failed (KeyError); see its log"
    tunnel.stop()
    assert clock.getDelayedCalls() == []


def test_policy_is_attributes_of_the_tunnel():
    clock = task.Clock()
    tunnel = make_tunnel(clock, [error.ConnectionRefusedError()] * 2)
    tunnel.backoff, tunnel.jitter = (3.0,), (1.0, 1.0)
    tunnel.slow_retry = frozenset({FailureKind.UNREACHABLE})
    tunnel.refused_retry = 7.0
    tunnel._connect()
    (call,) = clock.getDelayedCalls()
    assert call.getTime() - clock.seconds() == 7.0
    tunnel.slow_retry = frozenset()
    clock.advance(7.0)
    (call,) = clock.getDelayedCalls()
    assert call.getTime() - clock.seconds() == 3.0
    tunnel.stop()
    assert clock.getDelayedCalls() == []


def test_stream_resumes_after_a_drop_and_restarts_after_a_master_restart():
    clock = task.Clock()
    first = FakeRef([{"status": "new", "received": {}}])
    second = FakeRef([{"status": "resumed", "received": {1: 5}}])
    third = FakeRef([{"status": "unknown", "received": {}}, {"status": "new", "received": {}}])
    tunnel = make_tunnel(clock, [first, second, third])
    tunnel._connect()
    assert tunnel.link_up
    app = Recorder()
    tunnel.open_stream(app)
    app.transport.write(b"hello world")
    assert ("frame_open", 1) in first.frames and ("frame_data", 1, 0, b"hello world") in first.frames
    # the link drops; the worker reconnects and resumes from what the master received
    first.disconnect()
    assert not tunnel.link_up
    clock.advance(worker_side.BACKOFF[0] * worker_side.JITTER[1])
    assert second.sessions[0]["resume"] is True
    assert second.sessions[0]["session"] == first.sessions[0]["session"]
    assert ("frame_data", 1, 5, b" world") in second.frames  # only what the master had not received
    assert app.lost is None  # buildbot-worker noticed nothing
    # the master restarted: it does not know the session; the stream ends, a new session starts
    second.disconnect()
    clock.advance(worker_side.BACKOFF[0] * worker_side.JITTER[1])
    assert app.lost is not None
    assert [s["resume"] for s in third.sessions] == [True, False]
    assert third.sessions[1]["session"] != first.sessions[0]["session"]
    assert tunnel.link_up and tunnel.streams == {}
    tunnel.stop()
    assert clock.getDelayedCalls() == []


def test_a_resume_answer_that_cannot_be_true_starts_a_new_session():
    clock = task.Clock()
    first = FakeRef([{"status": "new", "received": {}}])
    liar = FakeRef([{"status": "resumed", "received": {1: 10**6}}])  # more than was ever sent
    fresh = FakeRef([{"status": "new", "received": {}}])
    tunnel = make_tunnel(clock, [first, liar, fresh])
    tunnel._connect()
    app = Recorder()
    tunnel.open_stream(app)
    app.transport.write(b"hello")
    first.disconnect()
    clock.advance(worker_side.BACKOFF[0] * worker_side.JITTER[1])
    assert not tunnel.link_up and app.lost is not None and tunnel.streams == {}
    clock.advance(worker_side.BACKOFF[0] * worker_side.JITTER[1])
    assert tunnel.link_up
    assert fresh.sessions[0]["resume"] is False
    assert fresh.sessions[0]["session"] != first.sessions[0]["session"]
    tunnel.stop()
    assert clock.getDelayedCalls() == []


def test_the_worker_keeps_its_streams_only_as_long_as_the_master_granted():
    clock = task.Clock()
    ref = FakeRef([{"status": "new", "received": {}, "deadline": 20}])
    tunnel = make_tunnel(clock, [ref])  # asks for 60 s
    tunnel._connect()
    assert ref.sessions[0]["deadline"] == 60
    app = Recorder()
    tunnel.open_stream(app)
    tunnel.backoff = (1000.0,)  # no reconnect within the test: the link stays down
    ref.disconnect()
    clock.advance(19)
    assert app.lost is None
    clock.advance(2)  # past the 20 s the master granted (not the 60 s asked for)
    assert app.lost is not None
    tunnel.stop()
    assert clock.getDelayedCalls() == []


def test_stop_fails_waiting_connects_and_leaves_no_timers():
    clock = task.Clock()
    tunnel = make_tunnel(clock, [error.ConnectionRefusedError()])
    tunnel._connect()
    waiting = tunnel.when_ready(timeout=30)
    failures = []
    waiting.addErrback(failures.append)
    tunnel.stop()
    assert failures and failures[0].check(error.ConnectError)
    assert clock.getDelayedCalls() == []


def test_a_stopped_tunnel_is_never_up_and_an_answer_after_stop_is_ignored():
    clock = task.Clock()
    ref = FakeRef([{"status": "new", "received": {}}])
    tunnel = make_tunnel(clock, [ref])
    tunnel._connect()
    assert tunnel.link_up
    tunnel.stop()
    assert not tunnel.link_up
    assert not tunnel.when_ready(timeout=5).called  # waits (and fails later); never "ready"
    clock.advance(5)
    # an open_session answer that arrives after stop() must not bring the link back
    late = make_tunnel(clock, [])
    late.stop()
    late._session_opened({"status": "new", "received": {}}, FakeRef([]))
    assert not late.link_up and late.peer is None
    assert clock.getDelayedCalls() == []


def test_a_protocol_error_drops_the_link_and_reconnects_keeping_the_streams():
    clock = task.Clock()
    first = FakeRef([{"status": "new", "received": {}}])
    second = FakeRef([{"status": "resumed", "received": {1: 0}}])
    tunnel = make_tunnel(clock, [first, second])
    tunnel._connect()
    app = Recorder()
    tunnel.open_stream(app)
    tunnel.receive(Open(5))  # the master may not open streams
    assert not tunnel.link_up
    (retry,) = [c for c in clock.getDelayedCalls() if c.func == tunnel._connect]
    assert retry.getTime() - clock.seconds() == worker_side.BACKOFF[0]
    clock.advance(worker_side.BACKOFF[0])
    assert tunnel.link_up and second.sessions[0]["resume"] is True and app.lost is None
    tunnel.stop()
    assert clock.getDelayedCalls() == []


def test_peer_close_is_clean_and_reset_is_not():
    clock = task.Clock()
    ref = FakeRef([{"status": "new", "received": {}}])
    tunnel = make_tunnel(clock, [ref])
    tunnel._connect()
    closed, reset = Recorder(), Recorder()
    tunnel.open_stream(closed)
    tunnel.open_stream(reset)
    tunnel.receive(Close(1, 0))
    tunnel.receive(Reset(2))
    assert closed.lost.check(error.ConnectionDone)
    assert reset.lost.check(error.ConnectionLost) and "reset by the other side" in str(reset.lost.value)
    tunnel.stop()
    assert clock.getDelayedCalls() == []


def test_silence_is_a_dead_link_then_a_reconnect():
    clock = task.Clock()
    first = FakeRef([{"status": "new", "received": {}}])
    second = FakeRef([{"status": "resumed", "received": {}}])
    tunnel = make_tunnel(clock, [first, second])
    tunnel._connect()
    clock.advance(tunnel.settings.ping_interval)
    assert first.frames == [("frame_ping",)]
    clock.advance(tunnel.settings.dead_after)  # nothing came back
    assert tunnel.link_up is False
    clock.advance(worker_side.BACKOFF[0])
    assert tunnel.link_up
    tunnel.stop()
    assert clock.getDelayedCalls() == []
