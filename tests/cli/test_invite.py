"""bbenroll invite, invite list / revoke / prune: the real CLI on a real registry."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from bbenroll.furl import parse_furl
from bbenroll.registry import audit, store
from bbenroll.registry import invites as inv
from tests.helpers.qr import ANSI_RE, BLOCKS, decode_terminal


def make(cli, *args: str) -> tuple[str, dict]:
    result = cli("invite", *args, "--json")
    assert result.code == 0, result.err
    details = json.loads(result.out)
    return details["furl"], details


def test_invite_prints_the_furl_once_and_keeps_only_its_hash(cli, reg_path: Path):
    result = cli("invite", "--prefix", "ci", "--tag", "linux", "--uses", "3", "--ttl", "2h",
                 "--ephemeral", "--worker-expires", "7d", "--note", "autoscaler")
    assert result.code == 0, result.err
    furl = result.out.strip()
    assert "\n" not in furl  # stdout: the FURL alone, for invite=$(bbenroll invite ...)
    parsed = parse_furl(furl)
    registry = store.load(reg_path).registry
    assert parsed.tubid == registry.master.tubid
    [invite] = registry.invites.values()
    assert invite.id in result.err and "shown once" in result.err
    assert invite.matches(parsed.swissnum)
    assert (invite.prefix, invite.tags, invite.uses, invite.ephemeral) == ("ci", ("linux",), 3, True)
    assert invite.worker_expires == timedelta(days=7) and invite.note == "autoscaler"
    assert invite.expires - invite.created == timedelta(hours=2)
    assert invite.by and "@" in invite.by
    # the secret is nowhere: not in the registry, not in the audit log
    log = audit.log_path(reg_path).read_text()
    assert parsed.swissnum not in reg_path.read_text() and parsed.swissnum not in log
    assert invite.hash not in log and '"invited"' in log and invite.id in log


def test_invite_json_is_one_document_with_the_furl(cli, reg_path: Path):
    furl, details = make(cli, "--name", "w9", "--reusable")
    assert details["furl"].startswith("pb://") and details["reusable"] and details["uses_left"] is None
    assert details["name"] == "w9" and details["state"] == "usable" and "hash" not in details
    assert parse_furl(furl).swissnum not in reg_path.read_text()


def test_invite_qr_decodes_to_the_invite_furl(cli):
    result = cli("invite", "--qr", env={"NO_COLOR": "1"})
    assert result.code == 0, result.err
    lines = result.out.rstrip("\n").split("\n")
    qr_lines = [line for line in lines if ANSI_RE.sub("", line) and set(ANSI_RE.sub("", line)) <= set(BLOCKS)]
    assert qr_lines == lines[:-1] and lines[-1].startswith("pb://")
    assert decode_terminal("\n".join(qr_lines)) == [lines[-1]]


def test_list_shows_states_and_never_a_hash(cli, clock, reg_path: Path):
    make(cli, "--prefix", "ci", "--tag", "a", "--note", "hello")
    _, second = make(cli, "--name", "w2", "--ttl", "10m")
    _, third = make(cli, "--reusable")
    assert cli("invite", "revoke", third["id"]).code == 0
    clock.now += timedelta(minutes=20)
    listed = cli("invite", "list", "--json")
    assert listed.code == 0, listed.err
    rows = json.loads(listed.out)["invites"]
    assert [r["state"] for r in rows] == ["usable", "expired", "revoked"]
    hashes = [i.hash for i in store.load(reg_path).registry.invites.values()]
    table = cli("invite", "list")
    assert table.code == 0
    for text in (listed.out, table.out):
        assert not any(h in text or h[7:] in text for h in hashes)
    assert second["id"] in table.out and "expired" in table.out and "prefix ci" in table.out
    assert "hello" in table.out and "1/0" in table.out and "reusable/0" in table.out


def test_list_of_none(cli):
    result = cli("invite", "list")
    assert result.code == 0 and result.out == "" and "no invites" in result.err
    assert json.loads(cli("invite", "list", "--json").out) == {"invites": []}


def test_revoke_then_prune(cli, clock, reg_path: Path):
    _, a = make(cli)
    _, b = make(cli, "--ttl", "3650d")  # (check reads the wall clock: see the report)
    _, c = make(cli, "--ttl", "1m")
    revoked = cli("invite", "revoke", a["id"], "--json")
    assert revoked.code == 0 and json.loads(revoked.out)["state"] == "revoked"
    again = cli("invite", "revoke", a["id"])
    assert again.code == 1 and again.err.count("\n") == 1 and "already revoked" in again.err
    clock.now += timedelta(minutes=5)
    assert f"invites.{c['id']}: expired" in cli("check").err  # check reports it
    dry = cli("invite", "prune", "--dry-run", "--json")
    assert json.loads(dry.out)["pruned"] == [
        {"id": a["id"], "state": "revoked", "used": 0}, {"id": c["id"], "state": "expired", "used": 0}
    ]
    assert set(store.load(reg_path).registry.invites) == {a["id"], b["id"], c["id"]}
    pruned = cli("invite", "prune")
    assert pruned.code == 0 and f"removed invite {a['id']}" in pruned.err
    assert set(store.load(reg_path).registry.invites) == {b["id"]}
    actions = [r["action"] for r in audit.read_records(audit.log_path(reg_path))]
    assert actions[-2:] == ["invite-pruned", "invite-pruned"] and "invite-revoked" in actions
    assert "no invites to prune" in cli("invite", "prune").err
    assert cli("check").code == 0


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--name", "a", "--prefix", "b"], 2, "--name and --prefix"),
        (["--uses", "2", "--reusable"], 2, "--uses and --reusable"),
        (["--uses", "0"], 2, "--uses"),
        (["--ttl", "soon"], 2, "--ttl"),
        (["--name", "-x"], 1, "starts with '-'"),
        (["--name", "wа"], 1, "U+0430"),
        (["--prefix", "p" * 49], 1, "too long"),
        (["revoke", "inv-zzzzzzzz"], 1, "no invite 'inv-zzzzzzzz'"),
        (["--tag", "x", "list"], 2, "--tag makes an invite"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(cli, reg_path: Path, args, code, message):
    before = reg_path.read_bytes()
    result = cli("invite", *args)
    assert result.code == code and message in result.err, result.err
    assert result.err.count("\n") == 1 and "Traceback" not in result.err
    assert reg_path.read_bytes() == before
    as_json = cli("invite", *args, "--json")
    assert as_json.code == code and json.loads(as_json.out)["exit"] == code


def test_a_name_that_exists_is_refused(cli, reg_path: Path):
    assert cli("add", "w1").code == 0
    before = reg_path.read_bytes()
    result = cli("invite", "--name", "w1")
    assert result.code == 1 and "'w1' already exists" in result.err
    assert reg_path.read_bytes() == before


def test_a_redeemed_invite_lists_as_used(cli, clock, reg_path: Path):
    furl, details = make(cli, "--prefix", "ci")
    with store.edit(reg_path, now=clock.now) as editor:
        found = inv.find(editor.invites.values(), parse_furl(furl).swissnum)
        assert found is not None and found.id == details["id"]
        used, worker = inv.redeem(found, editor.workers, "node1.example", clock.now)
        editor.update_invite(used)
        editor.add(worker)
    rows = json.loads(cli("invite", "list", "--json").out)["invites"]
    assert rows[0]["state"] == "used-up" and rows[0]["used"] == 1 and rows[0]["uses_left"] == 0
    assert json.loads(cli("show", "ci-node1-example", "--json").out)["furl"] != furl
