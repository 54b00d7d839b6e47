"""bbenroll worker create: set up a buildbot-worker from a FURL."""

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
from bbenroll.worker.setup import (
    DEFAULT_TIMEOUT,
    MAX_TIMEOUT,
    MIN_TIMEOUT,
    bind_worker_key,
    check_basedir,
    create_worker_dir,
    fetch_worker_config,
    worker_key,
)

MAX_FURL_BYTES = 16 * 1024  # far above any real FURL; stops reading /dev/zero or a log by mistake
ARGV_WARNING = (
    "a FURL on the command line can be read by other local users (ps, /proc/PID/cmdline) and stays "
    "in shell history; pass '-' to read it from standard input, or use --furl-file"
)


def decode_furl_text(raw: bytes, source: str) -> str:
    """The text of a FURL read from ``source``: at most MAX_FURL_BYTES, UTF-8."""
    if len(raw) > MAX_FURL_BYTES:
        raise BBEnrollError(f"{source}: more than {MAX_FURL_BYTES} bytes, which is not a FURL")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BBEnrollError(f"{source}: not UTF-8 text (byte {e.start + 1}); a FURL is ASCII text") from None


@click.group("worker")
def command() -> None:
    """The worker admin's commands."""


@command.command("create")
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
    "--timeout",
    default=DEFAULT_TIMEOUT,
    low=MIN_TIMEOUT,
    high=MAX_TIMEOUT,
    help="How long to try reaching the master.",
)
@click.option("--force", is_flag=True, help="Replace an existing buildbot.tac.")
@click.pass_obj
def create(
    app: App,
    basedir: Path,
    furl: str | None,
    furl_file: Path | None,
    resume: int,
    timeout: float,
    force: bool,
) -> Result:
    """Create a buildbot-worker in BASEDIR from FURL ('-' or --furl-file: read it, not from argv)."""
    from bbenroll.cli.reactor import react
    from bbenroll.furl import parse_furl

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

        # the format of a worker's own bbenroll.furl, whose "# serial N" line a pushed update adds
        furl = parse_furl_text(text, str(furl_file)).furl
    elif furl is None or furl == "-":
        if sys.stdin is None:  # started with stdin closed (<&-)
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
    parse_furl(furl)
    check_basedir(basedir, force)
    key = worker_key(basedir)  # the basedir's own, or a new one written with the rest
    written: dict[str, Any] = {}

    def run(reactor: Any) -> Any:
        d = fetch_worker_config(furl, reactor=reactor, timeout=timeout, progress=app.out.progress, key=key)
        d.addCallback(write)
        # bound only once the key is on disk: a basedir that could not be written binds nothing
        d.addCallback(lambda _: bind_worker_key(
            furl, reactor=reactor, timeout=timeout, progress=app.out.progress, key=key
        ))
        return d

    def write(config: dict[str, Any]) -> None:
        app.out.progress(f"writing {basedir}")
        written.update(create_worker_dir(basedir, furl, config, resume=resume, force=force, key=key))

    try:
        bound = react(run)
    except BBEnrollError as e:
        if not written:
            raise
        raise BBEnrollError(
            f"{basedir} is written, but the FURL could not be bound to this worker's key: {e}"
        ) from None
    result = {**written, "bound": bound}

    def show(out: Output) -> None:
        out.data(result["basedir"])
        bound = result["bound"]
        if bound is None:
            out.warn("this master does not bind FURLs to worker keys: the FURL works from any machine")
        where = f" (FURL bound to its key {bound.get('fingerprint')})" if bound else ""
        out.info(
            f"created worker {result['name']!r} in {result['basedir']}{where}; start it with: "
            f"buildbot-worker start {result['basedir']}"
        )

    return Result(result, show)
command.add_command(__import__("bbenroll.cli.worker_migrate", fromlist=["command"]).command)  # issue 10
