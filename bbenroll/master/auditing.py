"""The master's own audit records: what it decided about connections. Pure.

The CLI's changes are recorded by ``store.edit`` as it saves them; what the
running master does by itself to connections changes no table, so it is a note
(:meth:`~bbenroll.registry.store.Editor.note`) written through the master's
:class:`~bbenroll.master.writer.RegistryWriter`, in the same hash chain, under
actor ``master``, with the peer's address in the actor
(``{"by": "master", "host", "peer"}``), and secrets only by fingerprint.

- ``accepted``: a worker's secret was accepted on a new connection;
- ``connection-dropped``: a live connection lost its right (revoked, removed,
  expired, its grace ended, ``rotate --compromised``) and was dropped;
- ``refused``: refusals as the master logs them: an address's first refusal in
  a ``SUMMARY_INTERVAL`` on its own, then the summary of the others (so at most
  two records per address per interval, never one per guess: a guesser must not
  be able to grow the log at its own pace). A refusal of a known worker's
  retired, revoked or expired secret names the worker.
"""

from __future__ import annotations

from typing import Any

from bbenroll.registry.audit import Change, fingerprint
from bbenroll.registry.store import Editor


def accepted(worker: str, swissnum: str, peer: str, which: str) -> Change:
    return Change(
        "accepted", worker=worker, new_secret=fingerprint(swissnum), reason=f"{which} secret", peer=peer
    )


def dropped(worker: str, swissnum: str, peer: str, why: str) -> Change:
    return Change(
        "connection-dropped", worker=worker, old_secret=fingerprint(swissnum), reason=why, peer=peer
    )


def refused(summary: Any) -> Change:
    """One :class:`~bbenroll.master.guard` summary: counts by reason, for one address."""
    return Change(
        "refused",
        reason=f"{summary.total} connections in {summary.seconds:.0f} s: {summary.describe()}",
        peer=str(summary.address),
    )


def refused_one(worker: str | None, why: str, peer: str) -> Change:
    """The refusal the master logs on its own: an address's first in a summary interval."""
    return Change("refused", worker=worker, reason=f"1 connection: {why}", peer=peer)


def note(change: Change) -> Any:
    """An edit for the RegistryWriter that adds ``change`` to the audit log and nothing else."""

    def edit(editor: Editor) -> None:
        editor.note(change)

    return edit
