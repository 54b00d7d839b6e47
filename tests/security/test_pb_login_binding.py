"""Finding 3 of issue 11, with a real master and a real buildbot-worker: a worker's
tunnel logs in to Buildbot only as that worker, whatever name and password it sends.

The attacker is an enrolled worker of its own ("attacker", a valid FURL) that holds
spare's PB password (an old ``buildbot.tac``, say). Before the login check this
logged in as spare and got spare's builders, logged only as a login from 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
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


# A PB login through a worker's own tunnel, in a process of its own (as buildbot-worker would
# make it): prints the failure's type and the traceback text Buildbot sent with it.
WRONG_PASSWORD_LOGIN = textwrap.dedent("""
    import json, sys
    from twisted.cred.credentials import UsernamePassword
    from twisted.internet import reactor
    from twisted.internet.endpoints import clientFromString
    from twisted.spread import pb
    result = {}
    def go():
        factory = pb.PBClientFactory()
        clientFromString(reactor, "bbenroll:furlfile=" + sys.argv[1]).connect(factory)
        wrong = UsernamePassword(sys.argv[2].encode(), b"not-the-password")
        d = factory.login(wrong, client=pb.Referenceable())
        d.addCallback(lambda _: result.update(outcome="logged in"))
        def failed(f):
            result.update(outcome="failed", type=getattr(f, "type", None) and str(f.type),
                          traceback=getattr(f, "traceback", None) or f.getTraceback())
        d.addErrback(failed)
        d.addBoth(lambda _: reactor.stop())
    reactor.callWhenRunning(go)
    reactor.callLater(30, reactor.stop)
    reactor.run()
    print(json.dumps(result))
""")


def test_a_failed_login_through_a_tunnel_gets_no_traceback_from_buildbot(farm_factory, tmp_path):  # noqa: F811
    farm = farm_factory(command=["true"])
    furl_file = tmp_path / "bbenroll.furl"
    furl_file.write_text(farm.cli("add", "wrongpw") + "\n")
    proc = run(sys.executable, "-c", WRONG_PASSWORD_LOGIN, furl_file, "wrongpw", timeout=60)
    result = json.loads(proc.stdout)
    assert result["outcome"] == "failed", result
    assert "UnauthorizedLogin" in result["type"]  # the failure is still typed for the client
    # Buildbot's dispatcher would send its traceback (file paths of the master); not any more
    assert result["traceback"].strip() == "Traceback unavailable", result["traceback"][:500]
    assert "File \"" not in result["traceback"]
