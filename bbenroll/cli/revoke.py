"""bbenroll revoke: stop accepting a worker's FURL."""

from __future__ import annotations

import click

from bbenroll.cli.app import App
from bbenroll.cli.output import Result
from bbenroll.cli.params import output_options, worker_name_argument


@click.command("revoke")
@output_options
@worker_name_argument
@click.option("--reason", help="Why (kept in the registry).")
@click.pass_obj
def command(app: App, name: str, reason: str | None) -> Result:
    """Revoke worker NAME: its FURL stops working. Undo with 'restore'."""
    from bbenroll.registry import model

    now = app.now()
    with app.edit() as editor:
        worker = model.revoke(editor.worker(name), now, reason)
        editor.update(worker)
    return Result(
        model.worker_summary(worker, now),
        lambda out: out.info(f"revoked worker {name!r}; a running master drops it within seconds"),
    )
