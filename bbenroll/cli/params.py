"""Pieces several commands share."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from bbenroll.errors import BBEnrollError, TimeSpecError
from bbenroll.times import parse_duration, parse_when


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
        from bbenroll.cli import App

        app = ctx.find_object(App) if ctx else None
        now = app.now() if app is not None else datetime.now(UTC)
        try:
            return parse_when(value, now)
        except TimeSpecError as e:
            self.fail(str(e), param, ctx)


def show_furl(
    app: Any, furl: str, *, qr: bool = False, png: Path | None = None, svg: Path | None = None
) -> None:
    """Print a FURL (and its QR code, images) as data on stdout."""
    from bbenroll.cli import qr as qrmod

    if qr:
        color = app.out.color if app.out.color is not None else sys.stdout.isatty()
        app.out.data(qrmod.terminal_text(furl, color=color))
    for path in (png, svg):
        if path is None:
            continue
        try:
            qrmod.write_image(furl, path)
        except OSError as e:
            raise BBEnrollError(f"{path}: cannot write the QR code: {e.strerror}") from None
        app.out.info(f"wrote QR code to {path} (mode 0600: it holds the secret)")
    if not app.out.json_mode:
        app.out.data(furl)


def state_warning(name: str, state: str) -> str | None:
    if state == "revoked":
        return f"worker {name!r} is revoked: the master refuses this FURL"
    if state == "expired":
        return f"worker {name!r} has expired: the master refuses this FURL"
    return None
