"""bbenroll show: print a worker's FURL, optionally as a QR code."""

from __future__ import annotations

from pathlib import Path

import click

from bbenroll.cli.app import App
from bbenroll.cli.output import Output, Result
from bbenroll.cli.params import (
    furl_result,
    output_options,
    state_warning,
    worker_name_argument,
    write_qr_images,
)


@click.command("show")
@output_options
@worker_name_argument
@click.option("--qr", is_flag=True, help="Draw the FURL as a QR code in the terminal (not with --json).")
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), help="Write a PNG QR code.")
@click.option("--svg", type=click.Path(dir_okay=False, path_type=Path), help="Write an SVG QR code.")
@click.pass_obj
def command(app: App, name: str, qr: bool, png: Path | None, svg: Path | None) -> Result:
    """Print the FURL of worker NAME."""
    from bbenroll.registry import model

    loaded = app.load()
    worker = loaded.worker(name)
    details = model.worker_details(loaded.registry, worker, app.now())
    from bbenroll.cli.listing import kind_text, origin_fields

    kind = kind_text(worker)
    if kind or worker.enrolled_by:  # a plain worker's document stays what `add --json` gives
        details.update(origin_fields(worker))
    warning = state_warning(name, details["state"])
    if warning:
        app.out.warn(warning)
    write_qr_images(app, details["furl"], png, svg)
    result = furl_result(details, qr=qr)
    lines = []
    sent = model.delivery(worker)
    # the FURL it was enrolled with, or one nobody is sent: nothing to say about its delivery
    if sent.state != model.DeliveryState.CURRENT and worker.revoked is None:
        from bbenroll.cli.listing import delivery_text

        lines.append(f"delivery: FURL {sent.serial} {delivery_text(worker)}")
    if worker.bound is not None:
        from bbenroll.times import format_short

        lines.append(f"bound to worker key {worker.bound.tubid} since {format_short(worker.bound.at)}")
    if kind:
        by = f" (enrolled by invite {worker.enrolled_by})" if worker.enrolled_by else ""
        lines.append(f"kind: {kind}{by}")
    elif worker.enrolled_by:
        lines.append(f"enrolled by invite {worker.enrolled_by}")
    if not lines:
        return result

    def show(out: Output) -> None:
        assert result.show is not None
        result.show(out)
        for line in lines:
            out.info(line)  # stderr: stdout holds the FURL alone, for furl=$(bbenroll show NAME)

    return Result(details, show)
