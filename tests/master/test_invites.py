"""Invites on the master (docs/fleets.md, issue 9 tests 1-2): the real service, real Foolscap on
127.0.0.1, invites made in the real registry file."""

from __future__ import annotations

import tomllib
from datetime import timedelta

import pytest_twisted
from twisted.internet import defer, reactor, task

from bbenroll.master import gate
from bbenroll.master.invites import InviteObject
from bbenroll.registry import store
from bbenroll.tunnel.wire import INVITE_INTERFACE, WORKER_INTERFACE
from tests.helpers.invites_master import invites_on_disk, make_invite, revoke_invite, utc_now


async def enroll(master, furl, host="host1"):
    ref = await master.connect(furl)
    assert ref.tracker.interfaceName == INVITE_INTERFACE
    return await ref.callRemote("enroll", host)


async def outcome(master, furl, host):
    """``("enrolled", answer)`` or ``("refused", message, remote exception type names)``."""
    try:
        ref = await master.client().getReference(furl)
        answer = await ref.callRemote("enroll", host)
    except Exception as e:
        copied = getattr(e, "failure", None)
        assert copied is not None, repr(e)
        return ("refused", str(copied.value), tuple(copied.parents))
    return ("enrolled", answer)


@pytest_twisted.ensureDeferred
async def test_a_single_use_invite_enrolls_one_worker_whose_furl_works(master):
    invite_id, furl = make_invite(master.path, prefix="ci", tags=("linux",))
    master.service.startService()
    answer = await enroll(master, furl, host="box7")
    assert answer["name"] == "ci-box7" and answer["enrolled_by"] == invite_id
    loaded = store.load(master.path)
    worker = loaded.registry.workers["ci-box7"]
    assert worker.enrolled_by == invite_id and worker.tags == ("linux",)
    assert answer["furl"] == loaded.registry.furl(worker)  # the worker's own FURL, not the invite
    assert loaded.registry.invites[invite_id].used == 1
    ref = await master.connect(answer["furl"])
    assert ref.tracker.interfaceName == WORKER_INTERFACE
    config = await ref.callRemote("get_worker_config")
    assert config["name"] == "ci-box7" and config["password"] == worker.password
    # the second use is refused for good, with the invite's own reason
    assert await master.refusal(furl) == "invite already used"
    assert len(store.load(master.path).registry.workers) == 1


@pytest_twisted.ensureDeferred
async def test_the_invite_connection_is_closed_after_its_answer(master):
    _, furl = make_invite(master.path, name="solo")
    master.service.startService()
    ref = await master.connect(furl)
    lost = defer.Deferred()
    ref.notifyOnDisconnect(lambda: lost.callback(None))
    await ref.callRemote("enroll", "h")
    await lost.addTimeout(5, reactor)  # the master closes it: an invite connection does one thing
    assert master.service.connections == {}  # it never was a worker's connection


@pytest_twisted.ensureDeferred
async def test_ten_concurrent_redemptions_of_a_single_use_invite_enroll_exactly_one(master):
    invite_id, furl = make_invite(master.path, prefix="race")
    master.service.guard.max_unauthenticated_per_address = 32  # ten clients from one address
    master.service.startService()
    results = await defer.gatherResults(
        [defer.ensureDeferred(outcome(master, furl, f"h{i}")) for i in range(10)]
    )
    enrolled = [r for r in results if r[0] == "enrolled"]
    refused = [r for r in results if r[0] == "refused"]
    assert len(enrolled) == 1 and len(refused) == 9, results
    for _, message, types in refused:
        assert message == "invite already used"
        assert "bbenroll.tunnel.wire.RefusedForGood" in types
    loaded = store.load(master.path)  # valid: it loads, schema and all
    assert list(loaded.registry.workers) == [enrolled[0][1]["name"]]
    assert loaded.registry.invites[invite_id].used == 1 and loaded.registry.invites[invite_id].uses == 0
    assert store.check(master.path) == []


@pytest_twisted.ensureDeferred
async def test_five_uses_enroll_five_workers_and_the_sixth_is_refused(master):
    invite_id, furl = make_invite(master.path, prefix="pool", uses=5)
    master.service.startService()
    names = [(await enroll(master, furl, host="same"))["name"] for _ in range(5)]
    assert len(set(names)) == 5 and names[0] == "pool-same"  # made unique
    assert await master.refusal(furl) == "invite already used"
    loaded = store.load(master.path)
    assert sorted(loaded.registry.workers) == sorted(names)
    assert {w.enrolled_by for w in loaded.registry.workers.values()} == {invite_id}


@pytest_twisted.ensureDeferred
async def test_expired_revoked_and_unknown_invites_are_refused_for_good(master):
    _, expired = make_invite(master.path, name="late", now=utc_now() - timedelta(hours=2))
    revoked_id, revoked = make_invite(master.path, name="gone")
    revoke_invite(master.path, revoked_id)
    _, good = make_invite(master.path, name="ok")
    worker_furl = master.cli("add", "w1")
    master.service.startService()
    assert await master.refusal(expired) == "invite expired"
    assert await master.refusal(revoked) == "invite revoked"
    # an unknown invite secret is told exactly what an unknown worker secret is
    base = good.rsplit("/", 1)[0]
    assert await master.refusal(base + "/" + "b" * 52) == gate.UNKNOWN
    assert await master.refusal(worker_furl.rsplit("/", 1)[0] + "/" + "c" * 52) == gate.UNKNOWN
    assert sorted(store.load(master.path).registry.workers) == ["w1"]


@pytest_twisted.ensureDeferred
async def test_an_invite_revoked_while_connected_enrolls_nobody(master):
    invite_id, furl = make_invite(master.path, name="raced")
    master.service.startService()
    ref = await master.connect(furl)
    revoke_invite(master.path, invite_id)  # after the lookup, before enroll: the edit re-reads it
    try:
        await ref.callRemote("enroll", "h")
    except Exception as e:
        assert str(e.failure.value) == "invite revoked"
    else:
        raise AssertionError("enrolled through a revoked invite")
    assert store.load(master.path).registry.workers == {}


@pytest_twisted.ensureDeferred
async def test_master_made_invites_are_removed_once_spent(master):
    master.service.startService()
    await master.service.when_listening()
    furl = await master.service.create_invite(name="latent1", ttl=timedelta(minutes=5))
    short = await master.service.create_invite(name="latent2", ttl=timedelta(seconds=1))
    (used_id,) = [i for i, inv in invites_on_disk(master.path).items() if inv.name == "latent1"]
    assert invites_on_disk(master.path)[used_id].by == "master"
    answer = await enroll(master, furl)
    assert answer["name"] == "latent1"
    await task.deferLater(reactor, 2.5, lambda: None)  # latent2 expires; the ticks clean up
    assert invites_on_disk(master.path) == {}  # nothing stays behind
    assert "latent1" in store.load(master.path).registry.workers and short
    text = master.path.read_text()
    assert "[invites." not in text
    records = [line for line in (master.path.parent / "workers.audit.jsonl").read_text().splitlines()
               if "invite-pruned" in line]
    assert len(records) == 2


def test_the_invite_object_repr_names_no_address_nor_module():
    obj = InviteObject.__new__(InviteObject)
    obj.invite_id, obj.peer = "inv-abcdefgh", "worker at 10.0.0.1"
    assert repr(obj) == "<InviteObject inv-abcdefgh from worker at 10.0.0.1>"
    assert "bbenroll" not in repr(obj)


def test_registry_text_holds_only_the_hash(reg_path):
    _, furl = make_invite(reg_path, name="x")
    secret = furl.rsplit("/", 1)[1]
    text = reg_path.read_text()
    assert secret not in text
    assert tomllib.loads(text)["invites"]
