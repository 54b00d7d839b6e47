"""Pushed rotation over real Foolscap on 127.0.0.1: the schemas on the wire, and the
confirmation written from the reactor's thread pool (the memory tests write in place)."""

from __future__ import annotations

import pytest
import pytest_twisted
from foolscap.api import Referenceable
from twisted.internet import defer, reactor, task
from zope.interface import implementer

from bbenroll.master import gate
from bbenroll.registry import audit
from bbenroll.tunnel.wire import RIFurlUpdater
from tests.helpers.registry_stub import delivered_of

pytestmark = pytest.mark.network


@implementer(RIFurlUpdater)
class Updater(Referenceable):
    def __init__(self) -> None:
        self.offered: defer.Deferred[tuple[int, str]] = defer.Deferred()

    def remote_offer_furl(self, serial: int, furl: str) -> None:
        if not self.offered.called:
            self.offered.callback((serial, furl))


@pytest_twisted.ensureDeferred
async def test_offer_confirm_and_retire_over_real_connections(master):
    old_furl = master.cli("add", "w1")
    master.service.startService()
    await master.service.when_listening()
    old = await master.connect(old_furl)
    master.cli("rotate", "w1")
    await task.deferLater(reactor, 0.3, lambda: None)  # a few polls (0.1 s)
    updater = Updater()
    await old.callRemote("subscribe_updates", updater, 0)
    serial, new_furl = await updater.offered.addTimeout(5, reactor)
    assert serial == 1 and new_furl != old_furl
    new = await master.connect(new_furl)
    answer = await new.callRemote("confirm_furl", serial).addTimeout(10, reactor)
    assert answer == {"status": "confirmed"}
    assert delivered_of(master.path, "w1") == 1
    actor = audit.read_records(audit.log_path(master.path))[-1]["actor"]
    assert actor["by"] == "master"
    assert (await master.refusal(old_furl)).startswith(str(gate.RETIRED))
    assert (await new.callRemote("get_worker_config"))["name"] == "w1"
