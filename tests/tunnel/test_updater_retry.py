"""The test connection of a new FURL, when the master closes it before answering.

A master drops the oldest of the connections one address has not authenticated
yet (master/guard.py). Found by bench/bench_rotation.py: ten tunnels in one
process, ``rotate --all``, and two of them failed their test connection and
waited a minute (the master's OFFER_RETRY) for the next offer.
"""

from __future__ import annotations

from foolscap.api import DeadReferenceError
from twisted.internet import error, task

from bbenroll.tunnel import worker_side
from bbenroll.tunnel.furlfile import FurlFile, read_furl_file
from bbenroll.tunnel.updater import State
from tests.tunnel.test_updater import NEW, OLD, Ref, Tub, finish, up


def test_a_test_connection_the_master_closed_is_tried_again_with_the_backoff(tmp_path):
    clock = task.Clock()
    old = Ref({"status": "new", "received": {}})
    new = Ref({"status": "resumed", "received": {}})
    lookup_lost = DeadReferenceError("Connection was lost", "tubid", "RIBroker:getReferenceByName")
    new_tub = Tub(error.ConnectionLost(), lookup_lost, new)
    tunnel, path = up(clock, tmp_path, Tub(old), new_tub)
    tunnel.updater.offer(1, NEW)
    assert new_tub.attempts == 1 and tunnel.updater.state is State.TESTING
    clock.advance(worker_side.BACKOFF[0])
    assert new_tub.attempts == 2
    clock.advance(worker_side.BACKOFF[1])
    assert new_tub.attempts == 3
    assert tunnel.updater.state is State.IDLE
    assert old.named("furl_update_failed") == []
    assert new.named("confirm_furl") == [{"serial": 1}]
    assert read_furl_file(path) == FurlFile(NEW, 1) and (tunnel.furl, tunnel.serial) == (NEW, 1)
    finish(clock, tunnel)


def test_a_test_connection_that_cannot_be_made_still_fails_at_once(tmp_path):
    clock = task.Clock()
    old = Ref({"status": "new", "received": {}})
    new_tub = Tub(error.ConnectionRefusedError())
    tunnel, path = up(clock, tmp_path, Tub(old), new_tub)
    tunnel.updater.offer(1, NEW)
    assert new_tub.attempts == 1 and tunnel.updater.state is State.IDLE
    (failed,) = old.named("furl_update_failed")
    assert failed["serial"] == 1 and failed["reason"].startswith("the new FURL does not work: cannot reach")
    assert read_furl_file(path) == FurlFile(OLD, 0)
    finish(clock, tunnel)


def test_stopping_the_tunnel_while_it_waits_to_try_again_leaves_nothing_behind(tmp_path):
    clock = task.Clock()
    old = Ref({"status": "new", "received": {}})
    new_tub = Tub(error.ConnectionLost())
    tunnel, path = up(clock, tmp_path, Tub(old), new_tub)
    tunnel.updater.offer(1, NEW)
    assert len(clock.getDelayedCalls()) >= 1 and new_tub.attempts == 1
    finish(clock, tunnel)  # stops the tunnel: no delayed call may be left
    assert new_tub.attempts == 1 and not new_tub.running
    assert old.named("furl_update_failed") == []  # a stopped tunnel reports nothing
    assert read_furl_file(path) == FurlFile(OLD, 0)
