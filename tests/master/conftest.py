"""Fixtures of the master's tests."""

from __future__ import annotations

import pytest
from twisted.logger import globalLogPublisher

from tests.helpers.foolscap import eventual_queue_on
from tests.helpers.master import World


@pytest.fixture
def world(reg_path, monkeypatch):
    """A service on one MemoryReactorClock, with in-memory links (see tests/helpers/master.py)."""
    w = World(reg_path)
    eventual_queue_on(w.clock, monkeypatch)
    yield w
    if w.service is not None and w.service.running:  # a test that failed half-way
        w.finish()
    globalLogPublisher.removeObserver(w.events.append)  # a no-op after finish()

