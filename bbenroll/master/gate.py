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
from typing import Any

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
    # invites (docs/fleets.md): an unknown invite secret is UNKNOWN, like any unknown secret
    INVITE = "invite"  # accepted: a usable invite's secret (it may only enroll)
    INVITE_USED = "invite already used"
    INVITE_EXPIRED = "invite expired"
    INVITE_REVOKED = "invite revoked"


UNKNOWN, REVOKED, EXPIRED, RETIRED = Reason.UNKNOWN, Reason.REVOKED, Reason.EXPIRED, Reason.RETIRED
# refusals that no retry can change: told as wire.RefusedForGood (``worker run`` exits on them)
PERMANENT = frozenset({
    Reason.UNKNOWN, Reason.REVOKED, Reason.EXPIRED, Reason.RETIRED, Reason.WRONG_KEY,
    Reason.INVITE_USED, Reason.INVITE_EXPIRED, Reason.INVITE_REVOKED,
})


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
    # an invite's secret: the invite's ID (never its secret); ``worker`` stays None
    invite: str | None = field(default=None, compare=False)

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
        if self.invite is not None:
            return f"invite {self.invite}" + ("" if self.accepted else f": {self.reason}")
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
        # invites by the hash of their secret: the registry never holds the secret itself
        self._invites: dict[str, str] = {
            invite.hash: invite_id for invite_id, invite in getattr(registry, "invites", {}).items()
        }

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

    def decide_invite(self, swissnum: str, now: datetime) -> Decision | None:
        """The decision for an invite's secret; None when it is no invite's (then it is unknown).

        Asked only for a secret that is no worker's: hashing every worker's secret at every
        lookup would cost each connection for nothing."""
        if not self._invites:
            return None
        from bbenroll.registry.invites import invite_hash

        invite_id = self._invites.get(invite_hash(swissnum))
        if invite_id is None:
            return None
        return Decision(*invite_state(self.registry.invites[invite_id], now), invite=invite_id)

    def still_allowed(self, name: str, swissnum: str, now: datetime) -> Decision:
        """Re-check a live connection that was let in as ``name`` with ``swissnum``."""
        decision = self.decide(swissnum, now)
        if decision.accepted and decision.worker != name:
            return Decision(False, UNKNOWN)  # the secret now belongs to someone else
        return decision

    def usable_workers(self, now: datetime) -> dict[str, Worker]:
        """The workers Buildbot should know about at ``now``."""
        return usable(self.registry, now)


def invite_state(invite: Any, now: datetime) -> tuple[bool, Reason]:
    """Whether ``invite`` (a registry/invites.py Invite) can enroll a worker at ``now``, and why not.

    Revoked first, then expired, then used up: the most final reason is the one told."""
    if invite.revoked is not None:
        return False, Reason.INVITE_REVOKED
    if invite.expires is not None and invite.expires <= now:
        return False, Reason.INVITE_EXPIRED
    if not invite.reusable and (invite.uses or 0) <= 0:
        return False, Reason.INVITE_USED
    return True, Reason.INVITE
