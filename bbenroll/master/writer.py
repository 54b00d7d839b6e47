"""The master's own registry writes: confirmed deliveries and policy rotations.

The running master writes ``workers.toml`` through exactly the CLI's path
(:func:`bbenroll.registry.store.edit`: the lock, the tomlkit edit, the audit
record), so a concurrent ``bbenroll add`` loses nothing and every change the
master makes is in the audit log under actor ``master``.

Edits are functions of an :class:`~bbenroll.registry.store.Editor`. They are
queued and applied together in ONE ``store.edit`` (50 confirmations arriving
in one reactor turn are one write, one lock, one fsync'd audit append), in a
thread, because the lock may be held by the CLI for seconds and the event loop
must keep serving tunnels meanwhile. A batch that cannot be written (the lock
timed out, the disk is full) is logged and retried on the next :meth:`flush`
(the service calls it every tick): nothing queued is lost.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure

from bbenroll.errors import BBEnrollError, LockTimeout, RegistryError
from bbenroll.registry import store
from bbenroll.registry.store import Editor

log = Logger(namespace="bbenroll")

Edit = Callable[[Editor], None]
# runs a blocking function off the event loop; a Deferred of its result
Runner = Callable[[Callable[[], Any]], "defer.Deferred[Any]"]

# the master must not wait long on a lock the CLI holds: it retries on the next tick
LOCK_TIMEOUT = 2.0
# the batch that failed to be written this many times in a row is logged again
# only every so many ticks, so a long-held lock is not one log line a second
LOG_EVERY_FAILURES = 60
# seconds the service's stop waits for the last writes (a stuck disk must not hang the master's shutdown)
CLOSE_TIMEOUT = 10.0


def master_actor() -> dict[str, str]:
    """Who the audit log says made the master's own changes: the master, on this host."""
    return {"by": "master", "host": socket.gethostname().split(".")[0]}


def thread_runner(reactor: Any) -> Runner:
    """Run in the reactor's thread pool (the default for a real master).

    A test clock (MemoryReactorClock) has no threads: there the write runs at once.
    """
    if not hasattr(reactor, "getThreadPool"):
        return run_here

    def run(function: Callable[[], Any]) -> defer.Deferred[Any]:
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), function)

    return run


def run_here(function: Callable[[], Any]) -> defer.Deferred[Any]:
    """Run at once, in the caller's thread (tests; a blocking write is fine there)."""
    return defer.maybeDeferred(function)


@dataclass
class _Queued:
    edit: Edit
    done: defer.Deferred[None] = field(default_factory=defer.Deferred)


class RegistryWriter:
    """Queues edits and writes them in batches; see the module's docstring.

    ``now`` gives the audit records' time (the service's injected clock);
    ``on_written`` is called after each successful write (the service reloads
    the registry at once then, not at the next poll); ``schedule(0, f)``
    (a clock's ``callLater``) coalesces the edits of one reactor turn.
    """

    lock_timeout: float = LOCK_TIMEOUT

    def __init__(
        self,
        path: Path | str,
        *,
        now: Callable[[], datetime],
        run: Runner,
        schedule: Callable[..., Any],
        on_written: Callable[[], None] | None = None,
        actor: dict[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.now = now
        self.run = run
        self.schedule = schedule
        self.on_written = on_written
        self.actor = actor if actor is not None else master_actor()
        self.queue: list[_Queued] = []
        self.in_flight: list[_Queued] | None = None
        self.writes = 0  # successful store.edit calls (for tests and the log)
        self.failures = 0  # consecutive failed batches
        self._scheduled: Any = None
        self._stopped = False
        self._closing: list[defer.Deferred[None]] = []  # close() waiters
        self._close_timer: Any = None
        self._last_batch_tried = False

    @property
    def pending(self) -> int:
        """Edits not written yet (queued or being written)."""
        return len(self.queue) + len(self.in_flight or ())

    def submit(self, edit: Edit) -> defer.Deferred[None]:
        """Queue ``edit``; the Deferred fires once it is on disk, or fails with the
        BBEnrollError the edit itself raised (that edit is dropped, the rest of its
        batch is written). A write failure does not fail it: it is retried."""
        queued = _Queued(edit)
        self.queue.append(queued)
        # after a failed write, the next tick retries (not every submit: the lock is busy)
        if self._scheduled is None and self.in_flight is None and not self.failures and not self._stopped:
            self._scheduled = self.schedule(0, self._scheduled_flush)
        return queued.done

    def _scheduled_flush(self) -> None:
        self._scheduled = None
        self.flush()

    def flush(self) -> None:
        """Write everything queued in one batch, unless a batch is being written."""
        if self.in_flight is not None or not self.queue or self._stopped:
            return
        batch, self.queue = self.queue, []
        self.in_flight = batch
        now = self.now()
        d = self.run(lambda: self._write(batch, now))
        d.addCallbacks(self._written, self._failed, callbackArgs=(batch,), errbackArgs=(batch,))

    def _write(self, batch: list[_Queued], now: datetime) -> list[BBEnrollError | None]:
        """In the thread: one store.edit for the whole batch; each edit's own error, if any."""
        errors: list[BBEnrollError | None] = []
        with store.edit(self.path, self.lock_timeout, actor=self.actor, now=now) as editor:
            for queued in batch:
                try:
                    queued.edit(editor)
                except BBEnrollError as e:  # this edit no longer applies (worker removed, revoked)
                    errors.append(e)
                else:
                    errors.append(None)
        return errors

    def _written(self, errors: list[BBEnrollError | None], batch: list[_Queued]) -> None:
        self.in_flight = None
        self.writes += 1
        if self.failures:
            log.info("bbenroll: registry written again after {count} failed attempts", count=self.failures)
        self.failures = 0
        if self.on_written is not None:
            try:
                self.on_written()
            except Exception:
                log.failure("bbenroll: unexpected error after a registry write")
        for queued, error in zip(batch, errors, strict=True):
            if error is None:
                queued.done.callback(None)
            else:
                queued.done.errback(Failure(error))
        if self._closing:
            self._close_step()
        elif self.queue and self._scheduled is None and not self._stopped:
            self._scheduled = self.schedule(0, self._scheduled_flush)

    def _failed(self, failure: Failure, batch: list[_Queued]) -> None:
        self.in_flight = None
        self.queue[:0] = batch  # first in line for the next attempt: nothing is lost
        self.failures += 1
        if failure.check(LockTimeout, RegistryError, BBEnrollError, OSError):
            why = str(failure.value)
        else:
            log.failure("bbenroll: unexpected error writing the registry", failure)
            why = "unexpected error"
        if self.failures == 1 or self.failures % LOG_EVERY_FAILURES == 0:
            log.warn(
                "bbenroll: cannot write the registry ({count} changes wait; retried): {why}",
                count=len(self.queue),
                why=why,
            )
        if self._closing:
            self._close_step()

    def close(self) -> defer.Deferred[None]:
        """Stop, after writing what is queued: the batch in flight, then one last batch.

        For the service's stop: the last audit records (the refusal summaries that
        were not due yet) and confirmations that arrived last are not lost. A last
        batch that cannot be written is logged with its size; nothing waits longer.
        """
        done: defer.Deferred[None] = defer.Deferred()
        self._closing.append(done)
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._scheduled = None
        if self._close_timer is None:
            self._close_timer = self.schedule(CLOSE_TIMEOUT, self._close_expired)
        self._close_step()
        return done

    def _close_expired(self) -> None:
        self._close_timer = None
        log.warn("bbenroll: the last registry write did not finish within {timeout:.0f} s",
                 timeout=CLOSE_TIMEOUT)
        self._finish_close()

    def _close_step(self) -> None:
        if self.in_flight is not None:
            return  # _written or _failed comes back here
        if self.queue and not self._last_batch_tried and not self._stopped:
            self._last_batch_tried = True
            self.flush()
            return
        self._finish_close()

    def _finish_close(self) -> None:
        if not self._closing:
            return
        if self._close_timer is not None and self._close_timer.active():
            self._close_timer.cancel()
        self._close_timer = None
        unwritten = len(self.queue) + len(self.in_flight or ())
        if unwritten:
            log.warn("bbenroll: stopping with {count} registry changes not written", count=unwritten)
        self.stop()
        waiters, self._closing = self._closing, []
        for waiter in waiters:
            waiter.callback(None)

    def stop(self) -> None:
        """No more writes (the service stops); what is queued is not written."""
        self._stopped = True
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._scheduled = None
