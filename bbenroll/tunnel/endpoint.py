"""The Twisted client endpoint buildbot-worker uses:
``bbenroll:furlfile=PATH[:resume=S][:timeout=S][:keyfile=PATH]``.

buildbot-worker's ``connection_string`` makes Twisted call the plugin in
``twisted/plugins/bbenroll_endpoints.py``, whose parser owns one
:class:`TunnelTable` for the process and builds a :class:`TunnelEndpoint` with
:func:`endpoint_from_string`. Each ``connect()`` opens one stream of the
process's tunnel to that FURL: every buildbot-worker reconnect reuses it.
"""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twisted.internet import defer, error
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from bbenroll.errors import BBEnrollError
from bbenroll.furl import parse_furl
from bbenroll.tunnel.core import RESUME_DEADLINE_DEFAULT
from bbenroll.tunnel.furlfile import FurlFile, FurlFileError, read_furl_file
from bbenroll.tunnel.worker_side import CONNECT_TIMEOUT, WorkerTunnel

log = Logger(namespace="bbenroll")


class TunnelTable:
    """The tunnels of one process, one per (FURL file, resume deadline).

    Keyed by the file, not by the FURL in it: a tunnel that moved to a pushed FURL
    (docs/rotation.md) rewrote the file itself and keeps serving its endpoint. A file
    that holds a FURL the tunnel does not know was replaced from outside (``worker
    create --force``): an idle tunnel is stopped and a fresh one started; one with
    streams keeps running, as buildbot-worker's connection is alive on it.

    A tunnel leaves the table when it stops, so a later ``connect()`` starts a fresh
    one. ``make_tunnel`` builds a tunnel (tests pass one that needs no network).

    ``exit_on_refusal`` (default: ``BBENROLL_EXIT_ON_REFUSAL=1`` in the environment, which
    ``bbenroll worker run`` sets for its child): on a refusal no retry changes, write
    ``BASEDIR/bbenroll.refused`` (the FURL file's directory) and stop the reactor, so that
    the worker process exits and ``worker run`` exits 3. Without it the tunnel retries slowly.
    """

    def __init__(self, make_tunnel: Any = WorkerTunnel, exit_on_refusal: bool | None = None) -> None:
        from bbenroll.worker.run import ENV_EXIT_ON_REFUSAL

        self.make_tunnel = make_tunnel
        if exit_on_refusal is None:
            exit_on_refusal = os.environ.get(ENV_EXIT_ON_REFUSAL) == "1"
        self.exit_on_refusal = exit_on_refusal
        self._reactor: Any = None
        self.refused: Path | None = None  # the marker written, once refused
        self._tunnels: dict[tuple[Path, float], WorkerTunnel] = {}
        self._shutdown_trigger_added = False
        self._shutting_down = False

    def __len__(self) -> int:
        return len(self._tunnels)

    def get(
        self,
        furlfile: Path,
        current: FurlFile,
        reactor: Any,
        resume_deadline: float = RESUME_DEADLINE_DEFAULT,
        worker_key: bytes | None = None,
    ) -> WorkerTunnel:
        """The running tunnel of ``furlfile`` (which holds ``current``); started on first use,
        with the worker's key ``worker_key`` (PEM; None: a random one)."""
        if self._shutting_down:  # a tunnel started now would outlive the shutdown
            raise error.ConnectError(string="the worker is shutting down")
        key = (Path(furlfile).absolute(), resume_deadline)
        tunnel = self._tunnels.get(key)
        if tunnel is not None and not tunnel.holds(current.furl) and not tunnel.streams:
            log.info("bbenroll: {path} holds another FURL; starting a new tunnel with it", path=key[0])
            tunnel.stop()  # on_stopped takes it out of the table
            self._tunnels.pop(key, None)
            tunnel = None
        if tunnel is None:
            self._reactor = reactor
            options: dict[str, Any] = {}
            if worker_key is not None:
                options["key"] = worker_key
            if self.exit_on_refusal:
                options["on_refused"] = self._refused
            tunnel = self.make_tunnel(
                current.furl,
                reactor=reactor,
                resume_deadline=resume_deadline,
                on_stopped=self._forget,
                furlfile=key[0],
                serial=current.serial,
                **options,
            )
            self._tunnels[key] = tunnel
            tunnel.start()
        if not self._shutdown_trigger_added:
            # one trigger for the table, not one per tunnel: tunnels come and go
            reactor.addSystemEventTrigger("before", "shutdown", self.shutdown)
            self._shutdown_trigger_added = True
        return tunnel

    def shutdown(self) -> defer.Deferred:
        """Close every tunnel's streams cleanly (Buildbot sees a normal disconnect), then stop them."""
        self._shutting_down = True
        return defer.gatherResults([tunnel.shutdown() for tunnel in list(self._tunnels.values())])

    def _refused(self, tunnel: WorkerTunnel, message: str) -> None:
        """The master refused ``tunnel`` for good: leave the marker, then stop the worker process."""
        from twisted.internet.error import ReactorNotRunning

        from bbenroll.worker.run import write_refused_marker

        if tunnel.furlfile is None:
            return
        reactor = self._reactor
        when = datetime.fromtimestamp(reactor.seconds(), UTC).replace(microsecond=0)
        try:
            self.refused = write_refused_marker(Path(tunnel.furlfile).parent, when, message)
        except OSError as e:
            # without the marker an exit would read as a clean stop: keep retrying, slowly, as before
            log.error("bbenroll: cannot write the refusal marker ({why}); retrying instead", why=e.strerror)
            tunnel.on_refused = None
            tunnel._retry = tunnel.clock.callLater(tunnel.refused_retry, tunnel._connect)
            return
        log.error("bbenroll: the master refused this worker for good; stopping the worker")
        tunnel.stop()
        with contextlib.suppress(ReactorNotRunning):
            reactor.stop()

    def _forget(self, tunnel: WorkerTunnel) -> None:
        for key, known in list(self._tunnels.items()):
            if known is tunnel:
                del self._tunnels[key]


@implementer(IStreamClientEndpoint)
class TunnelEndpoint:
    """``bbenroll:furlfile=PATH[:resume=SECONDS][:keyfile=PATH]``: a stream through the worker's tunnel.

    ``keyfile``: the worker's key (``bbenroll.pem``), which every connection to the
    master is made with (docs/security.md); without it, ``bbenroll.pem`` beside the FURL
    file, made on first use.
    """

    def __init__(
        self,
        reactor: Any,
        furlfile: str,
        resume: float = RESUME_DEADLINE_DEFAULT,
        timeout: float = CONNECT_TIMEOUT,
        *,
        tunnels: TunnelTable,
        keyfile: str | None = None,
    ) -> None:
        self.reactor = reactor
        self.furlfile = Path(furlfile)
        self.resume = resume
        self.timeout = timeout
        self.tunnels = tunnels
        self.keyfile = Path(keyfile) if keyfile else None

    def _furl(self) -> FurlFile:
        try:
            current = read_furl_file(self.furlfile)
        except FurlFileError as e:
            raise error.ConnectError(string=str(e)) from None
        try:
            parse_furl(current.furl)
        except BBEnrollError as e:
            raise error.ConnectError(string=f"{self.furlfile}: {e}") from None
        return current

    def _key(self) -> bytes:
        """The worker's key, read at each connect (a tunnel that runs keeps the one it started with).

        Without ``keyfile=`` (a tac written before binding) it is ``bbenroll.pem`` beside the
        FURL file, made there on first use: one key per basedir, never one per start.
        """
        from bbenroll.worker.setup import KEY_FILE, WorkerSetupError, persistent_worker_key, read_worker_key

        try:
            if self.keyfile is None:
                return persistent_worker_key(self.furlfile.parent / KEY_FILE)
            pem = read_worker_key(self.keyfile)
        except WorkerSetupError as e:
            raise error.ConnectError(string=str(e)) from None
        if pem is None:  # named, so made by `worker create`; the FURL may be bound to it: never remade
            raise error.ConnectError(string=f"{self.keyfile}: cannot read the worker's key: it is missing")
        return pem

    def connect(self, protocolFactory: Any) -> defer.Deferred:
        # like Twisted's connectors: doStart now, doStop when the attempt fails or the
        # connection ends (buildbot-worker's shutdown waits for stopFactory)
        protocolFactory.doStart()
        try:
            current = self._furl()
            tunnel = self.tunnels.get(self.furlfile, current, self.reactor, self.resume, self._key())
        except Exception as e:
            failure = e if isinstance(e, error.ConnectError) else error.ConnectError(string=str(e))
            return defer.fail(self._failed(Failure(failure), protocolFactory))  # connect() gives a Deferred
        d = tunnel.when_ready(self.timeout)

        def ready(tunnel: WorkerTunnel) -> Any:
            protocol = protocolFactory.buildProtocol(tunnel.address)
            if protocol is None:
                raise error.ConnectError(string="the factory refused the connection")
            tunnel.open_stream(protocol, protocolFactory)
            return protocol

        d.addCallback(ready)
        d.addErrback(self._failed, protocolFactory)
        return d

    @staticmethod
    def _failed(failure: Failure, protocolFactory: Any) -> Failure:
        log.warn(
            "bbenroll: cannot connect to the master: {why}",
            why=failure.value.osError
            if isinstance(failure.value, error.ConnectError) and failure.value.osError
            else failure.getErrorMessage(),
        )
        protocolFactory.doStop()
        return failure


def endpoint_from_string(tunnels: TunnelTable, reactor: Any, *args: str, **kwargs: str) -> TunnelEndpoint:
    """The endpoint-string parser behind ``bbenroll:furlfile=...``; streams go through ``tunnels``."""
    furlfile = kwargs.pop("furlfile", None) or (args[0] if args else None)
    if not furlfile:
        raise ValueError("bbenroll endpoint needs furlfile=PATH")
    resume = float(kwargs.pop("resume", RESUME_DEADLINE_DEFAULT))
    timeout = float(kwargs.pop("timeout", CONNECT_TIMEOUT))
    keyfile = kwargs.pop("keyfile", None)
    if kwargs:
        raise ValueError(f"unknown bbenroll endpoint options: {', '.join(sorted(kwargs))}")
    return TunnelEndpoint(reactor, furlfile, resume=resume, timeout=timeout, tunnels=tunnels, keyfile=keyfile)
