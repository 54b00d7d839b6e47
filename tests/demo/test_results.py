"""What the demo reports: result names, durations, the JSON document."""

from __future__ import annotations

import json

from bbenroll.demo.results import RESULT_NAMES, BuildResult, DemoResult, format_seconds, result_name


def test_format_seconds() -> None:
    assert [format_seconds(s) for s in (None, 0, 2.0, 2.5, 61, 3600)] == [
        "an unknown time",
        "0s",
        "2s",
        "2.5s",
        "1m01s",
        "60m00s",
    ]


def test_result_names_follow_buildbots_codes() -> None:
    from buildbot.process import results as buildbot_results

    for code, name in enumerate(RESULT_NAMES):
        assert buildbot_results.Results[code] == name
        assert result_name(code) == name
    assert result_name(len(RESULT_NAMES)) == str(len(RESULT_NAMES))
    assert result_name(-1) == "-1"
    assert result_name(None) == "None"


def test_demo_result_to_json() -> None:
    build = BuildResult(
        number=3, builder="demo", worker="w", result="warnings", duration=None, log_tail=["x"]
    )
    doc = DemoResult(build=build, furl="pb://t@tcp:h:1/abcd…", directory=None, elapsed=1.23456).to_json()
    assert json.loads(json.dumps(doc)) == {
        "ok": False,
        "result": "warnings",
        "build": {"number": 3, "builder": "demo", "worker": "w", "result": "warnings", "duration": None,
                  "log_tail": ["x"]},
        "worker": "w",
        "furl": "pb://t@tcp:h:1/abcd…",
        "directory": None,
        "kept": False,
        "elapsed": 1.235,
    }
    assert DemoResult(build=build, furl="", directory="/tmp/d", elapsed=0).to_json()["kept"] is True
