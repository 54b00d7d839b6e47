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

import pytest
import tomlkit

from bbenroll.errors import WrongState
from bbenroll.registry import model
from bbenroll.times import parse_duration

REAL = hasattr(model, "confirm") and hasattr(model, "rotation_due")
needs_registry = pytest.mark.skipif(not REAL, reason="needs the registry's serials (wt-reg) merged")


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


def install(monkeypatch: pytest.MonkeyPatch) -> None:
    if REAL:
        return
    policy["every"] = None
    for cls, names in ((model.Worker, ("serial", "delivered", "delivered_at", "rotate_every")),
                       (model.MasterSettings, ("rotate_every",))):
        for name in names:
            monkeypatch.setattr(cls, name, 0 if name == "serial" else None, raising=False)
    monkeypatch.setattr(model, "confirm", _confirm, raising=False)
    monkeypatch.setattr(model, "rotation_due", _rotation_due, raising=False)


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
