"""LocalLatentWorker: each instance is a local ``bbenroll worker run`` process, on demand.

Use it through ``enrollment.latent(LocalLatentWorker, NAME, ...)`` (master/latent.py):
each instance gets a fresh single-use invite in ``BBENROLL_INVITE``, runs in a fresh
temporary basedir (so a fresh machine key: the invite re-enrolls NAME and the
instance binds its new FURL to that key), and is gone, basedir and all, when
Buildbot stops it (``build_wait_timeout`` after its last build).

Not Buildbot's ``buildbot.worker.latent.LocalLatentWorker`` (a worker whose machine
a LatentMachine suspends): this one starts and stops the worker process itself.

Options (besides AbstractLatentWorker's, such as ``build_wait_timeout``,
``missing_timeout``, ``max_builds``):

- ``workdir``: where the temporary basedirs are made (default: the system's temp directory);
- ``command``: the argv that runs ``bbenroll worker run`` (default: this Python's
  ``-m bbenroll worker run``); the basedir is appended;
- ``env``: extra environment for the instance (``BBENROLL_INVITE`` always wins);
- ``stop_timeout``: seconds between SIGTERM and SIGKILL (default 30).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from buildbot import config
from buildbot.interfaces import LatentWorkerFailedToSubstantiate
from buildbot.worker.latent import AbstractLatentWorker
from twisted.internet import defer, protocol
from twisted.internet.error import ProcessExitedAlready
from twisted.logger import Logger

log = Logger(namespace="bbenroll")

STOP_TIMEOUT = 30.0
FAST_STOP_TIMEOUT = 5.0  # Buildbot asks for a fast stop when the master shuts down
BASEDIR_NAME = "worker"  # inside the temporary directory: `worker run` creates it
# never inherited from the master's environment: the instance's credential is its invite
CREDENTIAL_ENV = ("BBENROLL_FURL", "BBENROLL_FURL_FILE", "BBENROLL_INVITE_FILE")


def default_command() -> list[str]:
    return [sys.executable, "-m", "bbenroll", "worker", "run"]


class _Instance(protocol.ProcessProtocol):
    """One ``worker run`` process: its output goes to the master's log, line by line."""

    def __init__(self, name: str, directory: Path) -> None:
        self.name = name
        self.directory = directory
        self.ended: defer.Deferred[int | None] = defer.Deferred()
        self.exit_code: int | None = None
        self.exited = False
        self._partial = {1: b"", 2: b""}

    def childDataReceived(self, fd: int, data: bytes) -> None:
        lines = (self._partial.get(fd, b"") + data).split(b"\n")
        self._partial[fd] = lines.pop()
        for line in lines:
            self._log(line)

    def _log(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip()
        if text:
            log.info("latent worker {worker!r}: {line}", worker=self.name, line=text)

    def processEnded(self, reason: Any) -> None:
        for rest in self._partial.values():
            self._log(rest)
        self.exited = True
        self.exit_code = getattr(reason.value, "exitCode", None)
        log.info("latent worker {worker!r}: instance ended (status {status})", worker=self.name,
                 status=self.exit_code if self.exit_code is not None
                 else f"signal {getattr(reason.value, 'signal', None)}")
        self.ended.callback(self.exit_code)


class LocalLatentWorker(AbstractLatentWorker):
    """A latent worker whose instances are local ``bbenroll worker run`` processes (module docstring)."""

    instance: _Instance | None = None

    def checkConfig(
        self,
        name: str,
        password: str | None,
        workdir: str | None = None,
        command: list[str] | None = None,
        env: dict[str, str] | None = None,
        stop_timeout: float = STOP_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        if not getattr(type(self), "bbenroll_enrolled", False):
            config.error(f"LocalLatentWorker {name!r}: make it with enrollment.latent(LocalLatentWorker, "
                         f"{name!r}, ...): its instances enroll with the invites that gives them")
        if command is not None and not (isinstance(command, list | tuple) and command):
            config.error(f"LocalLatentWorker {name!r}: command must be a non-empty list of arguments")
        if not stop_timeout > 0:
            config.error(f"LocalLatentWorker {name!r}: stop_timeout must be positive")
        super().checkConfig(name, password, **kwargs)

    def reconfigService(
        self,
        name: str,
        password: str | None,
        workdir: str | None = None,
        command: list[str] | None = None,
        env: dict[str, str] | None = None,
        stop_timeout: float = STOP_TIMEOUT,
        **kwargs: Any,
    ) -> Any:
        self._configure(workdir, command, env, stop_timeout)
        return super().reconfigService(name, password, **kwargs)

    def _configure(
        self, workdir: str | None, command: list[str] | None, env: dict[str, str] | None, stop_timeout: float
    ) -> None:
        self.workdir = workdir
        self.command = list(command) if command else default_command()
        self.extra_env = dict(env or {})
        self.stop_timeout = float(stop_timeout)

    def instance_environment(self) -> dict[str, str]:
        """The master's environment without its credentials, ``env``, then the invite."""
        base = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_ENV}
        return {**base, **self.extra_env, **self.bbenroll_environment()}  # type: ignore[attr-defined]

    def start_instance(self, build: Any) -> defer.Deferred[bool]:
        if self.instance is not None and not self.instance.exited:
            raise ValueError("instance active")
        env = self.instance_environment()  # fails without an invite: nothing made yet
        directory = Path(tempfile.mkdtemp(prefix=f"bbenroll-latent-{self.name}-", dir=self.workdir))
        basedir = directory / BASEDIR_NAME
        argv = [*self.command, str(basedir)]
        instance = _Instance(self.name, directory)
        try:
            self.master.reactor.spawnProcess(instance, argv[0], argv, env=env, path=str(directory))
        except OSError as e:
            shutil.rmtree(directory, ignore_errors=True)
            raise LatentWorkerFailedToSubstantiate(self.name, f"cannot run {argv[0]}: {e}") from None
        self.instance = instance
        log.info("latent worker {worker!r}: started instance in {basedir}", worker=self.name, basedir=basedir)
        return defer.succeed(True)

    def check_instance(self) -> tuple[bool, str]:
        # asked while Buildbot waits for the instance to attach: an instance that already
        # ended (refused by the master: status 3) fails at once, not after missing_timeout
        instance = self.instance
        if instance is not None and instance.exited:
            return False, f"the instance ended with status {instance.exit_code}; see the master's log"
        return True, ""

    @defer.inlineCallbacks
    def stop_instance(self, fast: bool = False) -> Any:
        instance, self.instance = self.instance, None
        if instance is None:
            return True
        if not instance.exited:
            yield self._terminate(instance, FAST_STOP_TIMEOUT if fast else self.stop_timeout)
        shutil.rmtree(instance.directory, ignore_errors=True)
        log.info("latent worker {worker!r}: instance stopped, {directory} removed", worker=self.name,
                 directory=instance.directory)
        return True

    @defer.inlineCallbacks
    def _terminate(self, instance: _Instance, timeout: float) -> Any:
        reactor = self.master.reactor
        self._signal(instance, signal.SIGTERM)
        timer = reactor.callLater(timeout, self._kill, instance)
        try:
            yield instance.ended
        finally:
            if timer.active():
                timer.cancel()

    def _kill(self, instance: _Instance) -> None:
        log.warn("latent worker {worker!r}: instance still running after SIGTERM; killing it",
                 worker=self.name)
        self._signal(instance, signal.SIGKILL)

    @staticmethod
    def _signal(instance: _Instance, signum: int) -> None:
        transport = instance.transport
        if transport is None or instance.exited:
            return
        try:
            transport.signalProcess(signum)
        except ProcessExitedAlready:  # it ended meanwhile; processEnded follows
            return
