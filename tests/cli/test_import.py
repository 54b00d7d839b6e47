"""bbenroll import through the real CLI, on real master.cfg files loaded by Buildbot's loader."""

from __future__ import annotations

import json
import tomllib

from tests.helpers.stock_master import StockWorker, write_stock_master_cfg

WORKERS = [
    StockWorker("w1", "pw1", {"max_builds": 2, "properties": {"os": "linux"}}),
    StockWorker("w2", password_source="util.Interpolate('%(secret:w2)s')"),
    StockWorker("w3", "pw3"),
]


def test_import_prints_the_plan_writes_the_workers_and_the_next_step(cli, reg_path, tmp_path):
    write_stock_master_cfg(tmp_path / "m", WORKERS, pb_port="tcp:9989")
    result = cli("import", str(tmp_path / "m"))
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].split() == ["name", "action", "carried", "options", "problems"]
    assert lines[2].split()[:4] == ["w1", "imported", "max_builds=2,", "properties={'os':"]
    assert lines[3].split()[:4] == ["w2", "skip", "-", "its"] and "(Interpolate)" in lines[3]
    assert lines[4].split() == ["w3", "imported", "-", "-"]
    assert "imported 2 workers" in result.err
    assert 'legacy_pb = "tcp:9989"' in result.err
    assert 'Enrollment("workers.toml", basedir=basedir).configure(c)' in result.err
    workers = tomllib.loads(reg_path.read_text())["workers"]
    assert set(workers) == {"w1", "w3"}
    assert (workers["w1"]["password"], workers["w1"]["legacy"]) == ("pw1", True)
    assert workers["w1"]["buildbot"] == {"max_builds": 2, "properties": {"os": "linux"}}
    assert cli("check").code == 0
    shown = cli("show", "w3")
    assert shown.code == 0 and shown.out.startswith("pb://")  # a FURL of its own

    again = cli("import", str(tmp_path / "m"), "--json")  # a second run: every name exists
    assert again.code == 0
    document = json.loads(again.out)
    assert [(w["name"], w["action"]) for w in document["workers"]] == [
        ("w1", "exists"), ("w2", "skip"), ("w3", "exists")]
    assert document["imported"] == [] and document["next"] is None
    assert tomllib.loads(reg_path.read_text())["workers"] == workers  # nothing of them rewritten


def test_dry_run_writes_nothing(cli, reg_path, tmp_path):
    write_stock_master_cfg(tmp_path / "m", WORKERS)
    log = reg_path.parent / "workers.audit.jsonl"

    def state():
        return reg_path.read_bytes(), reg_path.stat().st_mtime_ns, log.read_bytes(), log.stat().st_mtime_ns

    before = state()
    result = cli("import", str(tmp_path / "m"), "--dry-run")
    assert result.code == 0, result.err
    assert "would import" in result.out
    assert "dry run: nothing written (2 workers would be imported)" in result.err
    assert state() == before
    document = json.loads(cli("import", str(tmp_path / "m"), "--dry-run", "--json").out)
    assert document["dry_run"] is True and document["imported"] == []
    assert [w["action"] for w in document["workers"]] == ["import", "skip", "import"]
    assert state() == before


def test_json_is_one_document(cli, tmp_path):
    write_stock_master_cfg(tmp_path / "m", WORKERS)
    result = cli("import", str(tmp_path / "m"), "--json")
    assert result.code == 0
    document = json.loads(result.out)  # exactly one document: json.loads refuses two
    assert document["imported"] == ["w1", "w3"]
    options = {"max_builds": 2, "properties": {"os": "linux"}}
    assert document["workers"][0] == {"name": "w1", "action": "import", "options": options, "problems": []}
    assert "legacy_pb" in document["next"]


def test_a_master_cfg_that_fails_to_load_is_one_line_and_exit_1(cli, reg_path, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "master.cfg").write_text("raise ValueError('the database is on fire')\n")
    before = reg_path.read_bytes()
    result = cli("import", str(tmp_path / "m"))
    assert result.code == 1 and result.out == ""
    assert result.err.count("\n") == 1 and "Traceback" not in result.err
    assert result.err.startswith("error: ") and "the database is on fire" in result.err
    as_json = cli("import", str(tmp_path / "m"), "--json")
    assert as_json.code == 1
    assert "the database is on fire" in json.loads(as_json.out)["error"]
    missing = cli("import", str(tmp_path / "m"), "--config", "nope.cfg")
    assert missing.code == 1 and "does not exist" in missing.err and missing.err.count("\n") == 1
    assert reg_path.read_bytes() == before


def test_the_registry_option_of_the_command(cli, reg_path, tmp_path):
    write_stock_master_cfg(tmp_path / "m", [StockWorker("w1", "p")])
    result = cli("import", str(tmp_path / "m"), "--registry", str(reg_path), registry_arg=False)
    assert result.code == 0, result.err
    assert "w1" in tomllib.loads(reg_path.read_text())["workers"]
    none = str(tmp_path / "none.toml")
    nowhere = cli("import", str(tmp_path / "m"), "--registry", none, registry_arg=False)
    assert nowhere.code == 1 and "not found" in nowhere.err and nowhere.err.count("\n") == 1
