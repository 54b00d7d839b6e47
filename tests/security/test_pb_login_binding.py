"""Finding 3 of issue 11, with a real master and a real buildbot-worker: a worker's
tunnel logs in to Buildbot only as that worker, whatever name and password it sends.

The attacker is an enrolled worker of its own ("attacker", a valid FURL) that holds
spare's PB password (an old ``buildbot.tac``, say). Before the login check this
logged in as spare and got spare's builders, logged only as a login from 127.0.0.1.
"""

from __future__ import annotations

import re
import time
import tomllib

import pytest

from tests.helpers.buildbot import BIN, configured_workers, run, stop_daemon
from tests.tunnel.test_e2e import farm_factory  # noqa: F401 - the fixture

pytestmark = [pytest.mark.slow, pytest.mark.network]


def test_a_tunnel_cannot_log_in_as_another_worker(farm_factory, tmp_path):  # noqa: F811
    farm = farm_factory(command=["true"])
    attacker_furl = farm.cli("add", "attacker")
    registry = tomllib.loads((farm.basedir / "workers.toml").read_text())
    spare_password = registry["workers"]["spare"]["password"]
    thief = tmp_path / "thief"
    proc = run(BIN / "bbenroll", "worker", "create", thief, "-", check=False, input_text=attacker_furl)
    assert proc.returncode == 0, proc.stderr
    tac = (thief / "buildbot.tac").read_text()
    tac, named = re.subn(r"workername = '[^']*'", "workername = 'spare'", tac)
    tac, keyed = re.subn(r"passwd = '[^']*'", f"passwd = {spare_password!r}", tac)
    assert named == keyed == 1, tac
    (thief / "buildbot.tac").write_text(tac)
    run(BIN / "buildbot-worker", "start", thief, timeout=60, check=False)
    try:
        log = farm.basedir / "twistd.log"
        deadline = time.monotonic() + 30
        while "tried to log in to Buildbot as 'spare'" not in log.read_text():
            assert time.monotonic() < deadline, "the master never refused the login as spare"
            assert not configured_workers(farm.www)["spare"]["connected_to"], "logged in as another worker"
            time.sleep(0.5)
        time.sleep(3)  # buildbot-worker retries: none of its attempts may get in
        assert not configured_workers(farm.www)["spare"]["connected_to"]
        assert configured_workers(farm.www)["worker1"]["connected_to"]  # the real worker1 is unharmed
        text = log.read_text()
        assert "worker 'attacker': its tunnel tried to log in to Buildbot as 'spare'" in text
        assert spare_password not in text
    finally:
        stop_daemon("buildbot-worker", thief)
