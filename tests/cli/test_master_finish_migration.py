"""bbenroll master finish-migration; list/status/show for imported (legacy/moved) and ephemeral workers."""

from __future__ import annotations

import json
import tomllib
from dataclasses import replace
from datetime import timedelta

import pytest

from bbenroll.registry import audit, store
from tests.helpers.cli import FIXED_NOW


def set_worker(reg_path, name, **fields):
    with store.edit(reg_path) as editor:
        editor.update(replace(editor.worker(name), **fields))


def set_master(reg_path, **fields):
    with store.edit(reg_path) as editor:
        editor.set_master(replace(editor.master, **fields))


def master_table(reg_path):
    return tomllib.loads(reg_path.read_text())["master"]


@pytest.fixture
def cut_over(cli, reg_path):
    """Three imported workers (one moved), one native, one ephemeral, legacy_pb set."""
    for name in ("old1", "old2", "old3", "native", "eph"):
        assert cli("add", name).code == 0, cli("add", name).err
    set_worker(reg_path, "old1", legacy=True, moved=FIXED_NOW + timedelta(hours=1))
    set_worker(reg_path, "old2", legacy=True)
    set_worker(reg_path, "old3", legacy=True)
    set_worker(reg_path, "eph", ephemeral=True, enrolled_by="inv-abcdefgh")
    set_master(reg_path, legacy_pb="tcp:9989")
    return reg_path


class TestFinishMigration:
    def test_refused_while_workers_are_left_naming_them(self, cli, cut_over):
        before = cut_over.read_bytes()
        result = cli("master", "finish-migration")
        assert result.code == 1
        assert result.out == ""
        assert result.err.count("\n") == 1 and "Traceback" not in result.err
        assert "old2, old3" in result.err and "old1" not in result.err and "--force" in result.err
        assert cut_over.read_bytes() == before

    def test_refusal_with_json_is_one_document(self, cli, cut_over):
        result = cli("master", "finish-migration", "--json")
        assert result.code == 1
        document = json.loads(result.out)
        assert "old2, old3" in json.dumps(document)

    def test_a_revoked_worker_does_not_hold_it_up(self, cli, cut_over):
        assert cli("revoke", "old2").code == 0
        assert cli("revoke", "old3").code == 0
        result = cli("master", "finish-migration", "--json")
        assert result.code == 0, result.err
        assert json.loads(result.out) == {"changed": True, "legacy_pb": "tcp:9989", "left": [], "cut_off": []}
        assert "legacy_pb" not in master_table(cut_over)

    def test_force_removes_it_and_lists_who_is_cut_off(self, cli, cut_over):
        result = cli("master", "finish-migration", "--force")
        assert result.code == 0, result.err
        assert "legacy_pb" not in master_table(cut_over)
        assert "cut off (no FURL connection yet): old2, old3" in result.err
        assert "closes that port at its next reconfig" in result.err
        record = audit.read_records(audit.log_path(cut_over))[-1]
        assert record["action"] == "master-changed"
        # a second run: nothing to do
        again = cli("master", "finish-migration", "--json")
        assert again.code == 0 and json.loads(again.out)["changed"] is False

    def test_once_every_worker_moved_it_just_works(self, cli, cut_over):
        set_worker(cut_over, "old2", moved=FIXED_NOW)
        set_worker(cut_over, "old3", moved=FIXED_NOW)
        result = cli("master", "finish-migration")
        assert result.code == 0, result.err
        assert "cut off" not in result.err
        assert "legacy_pb" not in master_table(cut_over)
        assert "pb" in master_table(cut_over)  # the loopback port stays


class TestListing:
    def test_list_json_tells_legacy_moved_ephemeral(self, cli, cut_over):
        listed = {w["name"]: w for w in json.loads(cli("list", "--json").out)}
        assert (listed["old1"]["legacy"], listed["old1"]["moved"]) == (True, "2026-11-29T07:00:00Z")
        assert (listed["old2"]["legacy"], listed["old2"]["moved"]) == (True, None)
        assert (listed["native"]["legacy"], listed["native"]["ephemeral"]) == (False, False)
        assert (listed["eph"]["ephemeral"], listed["eph"]["enrolled_by"]) == (True, "inv-abcdefgh")

    def test_list_table_has_a_kind_column_and_names_who_is_left(self, cli, cut_over):
        result = cli("list")
        assert result.code == 0, result.err
        header, *lines = result.out.splitlines()
        assert header.split()[:3] == ["name", "state", "kind"]
        by_name = {line.split()[0]: line for line in lines}
        assert "moved" in by_name["old1"] and "legacy" in by_name["old2"] and "ephemeral" in by_name["eph"]
        assert "2 imported workers not moved to a FURL yet" in result.err

    def test_an_ordinary_registry_has_no_kind_column(self, cli):
        assert cli("add", "w1").code == 0
        assert "kind" not in cli("list").out.splitlines()[0]

    def test_status_shows_kind_and_the_cut_over(self, cli, cut_over):
        result = cli("status")
        assert result.code == 0, result.err
        assert result.out.splitlines()[0].split()[:3] == ["name", "state", "kind"]
        assert "the old PB port tcp:9989 is open; not moved yet: old2, old3" in result.err
        document = json.loads(cli("status", "--json").out)
        assert document["legacy_pb"] == "tcp:9989"
        rows = {w["name"]: w for w in document["workers"]}
        assert rows["old1"]["moved"] == "2026-11-29T07:00:00Z" and rows["old3"]["legacy"] is True
        assert rows["eph"]["ephemeral"] is True

    def test_show_json_and_text(self, cli, cut_over):
        details = json.loads(cli("show", "eph", "--json").out)
        assert details["enrolled_by"] == "inv-abcdefgh" and details["ephemeral"] is True
        result = cli("show", "old1")
        assert result.out.startswith("pb://")
        assert "kind: moved" in result.err
