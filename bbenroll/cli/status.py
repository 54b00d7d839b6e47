"""bbenroll status: what the running master knows about each worker's connection."""

from __future__ import annotations

import click

from bbenroll.cli import App, output_options
from bbenroll.errors import BBEnrollError

COLUMNS = ("name", "state", "since", "peer", "last seen")


@click.command("status")
@output_options
@click.pass_obj
def command(app: App) -> None:
    """Connection state of each worker, as the running master reports it."""
    from bbenroll.master.status import master_running, read_status, status_path
    from bbenroll.times import format_short, parse_date

    loaded = app.load()
    path = status_path(loaded.path)
    document = read_status(path)
    now = app.now()
    running, why = master_running(document, now)
    recorded = (document or {}).get("workers", {})
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
            }
        )
    if app.out.json_mode:
        app.out.json(
            {
                "running": running,
                "why": None if running else why,
                "updated": (document or {}).get("updated"),
                "workers": rows,
            }
        )
        return
    if not running:
        app.out.warn(f"no master is running: {why}")

    def short(value: str | None) -> str:
        try:
            return format_short(parse_date(value)) if value else ""
        except BBEnrollError:
            return "?"

    app.out.table(
        COLUMNS,
        [(r["name"], r["state"], short(r["since"]), r["peer"] or "", short(r["last_seen"])) for r in rows],
    )
