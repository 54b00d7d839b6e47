"""Invites in the real file: round trips keeping comments, edits, problems, audit, check."""

from __future__ import annotations

import json
import tomllib
from datetime import timedelta
from pathlib import Path

import pytest

from bbenroll.errors import RegistryError
from bbenroll.registry import audit, store
from bbenroll.registry import invites as inv
from tests.helpers.cli import FIXED_NOW

NOW = FIXED_NOW
ACTOR = {"by": "test", "host": "here"}


def add_invites(path: Path, count: int, **kwargs) -> list[tuple[inv.Invite, str]]:
    made = []
    with store.edit(path, now=NOW, actor=ACTOR) as editor:
        for _ in range(count):
            invite, secret = inv.new_invite(NOW, taken_ids=editor.invites, **kwargs)
            editor.add_invite(invite)
            made.append((invite, secret))
    return made


def everything_on_disk(path: Path) -> str:
    return path.read_text() + audit.log_path(path).read_text()


def test_an_invite_round_trips_and_its_secret_is_nowhere_on_disk(reg_path: Path):
    [(invite, secret)] = add_invites(
        reg_path, 1, prefix="ci", tags=["linux"], ephemeral=True, worker_expires=timedelta(days=3),
        note="autoscaler", by="ann@host", uses=3,
    )
    loaded = store.load(reg_path)
    assert loaded.registry.invites == {invite.id: invite}
    data = tomllib.loads(reg_path.read_text())["invites"][invite.id]
    assert data["hash"] == invite.hash and data["uses"] == 3 and data["used"] == 0
    assert data["worker_expires"] == "3d" and "reusable" not in data
    disk = everything_on_disk(reg_path)
    assert secret not in disk
    records = audit.read_records(audit.log_path(reg_path))
    assert records[-1]["action"] == "invited" and invite.id in records[-1]["reason"]
    assert invite.hash not in json.dumps(records) and invite.hash[7:23] not in json.dumps(records)
    assert store.check(reg_path) == []


def test_edits_of_several_invites_keep_comments_and_other_tables_byte_for_byte(reg_path: Path):
    made = add_invites(reg_path, 3, name=None)
    (a, _), (b, _), (c, _) = made
    text = reg_path.read_text()
    text = text.replace(f"[invites.{a.id}]", f"# the first invite\n[invites.{a.id}] # inline comment")
    text = text.replace(f"[invites.{c.id}]", f"# kept with c\n[invites.{c.id}]")
    text = text.replace("[master]", "# about the master\n[master]")
    reg_path.write_text(text)
    with store.edit(reg_path, now=NOW, actor=ACTOR) as editor:
        used, worker = inv.redeem(editor.invite(a.id), editor.workers, "node1", NOW)
        editor.update_invite(used)
        editor.add(worker)
        editor.update_invite(inv.revoke(editor.invite(c.id), NOW))
        editor.remove_invite(b.id)
    after = reg_path.read_text()
    for comment in ("# the first invite", "# inline comment", "# kept with c", "# about the master"):
        assert comment in after
    loaded = store.load(reg_path).registry
    assert set(loaded.invites) == {a.id, c.id}
    assert loaded.invites[a.id].used == 1 and loaded.invites[a.id].state(NOW) is inv.InviteState.USED_UP
    assert loaded.invites[c.id].revoked == NOW
    assert loaded.workers["worker-node1"].enrolled_by == a.id
    assert f"invites.{b.id}" not in after
    actions = [r["action"] for r in audit.read_records(audit.log_path(reg_path))]
    assert actions[-3:] == ["enrolled", "invite-pruned", "invite-revoked"]  # workers, then invites in order
    # the master's table is untouched text
    master_before = text[text.index("[master]"): text.index("[audit]")]
    assert master_before in after


def test_an_edit_of_workers_only_leaves_invite_tables_as_they_were(reg_path: Path):
    [(invite, _)] = add_invites(reg_path, 1, reusable=True)
    text = reg_path.read_text().replace(f"[invites.{invite.id}]", f"[invites.{invite.id}]   # spaced")
    reg_path.write_text(text)
    from bbenroll.registry import model

    with store.edit(reg_path, now=NOW, actor=ACTOR) as editor:
        editor.add(model.new_worker("w1", NOW))
    start = text.index(f"[invites.{invite.id}]")
    chunk = text[start:]  # the last table of the file
    assert "# spaced" in chunk and chunk in reg_path.read_text()


def test_the_whole_rewrite_fallback_handles_invites(reg_path: Path):
    """``[invites]`` as a table of its own is a layout the splice leaves to the fallback."""
    [(a, _), (b, _)] = add_invites(reg_path, 2)
    text = reg_path.read_text()
    text = text.replace(f"[invites.{a.id}]", f"# all invites\n[invites]\n\n# first\n[invites.{a.id}]")
    reg_path.write_text(text)
    assert store.load(reg_path).registry.invites.keys() == {a.id, b.id}
    with store.edit(reg_path, now=NOW, actor=ACTOR) as editor:
        editor.update_invite(inv.revoke(editor.invite(a.id), NOW))
        editor.remove_invite(b.id)
        new, secret = inv.new_invite(NOW, prefix="k8s")
        editor.add_invite(new)
    after = reg_path.read_text()
    assert "# all invites" in after and "# first" in after
    registry = store.load(reg_path).registry
    assert set(registry.invites) == {a.id, new.id}
    assert registry.invites[a.id].revoked == NOW and secret not in after


def bad(reg_path: Path, table: str) -> str:
    reg_path.write_text(reg_path.read_text() + "\n" + table)
    with pytest.raises(RegistryError) as e:
        store.load(reg_path)
    message = str(e.value)
    assert "\n" not in message
    return message


GOOD = 'hash = "sha256:{}"\ncreated = 2026-01-01T00:00:00Z\nexpires = 2026-01-02T00:00:00Z\n'.format("0" * 64)


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (f"[invites.inv-abcdefgh]\n{GOOD}uses = 1\ncolour = 1\n", "invites.inv-abcdefgh.colour: unknown key"),
        (f"[invites.inv-ABC]\n{GOOD}uses = 1\n", "invites.inv-ABC: not an invite ID"),
        (f'[invites."bad id"]\n{GOOD}uses = 1\n', 'invites."bad id": not an invite ID'),
        (f"[invites.inv-abcdefgh]\n{GOOD}", "invites.inv-abcdefgh.uses: missing (or reusable = true)"),
        (f"[invites.inv-abcdefgh]\n{GOOD}uses = 1\nreusable = true\n",
         "invites.inv-abcdefgh.uses: set, but the invite is reusable"),
        (f"[invites.inv-abcdefgh]\n{GOOD}uses = -1\n", "invites.inv-abcdefgh.uses: may not be negative"),
        (f'[invites.inv-abcdefgh]\n{GOOD}uses = 1\nname = "a"\nprefix = "b"\n',
         "invites.inv-abcdefgh.prefix: set together with name"),
        (f"[invites.inv-abcdefgh]\n{GOOD}uses = 1\nreenroll = true\n",
         "invites.inv-abcdefgh.reenroll: set without name"),
        (f'[invites.inv-abcdefgh]\n{GOOD}uses = 1\nprefix = "9x"\n',
         "invites.inv-abcdefgh.prefix: is not a Buildbot worker name"),
        ('[invites.inv-abcdefgh]\nhash = "md5:00"\ncreated = 2026-01-01T00:00:00Z\n'
         "expires = 2026-01-02T00:00:00Z\nuses = 1\n", "invites.inv-abcdefgh.hash: must be"),
        ("[invites.inv-abcdefgh]\nuses = 1\n", "invites.inv-abcdefgh.hash: missing"),
        ('invites = "no"\n', "invites: must be a table of invite tables"),
    ],
)
def test_bad_invite_tables_give_one_line_problems_with_their_key_path(reg_path: Path, table, expected):
    if table.startswith("invites ="):
        text = reg_path.read_text()
        reg_path.write_text(table + text)
        with pytest.raises(RegistryError) as e:
            store.load(reg_path)
        message = str(e.value)
    else:
        message = bad(reg_path, table)
    assert expected in message
    assert f"{reg_path}:" in message


def test_problems_point_at_the_invite_tables_line(reg_path: Path):
    lines = reg_path.read_text().count("\n") + 2
    message = bad(reg_path, f"[invites.inv-abcdefgh]\n{GOOD}uses = 1\nx = 1\n")
    assert message.startswith(f"{reg_path}:{lines}: invites.inv-abcdefgh.x: unknown key")


def test_check_warns_about_expired_invites_only_and_still_passes(reg_path: Path):
    import json

    from tests.helpers.cli import Clock, run_cli

    [(expired, _)] = add_invites(reg_path, 1, ttl=timedelta(minutes=1))
    [(fine, _)] = add_invites(reg_path, 1, ttl=timedelta(days=1))
    later = NOW + timedelta(hours=1)
    registry = store.load(reg_path).registry
    warnings = store.invite_warnings(reg_path, registry, later)
    assert len(warnings) == 1
    assert f"invites.{expired.id}: expired at" in warnings[0] and "bbenroll invite prune" in warnings[0]
    assert fine.id not in warnings[0]
    assert store.invite_warnings(reg_path, registry, NOW) == []
    assert store.check(reg_path) == []  # an expired invite is no problem with the registry
    assert store.load(reg_path).warnings == []  # other commands do not nag
    # bbenroll check warns on the CLI's clock, and exits 0
    result = run_cli(["--registry", str(reg_path), "--json", "check"], clock=Clock(later))
    assert result.code == 0, result.err
    assert json.loads(result.out)["warnings"] == warnings
    result = run_cli(["--registry", str(reg_path), "check"], clock=Clock(NOW))
    assert result.code == 0 and "warning" not in result.err and "expired at" not in result.err


def test_bbenroll_edit_audits_invite_changes(reg_path: Path):
    [(invite, _)] = add_invites(reg_path, 1)
    text = reg_path.read_text()
    start = text.index(f"[invites.{invite.id}]")
    edited = text[:start] + text[start:].replace("uses = 1", "uses = 4", 1)
    changes = store.replace_text(reg_path, store.real_path(reg_path), edited, now=NOW, actor=ACTOR)
    assert changes is not None and [c.action for c in changes] == ["changed"]
    assert invite.id in (changes[0].reason or "") and "4 uses left" in (changes[0].reason or "")
    assert store.load(reg_path).registry.invites[invite.id].uses == 4


def test_invite_edits_take_the_fast_splice(reg_path: Path):
    """The common layout is spliced (the fallback would be a whole tomlkit round trip)."""
    from bbenroll.registry import tomledit

    [(a, _), (b, _)] = add_invites(reg_path, 2)
    text = reg_path.read_text()
    before = store.load(reg_path).registry
    revoked = inv.revoke(a, NOW)
    new, _ = inv.new_invite(NOW, name="x")
    after = type(before)(before.master, before.workers, before.version,
                         {a.id: revoked, new.id: new})
    edit = tomledit.Edit(before, after, {}, [], {a.id: revoked, b.id: None}, [new.id])
    out = tomledit.splice(text, edit)  # raises Fallback if it could not
    assert store.registry_from_text(reg_path, out).invites == after.invites
    assert out.startswith(text[: text.index(f"[invites.{a.id}]")])
