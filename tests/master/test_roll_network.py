"""Master key rollover over real Foolscap on 127.0.0.1: both identities on one port,
the offer under the new TubID, the confirmation over it, and the old identity's end."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from bbenroll.furl import parse_furl
from bbenroll.master.identities import RETIRED
from bbenroll.registry import audit
from tests.master.test_identities import until
from tests.master.test_push_network import Updater
from tests.master.test_service import Master

pytestmark = pytest.mark.network


async def unknown_tubid(master: Master, furl: str) -> str:
    """Foolscap's own refusal of a TubID the port does not serve (fails if it connects)."""
    try:
        await master.client().getReference(furl)
    except Exception as e:
        return str(e)
    raise AssertionError("connected")


@pytest_twisted.ensureDeferred
async def test_a_worker_on_the_old_identity_moves_to_the_new_one_and_the_old_one_retires(master):
    old_furl = master.cli("add", "w1")
    master.service.startService()
    await master.service.when_listening()
    old_tubid = parse_furl(old_furl).tubid
    on_old = await master.connect(old_furl)
    dropped = defer.Deferred()
    on_old.notifyOnDisconnect(dropped.callback, None)

    rolled = json.loads(master.cli("--json", "master", "roll-identity"))
    new_tubid = rolled["tubid"]
    await until(lambda: master.service.identities.tubids() == [old_tubid, new_tubid])
    assert (await on_old.callRemote("get_worker_config"))["name"] == "w1"  # not interrupted

    updater = Updater()
    await on_old.callRemote("subscribe_updates", updater, 0)
    serial, new_furl = await updater.offered.addTimeout(5, reactor)
    assert serial == 1
    assert new_furl == old_furl.replace(old_tubid, new_tubid)  # same hints and secret, new TubID
    on_new = await master.connect(new_furl)
    assert on_new.getSturdyRef().getTubRef().getTubID() == new_tubid  # TLS with the new key
    assert await on_new.callRemote("confirm_furl", serial).addTimeout(10, reactor) == {"status": "confirmed"}

    await dropped.addTimeout(5, reactor)  # every worker confirmed: the old identity's link ended
    assert master.service.identities.tubids() == [new_tubid]
    assert f"unknown TubID {old_tubid}: {RETIRED}" in await unknown_tubid(master, old_furl)
    assert (await on_new.callRemote("get_worker_config"))["name"] == "w1"
    await until(lambda: "previous" not in master.path.read_text())
    actions = [r["action"] for r in audit.read_records(audit.log_path(master.path))]
    own = [a for a in actions if a not in ("accepted", "refused")]  # the master's notes of connections
    assert own[-4:] == ["identity-rolled", "confirmed", "identity-retired", "connection-dropped"]
    again = await master.connect(new_furl)  # the port keeps serving
    assert (await again.callRemote("get_worker_config"))["name"] == "w1"
    await task.deferLater(reactor, 0.05, lambda: None)
