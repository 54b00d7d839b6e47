"""bbenroll upgrade: rewrite an older registry in the current format (comments kept, old file kept)."""

from __future__ import annotations

import click

from bbenroll.cli.app import App
from bbenroll.cli.output import Result
from bbenroll.cli.params import output_options


@click.command("upgrade")
@output_options
@click.option("--dry-run", is_flag=True, help="Say what would change; write nothing.")
@click.pass_obj
def command(app: App, dry_run: bool) -> Result:
    """Upgrade the registry to this bbenroll's format, keeping a backup of the old file."""
    from bbenroll.registry.upgrade import upgrade

    done = upgrade(app.registry_path, dry_run=dry_run, now=app.now())
    document = {
        "registry": str(done.path),
        "from": done.old,
        "to": done.new,
        "upgraded": done.backup is not None,
        "dry_run": dry_run,
        "backup": str(done.backup) if done.backup is not None else None,
    }
    if done.old == done.new:
        message = f"{done.path}: already registry version {done.new}; nothing to do"
    elif dry_run:
        message = (
            f"{done.path}: would upgrade registry version {done.old} to {done.new} (dry run: nothing written)"
        )
    else:
        message = (
            f"{done.path}: upgraded registry version {done.old} to {done.new}; the old file is kept as "
            f"{done.backup}"
        )
    return Result(document, lambda out: out.info(message))
