"""Pieces several commands share: option groups, parameter types, completion, FURL output."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from bbenroll.cli.app import App
from bbenroll.cli.output import Output, Result
from bbenroll.errors import BBEnrollError, TimeSpecError
from bbenroll.times import parse_duration, parse_when


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


def registry_path_of(ctx: click.Context) -> Path:
    """The registry a command line names, also while the shell is completing it.

    During completion click parses without running the group's callback, so
    the App still holds the default: the parsed --registry value is the truth.
    """
    given = ctx.find_root().params.get("registry")
    if given is not None:
        return Path(given)
    return ctx.find_object(App).registry_path


def complete_worker_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Worker names from the registry, for the shell; nothing at all if it cannot be read."""
    from bbenroll.registry import store

    try:
        names = store.load(registry_path_of(ctx)).registry.workers
    except BBEnrollError:
        return []
    return [name for name in names if name.startswith(incomplete)]


def worker_name_argument(func: Callable[..., Any]) -> Callable[..., Any]:
    """The NAME of an existing worker; the shell completes it from the registry."""
    return click.argument("name", shell_complete=complete_worker_names)(func)


class DurationType(click.ParamType):
    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> timedelta:
        if isinstance(value, timedelta):
            return value
        try:
            return parse_duration(value)
        except TimeSpecError as e:
            self.fail(str(e), param, ctx)


class WhenType(click.ParamType):
    """A point in time: a duration from now (``90d``) or an ISO 8601 date; ``never``: None."""

    name = "DURATION|DATE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None or isinstance(value, datetime):
            return value
        if value.strip().lower() in ("", "never"):
            return None
        app = ctx.find_object(App) if ctx else None
        now = app.now() if app is not None else datetime.now(UTC)
        try:
            return parse_when(value, now)
        except TimeSpecError as e:
            self.fail(str(e), param, ctx)


def write_qr_images(app: App, furl: str, *paths: Path | None) -> None:
    """Write the FURL's QR code to each given PNG/SVG path (mode 0600: they hold the secret)."""
    from bbenroll.cli import qr

    for path in paths:
        if path is None:
            continue
        try:
            qr.write_image(furl, path)
        except OSError as e:
            raise BBEnrollError(f"{path}: cannot write the QR code: {e.strerror}") from None
        app.out.info(f"wrote QR code to {path} (mode 0600: it holds the secret)")


def show_furl(out: Output, furl: str, *, qr: bool = False) -> None:
    """A FURL as human data on stdout: its QR code first if asked, then the FURL line."""
    if qr:
        from bbenroll.cli import qr as qrmod

        out.data(qrmod.terminal_text(furl, color=out.uses_color("stdout")))
    out.data(furl)


def furl_result(details: dict[str, Any], *, qr: bool = False) -> Result:
    """A worker's details as a command result: the JSON object, or its FURL (and QR code)."""
    return Result(details, lambda out: show_furl(out, details["furl"], qr=qr))


def state_warning(name: str, state: str) -> str | None:
    if state == "revoked":
        return f"worker {name!r} is revoked: the master refuses this FURL"
    if state == "expired":
        return f"worker {name!r} has expired: the master refuses this FURL"
    return None


def seconds_option(
    flag: str, *, default: float, low: float, high: float, help: str, whole: bool = False
) -> Callable[..., Any]:
    """An option taking SECONDS within ``low``..``high`` (whole seconds if ``whole``)."""
    kind = click.IntRange(int(low), int(high)) if whole else click.FloatRange(low, high)
    return click.option(flag, default=default, show_default=True, metavar="SECONDS", type=kind, help=help)
