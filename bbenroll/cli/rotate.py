"""bbenroll rotate: give workers new secrets, which a running master pushes to them (docs/rotation.md)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import click

from bbenroll.cli.app import App
from bbenroll.cli.output import Output, Result
from bbenroll.cli.params import DurationType, complete_worker_names, output_options


@click.command("rotate")
@output_options
@click.argument("names", nargs=-1, metavar="[NAME]...", shell_complete=complete_worker_names)
@click.option("--tag", metavar="T", help="Rotate every worker with tag T that is not revoked.")
@click.option("--all", "all_", is_flag=True, help="Rotate every worker that is not revoked.")
@click.option(
    "--grace",
    type=DurationType(),
    metavar="DURATION",
    help="Keep the old FURL working this long (default 7d).",
)
@click.option(
    "--compromised",
    is_flag=True,
    help="The old secret leaked: refuse it at once and change the PB password too (NAMEs only).",
)
@click.pass_obj
def command(
    app: App,
    names: tuple[str, ...],
    tag: str | None,
    all_: bool,
    grace: timedelta | None,
    compromised: bool,
) -> Result:
    """New FURL for each NAME, for the workers tagged T, or for --all."""
    from bbenroll.registry import model

    if sum((bool(names), tag is not None, all_)) != 1:
        raise click.UsageError("give worker names, --tag T or --all: exactly one of them")
    if compromised and not names:
        raise click.UsageError("--compromised takes worker names, not --tag or --all")
    if compromised and grace is not None:
        raise click.UsageError("--compromised refuses the old secret at once: no --grace")
    if not compromised and grace is None:
        grace = model.DEFAULT_GRACE
    now = app.now()
    with app.edit() as editor:
        if names:
            targets = list(dict.fromkeys(names))
        else:
            targets = [n for n, w in editor.workers.items() if w.revoked is None and (all_ or tag in w.tags)]
        for name in targets:
            editor.update(model.rotate(editor.worker(name), now, grace, compromised=compromised))
        registry = editor.registry
        results = [model.worker_details(registry, registry.workers[n], now) for n in targets]
    return Result(
        results,
        lambda out: show_rotated(out, results, one=bool(names), compromised=compromised),
    )


def show_rotated(out: Output, results: list[dict[str, Any]], *, one: bool, compromised: bool) -> None:
    """One worker named: its FURL alone (for ``furl=$(...)``); otherwise ``NAME FURL`` lines."""
    if not results:
        out.info("no workers to rotate")
        return
    if len(results) == 1 and one:
        out.data(results[0]["furl"])
    else:
        for details in results:
            out.data(f"{details['name']} {details['furl']}")
    if compromised:
        out.info(
            "old FURLs are refused now and live connections drop within seconds; the PB password "
            "changed too: each worker admin must run 'bbenroll worker create --force BASEDIR NEWFURL'"
        )
    else:
        out.info(
            "a running master pushes each connected worker its new FURL within seconds and retires "
            f"the old one when the worker confirms; workers offline now are updated when they next "
            f"connect, until {results[0]['grace_until']}. Nothing to do on the workers "
            "('bbenroll list' shows who has confirmed)"
        )
