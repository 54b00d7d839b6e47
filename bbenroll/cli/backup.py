"""bbenroll backup create|restore|verify: the registry, its identities and its audit log in one archive."""

from __future__ import annotations

from pathlib import Path

import click

from bbenroll.cli.app import App
from bbenroll.cli.output import Output, Result
from bbenroll.cli.params import output_options

ARCHIVE = click.Path(dir_okay=False, path_type=Path)


@click.group("backup")
def command() -> None:
    """Back up and restore the registry with its master identity and audit log."""


@command.command("create")
@output_options
@click.argument("archive", type=ARCHIVE)
@click.option("--force", is_flag=True, help="Replace an existing archive.")
@click.pass_obj
def create(app: App, archive: Path, force: bool) -> Result:
    """Write ARCHIVE (mode 0600): a consistent copy, taken under the registry's lock."""
    from bbenroll.registry.backup import create_backup

    made = create_backup(app.registry_path, archive, now=app.now(), force=force)
    document = {"archive": str(archive), **made.summary()}
    files = len(made.members)
    return Result(
        document,
        lambda out: out.info(
            f"wrote {archive} (mode 0600): {files} files; it holds every worker's secret and the "
            "master's private key: keep it as safe as the master itself"
        ),
    )


@command.command("restore")
@output_options
@click.argument("archive", type=ARCHIVE)
@click.option("--force", is_flag=True, help="Replace existing registry, identity and audit files.")
@click.pass_obj
def restore(app: App, archive: Path, force: bool) -> Result:
    """Put ARCHIVE's files back beside the registry (--registry); verified first, all or nothing."""
    from bbenroll.registry.backup import restore_backup

    made, targets = restore_backup(archive, app.registry_path, force=force, now=app.now())
    document = {"archive": str(archive), "restored": [str(t) for t in targets], "created": made.created}

    def show(out: Output) -> None:
        out.info(f"restored {len(targets)} files from {archive} (made {made.created}) to {app.registry_path}")
        out.info("a running master picks the restored registry up within seconds")

    return Result(document, show)


@command.command("verify")
@output_options
@click.argument("archive", type=ARCHIVE)
@click.pass_obj
def verify(app: App, archive: Path) -> Result:
    """Check ARCHIVE without restoring it (also: bbenroll check --archive ARCHIVE)."""
    return verify_result(archive)


def verify_result(archive: Path) -> Result:
    from bbenroll.cli.check import CheckFailed, plural
    from bbenroll.registry.backup import verify_backup

    made, problems = verify_backup(archive)
    document = {"archive": str(archive), "ok": not problems, "problems": problems, **made.summary()}
    if problems:

        def show_problems(out: Output) -> None:
            for problem in problems:
                out.error(problem)

        failed = CheckFailed(f"{archive}: {plural(len(problems), 'problem')} found")
        return Result(document, show_problems, failed)
    return Result(
        document,
        lambda out: out.info(
            f"{archive}: OK (made {made.created}; {plural(len(made.members), 'file')}, every digest matches, "
            "the registry and identity pass check)"
        ),
    )
