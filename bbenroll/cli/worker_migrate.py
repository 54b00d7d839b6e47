"""bbenroll worker migrate: an existing buildbot-worker basedir onto its FURL, in place."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import click

from bbenroll.cli.app import App
from bbenroll.cli.output import Output, Result
from bbenroll.cli.params import output_options, seconds_option
from bbenroll.errors import BBEnrollError
from bbenroll.tunnel.core import RESUME_DEADLINE_DEFAULT, RESUME_DEADLINE_MAX, RESUME_DEADLINE_MIN
from bbenroll.worker.setup import DEFAULT_TIMEOUT, MAX_TIMEOUT, MIN_TIMEOUT


@click.command("migrate")
@output_options
@click.argument("basedir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("furl", required=False)
@click.option(
    "--furl-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Read the FURL from this file (keeps it out of shell history).",
)
@seconds_option(
    "--resume",
    default=RESUME_DEADLINE_DEFAULT,
    low=RESUME_DEADLINE_MIN,
    high=RESUME_DEADLINE_MAX,
    whole=True,
    help="How long a build survives a lost network before Buildbot sees a disconnect.",
)
@seconds_option(
    "--timeout", default=DEFAULT_TIMEOUT, low=MIN_TIMEOUT, high=MAX_TIMEOUT,
    help="How long to try reaching the master.",
)
@click.option("--force", is_flag=True, help="Migrate a basedir that already connects through bbenroll.")
@click.pass_obj
def command(
    app: App, basedir: Path, furl: str | None, furl_file: Path | None, resume: int, timeout: float,
    force: bool,
) -> Result:
    """Convert the buildbot-worker in BASEDIR to connect over FURL, keeping all else
    ('-' or --furl-file: read the FURL, not from argv)."""
    from bbenroll.cli.reactor import react
    from bbenroll.cli.worker import ARGV_WARNING, MAX_FURL_BYTES, decode_furl_text
    from bbenroll.worker.migrate import migrate_worker

    if not math.isfinite(timeout):
        raise click.BadParameter("must be a number of seconds", param_hint="'--timeout'")
    if furl_file is not None and furl is not None:
        raise click.UsageError("give the FURL as an argument or with --furl-file, not both")
    if furl_file is not None:
        try:
            with open(furl_file, "rb") as f:
                text = decode_furl_text(f.read(MAX_FURL_BYTES + 1), str(furl_file))
        except OSError as e:
            raise BBEnrollError(f"{furl_file}: cannot read the FURL file: {e.strerror}") from None
        from bbenroll.tunnel.furlfile import parse_furl_text

        furl = parse_furl_text(text, str(furl_file)).furl
    elif furl is None or furl == "-":
        if sys.stdin is None:
            raise BBEnrollError("no FURL given (standard input is closed): use --furl-file")
        if furl is None and sys.stdin.isatty():
            furl = click.prompt("FURL", hide_input=True, err=True)
        else:
            furl = decode_furl_text(sys.stdin.buffer.readline(MAX_FURL_BYTES + 1), "standard input")
    else:
        app.out.warn(ARGV_WARNING)
    furl = (furl or "").strip()
    if not furl:
        raise BBEnrollError("no FURL given")

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
