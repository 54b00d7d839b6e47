"""bbenroll rotate: give workers new secrets, optionally with a grace period."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import click

from bbenroll.cli.app import App
from bbenroll.cli.output import Output, Result
from bbenroll.cli.params import DurationType, complete_worker_names, output_options


@click.command("rotate")
@output_options
@click.argument("names", nargs=-1, metavar="NAME...", shell_complete=complete_worker_names)
@click.option("--all", "all_", is_flag=True, help="Rotate every worker that is not revoked.")
@click.option(
    "--grace", type=DurationType(), metavar="DURATION", help="Keep the old FURL working this long (e.g. 7d)."
)
@click.pass_obj
def command(app: App, names: tuple[str, ...], all_: bool, grace: timedelta | None) -> Result:
    """New FURL (and PB password) for each NAME, or for --all."""
    from bbenroll.registry import model

    if all_ and names:
        raise click.UsageError("give worker names or --all, not both")
    if not all_ and not names:
        raise click.UsageError("give at least one worker name, or --all")
    now = app.now()
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
    return Result(results, lambda out: show_rotated(out, results, one=not all_, grace=grace is not None))


def show_rotated(out: Output, results: list[dict[str, Any]], *, one: bool, grace: bool) -> None:
    """One worker named: its FURL alone (for ``furl=$(...)``); otherwise ``NAME FURL`` lines."""
    if not results:
        out.info("no workers to rotate")
        return
    if len(results) == 1 and one:
        out.data(results[0]["furl"])
    else:
        for details in results:
            out.data(f"{details['name']} {details['furl']}")
    if grace:
        out.info(f"old FURLs keep working until {results[0]['grace_until']}")
