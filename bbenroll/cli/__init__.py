"""The ``bbenroll`` command line: a thin click layer over the core.

Every command lives in its own module. :func:`run` is the one place where
errors become messages and exit statuses: 0 success, 1 error, 2 usage error.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click

from bbenroll.cli.output import Output
from bbenroll.errors import BBEnrollError
from bbenroll.registry import DEFAULT_REGISTRY, ENV_REGISTRY

COMMANDS = {
    "init": "bbenroll.cli.init",
    "add": "bbenroll.cli.add",
    "show": "bbenroll.cli.show",
    "list": "bbenroll.cli.listing",  # not cli/list.py: it would shadow list()
    "rotate": "bbenroll.cli.rotate",
    "revoke": "bbenroll.cli.revoke",
    "restore": "bbenroll.cli.restore",
    "remove": "bbenroll.cli.remove",
    "check": "bbenroll.cli.check",
    "status": "bbenroll.cli.status",
    "worker": "bbenroll.cli.worker",
    "demo": "bbenroll.cli.demo",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class App:
    """What every command gets: the registry path, the output, the clock."""

    def __init__(self, clock: Callable[[], datetime] = utcnow) -> None:
        self.clock = clock
        self.verbose = False
        self.out = Output()
        self.registry_path = Path(DEFAULT_REGISTRY)

    def now(self) -> datetime:
        return self.clock().astimezone(UTC).replace(microsecond=0)

    def load(self) -> Any:
        from bbenroll.registry import store

        loaded = store.load(self.registry_path)
        self.warn_all(loaded.warnings)
        return loaded

    def edit(self) -> Any:
        from bbenroll.fileio import permission_problem
        from bbenroll.registry import store

        problem = permission_problem(self.registry_path)
        if problem:
            self.out.warn(problem)
        return store.edit(self.registry_path)

    def warn_all(self, warnings: Sequence[str]) -> None:
        for warning in warnings:
            self.out.warn(warning)


class LazyGroup(click.Group):
    """Imports a command's module only when that command runs (fast start)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        module = COMMANDS.get(name)
        if module is None:
            return None
        return importlib.import_module(module).command


def output_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--json, --no-color and -v, accepted after the command name too."""

    def set_json(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value:
            ctx.find_object(App).out.json_mode = True

    def set_no_color(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value:
            ctx.find_object(App).out.color = False

    def set_verbose(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value:
            ctx.find_object(App).verbose = True

    for decorator in (
        click.option(
            "-v",
            "--verbose",
            is_flag=True,
            expose_value=False,
            callback=set_verbose,
            help="Show tracebacks for errors.",
        ),
        click.option(
            "--no-color",
            is_flag=True,
            expose_value=False,
            callback=set_no_color,
            help="No colours (also honours $NO_COLOR).",
        ),
        click.option(
            "--json",
            is_flag=True,
            expose_value=False,
            callback=set_json,
            help="Machine output: one JSON document on stdout.",
        ),
    ):
        func = decorator(func)
    return func


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
@click.version_option(package_name="bbenroll", prog_name="bbenroll")
@click.pass_obj
def cli(app: App, registry: Path) -> None:
    """Enroll Buildbot workers with one secret string (a Foolscap FURL) each."""
    app.registry_path = registry


def run(argv: Sequence[str] | None = None, clock: Callable[[], datetime] = utcnow) -> int:
    """Run the CLI; returns the exit status. Errors are reported here and only here."""
    app = App(clock)
    try:
        cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="bbenroll",
            obj=app,
            standalone_mode=False,
        )
        return 0
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        app.out.error("aborted")
        return 1
    except click.UsageError as e:
        # one line, like every other error; click's usage banner is one --help away
        command = e.ctx.command_path if e.ctx else "bbenroll"
        app.out.error(f"{e.format_message()} (see '{command} --help')")
        return e.exit_code
    except click.ClickException as e:
        app.out.error(e.format_message())
        return e.exit_code
    except BBEnrollError as e:
        if app.verbose:
            _print_traceback()
        app.out.error(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        app.out.error("interrupted")
        return 130
    except BrokenPipeError:
        return 1
    except Exception as e:
        if app.verbose:
            _print_traceback()
            return 1
        app.out.error(f"internal error: {e.__class__.__name__}: {e} (run with -v for details)")
        return 1


def _print_traceback() -> None:
    import traceback

    traceback.print_exc()


def main(argv: Sequence[str] | None = None) -> NoReturn:
    sys.exit(run(argv))
