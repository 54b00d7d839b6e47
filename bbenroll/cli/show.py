"""bbenroll show: print a worker's FURL, optionally as a QR code."""

from __future__ import annotations

from pathlib import Path

import click

from bbenroll.cli import App, output_options
from bbenroll.cli.params import show_furl, state_warning


@click.command("show")
@output_options
@click.argument("name")
@click.option("--qr", is_flag=True, help="Draw the FURL as a QR code in the terminal.")
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), help="Write a PNG QR code.")
@click.option("--svg", type=click.Path(dir_okay=False, path_type=Path), help="Write an SVG QR code.")
@click.pass_obj
def command(app: App, name: str, qr: bool, png: Path | None, svg: Path | None) -> None:
    """Print the FURL of worker NAME."""
    from bbenroll.registry import model

    loaded = app.load()
    worker = loaded.worker(name)
    details = model.worker_details(loaded.registry, worker, app.now())
    warning = state_warning(name, details["state"])
    if warning:
        app.out.warn(warning)
    if app.out.json_mode:
        app.out.json(details)
    show_furl(app, details["furl"], qr=qr, png=png, svg=svg)
