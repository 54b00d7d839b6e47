"""When the registry's time-driven changes fall due, and what a reload changed. Pure: ``now`` is passed.

The service's tick (once a second) must cost what changed, not the fleet
(issue #12). So nothing is walked per second: when a registry is loaded
(:func:`plan`, run in the reload's thread) the next moment at which the clock
alone changes something is computed once, per kind:

- :func:`next_event`: a worker's expiry, the end of a previous secret's grace,
  the end of the previous master identity's overlap, an invite's expiry. At that
  moment the service re-evaluates who may connect and what Buildbot knows.
- :func:`next_rotation`: the first worker whose ``rotate_every`` falls due.

Ephemeral removal is due ``ephemeral_timeout`` after a disconnect (the service
knows its connections; :func:`ephemeral_due_at`). A registry change (the next
:func:`plan`) or a connection change (the service) moves these times.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from bbenroll.master.gate import Gate
from bbenroll.registry.model import Registry, Worker, usable

# the clock has one-second steps ("now" drops microseconds) and a removal is due only
# once the timeout is strictly exceeded: one step after the timeout
ONE_STEP = timedelta(seconds=1)


def buildbot_view(workers: Mapping[str, Worker]) -> dict[str, tuple[str, Any]]:
    """What Buildbot is configured from: usable workers, passwords, options."""
    return {name: (w.password, sorted(w.buildbot.items())) for name, w in workers.items()}


def _earliest(times: Iterable[datetime | None]) -> datetime | None:
    return min((t for t in times if t is not None), default=None)


def worker_events(worker: Worker, now: datetime) -> Iterable[datetime]:
    """The moments after ``now`` at which the clock alone changes ``worker``'s right to connect."""
    if worker.revoked is not None:
        return  # revoked stays revoked: only an edit (a reload) changes it
    if worker.expires is not None and worker.expires > now:
        yield worker.expires
    if worker.previous is not None and worker.previous.until > now:
        yield worker.previous.until


def next_event(registry: Registry, now: datetime) -> datetime | None:
    """The first moment after ``now`` when the clock changes who may connect (or what is served)."""
    times: list[datetime] = [t for w in registry.workers.values() for t in worker_events(w, now)]
    previous = registry.master.previous
    if previous is not None and previous.until > now:
        times.append(previous.until)
    for invite in getattr(registry, "invites", {}).values():
        if invite.expires is not None and invite.expires > now:
            times.append(invite.expires)
    return min(times, default=None)


def rotation_due_at(worker: Worker, default_every: timedelta | None, now: datetime) -> datetime | None:
    """When :func:`bbenroll.registry.model.rotation_due` becomes true for ``worker`` (at or after
    ``now``: a time not after ``now`` means due now), or None: never by the clock alone."""
    every = worker.rotate_every if worker.rotate_every is not None else default_every
    if not every or not worker.is_usable(now):  # None or NEVER; revoked or expired
        return None
    due = worker.rotated + every
    if worker.previous is not None and worker.previous.until > now:
        due = max(due, worker.previous.until)  # never while the last rotation is in its grace
    if worker.expires is not None and worker.expires <= due:
        return None  # expired by then
    return due


def next_rotation(registry: Registry, now: datetime, skip: Iterable[str] = ()) -> datetime | None:
    """The first :func:`rotation_due_at` of the registry's workers (not those in ``skip``)."""
    default = registry.master.rotate_every
    if default is None and all(w.rotate_every is None for w in registry.workers.values()):
        return None  # no policy at all: the common case, one cheap look
    skipped = set(skip)
    return _earliest(
        rotation_due_at(w, default, now) for name, w in registry.workers.items() if name not in skipped
    )


def ephemeral_due_at(since: datetime, timeout: timedelta) -> datetime:
    """When an ephemeral worker disconnected since ``since`` is due for removal."""
    return since + timeout + ONE_STEP


@dataclass(frozen=True)
class Plan:
    """A loaded registry, prepared for the service (in the reload's thread)."""

    gate: Gate
    usable: dict[str, Worker]
    view: dict[str, tuple[str, Any]]
    announced: dict[str, tuple[str, Any]] | None  # the view compared with (what Buildbot was told)
    view_changed: bool  # view != announced, compared here rather than on the loop
    changed: frozenset[str]  # worker names added, removed or edited since the old registry
    removed: frozenset[str]
    master_changed: bool  # [master] differs: every connection is looked at again
    ephemeral: frozenset[str]  # the ephemeral workers' names
    next_event: datetime | None
    next_rotation: datetime | None


def plan(
    old: Registry | None,
    new: Registry,
    now: datetime,
    announced: dict[str, tuple[str, Any]] | None = None,
) -> Plan:
    """What the service needs of ``new`` (loaded after ``old``, None: the first) at ``now``;
    ``announced``: the Buildbot view told so far."""
    before = old.workers if old is not None else {}
    after = new.workers
    removed = frozenset(before.keys() - after.keys())
    changed = frozenset(name for name, w in after.items() if before.get(name) != w) | removed
    workers = usable(new, now)
    view = buildbot_view(workers)
    return Plan(
        gate=Gate(new),
        usable=workers,
        view=view,
        announced=announced,
        view_changed=view != announced,
        changed=changed,
        removed=removed,
        master_changed=old is None or old.master != new.master,
        ephemeral=frozenset(name for name, w in after.items() if w.ephemeral),
        next_event=next_event(new, now),
        next_rotation=next_rotation(new, now),
    )
