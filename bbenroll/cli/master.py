"""bbenroll master: the master's own settings (``set-location``; ``roll-identity`` will join it)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import click

from bbenroll.cli.app import App
from bbenroll.cli.output import Output, Result
from bbenroll.cli.params import output_options
from bbenroll.errors import BBEnrollError, FurlError


class BadHints(BBEnrollError):
    """HINTS is not a comma-separated list of valid connection hints."""


def parse_hints(text: str) -> tuple[str, ...]:
    """``tcp:a:1,tcp:b:2`` -> the hints, each checked as ``init --location`` checks it.

    A FURL separates its hints with commas, so no hint can hold one: the
    comma-separated form is exactly what the FURL will carry. A repeated hint is
    kept once (trying it twice gains nothing).
    """
    hints = [hint.strip() for hint in text.split(",")]
    if not any(hints):
        raise BadHints("HINTS: give at least one connection hint, like tcp:buildbot.example.org:9989")
    from bbenroll.furl import check_hint

    for hint in hints:
        if not hint:
            raise BadHints(f"HINTS {text!r}: an empty hint (two commas in a row, or one at an end)")
        try:
            check_hint(hint)
        except FurlError as e:
            raise BadHints(f"HINTS: {e}") from None
    return tuple(dict.fromkeys(hints))


@click.group("master")
def command() -> None:
    """The master's settings: connection hints (and, later, its identity)."""


@command.command("set-location")
@output_options
@click.argument("hints", metavar="HINTS")
@click.pass_obj
def set_location(app: App, hints: str) -> Result:
    """Put the connection hints HINTS (comma-separated) into every FURL.

    Secrets stay the same; each worker that is not revoked gets a new FURL
    serial, so a running master pushes the new FURL to connected workers.
    """
    from bbenroll.registry import model

    location = parse_hints(hints)
    now = app.now()
    with app.edit() as editor:
        old = editor.master
        if old.location == location:
            document: dict[str, Any] = {
                "changed": False,
                "location": list(location),
                "old_location": list(old.location),
                "workers": [],
            }
            return Result(document, lambda out: out.info(f"nothing to change: the hints are already {hints}"))
        editor.set_master(replace(old, location=location))
        moved = []
        for name, worker in editor.workers.items():
            if worker.revoked is None:
                editor.update(model.change_location(worker, now))
                moved.append(name)
        warning = model.location_mismatch(editor.master)
    if warning:
        app.out.warn(warning)
    document = {
        "changed": True,
        "location": list(location),
        "old_location": list(old.location),
        "workers": moved,
    }

    def show(out: Output) -> None:
        out.info(f"location: {','.join(old.location)} -> {','.join(location)}")
        out.info(
            f"new FURLs for {len(moved)} worker{'' if len(moved) == 1 else 's'} (same secrets); "
            "a running master pushes them to connected workers"
        )

    return Result(document, show)
