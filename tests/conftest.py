"""Fixtures only; the helpers they use live in tests/helpers/."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from bbenroll.registry import store
from tests.helpers.cli import HINT, Clock, Result, run_cli
from tests.helpers.net import free_port

# Property tests check behaviour, never speed: on a shared, loaded machine drawing inputs
# can take seconds, and Hypothesis's timing checks (too_slow, the per-example deadline)
# would fail tests that are right. Speed is measured in bench/.
settings.register_profile(
    "bbenroll", suppress_health_check=[HealthCheck.too_slow], deadline=None
)
settings.load_profile("bbenroll")


@pytest.fixture(scope="session")
def _template_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real registry + identity per test session (RSA key generation is slow)."""
    directory = tmp_path_factory.mktemp("template")
    store.create(
        directory / "workers.toml",
        location=[HINT],
        listen="tcp:9989",
        pb="tcp:9990:interface=127.0.0.1",
        identity="master.pem",
    )
    return directory


@pytest.fixture
def reg_path(tmp_path: Path, _template_registry: Path) -> Path:
    """A fresh copy of a freshly initialised registry (no workers), mode 0600, with its audit log."""
    for name in ("workers.toml", "master.pem", "workers.audit.jsonl"):
        shutil.copy2(_template_registry / name, tmp_path / name)
    return tmp_path / "workers.toml"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cli(reg_path: Path, clock: Clock) -> Callable[..., Result]:
    """Run the real CLI against ``reg_path`` with a fixed, movable clock."""

    def invoke(*args: str, env: dict[str, str | None] | None = None, registry_arg: bool = True,
               input: str | None = None) -> Result:
        argv = (["--registry", str(reg_path)] if registry_arg else []) + list(args)
        return run_cli(argv, clock=clock, env=env, input=input)

    return invoke


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


@pytest.fixture
def master(served_reg_path):
    """A real EnrollmentService on 127.0.0.1 over ``served_reg_path`` (tests/master/test_service.py's
    ``Master``), stopped after the test."""
    import pytest_twisted
    from twisted.internet import defer

    from tests.master.test_service import Master

    m = Master(served_reg_path)
    yield m
    pytest_twisted.blockon(defer.ensureDeferred(m.stop()))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``first`` tests run before all others, ``last`` ones after: a long scenario starts
    in the background at the beginning of the run and is checked at its end. Before
    them all, the ``process_wide`` tests: they count the whole test process's file
    descriptors or threads, which a background scenario would change under them."""
    def marked(name: str) -> list[pytest.Item]:
        return [item for item in items if item.get_closest_marker(name)]

    process_wide, first, last = marked("process_wide"), marked("first"), marked("last")
    early = process_wide + [item for item in first if item not in process_wide]
    chosen = {id(item) for item in early + last}
    items[:] = early + [item for item in items if id(item) not in chosen] + last
