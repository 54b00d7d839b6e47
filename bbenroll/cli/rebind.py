"""bbenroll rebind: forget the worker key a FURL is bound to, to move a worker to a new machine."""

from __future__ import annotations

from typing import Any

import click

from bbenroll.cli.app import App
from bbenroll.cli.output import Output, Result
from bbenroll.cli.params import complete_worker_names, output_options


@click.command("rebind")
@output_options
@click.argument("names", nargs=-1, required=True, metavar="NAME...", shell_complete=complete_worker_names)
@click.pass_obj
def command(app: App, names: tuple[str, ...]) -> Result:
    """Unbind each NAME's FURL from its worker key: the next 'worker create' binds it anew."""
    from bbenroll.registry import model

    results: list[dict[str, Any]] = []
    with app.edit() as editor:
        for name in dict.fromkeys(names):
            worker = editor.worker(name)  # an unknown name: one line, nothing written
            before = model.bound_summary(worker.bound)
            editor.update(model.unbind(worker))  # unchanged (not bound): nothing written
            results.append({"name": name, "was_bound": before})

    def show(out: Output) -> None:
        for result in results:
            name, was = result["name"], result["was_bound"]
            if was is None:
                out.info(f"worker {name!r} was not bound to a worker key; nothing to do")
            else:
                out.info(
                    f"worker {name!r} is no longer bound to worker key {was['fingerprint']}; "
                    f"'bbenroll worker create' with its FURL on the new machine binds it there "
                    f"(a running master drops connections from the old key once the new one is bound)"
                )

    return Result(results, show)
