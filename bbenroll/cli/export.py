"""bbenroll export: every chosen worker's FURL as a file (or one JSON document), for handing out in bulk."""

from __future__ import annotations

import os
from pathlib import Path

import click

from bbenroll.cli.app import App
from bbenroll.cli.output import Output, Result
from bbenroll.cli.params import output_options
from bbenroll.errors import BBEnrollError


@click.command("export")
@output_options
@click.argument("names", nargs=-1)
@click.option("--tag", "tags", multiple=True, help="Every worker with this tag (repeatable).")
@click.option("--all", "everyone", is_flag=True, help="Every usable worker.")
@click.option(
    "--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
    help="Write DIR/NAME.furl (0600) per worker; without it, --json gives the FURLs as one document.",
)
@click.option("--force", is_flag=True, help="Replace existing FURL files that differ.")
@click.pass_obj
def command(
    app: App,
    names: tuple[str, ...],
    tags: tuple[str, ...],
    everyone: bool,
    directory: Path | None,
    force: bool,
) -> Result:
    """Export the FURLs of workers NAME... (or --tag T, or --all)."""
    from bbenroll.tunnel.furlfile import furl_file_text

    if sum(map(bool, (names, tags, everyone))) != 1:
        raise click.UsageError("name the workers, or give --tag, or --all (one of them)")
    if directory is None and not app.out.json_mode:
        raise click.UsageError("give --dir DIR to write FURL files (or --json for one document on stdout)")
    loaded = app.load()
    registry = loaded.registry
    now = app.now()
    if names:
        chosen = [loaded.worker(name) for name in dict.fromkeys(names)]  # "no such worker" names it
    elif tags:
        chosen = [w for w in registry.workers.values() if set(tags) & set(w.tags)]
        if not chosen:
            raise BBEnrollError(f"{loaded.path}: no worker has tag {' or '.join(map(repr, tags))}")
    else:
        chosen = list(registry.workers.values())
    exported = [w for w in chosen if w.is_usable(now)]
    skipped = [{"name": w.name, "state": str(w.state(now))} for w in chosen if not w.is_usable(now)]
    files: dict[str, Path] = {}
    if directory is not None:
        texts = {w.name: furl_file_text(registry.furl(w), w.serial) for w in exported}
        files = _write(directory, texts, force)
    document = {
        "workers": [
            {"name": w.name, "serial": w.serial}
            | ({"file": str(files[w.name])} if directory is not None else {"furl": registry.furl(w)})
            for w in exported
        ],
        "skipped": skipped,
    }
    if directory is not None:
        document["dir"] = str(directory)

    def show(out: Output) -> None:
        for entry in skipped:
            out.warn(f"skipped worker {entry['name']!r}: {entry['state']} (the master refuses it)")
        out.info(f"wrote {len(files)} FURL file{'s' if len(files) != 1 else ''} to {directory} (mode 0600)")

    return Result(document, show)


def _write(directory: Path, texts: dict[str, str], force: bool) -> dict[str, Path]:
    """Write ``DIR/NAME.furl`` for each; all checked before the first is written."""
    from bbenroll.fileio import atomic_write

    if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
        raise BBEnrollError(f"{directory}: not a directory")
    paths = {name: directory / f"{name}.furl" for name in texts}
    for name, path in paths.items():
        if path.is_symlink():
            raise BBEnrollError(f"{path} is a symbolic link; refusing to write a FURL through it")
        if path.exists() and not force:
            try:
                same = path.read_text(encoding="utf-8") == texts[name]
            except (OSError, UnicodeDecodeError):
                same = False
            if not same:
                raise BBEnrollError(f"{path} exists and holds something else; use --force to replace it")
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name, path in paths.items():
            atomic_write(path, texts[name].encode("ascii"))
            if os.name == "posix":
                os.chmod(path, 0o600)  # atomic_write keeps a stricter mode of an existing file
    except OSError as e:
        raise BBEnrollError(f"cannot write {e.filename or directory}: {e.strerror}") from None
    return paths
