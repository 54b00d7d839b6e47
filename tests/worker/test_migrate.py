"""worker migrate: real basedirs made by ``buildbot-worker create-worker``, a real master
service on 127.0.0.1 (in-process for the library calls, in its own process for the CLI)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import clientFromString

from bbenroll.errors import BBEnrollError
from bbenroll.identity import tubid_from_pem
from bbenroll.master.service import EnrollmentService
from bbenroll.worker import migrate
from bbenroll.worker.migrate import BACKUP, STEPS, MigrateError, migrate_worker, read_tac, running_pid
from tests.helpers.buildbot import BIN, run
from tests.helpers.cli import run_cli
from tests.helpers.service_process import serving
from tests.helpers.stock_master import NON_DEFAULT_WORKER_OPTIONS, create_stock_worker

pytestmark = pytest.mark.network

CONNECTION = ("connection_string", "buildmaster_host", "port")


def bbenroll(reg_path: Path, *args: str) -> str:
    result = run_cli(["--registry", str(reg_path), *args], clock=lambda: datetime.now(UTC))
    assert result.code == 0, result.err
    return result.out.strip()


def password_of(reg_path: Path, name: str) -> str:
    return tomllib.loads(reg_path.read_text())["workers"][name]["password"]


@pytest.fixture
def service(served_reg_path):
    """A running master service (in this process: the library calls run on this reactor)."""
    service = EnrollmentService(served_reg_path, reactor=reactor, clock=reactor, poll_interval=0.1)
    service.startService()
    yield served_reg_path
    pytest_twisted.blockon(service.stopService())


def stock(tmp_path: Path, name: str, password: str, *options: str) -> Path:
    """A stock worker basedir with non-default settings, a builder directory and a file in it."""
    base = tmp_path / name
    create_stock_worker(base, name, password, "buildbot.example.org:9989", *options)
    (base / "b" / "build").mkdir(parents=True)
    (base / "b" / "build" / "left-by-an-earlier-build.txt").write_text("still here\n")
    (base / "info" / "admin").write_text("Jane <jane@example.org>\n")
    return base


def snapshot(base: Path) -> dict[str, tuple[int, int, int, bytes | None]]:
    """Every entry under ``base``: inode, mode, mtime (ns), content: 'exactly as it was'."""
    out = {}
    for root, dirs, files in os.walk(base):
        for entry in dirs + files:
            path = Path(root) / entry
            st = path.lstat()
            out[str(path.relative_to(base))] = (
                st.st_ino, st.st_mode, st.st_mtime_ns, path.read_bytes() if path.is_file() else None
            )
    return out


def migrate_now(base: Path, furl: str, **kwargs):
    return migrate_worker(base, furl, reactor=reactor, timeout=20, **kwargs)


@pytest_twisted.ensureDeferred
async def test_migrate_keeps_every_setting_and_file(service, tmp_path):
    furl = bbenroll(service, "add", "w1")
    base = stock(tmp_path, "w1", password_of(service, "w1"), *NON_DEFAULT_WORKER_OPTIONS)
    old_text = (base / "buildbot.tac").read_text()
    old = read_tac(old_text)
    assert old.values["umask"] == 0o27 and old.values["maxdelay"] == 17  # the options took

    result = await migrate_now(base, furl)

    new = read_tac((base / "buildbot.tac").read_text())
    assert {k: v for k, v in new.values.items() if k not in CONNECTION} == {
        k: v for k, v in old.values.items() if k not in CONNECTION
    }
    assert new.others == old.others  # every other assignment (application, s = Worker(...)) kept
    assert (new.values["buildmaster_host"], new.values["port"]) == (None, None)
    endpoint = clientFromString(reactor, new.values["connection_string"])
    assert (endpoint.furlfile, endpoint.keyfile) == (base / "bbenroll.furl", base / "bbenroll.pem")
    assert result["changed"] == sorted(CONNECTION) and not result["password_changed"]
    assert result["running"] is False and result["name"] == "w1"
    # the FURL, the key (bound by the master), the old tac: all private
    assert (base / "bbenroll.furl").read_text() == furl + "\n"
    bound = tomllib.loads(service.read_text())["workers"]["w1"]["bound"]["tubid"]
    assert tubid_from_pem((base / "bbenroll.pem").read_bytes()) == bound == result["bound"]["fingerprint"]
    assert (base / BACKUP).read_text() == old_text
    for name in ("buildbot.tac", "bbenroll.furl", "bbenroll.pem", BACKUP):
        assert stat.S_IMODE((base / name).stat().st_mode) == 0o600, name
    assert (base / "b" / "build" / "left-by-an-earlier-build.txt").read_text() == "still here\n"
    assert (base / "info" / "admin").read_text() == "Jane <jane@example.org>\n"
    assert not [p for p in os.listdir(base) if "migrating" in p]


@pytest.mark.parametrize("options", [("--relocatable",), ("--no-logrotate",), ("--use-tls", "--umask=0o22")])
@pytest_twisted.ensureDeferred
async def test_every_tac_create_worker_writes_is_understood(service, tmp_path, options):
    furl = bbenroll(service, "add", "w1")
    base = stock(tmp_path, "w1", password_of(service, "w1"), *options)
    old = read_tac((base / "buildbot.tac").read_text())
    result = await migrate_now(base, furl)
    assert result["changed"] == sorted(CONNECTION)
    new = read_tac((base / "buildbot.tac").read_text())
    assert {k: v for k, v in new.values.items() if k not in CONNECTION} == {
        k: v for k, v in old.values.items() if k not in CONNECTION
    }
    compile((base / "buildbot.tac").read_text(), "buildbot.tac", "exec")


@pytest_twisted.ensureDeferred
async def test_a_different_password_becomes_the_masters(service, tmp_path):
    furl = bbenroll(service, "add", "w1")
    base = stock(tmp_path, "w1", "the-old-one")
    result = await migrate_now(base, furl)
    assert result["password_changed"] and "passwd" in result["changed"]
    assert read_tac((base / "buildbot.tac").read_text()).values["passwd"] == password_of(service, "w1")


@pytest.mark.parametrize("failing", STEPS)
@pytest_twisted.ensureDeferred
async def test_each_failing_step_leaves_the_basedir_exactly_as_it_was(service, tmp_path, failing):
    furl = bbenroll(service, "add", "w1")
    base = stock(tmp_path, "w1", password_of(service, "w1"))
    before = snapshot(base)
    steps: list[str] = []

    def before_step(name: str) -> None:
        steps.append(name)
        if name == failing:
            raise OSError(28, "No space left on device", str(base / name))

    with pytest.raises(MigrateError, match="No space left on device; nothing changed"):
        await migrate_now(base, furl, before_step=before_step)
    assert steps == list(STEPS[: STEPS.index(failing) + 1])
    assert snapshot(base) == before
    assert "bound" not in tomllib.loads(service.read_text())["workers"]["w1"]  # nothing bound


@pytest_twisted.ensureDeferred
async def test_a_refused_binding_leaves_the_basedir_as_it_was(tmp_path):
    from twisted.internet import defer

    from bbenroll.identity import make_identity_pem
    from bbenroll.worker.setup import WorkerSetupError

    base = stock(tmp_path, "w1", "pass")
    before = snapshot(base)
    tac = read_tac((base / "buildbot.tac").read_text())
    text = migrate.rewrite_tac(tac, migrate.tac_changes(tac, "bbenroll:furlfile=x", "pass"))
    seen = {}

    def bind():
        seen["tac"] = (base / "buildbot.tac").read_text()  # everything is in place when it binds
        return defer.fail(WorkerSetupError("the master refused this FURL: bound to another worker key"))

    with pytest.raises(WorkerSetupError, match="bound to another worker key"):
        await migrate.write_migration(base, tac_text=text, furl="pb://" + "a" * 32 + "@tcp:h:1/" + "b" * 32,
                                      key=make_identity_pem("t"), bind=bind)
    assert seen["tac"] == text
    assert snapshot(base) == before


@pytest_twisted.ensureDeferred
async def test_a_furl_bound_to_another_key_writes_nothing(service, tmp_path):
    furl = bbenroll(service, "add", "w1")
    other = stock(tmp_path, "other", password_of(service, "w1"))
    (other / "buildbot.tac").write_text((other / "buildbot.tac").read_text().replace("'other'", "'w1'"))
    await migrate_now(other, furl)  # binds w1's FURL to that basedir's key
    base = stock(tmp_path, "w1", password_of(service, "w1"))
    before = snapshot(base)
    with pytest.raises(BBEnrollError, match="bound to another worker key"):
        await migrate_now(base, furl)
    assert snapshot(base) == before


@pytest_twisted.ensureDeferred
async def test_the_furl_must_be_this_workers(service, tmp_path):
    furl = bbenroll(service, "add", "w2")
    base = stock(tmp_path, "w1", "pass")
    before = snapshot(base)
    with pytest.raises(MigrateError, match=r"this FURL is for worker 'w2', but .* is worker 'w1'; nothing"):
        await migrate_now(base, furl)
    assert snapshot(base) == before


@pytest_twisted.ensureDeferred
async def test_a_migrated_basedir_needs_force_and_keeps_the_first_backup(service, tmp_path):
    furl = bbenroll(service, "add", "w1")
    base = stock(tmp_path, "w1", password_of(service, "w1"))
    original = (base / "buildbot.tac").read_bytes()
    await migrate_now(base, furl)
    with pytest.raises(MigrateError, match="already connects through bbenroll; use --force"):
        await migrate_now(base, furl)
    new_furl = bbenroll(service, "rotate", "w1")
    result = await migrate_now(base, new_furl, force=True)
    assert result["changed"] == []  # the same connection string: the tac's values stay
    assert (base / BACKUP).read_bytes() == original
    assert (base / "bbenroll.furl").read_text() == new_furl + "\n"
    assert not [p for p in os.listdir(base) if "migrating" in p]


def test_tacs_it_cannot_understand():
    stock_tac = "workername = 'w'\npasswd = 'p'\nbuildmaster_host = 'h'\nport = 9989\n"
    cases = {
        "def (": "cannot understand this tac: invalid syntax",
        stock_tac: "connection_string is not set",
        stock_tac + "connection_string = None\ns = Worker(buildmaster_host, port, workername, passwd)\n":
            "not given connection_string=connection_string",
        stock_tac.replace("'p'", "os.environ['PW']") + "connection_string = None\n":
            "passwd is not a plain value",
        stock_tac + "port = 1\nconnection_string = None\n": "port is set more than once",
        stock_tac + "connection_string = None\nprotocol = 'msgpack_experimental_v7'\n"
        "s = Worker(connection_string=connection_string)\n": "bbenroll's tunnel carries PB only",
    }
    for text, message in cases.items():
        with pytest.raises(MigrateError, match=message.replace("(", r"\(").replace(")", r"\)")):
            read_tac(text)


def test_rewrite_changes_only_the_values():
    text = (
        "workername = 'w'  # keep this comment\npasswd = 'p'\nbuildmaster_host = 'h'\nport = 9989\n"
        "connection_string = None\nproxy_connection_string = 'tcp:proxy:3128'\nx = os.getcwd()\n"
        "s = Worker(buildmaster_host, port, connection_string=connection_string)\n"
    )
    tac = read_tac(text)
    changes = migrate.tac_changes(tac, "bbenroll:furlfile=/b/bbenroll.furl", "p")
    assert changes == {"connection_string": "bbenroll:furlfile=/b/bbenroll.furl", "buildmaster_host": None,
                       "port": None, "proxy_connection_string": None}
    new = migrate.rewrite_tac(tac, changes)
    assert new == (
        "workername = 'w'  # keep this comment\npasswd = 'p'\nbuildmaster_host = None\nport = None\n"
        "connection_string = 'bbenroll:furlfile=/b/bbenroll.furl'\nproxy_connection_string = None\n"
        "x = os.getcwd()\ns = Worker(buildmaster_host, port, connection_string=connection_string)\n"
    )


def test_running_detection(tmp_path):
    assert running_pid(tmp_path) is None
    (tmp_path / "twistd.pid").write_text(f"{os.getpid()}\n")
    assert running_pid(tmp_path) == os.getpid()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "twistd.pid").write_text(f"{dead.pid}\n")
    assert running_pid(tmp_path) is None
    (tmp_path / "twistd.pid").write_text("garbage")
    assert running_pid(tmp_path) is None


# --- the CLI, in its own process against a master service in another --------------------------


@pytest.fixture
def master_process(served_reg_path):
    with serving(served_reg_path):
        yield served_reg_path


def cli_migrate(*args: str | Path, furl: str | None = None) -> subprocess.CompletedProcess[str]:
    return run(BIN / "bbenroll", "worker", "migrate", *args, check=False, input_text=furl, timeout=120)


def test_cli_migrates_and_says_to_restart_a_running_worker(master_process, tmp_path):
    furl = bbenroll(master_process, "add", "w1")
    base = stock(tmp_path, "w1", password_of(master_process, "w1"))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (base / "twistd.pid").write_text(f"{sleeper.pid}\n")  # the old worker, still running
        proc = cli_migrate(base, "-", furl=furl)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{base}\n"
    assert f"restart it with: buildbot-worker restart {base}" in proc.stderr
    assert furl.rsplit("/", 1)[1] not in proc.stdout + proc.stderr
    again = cli_migrate(base, "-", "--json", furl=furl)
    assert again.returncode == 1
    assert again.stderr.count("\n") == 1 and "already connects through bbenroll" in again.stderr
    assert '"error"' in again.stdout and again.stdout.count("\n") == 1


def test_cli_json_is_one_document_and_errors_are_one_line(master_process, tmp_path):
    import json

    furl = bbenroll(master_process, "add", "w1")
    base = stock(tmp_path, "w1", password_of(master_process, "w1"))
    proc = cli_migrate(base, "-", "--json", furl=furl)
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    assert document["name"] == "w1" and document["running"] is False and document["bound"]
    missing = cli_migrate(tmp_path / "nothing", "-", furl=furl)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    assert "not a buildbot-worker basedir" in missing.stderr and "Traceback" not in missing.stderr
