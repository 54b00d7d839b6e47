"""The master.cfg hook: declare the registry's workers and serve their FURLs.

In master.cfg::

    from bbenroll.master import Enrollment
    enrollment = Enrollment("workers.toml", basedir=basedir)   # Buildbot gives master.cfg `basedir`
    enrollment.configure(c)                     # or, explicitly:
    # c['workers'] = enrollment.workers(max_builds=1)
    # c['protocols'] = {'pb': {'port': enrollment.pb_port}}
    # c['services'].append(enrollment.service())

Buildbot re-executes master.cfg on every reconfig, so all of this is cheap and
idempotent; the Foolscap service itself lives across reconfigs (Buildbot keeps
the running instance of a service whose name and class are unchanged).

Startup order: the Foolscap port opens only once Buildbot can take workers.
Buildbot starts c['services'] before its worker manager registers the workers on
the PB port, all inside its startup (or a reconfig) under ``master.initLock``;
the service therefore starts listening when it next gets that lock: right after
"BuildMaster is running", when the PB port listens and the workers are
registered. A taken Foolscap port still fails the startup: the service tries to
bind it while starting (:func:`check_port_free`).

The tunnels' PB legs are in-process (tunnel/inprocess.py): each stream is joined
to a protocol of the PB server factory of Buildbot's dispatcher for the
configured PB port (:meth:`EnrollmentMasterService.pb_server_factory`); a login
on such a leg came through a tunnel by construction. Both ports get a listen
backlog (``endpoints.DEFAULT_BACKLOG``) when their endpoint string names none.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

from buildbot.config.errors import ConfigErrors
from buildbot.util import service as bbservice
from twisted.internet import defer
from twisted.logger import Logger

from bbenroll.endpoints import check_loopback_endpoint, tcp_server, with_backlog
from bbenroll.errors import BBEnrollError
from bbenroll.master.reloader import POLL_INTERVAL
from bbenroll.master.service import EnrollmentService
from bbenroll.master.tub import ListenError
from bbenroll.registry import DEFAULT_PB
from bbenroll.registry import store as regmod
from bbenroll.registry.model import usable
from bbenroll.tunnel.inprocess import is_in_process

log = Logger(namespace="bbenroll")

SERVICE_NAME = "bbenroll"
RECONFIG_POLL = 0.5  # seconds between checks for builds of removed workers
RECONFIG_MAX_WAIT = 120.0  # then reconfigure anyway
# Many changes at once (50 workers enrolling through one invite) make one reconfig: it starts
# once the workers have not changed for RECONFIG_QUIET seconds, at most RECONFIG_DEBOUNCE_MAX
# after the first change (Buildbot itself only folds the requests made during a running one)
RECONFIG_QUIET = 1.0
RECONFIG_DEBOUNCE_MAX = 5.0


def _config_error(message: str) -> ConfigErrors:
    return ConfigErrors([f"bbenroll: {message}"])


def registry_location(
    registry: str | os.PathLike[str], basedir: str | os.PathLike[str] | None, caller_globals: dict[str, Any]
) -> Path:
    """Where the registry is: ``registry`` itself if absolute (after ``~``), else relative to

    1. ``basedir``, when master.cfg passes it (``Enrollment("workers.toml", basedir=basedir)``);
    2. only then the ``basedir`` global of the caller: Buildbot executes master.cfg with
       ``basedir`` in its globals, and ``buildbot checkconfig`` may run from any directory;
    3. the current directory (a helper module outside master.cfg, a plain script).
    """
    path = Path(registry).expanduser()
    if path.is_absolute():
        return path
    if basedir is None:
        candidate = caller_globals.get("basedir")
        basedir = candidate if isinstance(candidate, str) else None
    return Path(basedir if basedir is not None else os.getcwd()).expanduser() / path


class Enrollment:
    """The registry as master.cfg sees it.

    ``basedir`` is the master's basedir, against which a relative ``registry`` is
    resolved; see :func:`registry_location` for what happens without it.
    """

    def __init__(
        self,
        registry: str | os.PathLike[str] = "workers.toml",
        *,
        basedir: str | os.PathLike[str] | None = None,
    ) -> None:
        # the caller's globals are consulted only when basedir is not given
        caller = sys._getframe(1).f_globals if basedir is None else {}
        path = registry_location(registry, basedir, caller)
        self.path = path
        try:
            self.loaded = regmod.load(path)
        except BBEnrollError as e:
            raise _config_error(str(e)) from None
        for warning in self.loaded.warnings:
            log.warn("bbenroll: {warning}", warning=warning)
        # names whose Buildbot worker :meth:`latent` made: workers()/configure() leave them out
        self.latent_names: set[str] = set()

    @property
    def pb_port(self) -> str:
        pb = self.loaded.registry.master.pb
        if pb is None:
            raise _config_error(
                f"{self.path}: [master] has no 'pb' port; add pb = \"{DEFAULT_PB}\""
            )
        try:
            return check_loopback_endpoint(pb)
        except BBEnrollError as e:
            raise _config_error(f"{self.path}: {e}") from None

    def workers(self, **defaults: Any) -> list[Any]:
        """A ``buildbot.worker.Worker`` per usable (not revoked, not expired) worker.

        ``defaults`` are Worker options for every worker; a worker's
        ``[workers.NAME.buildbot]`` table overrides them.
        """
        from buildbot.worker import Worker

        result = []
        for name, worker in self._usable().items():
            if name in self.latent_names:  # its Buildbot worker is the latent one
                continue
            options = {**defaults, **worker.buildbot}
            try:
                result.append(Worker(name, worker.password, **options))
            except TypeError as e:
                raise _config_error(f"{self.path}: workers.{name}.buildbot: {e}") from None
        return result

    def names(self, *, tag: str | None = None) -> list[str]:
        """Names of the usable workers (optionally only those with ``tag``), for builders'
        ``workernames``: a builder naming a revoked worker would make Buildbot refuse the
        reconfig that removes it."""
        return [name for name, worker in self._usable().items() if tag is None or tag in worker.tags]

    def _usable(self) -> dict[str, Any]:
        # master.cfg runs now, on the master's clock: that is when Buildbot is configured
        from datetime import UTC, datetime

        return usable(self.loaded.registry, datetime.now(UTC))

    def latent(self, worker_class: Any, name: str, **options: Any) -> Any:
        """A Buildbot latent worker of ``worker_class`` (DockerLatentWorker, KubeLatentWorker, any
        AbstractLatentWorker) for registry worker ``name``, whose instances enroll with a fresh
        single-use invite instead of the PB password (docs/fleets.md, master/latent.py)."""
        from bbenroll.master.latent import latent_worker

        worker = latent_worker(self, worker_class, name, **options)
        self.latent_names.add(name)
        return worker

    def service(self, *, poll_interval: float = POLL_INTERVAL) -> EnrollmentMasterService:
        return EnrollmentMasterService(str(self.path), poll_interval=poll_interval)

    @property
    def buildbot_pb_port(self) -> str:
        """The port Buildbot's PB listens on: ``[master] legacy_pb`` (public) during a cut-over,
        else the loopback ``pb`` (always checked: the tunnels fall back to it afterwards).
        The loopback ``pb``, as a TCP port without a ``backlog=``, gets
        :data:`~bbenroll.endpoints.DEFAULT_BACKLOG`. ``legacy_pb`` is used exactly as written:
        it is the port the stock workers already use, and Buildbot takes another string for
        the same port as a second port to listen on (which then fails: address in use)."""
        loopback = self.pb_port
        legacy_pb = self.loaded.registry.master.legacy_pb
        if legacy_pb is None:
            return with_backlog(loopback)
        from bbenroll.master.legacy import check_legacy_pb

        try:
            return check_legacy_pb(legacy_pb)
        except BBEnrollError as e:
            raise _config_error(f"{self.path}: {e}") from None

    def configure(self, c: dict[str, Any], **worker_defaults: Any) -> None:
        """Add the workers, the PB port and the service to the config dict ``c``.

        A worker already in ``c['workers']`` (declared by hand) that the registry
        also declares is an error naming it: Buildbot would take one of the two
        silently. Latent workers made by :meth:`latent` are the registry's own.
        """
        ours = self.workers(**worker_defaults)
        existing = c.setdefault("workers", [])
        by_hand = {getattr(w, "name", None) for w in existing} - self.latent_names
        twice = sorted(by_hand & {worker.name for worker in ours})
        if twice:
            raise _config_error(
                f"worker{'s' if len(twice) > 1 else ''} {', '.join(map(repr, twice))} declared both in "
                f"c['workers'] and in the registry {self.path}: remove the hand-written "
                "Worker(...) from master.cfg (bbenroll declares it)"
            )
        existing.extend(ours)
        protocols = c.setdefault("protocols", {})
        port = self.buildbot_pb_port
        wanted = {"port": port}
        if protocols.get("pb", wanted) != wanted:
            raise _config_error(
                f"c['protocols']['pb'] is already set to {protocols['pb']!r}; bbenroll uses the "
                f"registry's {'master.legacy_pb' if port != self.pb_port else 'master.pb'} ({port}): "
                "remove the other setting"
            )
        protocols["pb"] = wanted
        c.setdefault("services", []).append(self.service())


def quiet_pb_failures(master: Any) -> None:
    """No tracebacks from Buildbot's PB port to its clients.

    Buildbot's PB dispatcher sets ``unsafeTracebacks = True``, so a worker whose
    login fails (a wrong password through its tunnel) is sent the master's
    traceback, file paths and all. The guide's rule is no server tracebacks to
    clients: the failure still arrives, typed (``UnauthorizedLogin``), with
    "Traceback unavailable" for text. Applied to the dispatchers that exist and,
    through this master's ``dispatcher_class``, to those made later.
    """
    pbmanager = getattr(master, "pbmanager", None)
    if pbmanager is None:
        return
    from buildbot.worker.protocols.manager.pb import Dispatcher

    class QuietDispatcher(Dispatcher):
        def __init__(self, config_portstr: Any, portstr: Any) -> None:
            super().__init__(config_portstr, portstr)
            self.serverFactory.unsafeTracebacks = False
            guard_pb_logins(self, master)

    if not getattr(pbmanager, "_bbenroll_quiet", False):
        pbmanager.dispatcher_class = QuietDispatcher  # this master only, not the class
        pbmanager._bbenroll_quiet = True
    for dispatcher in list(pbmanager.dispatchers.values()):
        factory = getattr(dispatcher, "serverFactory", None)
        if factory is not None:
            factory.unsafeTracebacks = False
        guard_pb_logins(dispatcher, master)


def guard_pb_logins(dispatcher: Any, master: Any) -> None:
    """Refuse, on this PB dispatcher, the logins master/legacy.py says must come through a tunnel.

    Wraps the instance's ``requestAvatarId`` (its portal holds the instance, so one
    made before bbenroll started is covered too); Buildbot's password check runs after.
    """
    if getattr(dispatcher, "_bbenroll_guarded", False) or not hasattr(dispatcher, "requestAvatarId"):
        return
    checked = dispatcher.requestAvatarId

    def requestAvatarId(creds: Any) -> Any:
        why = pb_login_refusal(master, creds)
        if why is not None:
            from twisted.cred.error import UnauthorizedLogin

            return defer.fail(UnauthorizedLogin())
        return checked(creds)

    dispatcher.requestAvatarId = requestAvatarId
    dispatcher._bbenroll_guarded = True


@defer.inlineCallbacks
def follow_pb_port(master: Any) -> Any:
    """Move every worker's PB registration to the configured PB port, now.

    Buildbot reconfigures a worker only when its own arguments change, so a new
    ``c['protocols']['pb']`` alone (``legacy_pb`` set or removed: the cut-over) would
    leave the workers on the old port until a restart. Re-registering each one
    (Buildbot's own ``WorkerRegistration.update``, a no-op when nothing changed) moves
    them; the old port's dispatcher, left without registrations, stops listening.
    Connected workers stay attached.
    """
    config = getattr(master, "config", None)
    manager = getattr(master, "workers", None)
    registrations = getattr(manager, "registrations", None)
    if config is None or not isinstance(registrations, dict) or "pb" not in getattr(config, "protocols", {}):
        return
    for registration in list(registrations.values()):
        worker = getattr(registration, "worker", None)
        if worker is None or getattr(registration, "pbReg", None) is None:
            continue
        try:
            yield registration.update(worker, config)
        except Exception:  # one worker's registration must not fail the reconfig of the rest
            log.failure("bbenroll: cannot move worker {worker!r} to the new PB port",
                        worker=getattr(worker, "workername", "?"))


def check_port_free(listen: str) -> None:
    """Raise :class:`ListenError` now if the TCP port ``listen`` names is taken.

    The service listens only after Buildbot's startup (the module docstring), too late
    to fail it; this bind (and close) while Buildbot is starting keeps a taken port a
    failed startup. SO_REUSEADDR as Twisted's own port has it: a port in TIME_WAIT is free.
    Other kinds (``unix:``, ``systemd:``) are checked when the service listens.
    """
    tcp = tcp_server(listen)
    if tcp is None or tcp[1] is None:
        return
    kind, port, interface = tcp
    ipv6 = kind == "tcp6" or (interface is not None and ":" in interface)
    family = socket.AF_INET6 if ipv6 else socket.AF_INET
    host = interface if interface is not None else ("::" if family == socket.AF_INET6 else "")
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            raise ListenError(listen, e.strerror or str(e)) from None


def when_buildbot_ready(master: Any) -> defer.Deferred[None]:
    """Fires once Buildbot's startup (or the reconfig) in progress is over.

    Buildbot holds ``master.initLock`` for its whole startup and for each reconfig;
    the workers are registered on the PB port (and it listens) before it lets go.
    Waiting for the lock, then giving it back at once, is that point. A master
    without the lock (a test's stand-in) is ready now.
    """
    lock = getattr(master, "initLock", None)
    if lock is None:
        return defer.succeed(None)

    def got(_: Any) -> None:
        lock.release()

    return lock.acquire().addCallback(got)


def pb_server_factory(master: Any) -> Any:
    """The PB server factory of Buildbot's dispatcher for its configured PB port, or None.

    None (no PB port configured, no worker registered yet, its port not listening)
    makes the tunnel dial the PB port over loopback TCP instead, which then fails
    or succeeds as it always did.
    """
    dispatchers = getattr(getattr(master, "pbmanager", None), "dispatchers", None)
    if not dispatchers:
        return None
    protocols = getattr(getattr(master, "config", None), "protocols", None) or {}
    port = (protocols.get("pb") or {}).get("port")
    if port is not None:
        portstr = port if isinstance(port, str) and ":" in port else f"tcp:{port}"  # as Buildbot's
        dispatcher = dispatchers.get(portstr)  # BaseManager.register normalizes it
    elif len(dispatchers) == 1:
        (dispatcher,) = dispatchers.values()
    else:
        dispatcher = None
    if dispatcher is None or getattr(dispatcher, "port", None) is None:
        return None
    return getattr(dispatcher, "serverFactory", None)


def running_service(master: Any) -> EnrollmentMasterService | None:
    """This master's bbenroll service: c['services'] are children of Buildbot's service
    manager (``master.service_manager``), not of the master itself."""
    for parent in (getattr(master, "service_manager", None), master):
        named = getattr(parent, "namedServices", None) or {}
        if SERVICE_NAME in named:
            return named[SERVICE_NAME]
    return None


def pb_login_refusal(master: Any, creds: Any) -> str | None:
    """Why this PB login is refused by bbenroll (logged), or None: Buildbot decides."""
    from bbenroll.master import legacy

    enrollment = getattr(running_service(master), "enrollment", None)
    if enrollment is None:  # not serving (starting, stopping): no tunnel, no registry in force
        return None
    try:
        name = creds.username.decode("utf-8") if isinstance(creds.username, bytes) else str(creds.username)
    except (AttributeError, UnicodeDecodeError):
        return None  # Buildbot refuses it itself
    registry = enrollment.gate.registry
    transport = getattr(getattr(creds, "broker", None), "transport", None)
    if is_in_process(transport):  # an in-process leg: only a tunnel makes one (tunnel/inprocess.py)
        return None
    peer = legacy.address(transport.getPeer()) if transport is not None else None
    why = legacy.login_refusal(
        registry.workers.get(name),
        peer,
        enrollment.tunnel_addresses(),
        legacy_pb=registry.master.legacy_pb,
    )
    if why is not None:
        where = f"{peer[0]}:{peer[1]}" if peer is not None else "an unknown address"
        log.warn("bbenroll: refused a direct PB login as {worker!r} from {peer}: {why}",
                 worker=name, peer=where, why=why)
    return why


class EnrollmentMasterService(bbservice.BuildbotService):
    """Runs an :class:`EnrollmentService` as a child of the Buildbot master.

    It survives reconfigs (the Tub and its connections are kept), and when the
    set of usable workers changes it asks the master to reconfigure itself, so a
    worker added with ``bbenroll add`` can attach without a restart.
    """

    name = SERVICE_NAME
    enrollment: EnrollmentService | None = None
    _reconfig_timer: Any = None
    _wanted: set[str] = frozenset()  # type: ignore[assignment]
    _waited = 0.0

    def checkConfig(self, registry_path: str, poll_interval: float = POLL_INTERVAL) -> None:
        if poll_interval <= 0:
            from buildbot.config.errors import error

            error("bbenroll: poll_interval must be positive")

    @defer.inlineCallbacks
    def reconfigService(self, registry_path: str, poll_interval: float = POLL_INTERVAL) -> Any:
        quiet_pb_failures(self.master)
        changed = (registry_path, poll_interval) != (
            getattr(self, "registry_path", None),
            getattr(self, "poll_interval", None),
        )
        self.registry_path = registry_path
        self.poll_interval = poll_interval
        if changed and self.enrollment is not None:
            yield self._stop_enrollment()
            yield self._start_enrollment()

    @defer.inlineCallbacks
    def reconfigServiceWithSibling(self, sibling: Any) -> Any:
        yield super().reconfigServiceWithSibling(sibling)
        # Buildbot compares later siblings with the first arguments forever; keep them current
        self._config_args, self._config_kwargs = sibling._config_args, sibling._config_kwargs
        yield follow_pb_port(self.master)

    @defer.inlineCallbacks
    def startService(self) -> Any:
        yield super().startService()
        quiet_pb_failures(self.master)
        yield self._start_enrollment()

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        if self._reconfig_timer is not None and self._reconfig_timer.active():
            self._reconfig_timer.cancel()
        yield self._stop_enrollment()
        yield super().stopService()

    def _start_enrollment(self) -> defer.Deferred[None]:
        """Make the Foolscap service and start it once Buildbot can take workers
        (:func:`when_buildbot_ready`); fails now (after one log line) if its port is taken."""

        def has_running_build(name: str) -> bool:
            # the check _busy_removed_workers makes, for one worker
            manager = getattr(self.master, "workers", None)
            worker = (getattr(manager, "workers", {}) or {}).get(name)
            wfbs = getattr(worker, "workerforbuilders", {}) or {}
            return any(wfb.isBusy() for wfb in wfbs.values())

        def is_attached(name: str) -> bool:
            # Buildbot's Worker has a connection (conn) exactly while it is attached
            manager = getattr(self.master, "workers", None)
            worker = (getattr(manager, "workers", {}) or {}).get(name)
            return getattr(worker, "conn", None) is not None

        self.enrollment = EnrollmentService(
            self.registry_path,
            reactor=self.master.reactor,  # Buildbot's own: the one the master runs on
            poll_interval=self.poll_interval,
            on_workers_changed=self._workers_changed,
            busy=has_running_build,  # ephemeral workers are never removed during a build
            pb_server_factory=lambda: pb_server_factory(self.master),
            attached=is_attached,  # the status file says whether Buildbot has the worker
        )
        enrollment = self.enrollment
        listen = enrollment.loaded.registry.master.listen
        try:
            check_port_free(listen)
        except ListenError as e:
            log.error("bbenroll: {error}", error=str(e))
            self.enrollment = None
            return defer.fail(e)

        def start(_: Any) -> None:
            if self.enrollment is enrollment and self.running:  # not stopped or replaced meanwhile
                enrollment.startService()  # a failed bind is logged there, once

        # never waited for here: Buildbot is starting this service while holding the lock
        when_buildbot_ready(self.master).addCallback(start).addErrback(
            lambda f: log.failure("bbenroll: while starting the Foolscap service", f)
        )
        return defer.succeed(None)

    @defer.inlineCallbacks
    def _stop_enrollment(self) -> Any:
        enrollment, self.enrollment = self.enrollment, None
        if enrollment is not None and enrollment.running:
            yield enrollment.stopService()

    def _workers_changed(self, workers: dict[str, Any]) -> None:
        log.info(
            "bbenroll: workers, passwords or options changed ({count} usable); reconfiguring Buildbot",
            count=len(workers),
        )
        self._wanted = set(workers)
        self._waited = 0.0
        now = self.master.reactor.seconds()
        if getattr(self, "_burst_started", None) is None:
            self._burst_started = now  # the first change of a burst: RECONFIG_DEBOUNCE_MAX runs from here
        self._last_change = now
        self._reconfig_when_idle()

    def _busy_removed_workers(self) -> list[str]:
        """Workers the reconfig would remove that are still finishing a build.

        Buildbot 4.3 breaks (AttributeError in Worker.buildFinished, and the master
        can no longer shut down) if a worker is removed while its interrupted build
        is still finishing; a revoked worker's build ends within a second or two.
        """
        manager = getattr(self.master, "workers", None)
        configured = getattr(manager, "workers", {}) or {}
        busy = []
        for name, worker in configured.items():
            if name in self._wanted:
                continue
            wfbs = getattr(worker, "workerforbuilders", {}) or {}
            if any(wfb.isBusy() for wfb in wfbs.values()):
                busy.append(name)
        return busy

    def _reconfig_when_idle(self) -> None:
        from buildbot.util.eventual import eventually  # fire and forget: never wait on a reconfig

        if self._reconfig_timer is not None and self._reconfig_timer.active():
            return  # already waiting; it will see the newest wanted set
        self._reconfig_timer = None
        started = getattr(self, "_burst_started", None)
        if started is not None:  # debounce: a later change moved the quiet time; look again then
            due = min(self._last_change + RECONFIG_QUIET, started + RECONFIG_DEBOUNCE_MAX)
            wait = due - self.master.reactor.seconds()
            if wait > 0:
                self._reconfig_timer = self.master.reactor.callLater(wait, self._reconfig_when_idle)
                return
        busy = self._busy_removed_workers()
        if busy and self._waited < RECONFIG_MAX_WAIT:
            if self._waited == 0:
                log.info(
                    "bbenroll: waiting for the builds of {workers} to end before reconfiguring",
                    workers=", ".join(sorted(busy)),
                )
            self._waited += RECONFIG_POLL
            self._reconfig_timer = self.master.reactor.callLater(RECONFIG_POLL, self._reconfig_when_idle)
            return
        self._burst_started = None  # the reconfig below sees every change until now
        eventually(self.master.reconfig)
