"""bbenroll restore: un-revoke a worker, with fresh secrets."""

from __future__ import annotations

import click

from bbenroll.cli import App, output_options
from bbenroll.cli.params import show_furl


@click.command("restore")
@output_options
@click.argument("name")
@click.pass_obj
def command(app: App, name: str) -> None:
    """Un-revoke worker NAME with a new FURL (the revoked one never works again)."""
    from bbenroll.registry import model

    now = app.now()
    with app.edit() as editor:
        worker = model.restore(editor.worker(name), now)
        editor.update(worker)
        details = model.worker_details(editor.registry, worker, now)
    if app.out.json_mode:
        app.out.json(details)
    show_furl(app, details["furl"])
