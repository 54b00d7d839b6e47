"""FURL-to-key binding (docs/security.md): a bound FURL works only from its worker's key. Pure.

Foolscap authenticates both ends of a connection, so the master sees the TubID of
the worker's own key. ``worker create`` asks the master to bind the worker's FURL
to that TubID (``bind_key``); from then on the FURL presented from another key is
refused, so a FURL copied out of chat history or a backup is worth nothing on
another machine. Binding is opt-in by the client: a worker that never asks (a
bbenroll before binding, which makes a new random key at every start) is never
bound, and a worker that is not bound accepts any key, as before.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from bbenroll.errors import WrongState
from bbenroll.master.gate import Decision, Reason
from bbenroll.registry import model
from bbenroll.registry.model import Worker

# Foolscap's TubIDs: base32 of a SHA-1 digest, 32 lowercase characters
_TUBID_RE = re.compile(r"[a-z2-7]{32}")

NO_KEY = "this connection has no worker key to bind (an unauthenticated Foolscap client)"


def wrong_key_message(presented: str | None) -> str:
    """What the refused worker is told: never the bound key, only its own."""
    own = f" (this worker's key is {presented})" if presented else ""
    return (
        f"{Reason.WRONG_KEY}{own}; if the worker moved to a new machine, ask the master admin "
        "for 'bbenroll rebind NAME'"
    )


def client_key(broker: Any) -> str | None:
    """The TubID of the worker key a connection was made with, or None if it has none.

    Foolscap keeps the authenticated peer's TubID on the Broker (``remote_tubref``);
    anything that is not a well-formed TubID (an unauthenticated client) is no key.
    """
    tubref = getattr(broker, "remote_tubref", None)
    tubid = tubref.getTubID() if tubref is not None else None
    return tubid if isinstance(tubid, str) and _TUBID_RE.fullmatch(tubid) else None


def check(decision: Decision, worker: Worker | None, key: str | None) -> Decision:
    """``decision`` (the gate's, for a secret) as it stands for a connection made with ``key``.

    A refusal stays one; an accepted secret of a bound worker from another key (or from
    no key) becomes a WRONG_KEY refusal; anything else is ``decision`` itself.
    """
    if not decision.accepted or worker is None or worker.bound is None:
        return decision
    if key == worker.bound.tubid:
        return decision
    return Decision(False, Reason.WRONG_KEY, decision.worker, key=key, bound_key=worker.bound.tubid)


def describe_keys(decision: Decision) -> str:
    """For the master's log line of a WRONG_KEY refusal: both TubIDs ('' for other refusals)."""
    if decision.reason is not Reason.WRONG_KEY:
        return ""
    return f" (bound to worker key {decision.bound_key}, presented {decision.key or 'no key'})"


def bind_answer(worker_before: Worker, worker_after: Worker) -> dict[str, str]:
    """The answer to ``bind_key``: ``bound`` when this call bound the FURL, ``already`` if it was."""
    assert worker_after.bound is not None
    status = "already" if worker_before.bound == worker_after.bound else "bound"
    return {"status": status, "fingerprint": worker_after.bound.tubid}


def bind_edit(name: str, key: str, now: datetime, outcome: dict[str, str]) -> Callable[[Any], None]:
    """The RegistryWriter's edit for ``bind_key``: bind worker ``name`` to ``key``, as on disk
    under the lock (it may have been revoked, or bound to another key, since the call);
    ``outcome`` gets the answer (:func:`bind_answer`)."""

    def edit(editor: Any) -> None:  # in the writer's thread
        current = editor.worker(name)
        if not current.is_usable(now):
            raise WrongState(f"worker {name!r} is {current.state(now)}")
        new = model.bind(current, key, now)  # WrongState: bound to another key meanwhile
        outcome.update(bind_answer(current, new))
        editor.update(new)  # unchanged ("already"): nothing written

    return edit
