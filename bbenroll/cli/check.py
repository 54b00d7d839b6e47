"""bbenroll check: validate the registry and the identity, listing every problem."""

from __future__ import annotations

from pathlib import Path

import click

from bbenroll.cli.app import App
from bbenroll.cli.output import Output, Result
from bbenroll.cli.params import output_options
from bbenroll.errors import BBEnrollError


class CheckFailed(BBEnrollError):
    pass


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


@click.command("check")
@output_options
@click.option(
    "--archive",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Check this backup archive (bbenroll backup create) instead of the registry.",
)
@click.pass_obj
def command(app: App, archive: Path | None) -> Result:
    """Check registry and identity: syntax, schema, permissions, TubID, hints."""
    if archive is not None:
        from bbenroll.cli.backup import verify_result

        return verify_result(archive)
    from bbenroll.registry import model, store

    path = app.registry_path
    problems = store.check(path)
    document = {"registry": str(path), "ok": not problems, "problems": problems}
    if problems:

        def show_problems(out: Output) -> None:
            for problem in problems:
                out.error(problem)

        failed = CheckFailed(f"{path}: {plural(len(problems), 'problem')} found")
        return Result(document, show_problems, failed)
    registry = store.load(path).registry
    found = [model.location_mismatch(registry.master), *map(model.unsafe_name_reason, registry.workers)]
    notes = [f"{path}: {note}" for note in found if note] + store.invite_warnings(path, registry, app.now())
    document["warnings"] = notes

    def show_ok(out: Output) -> None:
        for note in notes:
            out.warn(note)
        out.info(f"{path}: OK ({plural(len(registry.workers), 'worker')})")

    return Result(document, show_ok)
