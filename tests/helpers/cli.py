"""Running the real CLI in-process, with a fixed, movable clock."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from click.testing import CliRunner

from bbenroll.cli import run

FIXED_NOW = datetime(2026, 11, 29, 6, 0, 0, tzinfo=UTC)
HINT = "tcp:buildbot.example.org:9989"


@dataclass
class Result:
    code: int
    out: str
    err: str


class Clock:
    def __init__(self, now: datetime = FIXED_NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def run_cli(argv: Sequence[str], *, clock: Callable[[], datetime] | None = None,
            env: dict[str, str | None] | None = None, input: str | None = None) -> Result:
    """Run the real CLI in-process, in click's isolated environment."""
    base_env: dict[str, str | None] = {"NO_COLOR": None, "BBENROLL_REGISTRY": None, "COLUMNS": "200"}
    base_env.update(env or {})
    with CliRunner().isolation(env=base_env, input=input) as streams:
        code = run(list(argv), clock=clock or Clock())
        sys.stdout.flush()
        sys.stderr.flush()
        out, err = streams[0].getvalue(), streams[1].getvalue()
    return Result(code, out.decode(), err.decode())
