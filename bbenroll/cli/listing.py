"""bbenroll list: every worker and its state; never any secret."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import click

from bbenroll.cli.app import App
from bbenroll.cli.output import Output, Result
from bbenroll.cli.params import DurationType, output_options

COLUMNS = ("name", "state", "created", "rotated", "expires", "delivery", "tags", "note")
KIND = "kind"  # the column for imported (legacy/moved) and ephemeral workers, shown when one is listed


def origin_fields(worker: Any) -> dict[str, Any]:
    """How a worker came to be, for --json: imported (legacy, moved), enrolled by an invite."""
    from bbenroll.times import format_time

    return {
        "legacy": worker.legacy,
        "moved": format_time(worker.moved),
        "ephemeral": worker.ephemeral,
        "enrolled_by": worker.enrolled_by,
    }


def kind_text(worker: Any) -> str:
    """``legacy``, ``moved DATE``, ``ephemeral``: the kind column (empty for a plain worker)."""
    from bbenroll.master.legacy import migration_state
    from bbenroll.times import format_short

    parts = []
    state = migration_state(worker)
    if state == "moved":
        parts.append(f"moved {format_short(worker.moved)}")
    elif state:
        parts.append(state)
    if worker.ephemeral:
        parts.append("ephemeral")
    return ", ".join(parts)


def delivery_text(worker: Any) -> str:
    """``current``, ``pending since DATE`` or ``confirmed DATE``: the delivery column."""
    from bbenroll.registry import model
    from bbenroll.times import format_short

    sent = model.delivery(worker)
    if sent.state == model.DeliveryState.CURRENT:
        return "current"
    if sent.state == model.DeliveryState.PENDING:
        return f"pending since {format_short(sent.since)}"
    return f"confirmed {format_short(sent.since)}"


@click.command("list")
@output_options
@click.option("--tag", "tags", multiple=True, help="Only workers with this tag (repeatable: all of them).")
@click.option(
    "--expiring",
    type=DurationType(),
    metavar="DURATION",
    help="Only workers whose enrollment expires within DURATION (e.g. 30d).",
)
@click.option("--revoked", is_flag=True, help="Only revoked workers.")
@click.pass_obj
def command(app: App, tags: tuple[str, ...], expiring: timedelta | None, revoked: bool) -> Result:
    """List workers: name, state, dates, FURL delivery, tags, note."""
    from bbenroll.registry import model
    from bbenroll.times import format_short

    loaded = app.load()
    now = app.now()
    within = expiring or model.DEFAULT_EXPIRING_WITHIN
    rows = []
    for worker in loaded.registry.workers.values():
        if tags and not set(tags) <= set(worker.tags):
            continue
        if revoked and worker.revoked is None:
            continue
        if expiring is not None and (
            worker.expires is None or worker.revoked is not None or worker.expires - now > expiring
        ):
            continue
        rows.append(worker)
    master = loaded.registry.master
    summaries = []
    for w in rows:
        summary = model.worker_summary(w, now, within)
        # a master key rollover: whether its FURL may still carry the TubID being replaced
        summary["identity"] = "previous" if model.on_previous_identity(master, w) else "current"
        summary.update(origin_fields(w))
        summaries.append(summary)
    on_previous = [s["name"] for s in summaries if s["identity"] == "previous"]

    def show(out: Output) -> None:
        if not rows:
            any_workers = bool(loaded.registry.workers)
            out.info("no workers match" if any_workers else "no workers yet; add one with: bbenroll add NAME")
            return
        kinds = [kind_text(w) for w in rows]
        with_kind = any(kinds)  # an ordinary registry's table stays as it always was
        columns = COLUMNS[:2] + ((KIND,) if with_kind else ()) + COLUMNS[2:]
        out.table(
            columns,
            [
                (
                    w.name,
                    w.state(now, within),
                    *((kind,) if with_kind else ()),
                    format_short(w.created),
                    format_short(w.rotated),
                    format_short(w.expires),
                    delivery_text(w) if w.revoked is None else "",  # nothing is sent to it
                    ", ".join(w.tags),
                    w.note or "",
                )
                for w, kind in zip(rows, kinds, strict=True)
            ],
            wrap=("tags", "note"),
        )
        if master.previous is not None and on_previous:
            count = f"{len(on_previous)} worker{'' if len(on_previous) == 1 else 's'}"
            out.info(
                f"{count} not yet confirmed on the new master identity ({', '.join(on_previous[:5])}"
                f"{', ...' if len(on_previous) > 5 else ''}); the old one ({master.previous.tubid}) "
                f"is served until {format_short(master.previous.until)}"
            )
        from bbenroll.master.legacy import left_to_move

        left = left_to_move({w.name: w for w in rows}, now)
        if left and master.legacy_pb is not None:
            out.info(
                f"{len(left)} imported worker{'' if len(left) == 1 else 's'} not moved to a FURL yet: "
                f"still logging in with the old password on legacy_pb {master.legacy_pb}"
            )

    return Result(summaries, show)
