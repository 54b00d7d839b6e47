"""Buildbot latent workers whose instances enroll with a fresh invite instead of the PB password.

In master.cfg::

    from buildbot.plugins import worker
    enrollment = Enrollment("workers.toml", basedir=basedir)
    c["workers"] = [enrollment.latent(worker.DockerLatentWorker, "docker1", image="my/bbenroll-worker")]

``latent_worker`` makes (once per class) a subclass of the latent worker class.
On each ``start_instance(build)`` it asks the running bbenroll service for an
invite that re-enrolls ``name`` (single use, valid for the worker's
``missing_timeout``: after that Buildbot gives up on the instance anyway), then
starts the instance as the class does, with that invite in its environment:

- ``BBENROLL_INVITE``: the invite FURL. ``bbenroll worker run`` (the image's
  entrypoint) redeems it: the master gives the worker a new FURL (the old one
  and its key binding are dropped), and the instance binds it to its own, new
  machine key. No instance ever gets a credential another instance could use.
- ``WORKERNAME``: the worker's name, as Buildbot sets it.
- ``WORKERPASS`` is not set: the PB password never leaves the master (the
  tunnel's master side logs in with it on the instance's behalf).
- ``BUILDMASTER`` (and ``BUILDMASTER_PROTOCOL``) stay as Buildbot sets them,
  for information only: the instance connects where the invite FURL's location
  hints say, not there. ``BUILDMASTER_PORT`` (the loopback PB port, unreachable
  from an instance) is removed.

Covered: ``DockerLatentWorker`` and ``KubeLatentWorker`` (and any subclass of
Buildbot's ``DockerBaseWorker``: its ``createEnvironment``, which the pod spec's
``env`` is made from), and any ``AbstractLatentWorker``: its own
``start_instance`` reads :attr:`EnrolledLatentWorker.bbenroll_invite` or
calls :meth:`EnrolledLatentWorker.bbenroll_environment` (see
:class:`bbenroll.latent.LocalLatentWorker`).

Buildbot is given the registry's password for ``name`` (the one the tunnel
logs in with), whatever the class would make up.
"""

from __future__ import annotations

import inspect
from datetime import timedelta
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

log = Logger(namespace="bbenroll")

INVITE_ENV = "BBENROLL_INVITE"
DEFAULT_INVITE_TTL = timedelta(minutes=5)  # when the worker has no missing_timeout
# seconds to wait for the invite's registry write (the writer retries a held lock forever)
INVITE_TIMEOUT = 30.0
# settings of Buildbot's environment an enrolled instance must not get, or cannot use
DROPPED_ENV = ("WORKERPASS", "BUILDMASTER_PORT")

_classes: dict[type, type] = {}


def _config_error(message: str) -> Exception:
    from buildbot.config.errors import ConfigErrors

    return ConfigErrors([f"bbenroll: {message}"])


class InviteTimeout(Exception):
    def __str__(self) -> str:
        return "the registry was not written in time (see the master's log)"


def within(seconds: float, clock: Any, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
    """``d``'s result, or InviteTimeout after ``seconds``. ``d`` itself is left alone (the
    writer fires it later; cancelling it would break the writer); a late invite is unused
    and expires."""
    result: defer.Deferred[Any] = defer.Deferred()

    def settle(outcome: Any) -> None:
        if timer.active():
            timer.cancel()
        if not result.called:
            result.callback(outcome)  # a Failure fails it

    def expired() -> None:
        if not result.called:
            result.errback(InviteTimeout())

    timer = clock.callLater(seconds, expired)
    d.addBoth(settle)
    return result


def takes_password(worker_class: type) -> bool:
    """Does ``worker_class`` take Buildbot's ``password`` argument? (KubeLatentWorker does not.)"""
    return "password" in inspect.signature(worker_class.checkConfig).parameters


def enrolled_class(worker_class: type) -> type:
    """The enrolling subclass of ``worker_class``: made once per class, then reused.

    Reused so that Buildbot's reconfig, which keeps a running worker only when the
    new one has the same class, keeps a latent worker across reconfigs.
    """
    from buildbot.interfaces import LatentWorkerCannotSubstantiate, LatentWorkerFailedToSubstantiate
    from buildbot.worker.latent import AbstractLatentWorker

    if not (isinstance(worker_class, type) and issubclass(worker_class, AbstractLatentWorker)):
        raise _config_error(f"{worker_class!r} is not a Buildbot latent worker class (AbstractLatentWorker)")
    if getattr(worker_class, "bbenroll_enrolled", False):
        return worker_class
    cached = _classes.get(worker_class)
    if cached is not None:
        return cached

    class Enrolled(worker_class):  # type: ignore[misc,valid-type]
        __doc__ = EnrolledLatentWorker.__doc__
        bbenroll_enrolled = True
        bbenroll_invite: str | None = None  # the invite of the instance being started, or last started
        _bbenroll_password: str | None = None

        def checkConfig(self, *args: Any, bbenroll_password: str | None = None, **kwargs: Any) -> Any:
            self._bbenroll_password = bbenroll_password
            return super().checkConfig(*args, **kwargs)

        def reconfigService(self, *args: Any, bbenroll_password: str | None = None, **kwargs: Any) -> Any:
            self._bbenroll_password = bbenroll_password
            return super().reconfigService(*args, **kwargs)

        def _generate_random_password(self) -> str:
            # DockerBaseWorker/KubeLatentWorker make one up when given none: the tunnel logs in
            # with the registry's
            if self._bbenroll_password is not None:
                return self._bbenroll_password
            return super()._generate_random_password()

        def bbenroll_invite_ttl(self) -> timedelta:
            missing = getattr(self, "missing_timeout", None)
            return timedelta(seconds=missing) if missing and missing > 0 else DEFAULT_INVITE_TTL

        def bbenroll_environment(self) -> dict[str, str]:
            """What an instance needs to enroll: ``BBENROLL_INVITE`` and ``WORKERNAME``."""
            if self.bbenroll_invite is None:
                raise LatentWorkerFailedToSubstantiate(self.name, "no bbenroll invite for this instance")
            return {INVITE_ENV: self.bbenroll_invite, "WORKERNAME": self.name}

        def createEnvironment(self, build: Any = None) -> Any:
            # DockerBaseWorker's (Docker, Kubernetes, Marathon): Buildbot's settings minus the
            # password and the unreachable port, plus the invite
            def enrolled(env: dict[str, str]) -> dict[str, str]:
                env = {k: v for k, v in env.items() if k not in DROPPED_ENV}
                env.update(self.bbenroll_environment())
                return env

            env = super().createEnvironment(build)
            if isinstance(env, defer.Deferred):
                return env.addCallback(enrolled)
            return enrolled(env)

        @defer.inlineCallbacks
        def start_instance(self, build: Any) -> Any:
            self.bbenroll_invite = yield self._bbenroll_new_invite()
            result = yield super().start_instance(build)
            return result

        @defer.inlineCallbacks
        def _bbenroll_new_invite(self) -> Any:
            from bbenroll.master.hook import running_service

            name = self.name
            service = running_service(self.master)
            enrollment = getattr(service, "enrollment", None)
            if enrollment is None or not enrollment.running:
                log.error("bbenroll: not starting an instance of latent worker {worker!r}: the bbenroll "
                          "service is not running (enrollment.configure(c) or enrollment.service())",
                          worker=name)
                raise LatentWorkerFailedToSubstantiate(name, "the bbenroll service is not running")
            now = enrollment.now()
            worker = enrollment.current_worker(name)
            if worker is None or not worker.is_usable(now):
                why = "not in the registry" if worker is None else f"{worker.state(now)} in the registry"
                log.error("bbenroll: not starting an instance of latent worker {worker!r}: it is {why}",
                          worker=name, why=why)
                raise LatentWorkerCannotSubstantiate(name, f"worker is {why}")
            try:
                furl = yield within(INVITE_TIMEOUT, self.master.reactor, enrollment.create_invite(
                    name=name, reenroll=True, uses=1, ttl=self.bbenroll_invite_ttl(),
                    note=f"latent worker {name} instance",
                ))
            except InviteTimeout as e:  # the lock is held, the disk full: Buildbot retries the build
                log.error("bbenroll: not starting an instance of latent worker {worker!r}: no invite: {why}",
                          worker=name, why=str(e))
                raise LatentWorkerFailedToSubstantiate(name, f"no bbenroll invite: {e}") from None
            except Exception as e:  # revoked or removed meanwhile: for good
                log.error("bbenroll: not starting an instance of latent worker {worker!r}: no invite: {why}",
                          worker=name, why=str(e) or type(e).__name__)
                raise LatentWorkerCannotSubstantiate(name, f"no bbenroll invite: {e}") from None
            log.info("bbenroll: starting an instance of latent worker {worker!r} with a new invite",
                     worker=name)
            return furl

    Enrolled.__name__ = Enrolled.__qualname__ = f"Enrolled{worker_class.__name__}"
    Enrolled.__module__ = __name__
    _classes[worker_class] = Enrolled
    return Enrolled


class EnrolledLatentWorker:
    """A latent worker whose instances enroll with a fresh single-use invite (bbenroll).

    For a latent worker class of your own (``AbstractLatentWorker``), in its
    ``start_instance(build)``, which runs after the invite was made:

    - ``self.bbenroll_invite``: the invite FURL for this instance;
    - ``self.bbenroll_environment()``: ``{"BBENROLL_INVITE": ..., "WORKERNAME": ...}``,
      to put in the instance's environment (it must run ``bbenroll worker run``).

    (Documentation only: the classes :func:`latent_worker` makes have these.)
    """


def latent_worker(enrollment: Any, worker_class: type, name: str, **options: Any) -> Any:
    """A ``worker_class`` latent worker for registry worker ``name`` (see the module's docstring).

    ``options`` are the class's own (``image=``, ``build_wait_timeout=``, ...), not
    ``password``: that is the registry's.
    """
    cls = enrolled_class(worker_class)
    if "password" in options:
        raise _config_error(f"latent worker {name!r}: no password: bbenroll gives Buildbot the registry's")
    worker = enrollment.loaded.registry.workers.get(name)
    if worker is None:
        raise _config_error(
            f"{enrollment.path}: no worker {name!r} for a latent worker: add it with `bbenroll add {name}`"
        )
    options["bbenroll_password"] = worker.password
    try:
        if takes_password(worker_class):
            return cls(name, worker.password, **options)
        return cls(name, **options)
    except TypeError as e:
        raise _config_error(f"latent worker {name!r} ({worker_class.__name__}): {e}") from None
