"""bbenroll restore: un-revoke a worker, with fresh secrets."""

from __future__ import annotations

import click

from bbenroll.cli.app import App
from bbenroll.cli.output import Result
from bbenroll.cli.params import furl_result, output_options, worker_name_argument


@click.command("restore")
@output_options
@worker_name_argument
@click.pass_obj
def command(app: App, name: str) -> Result:
    """Un-revoke worker NAME with a new FURL (the revoked one never works again)."""
    from bbenroll.registry import model

    now = app.now()
    with app.edit() as editor:
        worker = model.restore(editor.worker(name), now)
        editor.update(worker)
        details = model.worker_details(editor.registry, worker, now)
    return furl_result(details)
