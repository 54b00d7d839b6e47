"""bbenroll rotate: give workers new secrets, optionally with a grace period."""

from __future__ import annotations

from datetime import timedelta

import click

from bbenroll.cli import App, output_options
from bbenroll.cli.params import DurationType


@click.command("rotate")
@output_options
@click.argument("names", nargs=-1, metavar="NAME...")
@click.option("--all", "all_", is_flag=True, help="Rotate every worker that is not revoked.")
@click.option(
    "--grace", type=DurationType(), metavar="DURATION", help="Keep the old FURL working this long (e.g. 7d)."
)
@click.pass_obj
def command(app: App, names: tuple[str, ...], all_: bool, grace: timedelta | None) -> None:
    """New FURL (and PB password) for each NAME, or for --all."""
    from bbenroll.registry import model

    if all_ and names:
        raise click.UsageError("give worker names or --all, not both")
    if not all_ and not names:
        raise click.UsageError("give at least one worker name, or --all")
    now = app.now()
    results = []
    with app.edit() as editor:
        targets = (
            [n for n, w in editor.workers.items() if w.revoked is None]
            if all_
            else list(dict.fromkeys(names))
        )
        for name in targets:
            editor.update(model.rotate(editor.worker(name), now, grace))
        registry = editor.registry
        results = [model.worker_details(registry, registry.workers[n], now) for n in targets]
    if app.out.json_mode:
        app.out.json(results)
        return
    if not results:
        app.out.info("no workers to rotate")
    if len(results) == 1 and not all_:
        app.out.data(results[0]["furl"])
    else:
        for details in results:
            app.out.data(f"{details['name']} {details['furl']}")
    if grace:
        app.out.info(f"old FURLs keep working until {results[0]['grace_until']}" if results else "")
