"""Invites, the pure model (registry/invites.py): making, states, each refusal, redeeming, names."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bbenroll.errors import BBEnrollError, WorkerExists, WrongState
from bbenroll.registry import audit, model
from bbenroll.registry import invites as inv
from bbenroll.registry.invites import InviteState, RefusalReason
from tests.helpers.cli import FIXED_NOW

NOW = FIXED_NOW
LATER = NOW + timedelta(minutes=5)


def test_a_new_invite_keeps_only_the_hash_of_its_secret():
    invite, secret = inv.new_invite(NOW, prefix="ci", tags=["linux", "linux", "x86"], by="ann@host")
    assert inv.is_invite_id(invite.id) and invite.id.startswith("inv-")
    assert invite.hash == inv.invite_hash(secret) and invite.hash.startswith("sha256:")
    assert len(invite.hash) == len("sha256:") + 64
    assert secret not in repr(invite)
    other = secret[:-1] + ("b" if secret[-1] == "a" else "a")  # one character off (never the same)
    assert invite.matches(secret) and not invite.matches(other)
    assert (invite.uses, invite.used, invite.reusable) == (1, 0, False)
    assert invite.expires == NOW + inv.DEFAULT_TTL
    assert invite.tags == ("linux", "x86")
    assert invite.state(NOW) is InviteState.USABLE


def test_two_invites_have_different_ids_and_secrets():
    (a, sa), (b, sb) = inv.new_invite(NOW), inv.new_invite(NOW)
    assert a.id != b.id and sa != sb and a.hash != b.hash


def test_find_picks_the_invite_of_a_secret():
    (a, sa), (b, sb) = inv.new_invite(NOW), inv.new_invite(NOW)
    assert inv.find([a, b], sb) is b
    assert inv.find([a, b], sa) is a
    assert inv.find([a, b], "x" * 32) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "a", "prefix": "b"}, "name or a prefix, not both"),
        ({"uses": 0}, "at least one use"),
        ({"ttl": timedelta(0)}, "lifetime must be positive"),
        ({"worker_expires": timedelta(seconds=-1)}, "lifetime must be positive"),
        ({"reenroll": True}, "needs the name"),
        ({"name": "1bad"}, "not a Buildbot identifier"),
        ({"prefix": "p" * 49}, "too long"),
    ],
)
def test_bad_invites_are_refused_in_one_line(kwargs, message):
    with pytest.raises(BBEnrollError, match=message) as e:
        inv.new_invite(NOW, **kwargs)
    assert "\n" not in str(e.value)


def test_reusable_has_no_count():
    invite, _ = inv.new_invite(NOW, reusable=True, uses=3)
    assert invite.uses is None and invite.reusable


def test_states_in_order_revoked_used_up_expired():
    invite, _ = inv.new_invite(NOW)
    assert invite.state(NOW + inv.DEFAULT_TTL) is InviteState.EXPIRED
    used, _w = inv.redeem(invite, {}, "host", NOW)
    assert inv.invite_state(used, NOW) is InviteState.USED_UP
    assert used.state(NOW + inv.DEFAULT_TTL) is InviteState.USED_UP
    assert inv.revoke(used, NOW).state(NOW) is InviteState.REVOKED
    with pytest.raises(WrongState, match="already revoked"):
        inv.revoke(inv.revoke(invite, NOW), NOW)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda i: replace(i, uses=0, used=1), inv.InviteUsedUp, "invite already used"),
        (lambda i: replace(i, expires=NOW), inv.InviteExpired, "invite expired"),
        (lambda i: inv.revoke(i, NOW), inv.InviteRevoked, "invite revoked"),
    ],
)
def test_each_refusal_is_its_own_error_with_the_exact_message(make, error, message):
    invite = make(inv.new_invite(NOW - timedelta(minutes=1))[0])
    with pytest.raises(error) as e:
        inv.redeem(invite, {}, "host", NOW)
    assert isinstance(e.value, inv.InviteRefused)
    assert str(e.value) == message == e.value.reason.value
    assert e.value.invite_id == invite.id


def test_refusal_reasons_are_the_master_messages():
    assert {r.value for r in RefusalReason} == {"invite already used", "invite expired", "invite revoked"}


def test_redeem_makes_a_worker_with_its_own_secrets_and_the_invites_terms():
    invite, secret = inv.new_invite(
        NOW, prefix="ci", tags=["linux"], ephemeral=True, worker_expires=timedelta(days=2), uses=2
    )
    after, worker = inv.redeem(invite, {}, "Build-Host01", LATER)
    assert worker.name == "ci-build-host01"
    assert worker.swissnum != secret and worker.password and worker.swissnum != worker.password
    assert worker.tags == ("linux",)
    assert worker.expires == LATER + timedelta(days=2)
    assert worker.enrolled_by == invite.id and worker.ephemeral
    assert worker.created == LATER
    assert (after.uses, after.used) == (1, 1)
    after2, worker2 = inv.redeem(after, {worker.name: worker}, "build-host01", LATER)
    assert worker2.name == "ci-build-host01-2"
    assert worker2.swissnum != worker.swissnum
    assert after2.state(LATER) is InviteState.USED_UP
    with pytest.raises(inv.InviteUsedUp):
        inv.redeem(after2, {}, "other", LATER)


def test_the_contract_argument_order_works_too():
    invite, _ = inv.new_invite(NOW)
    after, worker = inv.redeem({}, invite, "h", NOW)  # type: ignore[arg-type]
    assert after.used == 1 and worker.name == "worker-h"


def test_a_reusable_invite_counts_uses_without_running_out():
    invite, _ = inv.new_invite(NOW, reusable=True)
    workers: dict[str, model.Worker] = {}
    for _ in range(5):
        invite, worker = inv.redeem(invite, workers, "node", NOW)
        workers[worker.name] = worker
    assert invite.used == 5 and invite.uses is None and invite.state(NOW) is InviteState.USABLE
    assert sorted(workers) == ["worker-node", *(f"worker-node-{n}" for n in range(2, 6))]


def test_a_named_invite_refuses_an_existing_name_unless_it_reenrolls():
    existing = model.bind(model.rotate(model.new_worker("lat1", NOW, tags=["old"]), NOW), "k" * 32, NOW)
    invite, _ = inv.new_invite(NOW, name="lat1")
    with pytest.raises(WorkerExists, match="'lat1' already exists"):
        inv.redeem(invite, {"lat1": existing}, "h", LATER)
    fresh, _ = inv.new_invite(NOW, name="lat1", reenroll=True, tags=["docker"])
    after, worker = inv.redeem(fresh, {"lat1": existing}, "h", LATER)
    assert worker.name == "lat1" and after.used == 1
    # a new FURL secret; the PB password stays (Buildbot's latent worker holds it from master.cfg)
    assert worker.swissnum != existing.swissnum and worker.password == existing.password
    assert worker.previous is None and worker.bound is None
    assert worker.serial == existing.serial + 1 and worker.changed == LATER
    assert worker.created == existing.created and worker.rotated == LATER
    assert worker.enrolled_by == fresh.id and worker.tags == ("old", "docker")
    # it never brings back a worker removed, revoked or expired since the invite was made
    with pytest.raises(inv.ReenrollRefused, match="'lat1' was removed"):
        inv.redeem(fresh, {}, "h", LATER)
    with pytest.raises(inv.ReenrollRefused, match="'lat1' is revoked"):
        inv.redeem(fresh, {"lat1": model.revoke(existing, NOW)}, "h", LATER)
    expired = replace(existing, expires=NOW)
    with pytest.raises(inv.ReenrollRefused, match="'lat1' is expired"):
        inv.redeem(fresh, {"lat1": expired}, "h", LATER)


def test_a_reenrollment_is_audited_as_enrolled_by_the_invite():
    existing = model.new_worker("lat1", NOW)
    invite, secret = inv.new_invite(NOW, name="lat1", reenroll=True)
    _, worker = inv.redeem(invite, {"lat1": existing}, "h", LATER)
    change = audit.worker_change(existing, worker)
    assert change is not None and change.action == "enrolled"
    assert invite.id in (change.reason or "") and secret not in str(change)
    added = audit.worker_change(None, inv.redeem(inv.new_invite(NOW)[0], {}, "h", NOW)[1])
    assert added is not None and added.action == "enrolled"


def test_invite_changes_name_the_id_never_the_secret_or_hash():
    invite, secret = inv.new_invite(NOW, name="w")
    used, _ = inv.redeem(invite, {}, "h", NOW)
    changes = [
        audit.invite_change(None, invite),
        audit.invite_change(invite, used),
        audit.invite_change(used, inv.revoke(used, NOW)),
        audit.invite_change(used, None),
    ]
    assert [c.action if c else None for c in changes] == ["invited", None, "invite-revoked", "invite-pruned"]
    for change in changes:
        assert change is None or (invite.id in (change.reason or "") and secret not in str(change)
                                  and invite.hash[7:] not in str(change))
    assert {"invited", "enrolled", "invite-revoked", "invite-pruned", "moved", "imported", "upgraded",
            "backup-restored"} <= set(audit.ACTIONS)


def test_prune_takes_what_nothing_can_use():
    usable, _ = inv.new_invite(NOW, ttl=timedelta(days=1))
    expired, _ = inv.new_invite(NOW - timedelta(hours=2))
    used_up = inv.redeem(inv.new_invite(NOW)[0], {}, "h", NOW)[0]
    revoked = inv.revoke(inv.new_invite(NOW)[0], NOW)
    table = {i.id: i for i in (usable, expired, used_up, revoked)}
    assert inv.prune(table, NOW) == [expired.id, used_up.id, revoked.id]
    assert inv.prune({}, NOW) == []


def test_summary_never_holds_the_hash():
    invite, secret = inv.new_invite(NOW, note="for CI", worker_expires=timedelta(days=30))
    summary = inv.invite_summary(invite, NOW)
    assert invite.hash not in str(summary) and secret not in str(summary)
    assert summary["state"] == "usable" and summary["uses_left"] == 1 and summary["worker_expires"] == "30d"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("build01", "ci-build01"),
        ("Build.Example", "ci-build-example"),
        ("ünï cödé", "ci-n-c-d"),
        ("...", "ci-host"),
        ("", "ci-host"),
        ("h" * 80, "ci-" + "h" * 47),
    ],
)
def test_host_names_become_valid_buildbot_names(host, expected):
    assert inv.unique_name("ci", host, set()) == expected


@settings(max_examples=200, deadline=None)
@given(
    prefix=st.from_regex(r"[a-z_][a-z0-9_-]{0,47}", fullmatch=True),
    host=st.text(max_size=70),
    taken_count=st.integers(min_value=0, max_value=12),
)
def test_unique_names_are_always_valid_and_new(prefix, host, taken_count):
    taken: set[str] = set()
    for _ in range(taken_count):
        name = inv.unique_name(prefix, host, taken)
        assert model.is_worker_name(name), name
        assert name not in taken
        assert len(name) <= model.WORKER_NAME_MAX
        taken.add(name)
    assert len(taken) == taken_count
