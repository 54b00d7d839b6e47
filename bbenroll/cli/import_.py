"""bbenroll import: a stock master's workers into the registry (docs/migration.md)."""

from __future__ import annotations

from pathlib import Path

import click

from bbenroll.cli.app import App
from bbenroll.cli.output import Output, Result
from bbenroll.cli.params import output_options


@click.command("import")
@output_options
@click.argument("master_basedir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--config", default="master.cfg", show_default=True, help="master.cfg's name in MASTER_BASEDIR."
)
@click.option(
    "--registry",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The registry file (the same as bbenroll's own --registry).",
)
@click.option("--dry-run", is_flag=True, help="Show the plan; write nothing.")
@click.pass_obj
def command(app: App, master_basedir: Path, config: str, registry: Path | None, dry_run: bool) -> Result:
    """Import the workers of MASTER_BASEDIR's master.cfg: same names and passwords, new FURLs."""
    from bbenroll.master import importing

    if registry is not None:
        app.registry_path = registry
    loaded = app.load()  # a registry that does not load stops here, before master.cfg runs
    app.out.progress(f"loading {master_basedir / config} with Buildbot's configuration loader")
    master = importing.load_master(master_basedir, config)
    found = master.workers
    now = app.now()
    plan = importing.plan_import(found, loaded.registry, now)
    imported: list[str] = []
    imported: list[str] = []
    if not dry_run and plan.importable:
        from bbenroll.fileio import permission_problem

        problem = permission_problem(app.registry_path)
        if problem:
            app.out.warn(problem)
        imported = importing.import_workers(app.registry_path, plan, now=now)
    value = {
        **plan.as_json(),
        "imported": imported,
        "dry_run": dry_run,
        "registry": str(app.registry_path),
        "next": importing.next_step(master.pb_port) if imported else None,
    }

    def show(out: Output) -> None:
        rows = [
            [
                e.name,
                ("would import" if dry_run else "imported") if e.action == importing.IMPORT else e.action,
                ", ".join(f"{k}={v!r}" for k, v in e.options.items()) or "-",
                "; ".join(e.problems) or "-",
            ]
            for e in plan.entries
        ]
        if rows:
            out.table(["name", "action", "carried options", "problems"], rows, wrap=["problems"])
        else:
            out.info(f"{master_basedir / config} declares no workers")
        if dry_run:
            out.info(f"dry run: nothing written ({len(plan.importable)} workers would be imported)")
        elif imported:
            out.info(f"imported {len(imported)} workers into {app.registry_path}; each keeps its password "
                     "and has a new FURL ('bbenroll show NAME')")
            out.info(importing.next_step(master.pb_port))
        else:
            out.info("nothing to import")

    return Result(value, show)
