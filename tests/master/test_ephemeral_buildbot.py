"""Ephemeral cleanup for real: a Buildbot master with the hook, real workers, a short timeout."""

from __future__ import annotations

import json
import time
from datetime import datetime

import pytest

from tests.helpers.buildbot import fetch_config, wait_for
from tests.helpers.rotation import RotationFarm, edit_registry

pytestmark = [pytest.mark.slow, pytest.mark.network]

TIMEOUT = 3  # seconds: [master] ephemeral_timeout


def logged_at(log: str, text: str) -> datetime:
    """When the master's twistd.log last logged ``text``."""
    (line, *_) = [line for line in reversed(log.splitlines()) if text in line]
    return datetime.strptime(line[:24], "%Y-%m-%d %H:%M:%S%z")


def test_an_ephemeral_worker_is_removed_once_disconnected_longer_than_the_timeout(tmp_path):
    farm = RotationFarm(tmp_path / "farm", ["eph", "keep"])
    try:
        furl = farm.registry_furl("eph")
        edit_registry(farm, f"""
            text = text.replace("[master]\\n", '[master]\\nephemeral_timeout = "{TIMEOUT}s"\\n', 1)
            text = text.replace("[workers.eph]\\n", "[workers.eph]\\nephemeral = true\\n", 1)
        """)
        assert farm.entry("eph").ephemeral and not farm.entry("keep").ephemeral
        audit = farm.registry.with_name("workers.audit.jsonl")
        mark = len(audit.read_text())

        # connected (and building) for longer than the timeout: it stays
        build = farm.force("eph", 50, 3 * TIMEOUT)
        farm.wait_started(build)
        time.sleep(2 * TIMEOUT)
        assert "eph" in farm.loaded().registry.workers
        farm.assert_succeeded(build)
        assert "eph" in farm.loaded().registry.workers and farm.connected("eph")

        farm.workers["eph"].stop()
        wait_for(lambda: "eph" not in farm.loaded().registry.workers, timeout=TIMEOUT + 20,
                 what="the ephemeral worker removed from the registry")
        # not before the timeout, counted from the disconnect (the master's log, to the second)
        disconnected = logged_at(farm.master_log(), "worker 'eph' disconnected")
        removing = logged_at(farm.master_log(), "bbenroll: removing ephemeral worker 'eph'")
        assert (removing - disconnected).total_seconds() >= TIMEOUT
        wait_for(lambda: "eph" not in farm.rest_workers(), timeout=30, what="eph gone from Buildbot")
        assert set(farm.loaded().registry.workers) == {"keep"} and farm.connected("keep")
        records = [json.loads(line) for line in audit.read_text()[mark:].splitlines()]
        removed = [r for r in records if r["action"] == "removed"]
        assert [(r["worker"], r["actor"]["by"]) for r in removed] == [("eph", "master")]
        assert "removing ephemeral worker 'eph'" in farm.master_log()
        assert fetch_config(furl) == {"error": "unknown secret"}
    finally:
        farm.stop()
