"""bbenroll demo: a throwaway master and worker on loopback, enrolled with one FURL, one build."""

from __future__ import annotations

from typing import Any

import click

from bbenroll.cli.app import App
from bbenroll.cli.output import Output, Result
from bbenroll.cli.params import output_options, seconds_option, show_furl
from bbenroll.demo.limits import DEFAULT_TIMEOUT, MAX_TIMEOUT, MIN_TIMEOUT


class TerminalEvents:
    """Progress on stderr; the FURL, its QR code and the result on stdout (not with --json)."""

    def __init__(self, app: App) -> None:
        self.app = app

    def progress(self, text: str) -> None:
        self.app.out.info(text)

    def furl(self, name: str, furl: str) -> None:
        if self.app.out.json_mode:
            self.app.out.info(f"enrolled worker {name!r} (its FURL is not shown with --json)")
            return
        self.app.out.info(f"enrolled worker {name!r}; its FURL, the one string a worker's admin needs:")
        show_furl(self.app.out, furl, qr=True)

    def build_done(self, build: Any) -> None:
        from bbenroll.demo import format_seconds

        self.app.out.data(  # human data: nothing with --json
            f"build {build.number} on {build.worker}: {build.result} in {format_seconds(build.duration)}"
        )
        for line in build.log_tail:
            self.app.out.data(f"  | {line}")


@click.command("demo")
@output_options
@click.option("--keep", is_flag=True, help="Keep the demo directory (processes are still stopped).")
@seconds_option(
    "--timeout",
    default=DEFAULT_TIMEOUT,
    low=MIN_TIMEOUT,
    high=MAX_TIMEOUT,
    help="Give up (and clean up) if the whole demo takes longer.",
)
@click.pass_obj
def command(app: App, keep: bool, timeout: float) -> Result:
    """Enroll a worker with a real master on this machine and run one build.

    Everything runs on 127.0.0.1 in a temporary directory, which is removed
    afterwards (also on Ctrl-C or an error). Needs bbenroll[all].
    """
    from bbenroll.demo import DemoError, DemoInterrupted, format_seconds, run_demo

    try:
        result = run_demo(TerminalEvents(app), timeout=timeout, keep=keep)
    except KeyboardInterrupt:
        # everything is stopped (and removed) by now; say so rather than click's "aborted"
        raise DemoInterrupted() from None
    app.out.info(f"demo finished in {format_seconds(round(result.elapsed, 1))}")

    def show(out: Output) -> None:
        if result.directory is not None:
            out.data(f"demo directory kept: {result.directory}")

    failure = None if result.build.ok else DemoError(f"the demo build finished with {result.build.result}")
    return Result(result.to_json(), show, failure)
