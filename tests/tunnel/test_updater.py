"""The update's state machine, deterministically: task.Clock, fake Tubs and references.

What the network cannot make happen on cue: a new FURL that never answers, the old
link lost in the middle of an update, a master that does not move the session,
the tunnel stopped during an update. tests/tunnel/test_update.py has the real thing.
"""

from __future__ import annotations

from twisted.internet import defer, error, task
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from bbenroll.tunnel import updater, worker_side
from bbenroll.tunnel.frames import Ping
from bbenroll.tunnel.furlfile import FurlFile, read_furl_file, write_furl_file
from bbenroll.tunnel.updater import State
from bbenroll.tunnel.worker_side import WorkerTunnel

OLD = "pb://" + "a" * 32 + "@tcp:127.0.0.1:9/" + "b" * 32
NEW = "pb://" + "c" * 32 + "@tcp:127.0.0.1:10/" + "d" * 32


class Ref:
    """A master's EnrolledWorker as the worker sees it; ``answers`` for open_session."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = []
        self.frames = []
        self.watchers = []

    def callRemote(self, name, **kwargs):
        self.calls.append((name, kwargs))
        if name == "open_session":
            answer = self.answers.pop(0)
            return answer if isinstance(answer, defer.Deferred) else defer.succeed(answer)
        if name == "confirm_furl":
            return defer.succeed({"status": "confirmed"})
        return defer.succeed(None)

    def callRemoteOnly(self, name, *args):
        self.frames.append((name, *args))

    def notifyOnDisconnect(self, callback, *args):
        self.watchers.append((callback, args))

    def disconnect(self):
        for callback, args in self.watchers:
            callback(*args)

    def named(self, method):
        return [kwargs for name, kwargs in self.calls if name == method]


class Tub:
    """getReference gives the next result: a Ref, an exception, or a Deferred (for later)."""

    def __init__(self, *results):
        self.results = list(results)
        self.attempts = 0
        self.running = True

    def getReference(self, furl):
        self.attempts += 1
        result = self.results.pop(0)
        if isinstance(result, defer.Deferred):
            return result
        return defer.fail(Failure(result)) if isinstance(result, Exception) else defer.succeed(result)

    def stopService(self):
        self.running = False
        return defer.succeed(None)


class Recorder(Protocol):
    def __init__(self):
        self.data = b""
        self.lost = None

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason=None):
        self.lost = reason


def up(clock, tmp_path, old_tub, new_tub):
    """A tunnel from a FURL file (OLD, serial 0), up on ``old_tub``'s first reference."""
    path = tmp_path / "bbenroll.furl"
    write_furl_file(path, OLD)
    tunnel = WorkerTunnel(OLD, reactor=clock, clock=clock, resume_deadline=600, furlfile=path)
    tunnel.make_client_tub = lambda: new_tub
    tunnel.tub = old_tub
    tunnel.jitter = (1.0, 1.0)
    tunnel._connect()
    assert tunnel.link_up
    return tunnel, path


def finish(clock, tunnel):
    tunnel.stop()
    clock.advance(0)
    assert clock.getDelayedCalls() == []


def test_a_new_furl_that_never_answers_times_out_and_changes_nothing(tmp_path):
    clock = task.Clock()
    old = Ref({"status": "new", "received": {}})
    new_tub = Tub(defer.Deferred())
    tunnel, path = up(clock, tmp_path, Tub(old), new_tub)
    tunnel.updater.offer(1, NEW)
    assert tunnel.updater.state is State.TESTING
    for _ in range(int(updater.UPDATE_TIMEOUT / 5)):  # the master keeps the old link alive meanwhile
        clock.advance(5)
        tunnel.receive(Ping())
    assert clock.seconds() == updater.UPDATE_TIMEOUT
    assert tunnel.updater.state is State.IDLE and not new_tub.running
    (failed,) = old.named("furl_update_failed")
    assert failed == {"serial": 1, "reason": "the new FURL did not answer in 30s"}
    assert read_furl_file(path) == FurlFile(OLD, 0) and (tunnel.furl, tunnel.serial) == (OLD, 0)
    assert tunnel.link_up and tunnel.peer is old
    finish(clock, tunnel)


def test_the_old_link_lost_during_an_update_waits_for_it_then_resumes_on_the_new_furl(tmp_path):
    clock = task.Clock()
    old = Ref({"status": "new", "received": {}})
    reached = defer.Deferred()
    new = Ref({"status": "resumed", "received": {1: 3}})
    old_tub, new_tub = Tub(old), Tub(reached)
    tunnel, path = up(clock, tmp_path, old_tub, new_tub)
    app = Recorder()
    tunnel.open_stream(app)
    app.transport.write(b"abc")
    tunnel.updater.offer(1, NEW)
    old.disconnect()  # the old link drops while the new FURL is being tried
    app.transport.write(b"def")  # queued: no link
    clock.advance(5)
    assert old_tub.attempts == 1  # no reconnect with the old FURL while the update may still move us
    reached.callback(new)
    assert tunnel.peer is new and tunnel.link_up and app.lost is None
    assert new.named("open_session")[0]["resume"] is True
    assert new.named("open_session")[0]["session"] == old.named("open_session")[0]["session"]
    assert ("frame_data", 1, 3, b"def") in new.frames  # resent from what the master had
    assert new.named("confirm_furl") == [{"serial": 1}]
    assert new.named("subscribe_updates")[0]["serial"] == 1
    assert read_furl_file(path) == FurlFile(NEW, 1) and not old_tub.running
    assert tunnel.tub is new_tub and old_tub.attempts == 1
    finish(clock, tunnel)


def test_the_old_link_lost_and_the_update_failed_reconnects_with_the_old_furl(tmp_path):
    clock = task.Clock()
    old = Ref({"status": "new", "received": {}})
    again = Ref({"status": "resumed", "received": {}})
    reached = defer.Deferred()
    old_tub, new_tub = Tub(old, again), Tub(reached)
    tunnel, path = up(clock, tmp_path, old_tub, new_tub)
    tunnel.updater.offer(1, NEW)
    old.disconnect()
    clock.advance(5)
    assert old_tub.attempts == 1
    reached.errback(error.ConnectionRefusedError())
    assert old_tub.attempts == 2 and tunnel.peer is again and tunnel.link_up
    assert read_furl_file(path) == FurlFile(OLD, 0) and not new_tub.running
    assert old.named("furl_update_failed") == [] and again.named("furl_update_failed") == []  # no link then
    finish(clock, tunnel)


def test_a_session_that_does_not_move_puts_the_old_furl_back(tmp_path):
    clock = task.Clock()
    old = Ref({"status": "new", "received": {}})
    new = Ref(defer.fail(Failure(RuntimeError("session table full"))))
    new_tub = Tub(new)
    tunnel, path = up(clock, tmp_path, Tub(old), new_tub)
    write_furl_file(path, OLD, 0)
    tunnel.updater.offer(2, NEW)
    assert tunnel.updater.state is State.IDLE and not new_tub.running
    assert read_furl_file(path) == FurlFile(OLD, 0)
    (failed,) = old.named("furl_update_failed")
    assert failed["serial"] == 2 and "did not move the session" in failed["reason"]
    assert tunnel.peer is old and (tunnel.furl, tunnel.serial) == (OLD, 0) and new.named("confirm_furl") == []
    finish(clock, tunnel)


def test_stopping_the_tunnel_during_an_update_ends_it_quietly(tmp_path):
    clock = task.Clock()
    old = Ref({"status": "new", "received": {}})
    new_tub = Tub(defer.Deferred())
    tunnel, path = up(clock, tmp_path, Tub(old), new_tub)
    tunnel.updater.offer(1, NEW)
    tunnel.updater.offer(2, NEW)  # remembered for after the first; dropped with the tunnel
    tunnel.stop()
    assert tunnel.updater.state is State.IDLE and not new_tub.running
    assert old.named("furl_update_failed") == []  # nothing to tell: the worker is going away
    assert tunnel.updater.pending is None
    tunnel.updater.offer(3, NEW)  # a late offer to a stopped tunnel
    assert tunnel.updater.state is State.IDLE and read_furl_file(path) == FurlFile(OLD, 0)
    assert clock.getDelayedCalls() == []


def test_an_unknown_session_on_the_new_furl_starts_afresh_there(tmp_path):
    clock = task.Clock()
    old = Ref({"status": "new", "received": {}})
    new = Ref({"status": "unknown", "received": {}}, {"status": "new", "received": {}})
    tunnel, path = up(clock, tmp_path, Tub(old), Tub(new))
    app = Recorder()
    tunnel.open_stream(app)
    tunnel.updater.offer(1, NEW)
    assert app.lost is not None and tunnel.streams == {}  # the master had lost the session
    assert tunnel.peer is new and tunnel.link_up and new.named("confirm_furl") == [{"serial": 1}]
    assert [s["resume"] for s in new.named("open_session")] == [True, False]
    assert read_furl_file(path) == FurlFile(NEW, 1)
    finish(clock, tunnel)


def test_losing_the_old_reference_after_the_move_does_not_reconnect(tmp_path):
    clock = task.Clock()
    old = Ref({"status": "new", "received": {}})
    new = Ref({"status": "resumed", "received": {}})
    old_tub, new_tub = Tub(old), Tub(new)
    tunnel, _ = up(clock, tmp_path, old_tub, new_tub)
    tunnel.updater.offer(1, NEW)
    old.disconnect()  # the old Tub stopped: its connection ends
    clock.advance(worker_side.BACKOFF[-1] * 2)
    assert tunnel.peer is new and tunnel.link_up and old_tub.attempts == 1 and new_tub.attempts == 1
    finish(clock, tunnel)


def test_a_push_racing_a_reconnect_waits_for_it_then_moves_the_resumed_session(tmp_path):
    clock = task.Clock()
    old = Ref({"status": "new", "received": {}})
    reconnecting = defer.Deferred()
    again = Ref({"status": "resumed", "received": {}})
    new = Ref({"status": "resumed", "received": {}})
    old_tub, new_tub = Tub(old, reconnecting), Tub(new)
    tunnel, path = up(clock, tmp_path, old_tub, new_tub)
    old.disconnect()
    clock.advance(worker_side.BACKOFF[0])
    assert tunnel.connecting and old_tub.attempts == 2
    tunnel.updater.offer(1, NEW)  # over the old link's updater, while the reconnect is binding the session
    assert tunnel.updater.state is State.IDLE and new_tub.attempts == 0
    reconnecting.callback(again)
    assert again.named("subscribe_updates")[0]["serial"] == 0
    assert new_tub.attempts == 1 and tunnel.peer is new and tunnel.updater.outcomes == [(1, "moved")]
    assert new.named("open_session")[0]["session"] == again.named("open_session")[0]["session"]
    assert read_furl_file(path) == FurlFile(NEW, 1) and not old_tub.running
    finish(clock, tunnel)
