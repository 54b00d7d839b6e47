"""bbenroll set: change a worker's expiry, tags or note without touching its secrets.

Not ``set.py``: it would shadow the ``set`` builtin in a reader's mind and in imports.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import click
from click.core import ParameterSource

from bbenroll.cli.app import App
from bbenroll.cli.output import Output, Result
from bbenroll.cli.params import WhenType, complete_worker_names, output_options
from bbenroll.errors import WrongState
from bbenroll.registry.model import Worker
from bbenroll.times import format_time

KEEP = object()  # "not given": --expires never means None, so None cannot mean "leave it"


def change_worker(
    worker: Worker,
    now: datetime,
    *,
    expires: datetime | object | None = KEEP,
    tag: tuple[str, ...] = (),
    untag: tuple[str, ...] = (),
    note: str | object | None = KEEP,
) -> Worker:
    """``worker`` with new settings; its secrets and dates are never touched."""
    changes: dict[str, object] = {}
    if expires is not KEEP:
        if isinstance(expires, datetime) and expires <= now:
            raise WrongState(f"expiry {format_time(expires)} is in the past")
        changes["expires"] = expires
    if tag or untag:
        kept = [t for t in worker.tags if t not in untag]
        changes["tags"] = tuple(dict.fromkeys([*kept, *(t for t in tag if t not in untag)]))
    if note is not KEEP:
        changes["note"] = note or None  # --note "" clears it
    return replace(worker, **changes)


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
@click.pass_context
def command(
    ctx: click.Context,
    names: tuple[str, ...],
    expires: datetime | None,
    tags: tuple[str, ...],
    untags: tuple[str, ...],
    note: str | None,
) -> Result:
    """Change the expiry, tags or note of each NAME; its FURL stays the same."""
    from bbenroll.registry import model

    app: App = ctx.obj
    given_expires = ctx.get_parameter_source("expires") is ParameterSource.COMMANDLINE
    if not (given_expires or tags or untags or note is not None):
        raise click.UsageError("nothing to change: give --expires, --tag, --untag or --note")
    both = set(tags) & set(untags)
    if both:
        raise click.UsageError(f"--tag and --untag both name {sorted(both)[0]!r}")
    now = app.now()
    with app.edit() as editor:
        targets = list(dict.fromkeys(names))
        for name in targets:
            worker = change_worker(
                editor.worker(name),
                now,
                expires=expires if given_expires else KEEP,
                tag=tags,
                untag=untags,
                note=KEEP if note is None else note,
            )
            editor.update(worker)
        results = [model.worker_summary(editor.workers[n], now) for n in targets]

    def show(out: Output) -> None:
        out.info(f"changed {', '.join(repr(n) for n in targets)}; FURLs unchanged")

    return Result(results, show)
