"""Who may connect: the master's decision for a presented swissnum. Pure.

A :class:`Gate` indexes one registry snapshot by secret. The service asks it
at lookup time, and again on every tick and registry change for each live
connection, so revocation, removal, expiry and the end of a grace period all
take effect on connections that are already open.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from bbenroll.registry.model import Registry, State, Worker, usable
from bbenroll.times import format_time


class Reason(enum.StrEnum):
    """Why a secret is let in or refused. The code compares members; the value is
    what a refused client is told: deliberately short, it never says which worker a
    secret belonged to, and never echoes the secret."""

    CURRENT = "current"  # accepted: the worker's current secret
    PREVIOUS = "previous"  # accepted: the secret a rotation replaced, within its grace
    UNKNOWN = "unknown secret"
    REVOKED = "worker revoked"
    EXPIRED = "worker enrollment expired"
    RETIRED = "secret retired by rotation"
    WRONG_KEY = "this FURL is bound to another worker key"  # master/binding.py


UNKNOWN, REVOKED, EXPIRED, RETIRED = Reason.UNKNOWN, Reason.REVOKED, Reason.EXPIRED, Reason.RETIRED
# refusals that no retry can change: told as wire.RefusedForGood (``worker run`` exits on them)
PERMANENT = frozenset({Reason.UNKNOWN, Reason.REVOKED, Reason.EXPIRED, Reason.RETIRED, Reason.WRONG_KEY})


@dataclass(frozen=True)
class Decision:
    accepted: bool
    reason: Reason
    worker: str | None = None  # the worker's name, when the secret is known
    # when the rotation that retired this secret happened (a RETIRED refusal only):
    # the worker admin is told, so a stale FURL explains itself
    retired_on: datetime | None = field(default=None, compare=False)
    # a WRONG_KEY refusal only: the TubID the connection presented (the client may be told
    # its own key) and the one the FURL is bound to (for the master's log only)
    key: str | None = field(default=None, compare=False)
    bound_key: str | None = field(default=None, compare=False)

    @property
    def message(self) -> str:
        """What a refused worker is told: the reason, and for a retired secret what to do."""
        if self.reason is Reason.RETIRED and self.retired_on is not None:
            return (
                f"{self.reason} on {format_time(self.retired_on)}; "
                "ask the master admin for a new FURL"
            )
        if self.reason is Reason.WRONG_KEY:
            from bbenroll.master.binding import wrong_key_message

            return wrong_key_message(self.key)
        return str(self.reason)

    @property
    def permanent(self) -> bool:
        return not self.accepted and self.reason in PERMANENT

    def describe(self) -> str:
        """For the log: which worker (never the secret) and why."""
        who = f"worker {self.worker!r}" if self.worker else "unknown secret"
        return f"{who}: {self.reason}" if self.worker else who  # an accepted one always has its worker


class Gate:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._current: dict[str, str] = {}
        self._previous: dict[str, str] = {}
        for worker in registry.workers.values():
            self._current[worker.swissnum] = worker.name
            if worker.previous is not None:
                self._previous[worker.previous.swissnum] = worker.name

    def decide(self, swissnum: str, now: datetime) -> Decision:
        name = self._current.get(swissnum)
        which = Reason.CURRENT
        if name is None:
            name = self._previous.get(swissnum)
            which = Reason.PREVIOUS
        if name is None:
            return Decision(False, UNKNOWN)
        worker = self.registry.workers[name]
        state = worker.state(now)
        if state is State.REVOKED:
            return Decision(False, REVOKED, name)
        if state is State.EXPIRED:
            return Decision(False, EXPIRED, name)
        # the lookup matched the secret; not revoked or expired, a previous one holds while rotating
        if which is Reason.PREVIOUS and state is not State.ROTATING:
            return Decision(False, RETIRED, name, retired_on=worker.rotated)
        return Decision(True, which, name)

    def still_allowed(self, name: str, swissnum: str, now: datetime) -> Decision:
        """Re-check a live connection that was let in as ``name`` with ``swissnum``."""
        decision = self.decide(swissnum, now)
        if decision.accepted and decision.worker != name:
            return Decision(False, UNKNOWN)  # the secret now belongs to someone else
        return decision

    def usable_workers(self, now: datetime) -> dict[str, Worker]:
        """The workers Buildbot should know about at ``now``."""
        return usable(self.registry, now)
