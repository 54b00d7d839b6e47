"""bbenroll remove: delete a worker from the registry."""

from __future__ import annotations

import sys

import click

from bbenroll.cli.app import App
from bbenroll.cli.output import Result
from bbenroll.cli.params import output_options, worker_name_argument
from bbenroll.errors import BBEnrollError


@click.command("remove")
@output_options
@worker_name_argument
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def command(app: App, name: str, yes: bool) -> Result:
    """Remove worker NAME and its secrets from the registry."""
    if not yes:
        app.load().worker(name)  # say "no such worker" before asking
        if not sys.stdin.isatty():
            raise BBEnrollError(f"refusing to remove worker {name!r} without --yes (no terminal to ask)")
        if not click.confirm(f"Remove worker {name!r} and its secrets?", err=True):
            raise click.Abort
    with app.edit() as editor:
        editor.remove(name)
    return Result({"name": name, "removed": True}, lambda out: out.info(f"removed worker {name!r}"))
