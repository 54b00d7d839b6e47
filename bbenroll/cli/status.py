"""bbenroll status: what the running master knows about each worker's connection.

``state`` is the worker's Foolscap connection; ``attached`` (a master under Buildbot
only) whether Buildbot's Worker is attached. A worker connected but not attached is
counted apart: its PB login never completed (a stuck one).
"""

from __future__ import annotations

import click

from bbenroll.cli.app import App
from bbenroll.cli.output import Output, Result
from bbenroll.cli.params import output_options
from bbenroll.errors import BBEnrollError

COLUMNS = ("name", "state", "since", "peer", "last seen", "update")


@click.command("status")
@output_options
@click.pass_obj
def command(app: App) -> Result:
    """Connection state of each worker, as the running master reports it."""
    from bbenroll.master.status import master_running, read_status, status_path
    from bbenroll.times import format_short, parse_date

    loaded = app.load()
    path = status_path(loaded.path)
    recorded_status = read_status(path)
    now = app.now()
    running, why = master_running(recorded_status, now)
    recorded = (recorded_status or {}).get("workers", {})
    from bbenroll.cli.listing import kind_text, origin_fields

    rows = []
    kinds = []
    for name, worker in loaded.registry.workers.items():
        kinds.append(kind_text(worker))
        entry = recorded.get(name) or {}
        connected = running and entry.get("state") == "connected"
        attached = entry.get("attached")
        rows.append(
            {
                "name": name,
                "state": "connected" if connected else "disconnected",
                # Buildbot's attachment; None: not known (no master, or one without Buildbot)
                "attached": attached if running and isinstance(attached, bool) else None,
                "since": entry.get("since") if running else None,
                "peer": entry.get("peer"),
                "last_seen": entry.get("last_seen"),
                # pushed rotation (docs/rotation.md): an offer not confirmed yet, the last failure
                "offer_pending": entry.get("offer_pending") if connected else None,
                "update_failure": entry.get("update_failure"),
                "update_failure_at": entry.get("update_failure_at") or None,
                # the master identities (TubIDs) its connections use: two during a roll-identity
                "tubids": [t for t in (entry.get("tubids") or "").split(",") if t] if connected else [],
                **origin_fields(worker),  # the cut-over (legacy/moved), invites (ephemeral, enrolled_by)
            }
        )
    stuck = [w["name"] for w in rows if w["state"] == "connected" and w["attached"] is False]
    known = any(w["attached"] is not None for w in rows)
    counts = {
        "connected": sum(w["state"] == "connected" for w in rows),
        "attached": sum(w["attached"] is True for w in rows) if known else None,
        "connected_not_attached": len(stuck) if known else None,
    }
    document = {
        "running": running,
        "counts": counts,
        "why": None if running else why,
        "updated": (recorded_status or {}).get("updated"),
        "legacy_pb": loaded.registry.master.legacy_pb,
        "workers": rows,
    }

    def short(value: str | None) -> str:
        try:
            return format_short(parse_date(value)) if value else ""
        except BBEnrollError:
            return "?"

    def yes_no(value: bool | None) -> str:
        return "" if value is None else "yes" if value else "no"

    def update(w: dict) -> str:
        parts = []
        if w["offer_pending"]:
            parts.append(f"offered {w['offer_pending']}")
        if w["update_failure"]:
            parts.append(f"failed {short(w['update_failure_at'])}: {w['update_failure']}")
        return "; ".join(parts)

    def show(out: Output) -> None:
        if not running:
            out.warn(f"no master is running: {why}")
        with_kind = any(kinds)  # imported or ephemeral workers: say which (else the table as ever)
        extra = (("kind",) if with_kind else ()) + (("attached",) if known else ())
        out.table(
            COLUMNS[:2] + extra + COLUMNS[2:],
            [(w["name"], w["state"], *((kind,) if with_kind else ()),
              *((yes_no(w["attached"]),) if known else ()),
              short(w["since"]), w["peer"] or "", short(w["last_seen"]), update(w))
             for w, kind in zip(rows, kinds, strict=True)],
        )
        if known:
            out.info(
                f"{counts['connected']} connected, {counts['attached']} attached in Buildbot"
                + (f"; connected but not attached (stuck?): {', '.join(stuck)}" if stuck else "")
            )
        if loaded.registry.master.legacy_pb is not None:
            from bbenroll.master.legacy import left_to_move

            left = left_to_move(loaded.registry.workers, now)
            out.info(
                f"cut-over: the old PB port {loaded.registry.master.legacy_pb} is open; "
                + (f"not moved yet: {', '.join(left)}" if left
                   else "every imported worker has moved: bbenroll master finish-migration closes it")
            )

    return Result(document, show)
