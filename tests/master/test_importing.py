"""bbenroll import's plan (pure, no Buildbot), the child that loads master.cfg with Buildbot's
loader (real master.cfg files), and the one registry edit."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from bbenroll.master import importing
from bbenroll.master.importing import EXISTS, IMPORT, SKIP, FoundWorker, plan_import
from bbenroll.registry import store
from tests.helpers.registry import NOW
from tests.helpers.stock_master import StockWorker, write_stock_master_cfg


def value(v):
    return {"value": v}


@pytest.fixture
def registry(reg_path):
    return store.load(reg_path).registry


# --- the plan -------------------------------------------------------------------------------


def test_a_plain_worker_keeps_its_name_and_password_with_a_new_furl_secret(registry):
    (entry,) = plan_import([FoundWorker("w1", password="s3cret")], registry, NOW).entries
    assert (entry.action, entry.problems, dict(entry.options)) == (IMPORT, (), {})
    worker = entry.worker
    assert (worker.name, worker.password, worker.legacy, worker.created) == ("w1", "s3cret", True, NOW)
    assert len(worker.swissnum) == 32 and worker.swissnum != "s3cret"
    other = plan_import([FoundWorker("w1", password="s3cret")], registry, NOW).entries[0].worker
    assert other.swissnum != worker.swissnum  # a new secret every time, never derived


def test_every_carried_option_is_carried_in_the_registrys_order(registry):
    options = {
        "machine_name": value("m1"),
        "max_builds": value(2),
        "properties": value({"os": "linux", "n": [1, 2]}),
        "defaultProperties": value({"x": "y"}),
        "keepalive_interval": value(60),
        "missing_timeout": value(120),
        "notify_on_missing": value(["a@example.org"]),
    }
    (entry,) = plan_import([FoundWorker("w1", password="p", options=options)], registry, NOW).entries
    assert entry.problems == ()
    assert list(entry.options) == list(importing.CARRIED_OPTIONS)
    assert entry.worker.buildbot == {key: option["value"] for key, option in options.items()}


def test_what_cannot_be_carried_is_reported_with_its_reason(registry):
    found = [
        FoundWorker("latent", latent=True, cls="buildbot.worker.docker.DockerLatentWorker", password="p"),
        FoundWorker("rendered", password=None, password_type="Interpolate"),
        FoundWorker("secret", password=None, password_type="Secret"),
        FoundWorker("ours", password="p", enrollment=True),
        FoundWorker("bad name", password="p"),
        FoundWorker("empty", password=""),
        FoundWorker("opts", password="p", options={
            "max_builds": value(2),
            "properties": {"problem": "holds an Interpolate, which Buildbot renders at run time"},
            "locks": {"problem": "locks are master.cfg objects"},
            "special": {"problem": "MyWorker's own option"},
            "missing_timeout": value(None),
        }),
        FoundWorker("custom", cls="site.workers.MyWorker", password="p"),
    ]
    entries = {e.name: e for e in plan_import(found, registry, NOW).entries}
    assert entries["latent"].action == SKIP and "latent worker (buildbot.worker.docker.DockerLatentWorker)" \
        in entries["latent"].problems[0]
    assert entries["rendered"].action == SKIP
    assert entries["rendered"].problems[0].startswith("its password is not a plain string (Interpolate)")
    assert "(Secret)" in entries["secret"].problems[0]
    assert entries["ours"].action == SKIP and "Enrollment" in entries["ours"].problems[0]
    assert entries["bad name"].action == SKIP and "name" in entries["bad name"].problems[0]
    assert entries["empty"].problems == ("its password is empty: the registry needs one",)
    opts = entries["opts"]
    assert opts.action == IMPORT and dict(opts.options) == {"max_builds": 2}
    assert opts.problems == (
        "option properties: not carried (holds an Interpolate, which Buildbot renders at run time)",
        "option locks: not carried (locks are master.cfg objects)",
        "option special: not carried (MyWorker's own option)",
        "option missing_timeout: not carried (None: TOML has no null)",
    )
    assert entries["custom"].action == IMPORT and "site.workers.MyWorker" in entries["custom"].problems[0]
    assert [e.worker for e in entries.values() if e.action == SKIP] == [None] * 6


def test_a_name_in_the_registry_already_is_refused_as_exists(cli, reg_path):
    assert cli("add", "w1").code == 0
    registry = store.load(reg_path).registry
    entries = plan_import([FoundWorker("w1", password="p"), FoundWorker("w2", password="q")], registry, NOW)
    assert [(e.name, e.action) for e in entries.entries] == [("w1", EXISTS), ("w2", IMPORT)]
    assert entries.entries[0].problems == ("exists: a worker of that name is in the registry already",)
    assert entries.entries[0].worker is None


def test_toml_problems():
    assert importing.toml_problem({"a": [1, "x", 2.5, True]}) is None
    assert importing.toml_problem({"a": {"b": None}}) == "None at a.b: TOML has no null"
    assert importing.toml_problem({1: "x"}) == "key 1: TOML keys are strings"
    assert importing.toml_problem(2**70) == f"{2**70}: beyond TOML's 64-bit integers"
    assert importing.toml_problem(object()) == "a object"


# --- the one registry edit ---------------------------------------------------------------------


def test_import_workers_writes_all_in_one_edit_with_their_options(reg_path):
    found = [
        FoundWorker("w1", password="p1",
                    options={"max_builds": value(2), "properties": value({"a": {"b": 1}})}),
        FoundWorker("w-2", password="p2"),
        FoundWorker("w3", latent=True, password="p3"),
    ]
    plan = plan_import(found, store.load(reg_path).registry, NOW)
    assert importing.import_workers(reg_path, plan, now=NOW) == ["w1", "w-2"]
    loaded = store.load(reg_path)
    assert store.check(reg_path) == []
    w1, w2 = loaded.registry.workers["w1"], loaded.registry.workers["w-2"]
    assert (w1.password, w1.legacy) == ("p1", True)
    assert dict(w1.buildbot) == {"max_builds": 2, "properties": {"a": {"b": 1}}}
    assert (w2.password, w2.legacy, dict(w2.buildbot)) == ("p2", True, {})
    assert "w3" not in loaded.registry.workers
    data = tomllib.loads(reg_path.read_text())
    assert data["workers"]["w1"]["buildbot"]["properties"] == {"a": {"b": 1}}
    text = reg_path.read_text()
    assert text.index("[workers.w1]") < text.index("[workers.w1.buildbot]") < text.index("[workers.w-2]")
    records = [line for line in (reg_path.parent / "workers.audit.jsonl").read_text().splitlines()]
    assert len(records) == 3  # initialized, then one per imported worker
    assert all('"action":"imported"' in r for r in records[1:])


def test_a_worker_added_meanwhile_is_refused_and_nothing_is_written(cli, reg_path):
    plan = plan_import([FoundWorker("w1", password="p"), FoundWorker("w2", password="q")],
                       store.load(reg_path).registry, NOW)
    assert cli("add", "w2").code == 0  # between the plan and the edit
    before = reg_path.read_bytes()
    with pytest.raises(Exception, match="exists: w2 added to the registry meanwhile; nothing imported"):
        importing.import_workers(reg_path, plan, now=NOW)
    assert reg_path.read_bytes() == before


# --- Buildbot's loader, in the child ---------------------------------------------------------


def test_a_real_master_cfg_with_a_latent_worker_and_an_interpolate_password(tmp_path):
    latent = "Latent('dock', 'pw')"  # any AbstractLatentWorker (Docker's needs the docker module)
    write_stock_master_cfg(tmp_path / "m", [
        StockWorker("plain", "p1"),
        StockWorker("tuned", "p2", {"max_builds": 3, "properties": {"os": "linux"},
                                    "keepalive_interval": 3600, "missing_timeout": 60,
                                    "notify_on_missing": "ops@example.org"}),
        StockWorker("rendered", password_source="util.Interpolate('%(secret:pw)s')"),
        StockWorker("secret", password_source="util.Secret('pw')"),
        StockWorker("dock", source=latent),
        StockWorker("props", "p3", source=(
            "worker.Worker('props', 'p3', properties={'x': util.Interpolate('y')}, "
            "defaultProperties={'d': 1}, max_builds=None, locks=[util.WorkerLock('l')])")),
    ], extra="print('master.cfg prints this')\n")
    cfg = tmp_path / "m" / "master.cfg"
    cfg.write_text("from buildbot.worker.latent import AbstractLatentWorker\n"
                   "class Latent(AbstractLatentWorker):\n    pass\n" + cfg.read_text())
    found = {w.name: w for w in importing.load_master_workers(tmp_path / "m")}
    assert list(found) == ["plain", "tuned", "rendered", "secret", "dock", "props"]
    assert found["plain"] == FoundWorker("plain", password="p1", options={})
    assert found["tuned"].options == {  # keepalive_interval=3600 is Buildbot's default: not carried
        "max_builds": value(3), "properties": value({"os": "linux"}), "missing_timeout": value(60),
        "notify_on_missing": value("ops@example.org"),
    }
    assert (found["rendered"].password, found["rendered"].password_type) == (None, "Interpolate")
    assert found["secret"].password is None
    assert found["dock"].latent and found["dock"].cls.endswith("Latent")
    props = found["props"].options
    assert props["defaultProperties"] == value({"d": 1}) and "max_builds" not in props
    assert "Interpolate" in props["properties"]["problem"] and "problem" in props["locks"]
    plan = {e.name: e for e in plan_import(found.values(), importing_registry(tmp_path), NOW).entries}
    assert [n for n, e in plan.items() if e.action == IMPORT] == ["plain", "tuned", "props"]


def importing_registry(tmp_path: Path):
    from bbenroll.registry.model import MasterSettings, Registry

    master = MasterSettings(identity="m.pem", tubid="a" * 32, location=["tcp:h:1"], listen="tcp:1")
    return Registry(master, {})


def test_a_master_cfg_that_uses_enrollment_already_has_its_workers_skipped(tmp_path, reg_path, cli):
    assert cli("add", "enrolled").code == 0
    master = tmp_path / "m"
    write_stock_master_cfg(master, [StockWorker("old", "p")], extra=(
        f"from bbenroll.master import Enrollment\n"
        f"enrollment = Enrollment({str(reg_path)!r})\n"
        "c['workers'].extend(enrollment.workers())\n"
        "c['builders'][0].workernames.append('enrolled')\n"
    ))
    found = {w.name: w for w in importing.load_master_workers(master)}
    assert found["enrolled"].enrollment and not found["old"].enrollment
    plan = {e.name: e for e in plan_import(found.values(), store.load(reg_path).registry, NOW).entries}
    assert plan["enrolled"].action == SKIP and plan["old"].action == IMPORT


def test_a_master_cfg_that_fails_gives_buildbots_reason_in_one_line(tmp_path):
    cases = {
        "syntax": ("c = BuildmasterConfig = {\n", "SyntaxError"),
        "raises": ("raise RuntimeError('no database today')\n", "no database today"),
        "exits": ("import sys\nsys.exit(3)\n", "SystemExit"),
        "no config": ("x = 1\n", "does not define 'BuildmasterConfig'"),
        "unknown worker": (None, "builder 'b' uses unknown workers 'ghost'"),
    }
    for name, (text, reason) in cases.items():
        base = tmp_path / name.replace(" ", "-")
        if text is None:
            write_stock_master_cfg(base, [StockWorker("w", "p")])
            cfg = base / "master.cfg"
            cfg.write_text(cfg.read_text().replace("workernames=['w']", "workernames=['ghost']"))
        else:
            base.mkdir()
            (base / "master.cfg").write_text(text)
        with pytest.raises(importing.ImportError_) as e:
            importing.load_master_workers(base)
        message = str(e.value)
        assert "\n" not in message and reason in message, (name, message)
    with pytest.raises(importing.ImportError_, match="does not exist"):
        importing.load_master_workers(tmp_path / "syntax", "other.cfg")
    with pytest.raises(importing.ImportError_, match="not a directory"):
        importing.load_master_workers(tmp_path / "nowhere")


def test_master_cfg_runs_in_its_basedir_with_it_on_sys_path(tmp_path):
    base = tmp_path / "m"
    write_stock_master_cfg(base, [StockWorker("w", "p")], extra=(
        "import os, helpers_of_this_master\n"
        "assert os.getcwd() == basedir, (os.getcwd(), basedir)\n"
        "c['workers'][0].password = helpers_of_this_master.PASSWORD\n"
    ))
    (base / "helpers_of_this_master.py").write_text("PASSWORD = 'from-a-module'\n")
    (found,) = importing.load_master_workers(base)
    assert found.password == "from-a-module"
    assert os.getcwd() != str(base)  # the CLI's own directory is not changed
    assert not (base / "__pycache__").exists()
