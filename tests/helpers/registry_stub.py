"""Registry helpers of the master's pushed-rotation tests.

This module held stand-ins for the registry's pushed-rotation names until the
registry side (serials, ``model.confirm``, ``rotate_every``) was merged; what is
left reads and sets those through the real registry. (Its name is historical; it
could be renamed, say to ``tests/helpers/rotation.py``.)
"""

from __future__ import annotations

from pathlib import Path

import tomlkit

from bbenroll.registry import store


def set_policy(path: Path, every: str, worker: str | None = None) -> None:
    """``rotate_every = EVERY`` under ``[master]`` (or ``[workers.WORKER]``); before the master
    starts, or it is read at the next poll."""
    document = tomlkit.parse(path.read_text())
    table = document["master"] if worker is None else document["workers"][worker]
    table["rotate_every"] = every
    path.write_text(tomlkit.dumps(document))


def serial_of(path: Path, name: str) -> int:
    """The worker's serial (the number of its newest FURL) in the registry at ``path``."""
    return store.load(path).registry.workers[name].serial


def delivered_of(path: Path, name: str) -> int | None:
    """The newest serial the worker confirmed, as the registry at ``path`` records it."""
    return store.load(path).registry.workers[name].delivered
