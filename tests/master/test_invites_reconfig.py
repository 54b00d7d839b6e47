"""The hook's reconfig debounce (master/hook.py): many worker changes at once make few
Buildbot reconfigs, and none is lost. Deterministic: a task.Clock for the master's reactor."""

from __future__ import annotations

import pytest
from twisted.internet import task

from bbenroll.master import hook


class FakeMaster:
    def __init__(self, clock: task.Clock) -> None:
        self.reactor = clock
        self.reconfigs: list[float] = []
        self.workers = None  # no Buildbot worker manager: nothing is busy

    def reconfig(self) -> None:
        self.reconfigs.append(self.reactor.seconds())


@pytest.fixture
def service(monkeypatch):
    clock = task.Clock()
    svc = hook.EnrollmentMasterService("workers.toml")
    fake = FakeMaster(clock)
    monkeypatch.setattr(hook.EnrollmentMasterService, "master", property(lambda self: fake))
    # Buildbot's eventually() runs on the global reactor: here at once
    monkeypatch.setattr("buildbot.util.eventual.eventually", lambda f, *a, **k: f(*a, **k))
    return svc, fake, clock


def test_a_burst_of_changes_makes_one_reconfig_after_a_quiet_second(service):
    svc, master, clock = service
    for i in range(50):  # one registry poll after another, each with one more worker
        svc._workers_changed({f"w{j}": None for j in range(i + 1)})
        clock.advance(0.05)
    assert master.reconfigs == []
    clock.advance(hook.RECONFIG_QUIET)
    assert len(master.reconfigs) == 1
    assert svc._wanted == {f"w{j}" for j in range(50)}  # the reconfig sees the last set
    assert clock.getDelayedCalls() == []


def test_changes_that_keep_coming_reconfigure_every_debounce_maximum(service):
    svc, master, clock = service
    for _ in range(120):  # a change every 0.5 s for a minute: never quiet for a second
        svc._workers_changed({"w": None})
        clock.advance(0.5)
    clock.advance(hook.RECONFIG_QUIET)
    assert 60 / hook.RECONFIG_DEBOUNCE_MAX <= len(master.reconfigs) <= 60 / hook.RECONFIG_DEBOUNCE_MAX + 1
    gaps = [b - a for a, b in zip(master.reconfigs, master.reconfigs[1:], strict=False)]
    assert all(gap >= hook.RECONFIG_DEBOUNCE_MAX - 0.5 for gap in gaps), gaps
    assert clock.getDelayedCalls() == []


def test_a_single_change_is_not_held_longer_than_the_quiet_second(service):
    svc, master, clock = service
    svc._workers_changed({"w1": None})
    clock.advance(hook.RECONFIG_QUIET - 0.01)
    assert master.reconfigs == []
    clock.advance(0.01)
    assert master.reconfigs == [hook.RECONFIG_QUIET]
    svc._workers_changed({"w1": None, "w2": None})  # a later change: a reconfig of its own
    clock.advance(hook.RECONFIG_QUIET)
    assert len(master.reconfigs) == 2
    assert clock.getDelayedCalls() == []
