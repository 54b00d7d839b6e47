"""Follow the registry file: reload it when its signature changes, refuse a broken edit.

The service polls every :data:`POLL_INTERVAL` seconds. A file whose signature
(mtime, size, inode) is unchanged is not read again: the poll is one ``stat``.
A changed file is loaded and checked whole, off the event loop
(:meth:`RegistryReloader.poll_off_loop`: a 5,000-worker file takes a quarter of
a second to parse), one load at a time; a change made while one is in flight is
picked up by the next poll. The result is applied on the loop, unless a
synchronous :meth:`~RegistryReloader.poll` applied a newer file meanwhile. If
it is broken (or changes the master's identity other than by ``master
roll-identity``) it is refused with one log line, and the last good registry
stays in force until the file changes again.
``[master] listen/location/pb`` take effect only on a restart: a change to
them is warned about once. ``legacy_pb`` (the gradual cut-over) is not one of
them: Buildbot's PB port follows it at the next reconfig, which the service asks
for when it changes (``EnrollmentService._legacy_pb_changed``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from bbenroll.errors import BBEnrollError
from bbenroll.registry import store
from bbenroll.registry.store import LoadedRegistry

log = Logger(namespace="bbenroll")

POLL_INTERVAL = 1.0  # seconds between registry checks (the issue asks for at least 1/s)

Signature = tuple[int, int, int] | None  # None: there is no file
_NEVER = object()  # a signature that matches nothing


def file_signature(path: Path) -> Signature:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def master_settings(loaded: LoadedRegistry) -> tuple[object, ...]:
    """The ``[master]`` settings that are read only when the service starts (not ``legacy_pb``:
    removing it closes the public PB port at the next reconfig, without a restart)."""
    master = loaded.registry.master
    return (master.listen, master.location, master.pb)


class RegistryReloader:
    """Holds the last good registry; :meth:`poll` swaps in a changed, valid one."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # load now, so that a broken registry fails master.cfg/startup loudly
        self.signature: Signature = file_signature(self.path)  # before the read, as in poll()
        self.loaded = store.load(self.path)
        self.running_settings: tuple[object, ...] | None = None  # what the service started with
        self._refused: object = _NEVER
        self._warned: tuple[object, ...] | None = None
        self.generation = 0  # grows with every registry put in force
        self.loading: defer.Deferred[Any] | None = None  # the off-loop load in flight
        self._waiters: list[defer.Deferred[None]] = []

    def unchanged(self) -> bool:
        """Whether the file is as last loaded (or last refused): one ``stat``."""
        signature = file_signature(self.path)
        return signature == self.signature or signature == self._refused

    def started(self) -> None:
        """The service now runs with the current ``[master]`` settings."""
        self.running_settings = master_settings(self.loaded)
        self._warned = None

    def poll(self) -> LoadedRegistry | None:
        """The newly loaded registry if the file changed and is valid, else None (on this thread)."""
        signature = file_signature(self.path)
        if signature == self.signature or signature == self._refused:
            return None
        try:
            loaded = self._load(signature)
            self._check_identity_change(loaded)
        except BBEnrollError as e:
            self._refuse(signature, e)
            return None
        return self._accept(signature, loaded)

    def poll_off_loop(
        self,
        run: Callable[[Callable[[], Any]], defer.Deferred[Any]],
        prepare: Callable[[LoadedRegistry, LoadedRegistry], Any] | None = None,
    ) -> defer.Deferred[tuple[LoadedRegistry, Any] | None]:
        """:meth:`poll`, with the file read (and ``prepare(old, new)`` called) in ``run`` (a thread).

        Fires with ``(loaded, prepared)`` once the new registry is in force, or None: unchanged,
        refused, or overtaken by a synchronous poll. While one load is in flight, another call
        fires (with None) when it has settled: the caller may look again then.
        """
        if self.loading is not None:
            waiter: defer.Deferred[None] = defer.Deferred()
            self._waiters.append(waiter)
            return waiter  # type: ignore[return-value]
        signature = file_signature(self.path)
        if signature == self.signature or signature == self._refused:
            return defer.succeed(None)
        old, generation = self.loaded, self.generation

        def work() -> tuple[LoadedRegistry, Any]:  # in the thread: nothing of ours is touched
            loaded = self._load(signature)
            return loaded, (prepare(old, loaded) if prepare is not None else None)

        def settled(result: Any) -> tuple[LoadedRegistry, Any] | None:
            self.loading = None
            waiters, self._waiters = self._waiters, []
            try:
                return self._settle(result, signature, generation)
            finally:
                for waiter in waiters:
                    waiter.callback(None)

        d = self.loading = defer.maybeDeferred(run, work)
        d.addBoth(settled)
        return d

    def _settle(
        self, result: Any, signature: Signature, generation: int
    ) -> tuple[LoadedRegistry, Any] | None:
        if self.generation != generation:
            return None  # a synchronous poll put a newer file in force; the next poll looks again
        if isinstance(result, Failure):
            error = result.value
            if not isinstance(error, BBEnrollError):  # a bug, not a broken file: said once, kept out
                log.failure("bbenroll: cannot reload the registry", result)
                error = BBEnrollError(f"{self.path}: {type(error).__name__}")
            self._refuse(signature, error)
            return None
        loaded, prepared = result
        try:
            self._check_identity_change(loaded)
        except BBEnrollError as e:
            self._refuse(signature, e)
            return None
        return self._accept(signature, loaded), prepared

    def _load(self, signature: Signature) -> LoadedRegistry:
        if signature is None:
            raise BBEnrollError(f"{self.path}: the registry file disappeared")
        return store.load(self.path)

    def _refuse(self, signature: Signature, error: BBEnrollError) -> None:
        self._refused = signature
        log.error(
            "bbenroll: keeping the last good registry; the changed one is refused: {error}",
            error=str(error),
        )

    def _accept(self, signature: Signature, loaded: LoadedRegistry) -> LoadedRegistry:
        self._warn_if_master_changed(loaded)
        self.signature = signature
        self._refused = _NEVER
        self.loaded = loaded
        self.generation += 1
        log.info(
            "bbenroll: reloaded {path} ({count} workers)",
            path=str(self.path),
            count=len(loaded.registry.workers),
        )
        return loaded

    def _check_identity_change(self, loaded: LoadedRegistry) -> None:
        """A new ``master.tubid`` is a roll (``master roll-identity``) or it is refused.

        A roll names the identity being served as ``previous`` (served on beside the
        new one), or has no ``previous`` at all (``--grace 0``: the old one is refused
        from now on). A tubid that replaced some other identity is a hand edit that
        would cut off every worker: restart the master to use it.
        """
        old, new = self.loaded.registry.master, loaded.registry.master
        if new.tubid == old.tubid:
            return
        if new.previous is not None and new.previous.tubid != old.tubid:
            raise BBEnrollError(
                f"{self.path}: master.tubid changed, and master.previous is not the identity being served "
                f"({old.tubid}); restart the master to use a new identity"
            )
        if new.previous is None:
            log.warn(
                "bbenroll: the master identity was rolled without an overlap: tub {tubid} is no longer "
                "served; every worker needs its new FURL",
                tubid=old.tubid,
            )

    def _warn_if_master_changed(self, loaded: LoadedRegistry) -> None:
        running = self.running_settings
        if running is None or master_settings(loaded) == running:  # not started: nothing to warn
            self._warned = None
            return
        if running != self._warned:
            log.warn(
                "bbenroll: [master] listen/location/pb changed in the registry; "
                "they take effect when the master restarts"
            )
        self._warned = running
