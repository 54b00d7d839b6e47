"""FURL-to-key binding (docs/security.md) with a real master and real processes: the FURL that
`worker create` bound works from its basedir, and a copy of it used from another basedir (another
key) is refused, with a clear message for the worker admin and both keys in the master's log."""

from __future__ import annotations

import tomllib

import pytest

from bbenroll.identity import tubid_from_pem
from tests.helpers.buildbot import BIN, configured_workers, run
from tests.tunnel.test_e2e import farm_factory  # noqa: F401 - the fixture

pytestmark = [pytest.mark.slow, pytest.mark.network]


def test_a_copied_furl_is_refused_from_another_key(farm_factory, tmp_path):  # noqa: F811
    farm = farm_factory(command=["true"])  # worker create + buildbot-worker start, connected
    key = tubid_from_pem((farm.wdir / "bbenroll.pem").read_bytes())
    registry = tomllib.loads((farm.basedir / "workers.toml").read_text())
    assert registry["workers"]["worker1"]["bound"]["tubid"] == key
    assert "keyfile=" in (farm.wdir / "buildbot.tac").read_text()
    copy = tmp_path / "copy"
    proc = run(BIN / "bbenroll", "worker", "create", copy, "-", check=False, input_text=farm.furl)
    assert proc.returncode == 1
    refused = "error: the master refused this FURL: this FURL is bound to another worker key"
    assert proc.stderr.startswith(refused)
    assert "bbenroll rebind NAME" in proc.stderr and key not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not copy.exists()  # nothing left behind, not even the new key
    log = (farm.basedir / "twistd.log").read_text()
    assert "worker 'worker1' (" in log and f"FURL bound to worker key {key}" in log  # worker create's
    (line,) = [text for text in log.splitlines() if "refused connection" in text and "bound to" in text]
    assert f"bound to worker key {key}, presented " in line and "'worker1'" in line
    assert line.split("presented ")[1][:32] != key  # the copy's own key
    assert farm.connected()  # the real worker is unharmed
    assert configured_workers(farm.www)["worker1"]["connected_to"]
