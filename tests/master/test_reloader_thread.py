"""The registry is parsed off the event loop, in a real thread; one load at a time."""

from __future__ import annotations

import threading

import pytest_twisted
from twisted.internet import reactor, task

from bbenroll.master.reloader import RegistryReloader
from bbenroll.master.writer import thread_runner
from tests.helpers.cli import run_cli


def add(path, name):
    result = run_cli(["--registry", str(path), "add", name])
    assert result.code == 0, result.err


async def until(predicate, turns=2000):
    for _ in range(turns):
        if predicate():
            return
        await task.deferLater(reactor, 0.005, lambda: None)
    raise AssertionError("never happened")


@pytest_twisted.ensureDeferred
async def test_a_changed_registry_is_parsed_in_a_thread_and_put_in_force_on_the_loop(reg_path, monkeypatch):
    reloader = RegistryReloader(reg_path)
    add(reg_path, "w1")
    loaded_in: list[threading.Thread] = []
    entered, release = threading.Event(), threading.Event()
    real = reloader._load

    def held_load(signature):
        loaded = real(signature)  # the file as it is now; then the thread waits
        loaded_in.append(threading.current_thread())
        entered.set()
        release.wait(30)
        return loaded

    monkeypatch.setattr(reloader, "_load", held_load)
    first = reloader.poll_off_loop(thread_runner(reactor), lambda old, new: sorted(new.registry.workers))
    await until(entered.is_set)  # the loop kept turning meanwhile
    assert reloader.loading is not None and "w1" not in reloader.loaded.registry.workers
    second = reloader.poll_off_loop(thread_runner(reactor))  # one load in flight: this one waits
    add(reg_path, "w2")  # a newer change while the load is held
    release.set()
    loaded, prepared = await first
    assert loaded_in[0] is not threading.main_thread()
    assert prepared == ["w1"] and reloader.loaded is loaded
    assert await second is None
    loaded, _ = await reloader.poll_off_loop(thread_runner(reactor))  # the next poll takes the newer one
    assert sorted(loaded.registry.workers) == ["w1", "w2"]
    assert await reloader.poll_off_loop(thread_runner(reactor)) is None  # unchanged: one stat


@pytest_twisted.ensureDeferred
async def test_a_synchronous_poll_meanwhile_wins_over_an_older_load(reg_path, monkeypatch):
    reloader = RegistryReloader(reg_path)
    add(reg_path, "w1")
    entered, release = threading.Event(), threading.Event()
    real = reloader._load

    def held_load(signature):
        loaded = real(signature)
        if threading.current_thread() is not threading.main_thread():
            entered.set()
            release.wait(30)
        return loaded

    monkeypatch.setattr(reloader, "_load", held_load)
    off_loop = reloader.poll_off_loop(thread_runner(reactor))
    await until(entered.is_set)
    add(reg_path, "w2")
    assert sorted(reloader.poll().registry.workers) == ["w1", "w2"]  # e.g. a latent instance's start
    release.set()
    assert await off_loop is None  # the older file is not put back in force
    assert sorted(reloader.loaded.registry.workers) == ["w1", "w2"]
