"""Which ephemeral workers the running master removes now. Pure: the service passes ``now``.

An ephemeral worker (enrolled with an ``--ephemeral`` invite) is removed from the
registry, and so from Buildbot, once it has been disconnected for longer than
``[master] ephemeral_timeout``, and never while it has a running build.

When a worker was last connected is known only to the running service (it is
not written to the registry: a disconnect would otherwise be a registry write).
A worker not seen since this master started counts from the later of its
``created`` and the service's start, so a master restart never removes a worker
at once that may simply not have reconnected yet.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from datetime import datetime, timedelta

from bbenroll.registry import model


def timeout_of(master: model.MasterSettings) -> timedelta:
    """``[master] ephemeral_timeout``, or its default."""
    timeout = master.ephemeral_timeout
    return timeout if timeout is not None else model.DEFAULT_EPHEMERAL_TIMEOUT


def disconnected_since(
    worker: model.Worker, last_connected: Mapping[str, datetime], started: datetime
) -> datetime:
    """Since when ``worker`` counts as disconnected (it is not connected now)."""
    seen = last_connected.get(worker.name)
    if seen is not None:
        return seen
    return max(worker.created, started)


def due_for_removal(
    workers: Mapping[str, model.Worker],
    *,
    now: datetime,
    timeout: timedelta,
    connected: Collection[str],
    last_connected: Mapping[str, datetime],
    started: datetime,
    busy: Callable[[str], bool],
) -> list[str]:
    """Names of the ephemeral workers to remove at ``now``, sorted.

    ``connected``: names with a live connection now; ``last_connected``: when each
    other one was last seen connected; ``busy(name)``: it has a running build.
    """
    due = []
    for name, worker in workers.items():
        if not worker.ephemeral or name in connected:
            continue
        if now - disconnected_since(worker, last_connected, started) <= timeout:
            continue
        if busy(name):  # asked last: it may cost a look at every builder
            continue
        due.append(name)
    return sorted(due)
