"""bbenroll status: what the running master knows about each worker's connection."""

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
    rows = []
    for name in loaded.registry.workers:
        entry = recorded.get(name) or {}
        connected = running and entry.get("state") == "connected"
        rows.append(
            {
                "name": name,
                "state": "connected" if connected else "disconnected",
                "since": entry.get("since") if running else None,
                "peer": entry.get("peer"),
                "last_seen": entry.get("last_seen"),
                # pushed rotation (docs/rotation.md): an offer not confirmed yet, the last failure
                "offer_pending": entry.get("offer_pending") if connected else None,
                "update_failure": entry.get("update_failure"),
                "update_failure_at": entry.get("update_failure_at") or None,
                # the master identities (TubIDs) its connections use: two during a roll-identity
                "tubids": [t for t in (entry.get("tubids") or "").split(",") if t] if connected else [],
            }
        )
    document = {
        "running": running,
        "why": None if running else why,
        "updated": (recorded_status or {}).get("updated"),
        "workers": rows,
    }

    def short(value: str | None) -> str:
        try:
            return format_short(parse_date(value)) if value else ""
        except BBEnrollError:
            return "?"

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
        out.table(
            COLUMNS,
            [(w["name"], w["state"], short(w["since"]), w["peer"] or "", short(w["last_seen"]), update(w))
             for w in rows],
        )

    return Result(document, show)
