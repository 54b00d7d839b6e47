"""bbenroll revoke: stop accepting a worker's FURL."""

from __future__ import annotations

import click

from bbenroll.cli import App, output_options


@click.command("revoke")
@output_options
@click.argument("name")
@click.option("--reason", help="Why (kept in the registry).")
@click.pass_obj
def command(app: App, name: str, reason: str | None) -> None:
    """Revoke worker NAME: its FURL stops working. Undo with 'restore'."""
    from bbenroll.registry import model

    now = app.now()
    with app.edit() as editor:
        worker = model.revoke(editor.worker(name), now, reason)
        editor.update(worker)
    if app.out.json_mode:
        app.out.json(model.worker_summary(worker, now))
    else:
        app.out.info(f"revoked worker {name!r}; a running master drops it within seconds")
