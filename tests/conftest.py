from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from bbenroll import registry
from bbenroll.cli import run

FIXED_NOW = datetime(2026, 11, 29, 6, 0, 0, tzinfo=UTC)
HINT = "tcp:buildbot.example.org:9989"


@pytest.fixture(scope="session")
def _template_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real registry + identity per test session (RSA key generation is slow)."""
    directory = tmp_path_factory.mktemp("template")
    registry.create(
        directory / "workers.toml",
        location=[HINT],
        listen="tcp:9989",
        pb="tcp:9990:interface=127.0.0.1",
        identity="master.pem",
    )
    return directory


@pytest.fixture
def reg_path(tmp_path: Path, _template_registry: Path) -> Path:
    """A fresh copy of a freshly initialised registry (no workers), mode 0600."""
    for name in ("workers.toml", "master.pem"):
        shutil.copy2(_template_registry / name, tmp_path / name)
    return tmp_path / "workers.toml"


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


@pytest.fixture
def clock() -> Clock:
    return Clock()


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


@pytest.fixture
def cli(reg_path: Path, clock: Clock) -> Callable[..., Result]:
    """Run the real CLI against ``reg_path`` with a fixed, movable clock."""

    def invoke(*args: str, env: dict[str, str | None] | None = None, registry_arg: bool = True,
               input: str | None = None) -> Result:
        argv = (["--registry", str(reg_path)] if registry_arg else []) + list(args)
        return run_cli(argv, clock=clock, env=env, input=input)

    return invoke


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (allocated before the server starts)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served_reg_path(reg_path: Path) -> Path:
    """``reg_path`` with listen/location on a free loopback port, for a real service."""
    port = free_port()
    text = reg_path.read_text()
    text = text.replace(f'location = ["{HINT}"]', f'location = ["tcp:127.0.0.1:{port}"]')
    text = text.replace('listen = "tcp:9989"', f'listen = "tcp:{port}:interface=127.0.0.1"')
    pb_port = free_port()
    text = text.replace('pb = "tcp:9990:interface=127.0.0.1"', f'pb = "tcp:{pb_port}:interface=127.0.0.1"')
    reg_path.write_text(text)
    return reg_path
