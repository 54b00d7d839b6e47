"""bbenroll worker run: the worker as a foreground service (containers, systemd units).

Registered as ``worker run`` through ``SUBCOMMANDS`` in bbenroll/cli/__init__.py. Light
imports only at the top (what the ``worker`` group, cli/worker.py, imports anyway): the group
loads this module whenever it is used.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

import click

from bbenroll.cli.app import App
from bbenroll.cli.output import Output, Result
from bbenroll.cli.params import output_options, seconds_option
from bbenroll.tunnel.core import RESUME_DEADLINE_DEFAULT, RESUME_DEADLINE_MAX, RESUME_DEADLINE_MIN
from bbenroll.worker.setup import DEFAULT_TIMEOUT, MAX_TIMEOUT, MIN_TIMEOUT  # loaded by the worker group


@click.command("run")
@output_options
@click.argument("basedir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--furl-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Create the worker from the FURL in this file (also $BBENROLL_FURL_FILE, or $BBENROLL_FURL).",
)
@click.option(
    "--invite-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Create the worker from the invite in this file (also $BBENROLL_INVITE_FILE, or $BBENROLL_INVITE).",
)
@seconds_option(
    "--resume",
    default=RESUME_DEADLINE_DEFAULT,
    low=RESUME_DEADLINE_MIN,
    high=RESUME_DEADLINE_MAX,
    whole=True,
    help="For a worker created now: how long a build survives a lost network.",
)
@seconds_option(
    "--timeout",
    default=DEFAULT_TIMEOUT,
    low=MIN_TIMEOUT,
    high=MAX_TIMEOUT,
    help="For a worker created now: how long to try reaching the master.",
)
@click.pass_obj
def command(
    app: App,
    basedir: Path,
    furl_file: Path | None,
    invite_file: Path | None,
    resume: int,
    timeout: float,
) -> Result:
    """Run the worker in BASEDIR in the foreground, creating it first if BASEDIR has none.

    Exit status: the worker's (0 when stopped by SIGTERM/SIGINT/SIGHUP), 1 for bad input or a
    failed creation, 3 when the master refused this worker for good (do not restart it).
    """
    from bbenroll.errors import BBEnrollError
    from bbenroll.worker import run as wrun

    if not math.isfinite(timeout):
        raise click.BadParameter("must be a number of seconds", param_hint="'--timeout'")
    basedir = basedir.absolute()
    if basedir.exists() and not basedir.is_dir():
        raise BBEnrollError(f"{basedir} exists and is not a directory")
    if furl_file is not None and invite_file is not None:
        raise BBEnrollError("give --furl-file or --invite-file, not both")
    created: dict[str, Any] | None = None
    if not wrun.basedir_ready(basedir):
        # read only now: a restart needs no secret (its invite is used up, its file may be gone)
        credential = wrun.find_credential(furl_file, invite_file, os.environ)
        if credential is None:
            raise BBEnrollError(
                f"{basedir} holds no worker yet, and no FURL or invite was given "
                f"(--furl-file, --invite-file, ${wrun.ENV_FURL} or ${wrun.ENV_INVITE})"
            )
        created = _create(app, basedir, credential, resume, timeout)
        app.out.info(f"bbenroll: created worker {created.get('name')!r} in {basedir}")
    else:
        app.out.info(f"bbenroll: {basedir} holds a worker; starting it (nothing consumed)")

    wrun.remove_refused_marker(basedir)
    log_stream = sys.stderr if app.out.json_mode else sys.stdout  # --json: stdout holds the document
    log_stream.flush()
    follower = wrun.LogFollower(basedir / "twistd.log", log_stream.buffer)
    outcome = wrun.supervise(
        wrun.twistd_command(), cwd=basedir, env=wrun.child_environment(os.environ), follow=follower,
        stdout=_stderr_fd() if app.out.json_mode else None,
    )
    refused = wrun.read_refused_marker(basedir)
    status = wrun.exit_status(outcome.returncode, outcome.forwarded, refused)
    if status == wrun.EXIT_REFUSED:
        raise wrun.RunError(
            f"the master refused this worker for good ({refused}); not restarting it: ask the master's "
            f"admin for a new FURL or invite, then remove {basedir / 'buildbot.tac'} to create it afresh",
            wrun.EXIT_REFUSED,
        )
    if status != 0:
        how = (
            f"was killed by signal {-outcome.returncode}" if outcome.returncode < 0
            else f"exited with status {outcome.returncode}"
        )
        raise wrun.RunError(f"buildbot-worker {how}; see {basedir / 'twistd.log'}", status)
    value = {
        "basedir": str(basedir),
        "created": created is not None,
        "name": created.get("name") if created else None,
        "exit": status,
        "signal": sorted(outcome.forwarded)[0] if outcome.forwarded else None,
    }

    def show(out: Output) -> None:
        out.info("bbenroll: the worker stopped")

    return Result(value, show)


def _create(app: App, basedir: Path, credential: Any, resume: int, timeout: float) -> dict[str, Any]:
    from bbenroll.cli.reactor import react
    from bbenroll.worker import run as wrun

    # a tac without its FURL file or key is what a crash mid-creation leaves: written over
    force = (basedir / "buildbot.tac").exists()
    return react(lambda reactor: wrun.create_worker(
        basedir, credential, reactor=reactor, resume=resume, timeout=timeout, force=force,
        progress=app.out.info,  # a container's log is where the admin looks
    ))


def _stderr_fd() -> int | None:
    """Our stderr's descriptor, for the child's stdout under --json (None: it has none, e.g. in tests)."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return None
