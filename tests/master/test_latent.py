"""Latent workers that enroll (master/latent.py), without a running master: the real Buildbot
classes, their environments and pod specs, and start_instance against a stand-in for the
running service's create_invite (the real service's invites are tested end to end)."""

from __future__ import annotations

import tomllib
from datetime import timedelta
from typing import Any

import pytest
from buildbot.config.errors import ConfigErrors
from buildbot.interfaces import LatentWorkerCannotSubstantiate, LatentWorkerFailedToSubstantiate
from buildbot.worker import docker as bbdocker
from buildbot.worker.docker import DockerBaseWorker, DockerLatentWorker
from buildbot.worker.latent import AbstractLatentWorker
from packaging.version import parse as parse_version
from twisted.internet import defer
from twisted.internet.task import Clock

from bbenroll.errors import WrongState
from bbenroll.master import latent
from bbenroll.master.hook import SERVICE_NAME, Enrollment
from tests.helpers.cli import FIXED_NOW

INVITE = "pb://tubid@tcp:master.example:9989/invitesecret"


@pytest.fixture
def enrollment(cli, reg_path):
    cli("add", "docker1")
    cli("add", "revoked1")
    cli("revoke", "revoked1")
    return Enrollment(reg_path)


def password_of(reg_path, name: str) -> str:
    return tomllib.loads(reg_path.read_text())["workers"][name]["password"]


class Recorder(AbstractLatentWorker):
    """A latent worker class of one's own: its start_instance uses the generic hook."""

    def start_instance(self, build: Any) -> Any:
        self.started_with = self.bbenroll_environment()
        return defer.succeed(True)

    def stop_instance(self, fast: bool = False) -> Any:
        return defer.succeed(True)


class RunningService:
    """What the hook's service offers latent workers: ``enrollment`` (its gate, now, create_invite)."""

    def __init__(self, enrollment: Enrollment, *, fail: Exception | None = None) -> None:
        from bbenroll.master import gate

        self.enrollment = self
        self.running = True
        self.gate = gate.Gate(enrollment.loaded.registry)
        self.calls: list[dict[str, Any]] = []
        self.fail = fail

    def now(self):
        return FIXED_NOW

    def current_worker(self, name: str) -> Any:
        return self.gate.registry.workers.get(name)

    def create_invite(self, **kwargs: Any) -> defer.Deferred[str]:
        self.calls.append(kwargs)
        if self.fail is not None:
            return defer.fail(self.fail)
        return defer.succeed(f"{INVITE}{len(self.calls)}")


class Master:
    """A parent whose ``master`` has the bbenroll service (Buildbot's ``master`` is the parent's)."""

    def __init__(self, service: Any) -> None:
        self.service_manager = self  # where Buildbot keeps c['services']
        self.reactor = Clock()
        self.namedServices = {SERVICE_NAME: service}
        self.master = self


def result_of(d: defer.Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "did not fire"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


def test_the_class_is_made_once_per_class_and_buildbot_gets_the_registry_password(enrollment, reg_path):
    a = enrollment.latent(Recorder, "docker1", build_wait_timeout=5)
    b = latent.latent_worker(enrollment, Recorder, "docker1")
    assert type(a) is type(b) and isinstance(a, Recorder) and type(a).__name__ == "EnrolledRecorder"
    assert latent.enrolled_class(type(a)) is type(a)
    assert a.password == password_of(reg_path, "docker1")
    assert enrollment.latent_names == {"docker1"}


def test_config_errors(enrollment):
    with pytest.raises(ConfigErrors, match="add it with `bbenroll add nosuch`"):
        enrollment.latent(Recorder, "nosuch")
    with pytest.raises(ConfigErrors, match="no password"):
        enrollment.latent(Recorder, "docker1", password="x")
    with pytest.raises(ConfigErrors, match="not a Buildbot latent worker class"):
        enrollment.latent(dict, "docker1")
    with pytest.raises(ConfigErrors, match=r"latent worker 'docker1' \(Recorder\): .*unexpected keyword"):
        enrollment.latent(Recorder, "docker1", no_such_option=1)


def test_start_instance_asks_for_a_reenrolling_single_use_invite(enrollment):
    worker = enrollment.latent(Recorder, "docker1", missing_timeout=300)
    service = RunningService(enrollment)
    worker.parent = Master(service)
    assert result_of(worker.start_instance(None)) is True
    assert service.calls == [{"name": "docker1", "reenroll": True, "uses": 1, "ttl": timedelta(seconds=300),
                              "note": "latent worker docker1 instance"}]
    assert worker.started_with == {"BBENROLL_INVITE": f"{INVITE}1", "WORKERNAME": "docker1"}
    result_of(worker.start_instance(None))  # the next instance: a new invite
    assert worker.started_with["BBENROLL_INVITE"] == f"{INVITE}2"


def test_a_revoked_or_removed_worker_starts_no_instance(enrollment, cli):
    worker = enrollment.latent(Recorder, "revoked1")  # revoked: still configurable (a reconfig follows)
    service = RunningService(enrollment)
    worker.parent = Master(service)
    with pytest.raises(LatentWorkerCannotSubstantiate, match="worker is revoked in the registry"):
        result_of(worker.start_instance(None))
    assert service.calls == [] and not hasattr(worker, "started_with")
    worker = enrollment.latent(Recorder, "docker1")
    assert cli("remove", "docker1", "--yes").code == 0
    worker.parent = Master(RunningService(Enrollment(enrollment.path)))
    with pytest.raises(LatentWorkerCannotSubstantiate, match="not in the registry"):
        result_of(worker.start_instance(None))


def test_no_invite_no_instance(enrollment):
    worker = enrollment.latent(Recorder, "docker1")
    worker.parent = Master(RunningService(enrollment, fail=WrongState("worker 'docker1' is revoked")))
    with pytest.raises(LatentWorkerCannotSubstantiate, match="no bbenroll invite: worker 'docker1' is rev"):
        result_of(worker.start_instance(None))
    assert not hasattr(worker, "started_with")
    worker.parent = Master(None)  # the bbenroll service is not running
    with pytest.raises(LatentWorkerFailedToSubstantiate, match="the bbenroll service is not running"):
        result_of(worker.start_instance(None))


def configured(worker: DockerBaseWorker, fqdn: str = "master.example") -> DockerBaseWorker:
    # what DockerBaseWorker.reconfigService sets, without a Buildbot master to register with
    worker.masterFQDN, worker.master_protocol, worker.registration = fqdn, "pb", None
    worker.image, worker.masterhash = "bbenroll-worker", "abc123"
    worker.bbenroll_invite = INVITE
    return worker


def test_docker_environment_has_the_invite_and_no_password(enrollment, monkeypatch):
    # the docker client library is imported lazily by Buildbot; its version check is config-time only
    monkeypatch.setattr(bbdocker, "docker_py_version", parse_version("7.0"))
    worker = configured(enrollment.latent(DockerLatentWorker, "docker1", docker_host="unix:///d.sock",
                                          image="bbenroll-worker"), fqdn="master.example:9990")
    assert worker.createEnvironment() == {
        "BBENROLL_INVITE": INVITE, "WORKERNAME": "docker1", "BUILDMASTER": "master.example",
        "BUILDMASTER_PROTOCOL": "pb",
    }
    assert worker.password == password_of(enrollment.path, "docker1")


def test_kubernetes_pod_spec_env(enrollment):
    from buildbot.worker.kubernetes import KubeLatentWorker

    class Build:
        def render(self, value: Any) -> Any:
            return defer.succeed(value)

    worker = configured(enrollment.latent(KubeLatentWorker, "docker1", image="bbenroll-worker"))
    spec = result_of(worker.getPodSpec(Build()))
    (container,) = spec["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {"BBENROLL_INVITE": INVITE, "WORKERNAME": "docker1", "BUILDMASTER": "master.example",
                   "BUILDMASTER_PROTOCOL": "pb"}
    # KubeLatentWorker takes no password: the one it would make up is the registry's
    assert worker._generate_random_password() == password_of(enrollment.path, "docker1")
    assert not latent.takes_password(KubeLatentWorker) and latent.takes_password(DockerLatentWorker)


def test_an_invite_not_written_in_time_starts_no_instance(enrollment):
    clock = Clock()
    worker = enrollment.latent(Recorder, "docker1")
    service = RunningService(enrollment)
    late: defer.Deferred[str] = defer.Deferred()
    service.create_invite = lambda **kwargs: late  # the registry's lock is held
    worker.parent = Master(service)
    worker.parent.reactor = clock
    started = worker.start_instance(None)
    clock.advance(latent.INVITE_TIMEOUT)
    with pytest.raises(LatentWorkerFailedToSubstantiate, match="the registry was not written in time"):
        result_of(started)
    late.callback(INVITE)  # written at last: nobody waits for it, nothing breaks
    assert not hasattr(worker, "started_with")
    assert clock.getDelayedCalls() == []


def test_current_worker_sees_a_revocation_before_the_next_poll(world):
    world.add("local1")
    service = world.start()
    assert service.current_worker("local1").revoked is None
    world.cli("revoke", "local1")  # no tick since
    assert service.current_worker("local1").revoked is not None
    assert service.current_worker("nosuch") is None
    world.finish()
