"""buildbot-worker finds bbenroll's endpoint plugin: editable install and real wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import os, sys
drop = os.path.realpath(sys.argv[1]) if len(sys.argv) > 2 else None
if drop:  # hide the editable checkout, put the unpacked wheel first
    sys.path[:] = [sys.argv[2]] + [p for p in sys.path if os.path.realpath(p or ".") != drop]
from twisted.internet import reactor
from twisted.internet.endpoints import clientFromString
endpoint = clientFromString(reactor, r"bbenroll:furlfile=/nonexistent\\:dir/x.furl:resume=42")
import bbenroll, twisted.plugins.bbenroll_endpoints as plugin
print(type(endpoint).__name__, endpoint.furlfile, endpoint.resume)
print(os.path.realpath(plugin.__file__))
print(os.path.realpath(bbenroll.__file__))
"""


def probe(*args: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60,
                          cwd="/")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_plugin_found_from_the_editable_install():
    kind, plugin, package = probe()
    assert kind == "TunnelEndpoint /nonexistent:dir/x.furl 42.0"
    assert Path(plugin) == ROOT / "twisted" / "plugins" / "bbenroll_endpoints.py"
    assert Path(package).is_relative_to(ROOT)


@pytest.mark.slow
def test_plugin_found_from_the_wheel(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
         str(tmp_path / "dist"), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("bbenroll-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/bbenroll_endpoints.py" in names
    # never our own twisted/__init__.py or twisted/plugins/__init__.py: they would shadow Twisted's
    assert not [n for n in names if n.startswith("twisted/") and n.endswith("__init__.py")]
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )
    assert install.returncode == 0, install.stderr
    kind, plugin, package = probe(str(ROOT), str(target))
    assert kind == "TunnelEndpoint /nonexistent:dir/x.furl 42.0"
    assert Path(plugin).is_relative_to(target.resolve())
    assert Path(package).is_relative_to(target.resolve())
