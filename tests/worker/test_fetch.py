"""fetch_worker_config: real Foolscap on 127.0.0.1, with the timeout on an injected task.Clock."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import pytest_twisted
from twisted.internet import protocol, reactor, task

from bbenroll.master.service import EnrollmentService
from bbenroll.worker.setup import WorkerSetupError, fetch_worker_config
from tests.helpers.cli import run_cli

pytestmark = pytest.mark.network

TUBID = "a" * 32
SWISSNUM = "b" * 32


@pytest.fixture
def enrolled(served_reg_path):
    """A running master service whose registry holds worker1 from the start; its FURL."""
    furl = add(served_reg_path, "worker1")
    service = EnrollmentService(served_reg_path, reactor=reactor, clock=reactor, poll_interval=0.1)
    service.startService()
    yield furl
    pytest_twisted.blockon(service.stopService())


@pytest.fixture
def silent_port():
    """A port that accepts connections and never says a word: the master 'does not answer'."""
    port = reactor.listenTCP(0, protocol.Factory.forProtocol(protocol.Protocol), interface="127.0.0.1")
    yield port.getHost().port
    pytest_twisted.blockon(port.stopListening())


def add(reg_path, name):
    result = run_cli(["--registry", str(reg_path), "add", name], clock=lambda: datetime.now(UTC))
    assert result.code == 0, result.err
    return result.out.strip()


@pytest_twisted.ensureDeferred
async def test_fetches_the_config_and_tells_each_step(enrolled):
    furl = enrolled
    hints = furl.split("@")[1].split("/")[0]
    clock = task.Clock()
    steps: list[str] = []
    config = await fetch_worker_config(furl, reactor=clock, timeout=30, progress=steps.append)
    assert config["name"] == "worker1" and config["password"]
    assert steps == [
        f"connecting to the master (at {hints}, for up to 30s)",
        "connected; the master's identity matches the FURL; fetching this worker's settings",
    ]
    assert clock.getDelayedCalls() == []  # the timeout was cancelled


@pytest_twisted.ensureDeferred
async def test_no_answer_times_out_on_the_injected_clock(silent_port):
    clock = task.Clock()
    steps: list[str] = []
    furl = f"pb://{TUBID}@tcp:127.0.0.1:{silent_port}/{SWISSNUM}"
    d = fetch_worker_config(furl, reactor=clock, timeout=12, progress=steps.append)
    clock.advance(11.9)
    assert not d.called
    clock.advance(0.1)
    with pytest.raises(WorkerSetupError) as info:
        await d
    assert str(info.value) == "cannot reach the master at any of the FURL's addresses (no answer in 12s)"
    assert steps == [f"connecting to the master (at tcp:127.0.0.1:{silent_port}, for up to 12s)"]
    assert clock.getDelayedCalls() == []
