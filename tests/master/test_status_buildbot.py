"""`bbenroll status` reports Buildbot's attachment, with a real master and tunnel workers."""

from __future__ import annotations

import pytest

from tests.helpers.buildbot import wait_for
from tests.helpers.rotation import RotationFarm

pytestmark = [pytest.mark.slow, pytest.mark.network]


def rows(farm: RotationFarm) -> dict[str, dict]:
    return {row["name"]: row for row in farm.cli_json("status")["workers"]}


def test_status_says_attached_while_buildbot_has_the_worker_and_not_after(tmp_path):
    farm = RotationFarm(tmp_path / "farm", ["w1", "w2"])
    try:
        farm.cli("add", "w3")  # in the registry, never started
        wait_for(lambda: all(rows(farm)[n]["attached"] for n in ("w1", "w2")), timeout=30,
                 what="w1 and w2 attached in the status file")
        document = farm.cli_json("status")
        assert rows(farm)["w3"]["attached"] is not True
        assert document["counts"]["connected"] == 2 and document["counts"]["connected_not_attached"] == 0
        farm.workers["w2"].stop()  # a clean stop: Buildbot detaches it
        wait_for(lambda: rows(farm)["w2"]["attached"] is False, timeout=30, what="w2 detached")
        assert rows(farm)["w1"]["attached"] is True
    finally:
        farm.stop()
