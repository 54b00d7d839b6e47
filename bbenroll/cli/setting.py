"""bbenroll set: change a worker's expiry, tags, note or rotation policy without touching its secrets.

Not ``set.py``: it would shadow the ``set`` builtin in a reader's mind and in imports.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click
from click.core import ParameterSource

from bbenroll.cli.app import App
from bbenroll.cli.output import Output, Result
from bbenroll.cli.params import DurationType, WhenType, complete_worker_names, output_options

DEFAULT_POLICY = "default"  # --rotate-every default: follow [master] rotate_every again


class PolicyType(DurationType):
    """``90d``; ``never`` (exempt from the master's policy); ``default`` (follow it again)."""

    name = "DURATION|never|default"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from bbenroll.registry import model

        if isinstance(value, str) and value.strip().lower() == "never":
            return model.NEVER
        if isinstance(value, str) and value.strip().lower() == DEFAULT_POLICY:
            return DEFAULT_POLICY
        return super().convert(value, param, ctx)  # refuses zero and negative durations


def _non_empty(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    if any(not v for v in values):
        raise click.BadParameter("a tag may not be empty", ctx, param)
    return values


@click.command("set")
@output_options
@click.argument("names", nargs=-1, required=True, metavar="NAME...", shell_complete=complete_worker_names)
@click.option("--expires", type=WhenType(), help="New expiry: 90d, 2027-06-30 ... or never.")
@click.option(
    "--tag", "tags", multiple=True, metavar="T", callback=_non_empty, help="Add a tag (repeatable)."
)
@click.option(
    "--untag", "untags", multiple=True, metavar="T", callback=_non_empty, help="Remove a tag (repeatable)."
)
@click.option("--note", help='A new note ("" clears it).')
@click.option(
    "--rotate-every",
    type=PolicyType(),
    help="This worker's own rotation policy: 90d, never, or default ([master] rotate_every).",
)
@click.pass_context
def command(
    ctx: click.Context,
    names: tuple[str, ...],
    expires: datetime | None,
    tags: tuple[str, ...],
    untags: tuple[str, ...],
    note: str | None,
    rotate_every: Any,
) -> Result:
    """Change the expiry, tags, note or rotation policy of each NAME; its FURL stays the same."""
    from bbenroll.registry import model

    app: App = ctx.obj
    given_expires = ctx.get_parameter_source("expires") is ParameterSource.COMMANDLINE
    if not (given_expires or tags or untags or note is not None or rotate_every is not None):
        raise click.UsageError("nothing to change: give --expires, --tag, --untag, --note or --rotate-every")
    both = set(tags) & set(untags)
    if both:
        raise click.UsageError(f"--tag and --untag both name {sorted(both)[0]!r}")
    # not given: keep; "default": None, follow [master] rotate_every; else the worker's own
    policy = model.KEEP if rotate_every is None else None if rotate_every == DEFAULT_POLICY else rotate_every
    now = app.now()
    with app.edit() as editor:
        targets = list(dict.fromkeys(names))
        for name in targets:
            worker = model.change(
                editor.worker(name),
                now,
                expires=expires if given_expires else model.KEEP,
                tag=tags,
                untag=untags,
                note=model.KEEP if note is None else note,
                rotate_every=policy,
            )
            editor.update(worker)
        results = [model.worker_summary(editor.workers[n], now) for n in targets]

    def show(out: Output) -> None:
        out.info(f"changed {', '.join(repr(n) for n in targets)}; FURLs unchanged")

    return Result(results, show)
