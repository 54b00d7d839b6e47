"""bbenroll worker create: set up a buildbot-worker from a FURL or an invite (worker/enroll.py)."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import click

from bbenroll.cli.app import App
from bbenroll.cli.output import Output, Result
from bbenroll.cli.params import output_options, seconds_option
from bbenroll.errors import BBEnrollError
from bbenroll.tunnel.core import RESUME_DEADLINE_DEFAULT, RESUME_DEADLINE_MAX, RESUME_DEADLINE_MIN
from bbenroll.worker.setup import DEFAULT_TIMEOUT, MAX_TIMEOUT, MIN_TIMEOUT

MAX_FURL_BYTES = 16 * 1024  # far above any real FURL; stops reading /dev/zero or a log by mistake
ARGV_WARNING = (
    "a FURL on the command line can be read by other local users (ps, /proc/PID/cmdline) and stays "
    "in shell history; pass '-' to read it from standard input, or use --furl-file"
)


# the options `worker create`, `worker run` and `worker migrate` share
resume_option = seconds_option(
    "--resume",
    default=RESUME_DEADLINE_DEFAULT,
    low=RESUME_DEADLINE_MIN,
    high=RESUME_DEADLINE_MAX,
    whole=True,
    help="How long a build survives a lost network before Buildbot sees a disconnect.",
)
timeout_option = seconds_option(
    "--timeout",
    default=DEFAULT_TIMEOUT,
    low=MIN_TIMEOUT,
    high=MAX_TIMEOUT,
    help="How long to try reaching the master.",
)


def check_timeout(timeout: float) -> None:
    if not math.isfinite(timeout):
        raise click.BadParameter("must be a number of seconds", param_hint="'--timeout'")


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
    help="Read the FURL or invite from this file (keeps it out of shell history).",
)
@resume_option
@timeout_option
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
    """Create a buildbot-worker in BASEDIR from FURL or an invite ('-' or --furl-file: read it,
    not from argv; neither: $BBENROLL_INVITE or $BBENROLL_FURL)."""
    from bbenroll.cli.reactor import react
    from bbenroll.worker.enroll import create_worker

    check_timeout(timeout)
    text = read_credential(app, furl, furl_file)
    result = react(lambda reactor: create_worker(
        basedir, text, reactor=reactor, resume=resume, timeout=timeout, force=force,
        progress=app.out.progress,
    ))

    def show(out: Output) -> None:
        out.data(result["basedir"])
        bound = result["bound"]
        if bound is None:
            out.warn("this master does not bind FURLs to worker keys: the FURL works from any machine")
        where = f" (FURL bound to its key {bound.get('fingerprint')})" if bound else ""
        how = f" with invite {result['enrolled_by']}" if result.get("enrolled_by") else ""
        out.info(
            f"created worker {result['name']!r}{how} in {result['basedir']}{where}; start it with: "
            f"buildbot-worker start {result['basedir']}"
        )

    return Result(result, show)


ENVIRONMENT = ("BBENROLL_INVITE", "BBENROLL_FURL")


def read_credential(
    app: App,
    furl: str | None,
    furl_file: Path | None,
    *,
    environment: tuple[str, ...] = ENVIRONMENT,
    what: str = "FURL or invite",
) -> str:
    """The FURL (or invite) text: the argument, ``-`` (stdin), ``--furl-file``, or one of the
    ``environment`` variables; checked to be a FURL."""
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
    elif furl is None and any(os.environ.get(name) for name in environment):
        given = [name for name in environment if os.environ.get(name)]
        if len(given) > 1:
            raise BBEnrollError(f"both {' and '.join(given)} are set: set only one")
        furl = os.environ[given[0]]
    elif furl is None or furl == "-":
        if sys.stdin is None:  # started with stdin closed (<&-)
            raise BBEnrollError("no FURL given (standard input is closed): use --furl-file")
        if furl is None and sys.stdin.isatty():
            furl = click.prompt(what, hide_input=True, err=True)
        else:
            furl = decode_furl_text(sys.stdin.buffer.readline(MAX_FURL_BYTES + 1), "standard input")
    else:
        app.out.warn(ARGV_WARNING)
    furl = (furl or "").strip()
    if not furl:
        raise BBEnrollError("no FURL given")
    from bbenroll.furl import parse_furl

    parse_furl(furl)
    return furl
