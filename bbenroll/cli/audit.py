"""bbenroll audit: show the audit log; bbenroll audit verify: check its hash chain."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import click

from bbenroll.cli.app import App
from bbenroll.cli.output import Output, Result
from bbenroll.cli.params import DurationType, output_options
from bbenroll.errors import BBEnrollError
from bbenroll.registry.audit import ACTIONS  # stdlib only: no cost to start-up

COLUMNS = ("time", "actor", "action", "worker", "old secret", "new secret", "reason")


class AuditTampered(BBEnrollError):
    pass


def actor_text(actor: Any) -> str:
    """``user@host`` for the CLI, ``master HOST (peer ADDR)`` for the service."""
    if not isinstance(actor, Mapping):
        return str(actor)
    if actor.get("by") == "master":  # the running master's own records (master/writer.py)
        peer = f" (peer {actor['peer']})" if actor.get("peer") else ""
        return f"master@{actor.get('host', '?')}{peer}"
    return f"{actor.get('user', '?')}@{actor.get('host', '?')}"


def _log_path(app: App) -> Any:
    from bbenroll.registry import audit, store

    return audit.log_path(store.real_path(app.registry_path))


@click.group("audit", invoke_without_command=True)
@output_options
@click.option("--worker", metavar="NAME", help="Only records of this worker.")
@click.option(
    "--since", type=DurationType(), metavar="DURATION", help="Only records of the last DURATION (24h, 7d)."
)
@click.option("--action", type=click.Choice(ACTIONS), help="Only records of this action.")
@click.pass_context
def command(
    ctx: click.Context, worker: str | None, since: timedelta | None, action: str | None
) -> Result | None:
    """Show the audit log, newest last ('audit verify' checks its chain). Never any secret."""
    if ctx.invoked_subcommand is not None:
        return None
    from bbenroll.registry import audit
    from bbenroll.times import format_time

    app: App = ctx.obj
    app.load()  # the registry must be readable: the log is only meaningful beside it
    after = format_time(app.now() - since) if since is not None else None
    found, damaged = audit.read_records_and_damage(_log_path(app))
    if damaged:
        app.out.warn(
            f"{damaged} line(s) of the audit log are not records as bbenroll wrote them: "
            "run 'bbenroll audit verify'"
        )
    records = [r for r in found if audit.matches(r, worker=worker, action=action, since=after)]

    def show(out: Output) -> None:
        if not records:
            out.info("no audit records match")
            return
        out.table(
            COLUMNS,
            [
                (
                    str(r["time"]),
                    actor_text(r["actor"]),
                    str(r["action"]),
                    r["worker"] or "",
                    r["old_secret"] or "",
                    r["new_secret"] or "",
                    r["reason"] or "",
                )
                for r in records
            ],
            wrap=("reason",),
        )

    return Result(records, show)


@command.command("verify")
@output_options
@click.pass_obj
def verify(app: App) -> Result:
    """Check the audit log's hash chain against the registry; exit 1 on tampering."""
    from bbenroll.registry import audit

    loaded = app.load()
    log = _log_path(app)
    lines, oldest_is_rotated = audit.read_lines(log)
    anchor = loaded.audit
    report = audit.verify(
        lines,
        count=anchor.count if anchor else 0,
        head=anchor.head if anchor else None,
        oldest_is_rotated=oldest_is_rotated,
    )
    # "ok" as in check --json; "intact" says what was checked
    document = {"registry": str(loaded.path), "log": str(log), "ok": report.intact, **report.to_json()}

    def show(out: Output) -> None:
        for problem in report.problems:
            out.error(str(problem))
        for warning in report.warnings:
            out.warn(str(warning))
        for note in report.notes:
            out.info(note)
        if report.intact:
            head = f"; head {report.head}" if report.head else ""
            out.data(f"{report.records} records, chain intact{head}")

    failure = None
    if not report.intact:
        first = report.problems[0]
        more = f" (and {len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
        failure = AuditTampered(f"{log}: the audit log does not verify: {first}{more}")
    return Result(document, show, failure)
