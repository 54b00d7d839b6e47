"""bbenroll check: validate the registry and the identity, listing every problem."""

from __future__ import annotations

import click

from bbenroll.cli import App, output_options
from bbenroll.errors import BBEnrollError


class CheckFailed(BBEnrollError):
    pass


@click.command("check")
@output_options
@click.pass_obj
def command(app: App) -> None:
    """Check registry and identity: syntax, schema, permissions, TubID, hints."""
    from bbenroll.registry import store

    problems = store.check(app.registry_path)
    if app.out.json_mode:
        app.out.json({"registry": str(app.registry_path), "ok": not problems, "problems": problems})
    else:
        for problem in problems:
            app.out.error(problem)
    if problems:
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        if app.out.json_mode:
            raise click.exceptions.Exit(1)
        raise CheckFailed(f"{app.registry_path}: {count} found")
    if not app.out.json_mode:
        workers = store.load(app.registry_path).registry.workers
        app.out.info(f"{app.registry_path}: OK ({len(workers)} worker{'' if len(workers) == 1 else 's'})")
