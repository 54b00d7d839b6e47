"""bbenroll add: enroll a new worker and print its FURL."""

from __future__ import annotations

from datetime import datetime

import click

from bbenroll.cli.app import App
from bbenroll.cli.output import Result
from bbenroll.cli.params import WhenType, furl_result, output_options


@click.command("add")
@output_options
@click.argument("name")
@click.option("--tag", "tags", multiple=True, help="A tag (repeatable).")
@click.option("--note", help="A free-form note.")
@click.option("--expires", type=WhenType(), help="When the enrollment expires: 90d, 2027-06-30 ...")
@click.option("--qr", is_flag=True, help="Also draw the FURL as a QR code (not with --json).")
@click.pass_obj
def command(
    app: App, name: str, tags: tuple[str, ...], note: str | None, expires: datetime | None, qr: bool
) -> Result:
    """Enroll worker NAME and print its FURL."""
    from bbenroll.registry import model

    now = app.now()
    model.check_worker_name(name)
    worker = model.new_worker(name, now, expires=expires, tags=tags, note=note)
    with app.edit() as editor:
        editor.add(worker)
        details = model.worker_details(editor.registry, worker, now)
    return furl_result(details, qr=qr)
