"""A refusal for good (wire.RefusedForGood) from a real master, and what the worker's tunnel does with it.

``classify(f).permanent`` tells a refusal no retry changes (a revoked worker) from one that
a later retry may pass (too many sessions). With ``BBENROLL_EXIT_ON_REFUSAL=1`` (``worker
run``'s child) the tunnel table writes BASEDIR/bbenroll.refused and stops the reactor;
without it, the tunnel retries slowly, as it always did.
"""

from __future__ import annotations

import stat

import pytest
import pytest_twisted
from foolscap.api import Referenceable
from twisted.internet import defer, reactor
from zope.interface import implementer

from bbenroll.master.sessions import MAX_SESSIONS_PER_WORKER, TOO_MANY_SESSIONS
from bbenroll.tunnel.endpoint import TunnelTable
from bbenroll.tunnel.failures import FailureKind, classify
from bbenroll.tunnel.furlfile import read_furl_file
from bbenroll.tunnel.wire import FrameSink, RITunnelPeer, start_client_tub
from bbenroll.worker.run import ENV_EXIT_ON_REFUSAL, REFUSED_MARKER

pytestmark = pytest.mark.network


@implementer(RITunnelPeer)
class Sink(FrameSink, Referenceable):
    def receive_frame(self, frame) -> None:
        pass


class RecordingReactor:
    """The real reactor, except that stop() and shutdown triggers are only recorded."""

    def __init__(self) -> None:
        self.stopped: defer.Deferred = defer.Deferred()
        self.triggers: list = []

    def __getattr__(self, name):
        return getattr(reactor, name)

    def stop(self) -> None:
        self.stopped.callback(None)

    def addSystemEventTrigger(self, *args) -> None:
        self.triggers.append(args)


async def failure_of(d):
    try:
        result = await d
    except Exception:
        from twisted.python.failure import Failure

        return Failure()
    raise AssertionError(f"did not fail: {result!r}")


@pytest.fixture
def tubs():
    made = []

    def make():
        tub = start_client_tub()
        made.append(tub)
        return tub

    yield make
    pytest_twisted.blockon(defer.gatherResults([t.stopService() for t in made]))


@pytest_twisted.ensureDeferred
async def test_a_revoked_worker_is_refused_for_good(master, tubs):
    furl = master.cli("add", "w")
    master.cli("revoke", "w")
    master.service.startService()
    why = classify(await failure_of(tubs().getReference(furl)))
    assert why.kind is FailureKind.REFUSED
    assert why.permanent is True
    assert "revoked" in why.message


@pytest_twisted.ensureDeferred
async def test_too_many_sessions_is_refused_but_not_for_good(master, tubs):
    furl = master.cli("add", "w")
    master.service.startService()
    for i in range(MAX_SESSIONS_PER_WORKER):  # each on its own connection, attached: none is idle
        ref = await tubs().getReference(furl)
        await ref.callRemote("open_session", session=f"{i:032x}", receiver=Sink(), received={},
                             resume=False, deadline=60)
    ref = await tubs().getReference(furl)
    failure = await failure_of(ref.callRemote("open_session", session="f" * 32, receiver=Sink(),
                                              received={}, resume=False, deadline=60))
    why = classify(failure)
    assert why.kind is FailureKind.REFUSED
    assert why.permanent is False
    assert TOO_MANY_SESSIONS in why.message


def furl_file(tmp_path, furl):
    basedir = tmp_path / "worker"
    basedir.mkdir()
    path = basedir / "bbenroll.furl"
    path.write_text(furl + "\n")
    return basedir, path


@pytest_twisted.ensureDeferred
async def test_with_the_switch_a_refusal_for_good_leaves_the_marker_and_stops_the_reactor(master, tmp_path):
    furl = master.cli("add", "w")
    master.cli("revoke", "w", "--reason", "laptop\nstolen")
    master.service.startService()
    basedir, path = furl_file(tmp_path, furl)
    table = TunnelTable(exit_on_refusal=True)
    fake = RecordingReactor()
    tunnel = table.get(path, read_furl_file(path), fake)
    await fake.stopped
    marker = basedir / REFUSED_MARKER
    text = marker.read_text()
    assert stat.S_IMODE(marker.stat().st_mode) == 0o600
    assert text.endswith("\n") and text.count("\n") == 1
    assert "revoked" in text
    assert furl.rsplit("/", 1)[1] not in text and "pb://" not in text
    assert tunnel.stopped and len(table) == 0  # no retry left behind
    assert table.refused == marker


@pytest_twisted.ensureDeferred
async def test_without_the_switch_a_refusal_for_good_is_retried_slowly(master, tmp_path):
    furl = master.cli("add", "w")
    master.cli("revoke", "w")
    master.service.startService()
    basedir, path = furl_file(tmp_path, furl)
    table = TunnelTable(exit_on_refusal=False)
    fake = RecordingReactor()
    tunnel = table.get(path, read_furl_file(path), fake)
    try:
        failure = await failure_of(tunnel.when_ready(5))
        assert "revoked" in failure.getErrorMessage()
        assert tunnel._retry is not None and tunnel._retry.active()
        assert tunnel._retry.getTime() - reactor.seconds() > tunnel.refused_retry - 6
        assert not fake.stopped.called
        assert not (basedir / REFUSED_MARKER).exists()
    finally:
        await tunnel.stop()


def test_the_switch_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(ENV_EXIT_ON_REFUSAL, "1")
    assert TunnelTable().exit_on_refusal is True
    monkeypatch.setenv(ENV_EXIT_ON_REFUSAL, "0")
    assert TunnelTable().exit_on_refusal is False
    monkeypatch.delenv(ENV_EXIT_ON_REFUSAL)
    assert TunnelTable().exit_on_refusal is False


@pytest_twisted.ensureDeferred
async def test_a_marker_that_cannot_be_written_keeps_the_worker_retrying(master, tmp_path):
    """Without the marker an exit would read as a clean stop (0): better go on as before."""
    furl = master.cli("add", "w")
    master.cli("revoke", "w")
    master.service.startService()
    _, path = furl_file(tmp_path, furl)
    current = read_furl_file(path)
    gone = tmp_path / "gone" / "bbenroll.furl"  # its directory does not exist: the marker cannot be written
    table = TunnelTable(exit_on_refusal=True)
    fake = RecordingReactor()
    tunnel = table.get(gone, current, fake)
    try:
        await failure_of(tunnel.when_ready(5))
        assert tunnel._retry is not None and tunnel._retry.active()
        assert tunnel.on_refused is None and not tunnel.stopped
        assert not fake.stopped.called and table.refused is None
    finally:
        await tunnel.stop()
