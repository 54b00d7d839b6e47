"""bbenroll invite: make invite FURLs that enroll new workers, and manage them (docs/fleets.md)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import click

from bbenroll.cli.app import App
from bbenroll.cli.output import Output, Result
from bbenroll.cli.params import DurationType, output_options, show_furl


@click.group("invite", invoke_without_command=True)
@output_options
@click.option("--name", help="The enrolled worker's name (one worker: implies the invite's uses).")
@click.option("--prefix", help="Name enrolled workers PREFIX-<short host name>, made unique.")
@click.option("--tag", "tags", multiple=True, metavar="T", help="A tag the workers get (repeatable).")
@click.option("--uses", type=click.IntRange(min=1), help="How many workers may enroll with it (default 1).")
@click.option("--reusable", is_flag=True, help="Any number of workers, until it expires.")
@click.option("--ttl", type=DurationType(), metavar="DURATION", help="How long it works (default 1h).")
@click.option("--ephemeral", is_flag=True, help="The workers are removed once disconnected for long.")
@click.option(
    "--worker-expires",
    type=DurationType(),
    metavar="DURATION",
    help="Each worker expires this long after it enrolls.",
)
@click.option("--note", help="A free-form note.")
@click.option("--qr", is_flag=True, help="Also draw the invite FURL as a QR code (not with --json).")
@click.pass_context
def command(
    ctx: click.Context,
    name: str | None,
    prefix: str | None,
    tags: tuple[str, ...],
    uses: int | None,
    reusable: bool,
    ttl: timedelta | None,
    ephemeral: bool,
    worker_expires: timedelta | None,
    note: str | None,
    qr: bool,
) -> Result | None:
    """Print an invite FURL that enrolls new workers (shown once); or manage invites."""
    if ctx.invoked_subcommand is not None:
        # the options make an invite: with a subcommand they would be silently ignored
        options = {
            "--name": name,
            "--prefix": prefix,
            "--tag": tags or None,
            "--uses": uses,
            "--reusable": reusable or None,
            "--ttl": ttl,
            "--ephemeral": ephemeral or None,
            "--worker-expires": worker_expires,
            "--note": note,
            "--qr": qr or None,
        }
        given = [flag for flag, value in options.items() if value is not None]
        if given:
            raise click.UsageError(f"{given[0]} makes an invite: not with 'invite {ctx.invoked_subcommand}'")
        return None
    app: App = ctx.obj
    from bbenroll.registry import audit, invites, model

    if name is not None and prefix is not None:
        raise click.UsageError("--name and --prefix: give one of them")
    if uses is not None and reusable:
        raise click.UsageError("--uses and --reusable: give one of them")
    if name is not None:
        model.check_worker_name(name)
    if prefix is not None:
        model.check_worker_name(prefix)  # the safe set of new names, as for 'add'
    actor = audit.cli_actor()
    now = app.now()
    with app.edit() as editor:
        invite, secret = invites.new_invite(
            now,
            name=name,
            prefix=prefix,
            tags=tags,
            uses=uses if uses is not None else 1,
            reusable=reusable,
            ttl=ttl if ttl is not None else invites.DEFAULT_TTL,
            ephemeral=ephemeral,
            worker_expires=worker_expires,
            note=note,
            by=f"{actor['user']}@{actor['host']}",
            taken_ids=editor.invites,
        )
        if name is not None and name in editor.workers:
            from bbenroll.errors import WorkerExists

            raise WorkerExists(f"{app.registry_path}: worker {name!r} already exists")
        editor.add_invite(invite)
        master = editor.registry.master
    from bbenroll.furl import build_furl

    furl = build_furl(master.tubid, master.location, secret)
    details = {**invites.invite_summary(invite, now), "furl": furl, "tubid": master.tubid}

    def show(out: Output) -> None:
        show_furl(out, furl, qr=qr)  # stdout: the FURL alone, for invite=$(bbenroll invite ...)
        out.info(f"invite {invite.id}: {_terms(details)}; shown once, the registry keeps only its hash")

    return Result(details, show)


def _terms(summary: dict[str, Any]) -> str:
    uses = "reusable" if summary["reusable"] else f"{summary['uses_left']} uses left"
    return f"{uses}, {summary['used']} used, expires {summary['expires']}"


@command.command("list")
@output_options
@click.pass_obj
def list_command(app: App) -> Result:
    """List invites: state, uses, expiry, name or prefix, tags (never a secret or hash)."""
    from bbenroll.registry import invites
    from bbenroll.times import format_short

    loaded = app.load()
    now = app.now()
    summaries = [invites.invite_summary(i, now) for i in loaded.registry.invites.values()]

    def show(out: Output) -> None:
        if not summaries:
            out.info("no invites")
            return
        rows = []
        for invite, s in zip(loaded.registry.invites.values(), summaries, strict=True):
            uses = "reusable" if s["reusable"] else str(s["uses_left"])
            target = f"name {s['name']}" if s["name"] else f"prefix {s['prefix']}" if s["prefix"] else "-"
            rows.append(
                [
                    s["id"],
                    str(s["state"]),
                    f"{uses}/{s['used']}",
                    format_short(invite.expires),
                    target + (" (re-enrolls)" if s["reenroll"] else ""),
                    ",".join(s["tags"]),
                    "yes" if s["ephemeral"] else "",
                    s["by"] or "",
                    s["note"] or "",
                ]
            )
        columns = ["ID", "STATE", "LEFT/USED", "EXPIRES", "NAME", "TAGS", "EPHEMERAL", "BY", "NOTE"]
        out.table(columns, rows, wrap=["NOTE"])

    return Result({"invites": summaries}, show)


@command.command("revoke")
@output_options
@click.argument("invite_id", metavar="ID")
@click.pass_obj
def revoke_command(app: App, invite_id: str) -> Result:
    """Revoke invite ID: no more workers enroll with it (those enrolled stay)."""
    from bbenroll.registry import invites

    now = app.now()
    with app.edit() as editor:
        invite = invites.revoke(editor.invite(invite_id), now)
        editor.update_invite(invite)
    return Result(
        invites.invite_summary(invite, now),
        lambda out: out.info(f"revoked invite {invite_id}; a running master refuses it within seconds"),
    )


@command.command("prune")
@output_options
@click.option("--dry-run", is_flag=True, help="Only say which invites would be removed.")
@click.pass_obj
def prune_command(app: App, dry_run: bool) -> Result:
    """Remove the invites nothing can enroll with any more: used up, expired or revoked."""
    from bbenroll.registry import invites

    now = app.now()
    if dry_run:
        table = app.load().registry.invites
        ids = invites.prune(table, now)
    else:
        with app.edit() as editor:
            table = dict(editor.invites)
            ids = invites.prune(table, now)
            for invite_id in ids:
                editor.remove_invite(invite_id)
    pruned = [{"id": i, "state": table[i].state(now), "used": table[i].used} for i in ids]

    def show(out: Output) -> None:
        verb = "would remove" if dry_run else "removed"
        for p in pruned:
            out.info(f"{verb} invite {p['id']} ({p['state']}, {p['used']} used)")
        if not pruned:
            out.info("no invites to prune")

    return Result({"dry_run": dry_run, "pruned": pruned}, show)
