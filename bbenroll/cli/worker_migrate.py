"""bbenroll worker migrate: an existing buildbot-worker basedir onto its FURL, in place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from bbenroll.cli.app import App
from bbenroll.cli.output import Output, Result
from bbenroll.cli.params import output_options
from bbenroll.cli.worker import check_timeout, read_credential, resume_option, timeout_option


@click.command("migrate")
@output_options
@click.argument("basedir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("furl", required=False)
@click.option(
    "--furl-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Read the FURL from this file (keeps it out of shell history).",
)
@resume_option
@timeout_option
@click.option("--force", is_flag=True, help="Migrate a basedir that already connects through bbenroll.")
@click.pass_obj
def command(
    app: App, basedir: Path, furl: str | None, furl_file: Path | None, resume: int, timeout: float,
    force: bool,
) -> Result:
    """Convert the buildbot-worker in BASEDIR to connect over FURL, keeping all else
    ('-' or --furl-file: read the FURL, not from argv)."""
    from bbenroll.cli.reactor import react
    from bbenroll.worker.migrate import migrate_worker

    check_timeout(timeout)
    # a worker FURL only (an invite would enroll a new worker, not this one), never from the environment
    furl = read_credential(app, furl, furl_file, environment=(), what="FURL")

    def run(reactor: Any) -> Any:
        return migrate_worker(
            basedir, furl, reactor=reactor, timeout=timeout, resume=resume, force=force,
            progress=app.out.progress,
        )

    result = react(run)

    def show(out: Output) -> None:
        out.data(result["basedir"])
        if result["bound"] is None:
            out.warn("this master does not bind FURLs to worker keys: the FURL works from any machine")
        if result["password_changed"]:
            out.warn("the tac's PB password differed from the master's: it now has the master's")
        out.info(
            f"migrated worker {result['name']!r} in {result['basedir']}: it connects through bbenroll's "
            f"tunnel now (changed: {', '.join(result['changed']) or 'nothing'}; the old tac is "
            f"{result['backup']})"
        )
        if result["running"]:
            out.warn(
                f"the worker is running (pid {result['pid']}) on its old connection: restart it with: "
                f"buildbot-worker restart {result['basedir']}"
            )
        else:
            out.info(f"start it with: buildbot-worker start {result['basedir']}")

    return Result(result, show)
