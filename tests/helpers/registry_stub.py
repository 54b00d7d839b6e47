"""TEMPORARY: the registry's pushed-rotation names, until wt-reg is merged.

The master side (bbenroll/master) codes against names the registry engineer adds
to bbenroll/registry/model.py (``Worker.serial/delivered/delivered_at/rotate_every``,
``MasterSettings.rotate_every``, ``model.confirm``, ``model.rotation_due``). Until
they exist, :func:`install` puts in-memory stand-ins in their place: class-level
defaults (so serials are always 0 and nothing new is persisted) and the two
functions. Once the registry has them, :func:`install` does nothing and
:data:`REAL` is true: tests that need serials on disk are skipped until then.
Delete this module after the merge.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from bbenroll.errors import WrongState
from bbenroll.registry import model
from bbenroll.times import parse_duration

REAL = hasattr(model, "confirm") and hasattr(model, "rotation_due")
# what the stand-in cannot do: a per-worker policy on disk
needs_registry = pytest.mark.skipif(not REAL, reason="needs the registry's rotate_every (wt-reg) merged")


def _confirm(worker: model.Worker, serial: int, now: datetime) -> model.Worker:
    if serial > worker.serial:
        raise WrongState(f"worker {worker.name!r} has no FURL serial {serial}")
    if serial == worker.serial:
        if worker.previous is not None and worker.previous.until > now:
            return replace(worker, previous=model.Previous(worker.previous.swissnum, now))
        return worker
    return worker


# the stand-in has no per-worker or [master] policy on disk: tests set it here
policy: dict[str, timedelta | None] = {"every": None}


def _rotation_due(worker: model.Worker, default_every: timedelta | None, now: datetime) -> bool:
    every = policy["every"] or default_every
    return worker.revoked is None and every is not None and now - worker.rotated >= every


# serials and deliveries by swissnum, in memory for one test (what the registry will persist):
# the CLI runs in-process in these tests, so its rotations go through the wrapper below
_serials: dict[str, int] = {}
_delivered: dict[str, int] = {}


def _rotate(real: Any) -> Any:
    def rotate(worker: model.Worker, *args: Any, **kwargs: Any) -> model.Worker:
        new = real(worker, *args, **kwargs)
        _serials[new.swissnum] = _serials.get(worker.swissnum, 0) + 1
        if worker.swissnum in _delivered:
            _delivered[new.swissnum] = _delivered[worker.swissnum]
        return new

    return rotate


def _confirm_recorded(worker: model.Worker, serial: int, now: datetime) -> model.Worker:
    new = _confirm(worker, serial, now)
    _delivered[new.swissnum] = max(serial, _delivered.get(new.swissnum, -1))
    return new


def install(monkeypatch: pytest.MonkeyPatch) -> None:
    if REAL:
        return
    policy["every"] = None
    _serials.clear()
    _delivered.clear()
    monkeypatch.setattr(model.Worker, "serial", property(lambda w: _serials.get(w.swissnum, 0)),
                        raising=False)
    monkeypatch.setattr(model.Worker, "delivered", property(lambda w: _delivered.get(w.swissnum)),
                        raising=False)
    for cls, name in ((model.Worker, "delivered_at"), (model.Worker, "rotate_every"),
                      (model.MasterSettings, "rotate_every")):
        monkeypatch.setattr(cls, name, None, raising=False)
    monkeypatch.setattr(model, "confirm", _confirm_recorded, raising=False)
    monkeypatch.setattr(model, "rotation_due", _rotation_due, raising=False)
    monkeypatch.setattr(model, "rotate", _rotate(model.rotate))


def serial_of(path: Path, name: str) -> int:
    """The worker's serial as the registry (or the stand-in) has it."""
    from bbenroll.registry import store

    return store.load(path).registry.workers[name].serial


def delivered_of(path: Path, name: str) -> int | None:
    from bbenroll.registry import store

    return store.load(path).registry.workers[name].delivered


def set_policy(path: Path, every: str, worker: str | None = None) -> None:
    """``rotate_every = EVERY`` under ``[master]`` (or ``[workers.WORKER]``), before the
    master starts; the stand-in keeps a [master] policy in memory instead."""
    if not REAL:
        assert worker is None, "the stand-in has no per-worker policy"
        policy["every"] = parse_duration(every)
        return
    document = tomlkit.parse(path.read_text())
    table = document["master"] if worker is None else document["workers"][worker]
    table["rotate_every"] = every
    path.write_text(tomlkit.dumps(document))
