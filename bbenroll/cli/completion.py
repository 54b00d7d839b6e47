"""bbenroll completion: the shell's tab-completion script, from click's own machinery.

The script calls ``bbenroll`` back with ``_BBENROLL_COMPLETE`` set; click then
answers from the command tree, and worker NAME arguments from the registry.
"""

from __future__ import annotations

import click

from bbenroll.cli.app import App
from bbenroll.cli.output import Result
from bbenroll.cli.params import output_options

SHELLS = ("bash", "zsh", "fish")
COMPLETE_VAR = "_BBENROLL_COMPLETE"  # click's name for prog_name "bbenroll"


@click.command("completion")
@output_options
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_obj
def command(app: App, shell: str) -> Result:
    """Print the completion script for SHELL (bash, zsh or fish); see docs/cli.md to install it."""
    from click.shell_completion import get_completion_class

    from bbenroll.cli import PROG_NAME, cli

    completion_class = get_completion_class(shell)
    script = completion_class(cli, {}, PROG_NAME, COMPLETE_VAR).source()
    return Result({"shell": shell, "script": script}, lambda out: out.data(script.rstrip("\n")))
