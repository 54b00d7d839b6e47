"""Read-only commands start fast: they never import Twisted, Foolscap or tomlkit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HEAVY = ("twisted", "foolscap", "tomlkit")

# runs the CLI, then reports its exit status and every top-level package it imported
PROBE = """
import json, sys
from bbenroll.cli import run
code = run(sys.argv[1:])
modules = sorted({m.split(".")[0] for m in sys.modules})
print(json.dumps({"code": code, "modules": modules}), file=sys.__stderr__)
"""


def imported_by(args: list[str], env: dict[str, str] | None = None) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60,
                          env=env)
    report = json.loads(proc.stderr.splitlines()[-1])
    return {"code": report["code"], "heavy": [m for m in report["modules"] if m in HEAVY]}


@pytest.mark.parametrize(
    "args",
    [["list"], ["list", "--json"], ["show", "w1"], ["show", "w1", "--qr"], ["check"], ["status"], ["--help"],
     ["add", "--help"], ["completion", "bash"], ["show", "nope", "--json"]],
)
def test_read_only_commands_import_nothing_heavy(cli, reg_path, args):
    assert cli("add", "w1").code == 0
    assert imported_by(["--registry", str(reg_path), *args]) == {"code": 0 if "nope" not in args else 1,
                                                                   "heavy": []}


def test_completing_worker_names_imports_nothing_heavy(cli, reg_path):
    assert cli("add", "w1").code == 0
    env = {**os.environ, "_BBENROLL_COMPLETE": "bash_complete", "COMP_WORDS": "bbenroll show ",
           "COMP_CWORD": "2", "BBENROLL_REGISTRY": str(reg_path)}
    assert imported_by([], env) == {"code": 0, "heavy": []}


def test_the_probe_sees_a_heavy_import(cli, reg_path):
    """The probe can fail: an editing command does load tomlkit."""
    assert imported_by(["--registry", str(reg_path), "add", "w2"])["heavy"] == ["tomlkit"]
