"""The worker's end of pushed rotation (docs/rotation.md): take a new FURL from the master.

One :class:`FurlUpdater` per :class:`~bbenroll.tunnel.worker_side.WorkerTunnel`,
handed to the master in ``subscribe_updates`` after every ``open_session``. An
offer moves through a small state machine, one offer at a time::

    IDLE --offer_furl(serial > ours)--> TESTING   fresh client Tub, getReference(new FURL)
    TESTING --reached--> write the FURL file --> MOVING   open_session(same session, resume)
    MOVING --answer--> the tunnel adopts the new link; confirm_furl; old Tub stopped --> IDLE
    any failure --> new Tub stopped, old FURL/file/link kept, furl_update_failed --> IDLE

A newer offer that comes during an update is remembered and tried after it.
Nothing changes until the new FURL works: the file is written only once the new
FURL answered, and put back if the session cannot move.
"""

from __future__ import annotations

import enum
import random
from typing import TYPE_CHECKING, Any

from foolscap.api import DeadReferenceError, Referenceable
from twisted.internet import defer, error, task
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from bbenroll.errors import BBEnrollError
from bbenroll.furl import parse_furl
from bbenroll.tunnel.failures import classify
from bbenroll.tunnel.furlfile import write_furl_file
from bbenroll.tunnel.wire import RIFurlUpdater

if TYPE_CHECKING:
    from bbenroll.tunnel.worker_side import WorkerTunnel

log = Logger(namespace="bbenroll")

UPDATE_TIMEOUT = 30.0  # seconds for the new FURL to answer, and again for the session to move
MAX_REASON = 300  # wire.FailureText
KEEP_OUTCOMES = 16  # what became of the last offers, for tests and a debugger
# how a test connection ends when the master closes it before it answered: while
# negotiating, or while it looks the secret up (Foolscap's dead reference)
CLOSED_BY_MASTER = (error.ConnectionLost, error.ConnectionDone, DeadReferenceError)


class State(enum.Enum):
    IDLE = "idle"
    TESTING = "testing"  # a fresh Tub is reaching the new FURL
    MOVING = "moving"  # the file is written; the session is moving to the new connection


def where(furl: str) -> str:
    """What a log line may say about a FURL: the master's TubID and hints, never the secret."""
    try:
        parsed = parse_furl(furl)
    except BBEnrollError:
        return "an unparsable FURL"
    return f"master {parsed.tubid} at {','.join(parsed.hints)}"


class UpdateFailed(Exception):
    """An update step failed; the message is the reason the master is told."""


@implementer(RIFurlUpdater)
class FurlUpdater(Referenceable):
    """The ``RIFurlUpdater`` of one tunnel, and the update's state machine."""

    timeout: float = UPDATE_TIMEOUT

    def __init__(self, tunnel: WorkerTunnel) -> None:
        self.tunnel = tunnel
        self.state = State.IDLE
        self.target: tuple[int, str] | None = None  # the offer being tried
        self.pending: tuple[int, str] | None = None  # the newest offer that came meanwhile
        self.tub: Any = None  # the fresh client Tub of the offer being tried
        self._step: defer.Deferred | None = None  # the update's chain, to cancel when the tunnel stops
        self.outcomes: list[tuple[int, str]] = []  # (serial, "moved" | reason) of the last offers

    @property
    def busy(self) -> bool:
        return self.state is not State.IDLE

    def remote_offer_furl(self, serial: int, furl: str) -> None:
        self.offer(serial, furl)

    def offer(self, serial: int, furl: str) -> None:
        """An offer from the master: ignored unless newer than what we hold and try."""
        newest = max(self.tunnel.serial, self.target[0] if self.target else -1)
        if serial <= newest:
            log.debug("bbenroll: ignoring FURL offer {serial} (we hold {ours})", serial=serial, ours=newest)
            return
        # one at a time, and not while a reconnect is binding the session to the old FURL:
        # the newest offer is kept for when that is over
        if self.busy or self.tunnel.stopped or self.tunnel.connecting:
            if not self.tunnel.stopped and (self.pending is None or serial > self.pending[0]):
                self.pending = (serial, furl)
            return
        self._start(serial, furl)

    def cancel(self) -> None:
        """The tunnel stops: give up the update in progress (its Tub and its timeout too)."""
        self.pending = None
        step, self._step = self._step, None
        if step is not None:
            step.cancel()  # fails the chain at its current step (the timeout's call goes with it)
        self._stop_tub()

    # -- the steps ------------------------------------------------------------------------

    def _start(self, serial: int, furl: str) -> None:
        self.target = (serial, furl)
        try:
            parse_furl(furl)
        except BBEnrollError as e:
            self._failed(Failure(UpdateFailed(f"the offered FURL is malformed: {e}")))
            return
        log.info("bbenroll: trying the new FURL {serial} ({where})", serial=serial, where=where(furl))
        self.state = State.TESTING
        self.tub = self.tunnel.make_client_tub()
        # kept before the callbacks: a chain that fails at once ends (and may start the
        # pending offer, with its own chain) inside addCallbacks
        d = self._step = self._test(furl, 0)
        d.addTimeout(self.timeout, self.tunnel.clock)  # over all the attempts
        d.addCallbacks(self._reached, self._unreachable)
        d.addCallback(self._moved)
        d.addErrback(self._failed)

    def _test(self, furl: str, attempt: int) -> defer.Deferred:
        """Reach the new FURL on the fresh Tub. A connection the master closed before it
        answered is tried again, with the tunnel's backoff, until the update's timeout: a
        master drops the oldest of the connections one address has not authenticated yet
        (master/guard.py), so more than a few workers behind one address that test their
        new FURLs at once (``rotate --all``) would otherwise mostly fail, and wait for the
        master's next offer (OFFER_RETRY, a minute)."""
        d = self.tub.getReference(furl)

        def again(failure: Failure) -> Any:
            if self.tub is None or not failure.check(*CLOSED_BY_MASTER):
                return failure
            backoff = self.tunnel.backoff
            delay = backoff[min(attempt, len(backoff) - 1)] * random.uniform(*self.tunnel.jitter)  # noqa: S311
            log.info("bbenroll: the master closed the test connection of FURL {serial}; "
                     "trying again in {delay:.1f}s", serial=self._current()[0], delay=delay)
            return task.deferLater(self.tunnel.clock, delay, self._test, furl, attempt + 1)

        d.addErrback(again)
        return d

    def _unreachable(self, failure: Failure) -> None:
        if failure.check(defer.TimeoutError, defer.CancelledError):
            raise UpdateFailed(f"the new FURL did not answer in {self.timeout:.0f}s")
        raise UpdateFailed(f"the new FURL does not work: {classify(failure).message}")

    def _reached(self, ref: Any) -> defer.Deferred:
        serial, furl = self._current()
        tunnel = self.tunnel
        if tunnel.stopped:
            raise UpdateFailed("the tunnel was stopped")
        if tunnel.furlfile is not None:
            try:
                write_furl_file(tunnel.furlfile, furl, serial)
            except BBEnrollError as e:
                raise UpdateFailed(str(e)) from None
        self.state = State.MOVING
        d = tunnel.move_session(ref)
        d.addTimeout(self.timeout, tunnel.clock)
        d.addErrback(self._move_failed)
        d.addCallback(lambda answer: (answer, ref))
        return d

    def _move_failed(self, failure: Failure) -> None:
        # the new FURL answered but the session did not move: the old FURL goes back in
        # the file, so that a restart uses what the running tunnel uses
        tunnel = self.tunnel
        if tunnel.furlfile is not None:
            try:
                write_furl_file(tunnel.furlfile, tunnel.furl, tunnel.serial)
            except BBEnrollError as e:
                log.warn("bbenroll: cannot put the old FURL back: {error}", error=e)
        if failure.check(UpdateFailed):
            failure.raiseException()
        if failure.check(defer.TimeoutError, defer.CancelledError):
            raise UpdateFailed(f"the master did not move the session in {self.timeout:.0f}s")
        raise UpdateFailed(f"the master did not move the session: {failure.getErrorMessage()[:200]}")

    def _moved(self, result: tuple[dict[str, Any], Any]) -> Any:
        answer, ref = result
        serial, furl = self._current()
        tunnel = self.tunnel
        if tunnel.stopped:
            raise UpdateFailed("the tunnel was stopped")
        old_tub, self.tub = tunnel.adopt(furl, serial, self.tub), None
        log.info("bbenroll: the tunnel moved to FURL {serial} ({where})", serial=serial, where=where(furl))
        d = defer.maybeDeferred(tunnel.session_opened, answer, ref)
        d.addCallback(lambda _: ref.callRemote("confirm_furl", serial=serial))
        d.addCallback(self._confirmed, serial)
        d.addErrback(self._confirm_failed, serial)
        # the old connection ends only now, so the master saw the confirmation first
        d.addBoth(lambda _: old_tub.stopService() if old_tub is not None else None)
        d.addBoth(lambda _: self._finish(serial, "moved"))
        return d

    def _confirmed(self, answer: Any, serial: int) -> None:
        status = answer.get("status") if isinstance(answer, dict) else None
        log.info("bbenroll: the master says FURL {serial} is {status}", serial=serial, status=status)

    def _confirm_failed(self, failure: Failure, serial: int) -> None:
        # the move is done and the file written: nothing to undo; the master offers again
        why = failure.getErrorMessage()[:200]
        log.warn("bbenroll: cannot confirm FURL {serial}: {why}", serial=serial, why=why)

    def _failed(self, failure: Failure) -> None:
        serial, furl = self.target or (0, "")
        if failure.check(UpdateFailed):
            reason = str(failure.value)[:MAX_REASON]
        else:
            reason = f"unexpected error: {failure.getErrorMessage()}"[:MAX_REASON]
        self._stop_tub()
        log.warn(
            "bbenroll: keeping the old FURL; the new FURL {serial} ({where}) failed: {reason}",
            serial=serial, where=where(furl), reason=reason,
        )
        peer = self.tunnel.peer
        if peer is not None and not self.tunnel.stopped:
            try:
                d = peer.callRemote("furl_update_failed", serial=serial, reason=reason)
            except Exception:  # the report is best effort; the master offers again
                d = defer.succeed(None)
            d.addErrback(lambda f: log.info("bbenroll: cannot report the failed update: {why}",
                                            why=f.getErrorMessage()[:200]))
        self._finish(serial, reason)

    # -- bookkeeping ----------------------------------------------------------------------

    def _current(self) -> tuple[int, str]:
        assert self.target is not None
        return self.target

    def _stop_tub(self) -> None:
        tub, self.tub = self.tub, None
        if tub is not None:
            tub.stopService()

    def _finish(self, serial: int, outcome: str) -> None:
        self.state = State.IDLE
        self.target = None
        self._step = None
        self.outcomes.append((serial, outcome))
        del self.outcomes[:-KEEP_OUTCOMES]  # a worker that runs for years rotates many times
        self.tunnel.update_finished()
        pending, self.pending = self.pending, None
        if pending is not None:
            self.offer(*pending)
