"""The ``bbenroll`` command line: a thin click layer over the core.

Every command lives in its own module and returns a :class:`~.output.Result`
(or nothing); :func:`run` renders it, and is the one place where errors
become messages and exit statuses: 0 success, 1 error, 2 usage error.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import NoReturn

import click

from bbenroll.cli.app import App, utcnow
from bbenroll.cli.output import Result
from bbenroll.cli.params import output_options
from bbenroll.errors import BBEnrollError
from bbenroll.registry import DEFAULT_REGISTRY, ENV_REGISTRY

__all__ = ["App", "Result", "cli", "main", "output_options", "run", "utcnow"]

COMMANDS = {
    "init": "bbenroll.cli.init",
    "add": "bbenroll.cli.add",
    "invite": "bbenroll.cli.invite",
    "show": "bbenroll.cli.show",
    "list": "bbenroll.cli.listing",  # not cli/list.py: it would shadow list()
    "rotate": "bbenroll.cli.rotate",
    "set": "bbenroll.cli.setting",  # not cli/set.py: it would shadow set()
    "edit": "bbenroll.cli.edit",
    "revoke": "bbenroll.cli.revoke",
    "restore": "bbenroll.cli.restore",
    "rebind": "bbenroll.cli.rebind",
    "remove": "bbenroll.cli.remove",
    "check": "bbenroll.cli.check",
    "audit": "bbenroll.cli.audit",
    "status": "bbenroll.cli.status",
    "master": "bbenroll.cli.master",
    "worker": "bbenroll.cli.worker",
    "demo": "bbenroll.cli.demo",
    "completion": "bbenroll.cli.completion",
}

PROG_NAME = "bbenroll"


class LazyGroup(click.Group):
    """Imports a command's module only when that command runs (fast start)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        module = COMMANDS.get(name)
        if module is None:
            return None
        return importlib.import_module(module).command


def _show_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from importlib.metadata import version

    app = ctx.find_object(App)
    number = version("bbenroll")
    if app is not None and (app.out.json_mode or _asks_for_json(app.argv)):  # --json may come later
        app.out.json({"name": PROG_NAME, "version": number})
    else:
        click.echo(f"{PROG_NAME}, version {number}")
    ctx.exit()


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--registry",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=ENV_REGISTRY,
    default=DEFAULT_REGISTRY,
    show_default=True,
    help=f"The registry file (also ${ENV_REGISTRY}).",
)
@output_options
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=False,  # after --json (declared before it), so that it can answer in JSON
    callback=_show_version,
    help="Show the version and exit.",
)
@click.pass_obj
def cli(app: App, registry: Path) -> None:
    """Enroll Buildbot workers with one secret string (a Foolscap FURL) each."""
    app.registry_path = registry


def _asks_for_json(argv: Sequence[str]) -> bool:
    """--json on a command line click could not parse (a usage error comes before its callback)."""
    args = list(argv)
    return "--json" in (args[: args.index("--")] if "--" in args else args)


def run(argv: Sequence[str] | None = None, clock: Callable[[], datetime] = utcnow) -> int:
    """Run the CLI; returns the exit status. Errors are reported here and only here."""
    args = list(argv) if argv is not None else sys.argv[1:]
    app = App(clock=clock, argv=args)
    out = app.out
    try:
        outcome = cli.main(args=args, prog_name=PROG_NAME, obj=app, standalone_mode=False)
        if isinstance(outcome, int):  # click's Exit (--help, --version) comes back as its status
            return outcome
        if isinstance(outcome, Result):
            out.emit(outcome)
            if outcome.failure is not None:
                raise outcome.failure
        return 0
    except SystemExit as e:  # shell completion answers and exits inside click
        return e.code if isinstance(e.code, int) else 1
    except click.exceptions.Abort:
        return out.fail("aborted", 1)
    except click.exceptions.NoArgsIsHelpError as e:
        e.show()  # plain 'bbenroll': the help, on stderr, exit 2 (not an "error: Usage: ..." line)
        return e.exit_code
    except click.UsageError as e:
        # one line, like every other error; click's usage banner is one --help away
        command = e.ctx.command_path if e.ctx else PROG_NAME
        out.json_mode = out.json_mode or _asks_for_json(args)
        return out.fail(f"{e.format_message()} (see '{command} --help')", e.exit_code)
    except click.ClickException as e:
        return out.fail(e.format_message(), e.exit_code)
    except BBEnrollError as e:
        if app.verbose:
            _print_traceback()
        return out.fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        return out.fail("interrupted", 130)
    except BrokenPipeError:
        return 1
    except Exception as e:
        if app.verbose:
            _print_traceback()
        return out.fail(f"internal error: {e.__class__.__name__}: {e} (run with -v for details)", 1)


def _print_traceback() -> None:
    import traceback

    traceback.print_exc()


def main(argv: Sequence[str] | None = None) -> NoReturn:
    sys.exit(run(argv))
