"""bbenroll master: the master's own settings: ``set-location`` and ``roll-identity``."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import PurePath
from typing import Any

import click

from bbenroll.cli.app import App
from bbenroll.cli.output import Output, Result
from bbenroll.cli.params import DurationType, output_options
from bbenroll.errors import BBEnrollError, FurlError
from bbenroll.times import format_time


class MigrationNotFinished(BBEnrollError):
    """finish-migration without --force while imported workers have not moved."""


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
    """The master's settings: connection hints, its identity (TLS key), the cut-over's end."""


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


class GraceType(DurationType):
    """``--grace``: a duration, or ``0`` (no overlap: the old identity is refused at once)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> timedelta:
        if isinstance(value, str) and value.strip() == "0":
            return timedelta(0)
        return super().convert(value, param, ctx)


_DATED = re.compile(r"-\d{8}T\d{6}Z(-\d+)?$")


def new_identity_name(old: str, now: datetime, attempt: int = 1) -> str:
    """``master.pem`` -> ``master-20261203T124800Z.pem``, in the old file's directory, as written
    (``attempt`` 2 and up: ``...Z-2.pem``, for a second roll within the same second)."""
    path = PurePath(old)
    stem = _DATED.sub("", path.stem) or "master"  # a second roll replaces the first one's date
    suffix = f"-{attempt}" if attempt > 1 else ""
    return str(path.parent / f"{stem}-{now.strftime('%Y%m%dT%H%M%SZ')}{suffix}.pem")


def create_new_identity(registry_path: Any, old: str, now: datetime) -> tuple[str, Any]:
    """Mint a key into a file that did not exist (never replacing one); its name as written, and it."""
    from bbenroll.identity import create_identity
    from bbenroll.registry import store

    for attempt in range(1, 100):
        name = new_identity_name(old, now, attempt)
        path = store.identity_path(registry_path, name)
        if not path.exists():
            return name, create_identity(path)  # exclusive: a file made meanwhile is refused, not replaced
    raise BBEnrollError(f"{path}: too many master identity files made at {now}; try again in a second")


@command.command("roll-identity")
@output_options
@click.option(
    "--grace",
    type=GraceType(),
    metavar="DURATION",
    help="Serve the old identity beside the new one this long (default 7d; 0: refuse it at once).",
)
@click.pass_obj
def roll_identity(app: App, grace: timedelta | None) -> Result:
    """Replace the master's TLS key (so its TubID): every FURL changes, no secret does.

    The new key goes into a new file beside the old one, which is kept. During
    the overlap a running master serves both identities on its port, pushes
    each connected worker its FURL under the new TubID, and retires the old
    identity once every worker confirmed, or when the grace ends.
    """
    from bbenroll.registry import model

    if grace is None:
        grace = model.DEFAULT_GRACE
    now = app.now()
    with app.edit() as editor:
        old = editor.master
        # refused (one roll at a time) before a key is minted: a refusal leaves no file behind
        model.check_roll(old, now)
        name, identity = create_new_identity(app.registry_path, old.identity, now)
        editor.set_master(model.roll_identity(old, name, identity.tubid, now, grace))
        moved = []
        for worker_name, worker in editor.workers.items():
            if worker.revoked is None:
                editor.update(model.change_location(worker, now))  # same secrets, a new FURL
                moved.append(worker_name)
        previous = editor.master.previous
    document: dict[str, Any] = {
        "tubid": identity.tubid,
        "identity": name,
        "previous": None
        if previous is None
        else {"tubid": previous.tubid, "identity": previous.identity, "until": format_time(previous.until)},
        "old_tubid": old.tubid,
        "old_identity": old.identity,
        "workers": moved,
    }

    def show(out: Output) -> None:
        count = f"{len(moved)} worker{'' if len(moved) == 1 else 's'}"
        out.info(f"new master identity {name} (tubid {identity.tubid}); {old.identity} is kept")
        if previous is not None:
            out.info(
                f"new FURLs for {count} (same secrets, new TubID); a running master serves both "
                f"identities on its port until {format_time(previous.until)}, pushes the new FURLs to "
                "connected workers, and retires the old identity once every worker confirmed (or then)"
            )
        else:
            out.info(
                f"new FURLs for {count} (same secrets, new TubID); the old identity is refused as soon as "
                "the running master reloads: each worker admin must run "
                "'bbenroll worker create --force BASEDIR NEWFURL' ('bbenroll show NAME' prints it)"
            )

    return Result(document, show)


@command.command("finish-migration")
@output_options
@click.option("--force", is_flag=True, help="Remove it though imported workers have not moved (lists them).")
@click.pass_obj
def finish_migration(app: App, force: bool) -> Result:
    """End the gradual cut-over: remove [master] legacy_pb.

    Refused while a usable imported worker has not moved to its FURL (they are
    listed); ``--force`` removes it anyway and lists who is cut off. A running
    master closes the public PB port at its next reconfig, without a restart;
    from then on every worker arrives through its FURL.
    """
    from bbenroll.master.legacy import left_to_move

    now = app.now()
    with app.edit() as editor:
        old = editor.master
        left = left_to_move(editor.workers, now)
        if old.legacy_pb is None:
            document: dict[str, Any] = {"changed": False, "legacy_pb": None, "left": left, "cut_off": []}
            return Result(document, lambda out: out.info("nothing to do: [master] has no legacy_pb"))
        if left and not force:
            them = "it" if len(left) == 1 else "them"
            shown = ", ".join(left[:20]) + (f" and {len(left) - 20} more" if len(left) > 20 else "")
            raise MigrationNotFinished(
                f"not moved to a FURL yet (still logging in on {old.legacy_pb}): {shown}; migrate "
                f"{them} (bbenroll worker migrate), revoke {them}, or use --force to cut {them} off"
            )
        editor.set_master(replace(old, legacy_pb=None))
    document = {"changed": True, "legacy_pb": old.legacy_pb, "left": left, "cut_off": left}

    def show(out: Output) -> None:
        out.info(
            f"removed legacy_pb {old.legacy_pb}: a running master closes that port at its next reconfig "
            "(within seconds, no restart); every worker now arrives through its FURL"
        )
        if left:
            out.warn(f"cut off (no FURL connection yet): {', '.join(left)}")

    return Result(document, show)
