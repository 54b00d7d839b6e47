"""`bbenroll worker create` as a worker admin runs it: a real process against a real master service."""

from __future__ import annotations

import ast
import json
import os
import stat
import subprocess
import time
import tomllib

import pytest
from twisted.internet import reactor
from twisted.internet.endpoints import clientFromString

from bbenroll.identity import tubid_from_pem
from tests.helpers.buildbot import BIN, run, stop_daemon, wait_for
from tests.helpers.cli import run_cli
from tests.helpers.net import free_port
from tests.helpers.service_process import serving

pytestmark = pytest.mark.network


@pytest.fixture
def master(served_reg_path):
    """The Foolscap service alone (no Buildbot), in its own process."""
    with serving(served_reg_path):
        yield served_reg_path


def bbenroll(reg_path, *args):
    result = run_cli(["--registry", str(reg_path), *args])
    assert result.code == 0, result.err
    return result.out.strip()


def create(basedir, *args, furl=None):
    return run(BIN / "bbenroll", "worker", "create", basedir, *args, check=False, input_text=furl,
               timeout=120)


def test_creates_a_private_worker_basedir(master, tmp_path):
    furl = bbenroll(master, "add", "worker1")
    proc = create(tmp_path / "w1", "-", furl=furl)  # from stdin: not in argv, not in shell history
    assert proc.returncode == 0, proc.stderr
    base = tmp_path / "w1"
    assert proc.stdout == f"{base}\n"
    entry = tomllib.loads(master.read_text())["workers"]["worker1"]
    key = entry["bound"]["tubid"]  # the master bound the FURL to the basedir's key
    assert proc.stderr == (
        f"created worker 'worker1' in {base} (FURL bound to its key {key}); "
        f"start it with: buildbot-worker start {base}\n"
    )
    tac = (base / "buildbot.tac").read_text()
    assert f"workername = 'worker1'\npasswd = {entry['password']!r}" in tac
    (line,) = [line for line in tac.splitlines() if line.startswith("connection_string = ")]
    endpoint = clientFromString(reactor, ast.literal_eval(line.split(" = ", 1)[1]))
    assert (endpoint.furlfile, endpoint.resume) == (base / "bbenroll.furl", 600)
    assert endpoint.keyfile == base / "bbenroll.pem"  # the tunnel connects with the bound key
    assert tubid_from_pem((base / "bbenroll.pem").read_bytes()) == key
    assert stat.S_IMODE((base / "bbenroll.pem").stat().st_mode) == 0o600
    assert (base / "bbenroll.furl").read_text() == furl + "\n"
    assert stat.S_IMODE((base / "buildbot.tac").stat().st_mode) == 0o600
    assert stat.S_IMODE((base / "bbenroll.furl").stat().st_mode) == 0o600
    assert stat.S_IMODE(base.stat().st_mode) == 0o700
    assert (base / "info" / "admin").exists()
    assert furl.rsplit("/", 1)[1] not in proc.stdout + proc.stderr


def test_distinct_errors_for_unreachable_wrong_identity_and_refused(master, tmp_path):
    furl = bbenroll(master, "add", "worker1")
    prefix, swissnum = furl.rsplit("/", 1)
    tubid, hints = prefix[len("pb://"):].split("@")
    cases = {
        "unreachable": (f"pb://{tubid}@tcp:127.0.0.1:{free_port()}/{swissnum}",
                        "error: cannot reach the master at any of the FURL's addresses"),
        "impostor": (f"pb://{'a' * 32}@{hints}/{swissnum}",
                     "error: the server at the FURL's address is not the master this FURL names"),
        "unknown": (f"{prefix}/{'b' * 32}", "error: the master refused this FURL: unknown secret"),
    }
    bbenroll(master, "add", "gone")
    bbenroll(master, "revoke", "gone")
    gone = bbenroll(master, "show", "gone")
    cases["revoked"] = (gone, "error: the master refused this FURL: worker revoked")
    for name, (bad, message) in cases.items():
        proc = create(tmp_path / name, "--timeout", "20", "-", furl=bad)
        assert proc.returncode == 1, (name, proc.stderr)
        assert proc.stderr.startswith(message), (name, proc.stderr)
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
        assert not (tmp_path / name).exists()  # nothing written on failure


def test_force_replaces_the_worker_after_a_rotation(master, tmp_path):
    furl = bbenroll(master, "add", "worker1")
    base = tmp_path / "w1"
    assert create(base, "-", furl=furl).returncode == 0
    new_furl = bbenroll(master, "rotate", "worker1", "--compromised")  # new password too
    proc = create(base, "-", furl=new_furl)
    assert proc.returncode == 1
    assert proc.stderr == f"error: {base / 'buildbot.tac'} already exists; use --force to replace it\n"
    assert create(base, "--force", "-", furl=new_furl).returncode == 0
    password = tomllib.loads(master.read_text())["workers"]["worker1"]["password"]
    assert f"passwd = {password!r}" in (base / "buildbot.tac").read_text()
    assert not (base / "buildbot.tac.new").exists()
    assert (base / "bbenroll.furl").read_text() == new_furl + "\n"


def test_json_is_one_document(master, tmp_path):
    furl = bbenroll(master, "add", "worker1")
    proc = create(tmp_path / "w1", "--json", "-", furl=furl)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1
    document = json.loads(proc.stdout)
    assert document["basedir"] == str(tmp_path / "w1") and document["name"] == "worker1"
    assert set(document) == {"basedir", "name", "furl_file", "tac", "master", "key_file", "bound"}
    assert document["key_file"] == str(tmp_path / "w1" / "bbenroll.pem")
    assert document["bound"]["status"] == "bound"
    assert furl.rsplit("/", 1)[1] not in proc.stdout + proc.stderr
    proc = create(tmp_path / "w1", "--json", "-", furl=furl)  # exists already
    assert proc.returncode == 1
    message = f"{tmp_path / 'w1' / 'buildbot.tac'} already exists; use --force to replace it"
    assert json.loads(proc.stdout) == {"error": message, "exit": 1}


def create_with_terminal_stderr(basedir, furl):
    """``bbenroll worker create BASEDIR -`` with the FURL on stdin and stderr on a pseudo-terminal."""
    import pty

    master_fd, slave_fd = pty.openpty()
    proc = subprocess.Popen([BIN / "bbenroll", "worker", "create", basedir, "-"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=slave_fd, text=True)
    os.close(slave_fd)
    stdout, _ = proc.communicate(furl + "\n", timeout=120)
    chunks = []
    while True:
        try:
            data = os.read(master_fd, 65536)
        except OSError:  # EIO: every writer has closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master_fd)
    return proc.returncode, stdout, b"".join(chunks).decode().replace("\r\n", "\n")


def test_progress_on_a_terminal(master, tmp_path):
    """Bug 5: on a terminal, each step is shown while it happens; through a pipe, nothing extra."""
    furl = bbenroll(master, "add", "worker1")
    hints = furl.split("@")[1].split("/")[0]
    base = tmp_path / "w1"
    code, stdout, terminal = create_with_terminal_stderr(base, furl)
    assert code == 0, terminal
    key = tomllib.loads(master.read_text())["workers"]["worker1"]["bound"]["tubid"]
    assert stdout == f"{base}\n"
    assert terminal.splitlines() == [
        f"connecting to the master (at {hints}, for up to 30s)",
        "connected; the master's identity matches the FURL; fetching this worker's settings",
        f"writing {base}",
        "binding this FURL to this worker's key",
        f"created worker 'worker1' in {base} (FURL bound to its key {key}); "
        f"start it with: buildbot-worker start {base}",
    ]
    assert furl.rsplit("/", 1)[1] not in terminal


def test_furl_file_and_bad_furls(master, tmp_path):
    furl = bbenroll(master, "add", "worker1")
    furl_file = tmp_path / "furl.txt"
    furl_file.write_text(furl + "\n")
    assert create(tmp_path / "w1", "--furl-file", str(furl_file)).returncode == 0
    proc = create(tmp_path / "w2", "-", furl="pb://nonsense")
    assert (proc.returncode, proc.stderr) == (1, "error: a FURL has the form pb://TUBID@HINT[,HINT...]/SWISSNUM\n")


@pytest.mark.slow
def test_a_worker_that_never_reached_its_master_still_stops(master, tmp_path):
    furl = bbenroll(master, "add", "worker1")
    base = tmp_path / "w1"
    assert create(base, "-", furl=furl).returncode == 0
    # the master goes away for good: point the worker at a dead port
    dead = furl.replace(furl.split("@")[1].split("/")[0], f"tcp:127.0.0.1:{free_port()}")
    (base / "bbenroll.furl").write_text(dead + "\n")
    run(BIN / "buildbot-worker", "start", base, check=False, timeout=60)
    try:
        wait_for(lambda: "cannot connect to the master" in (base / "twistd.log").read_text(), timeout=60,
                 what="the worker to log its failed connection")
        started = time.monotonic()
        stop = run(BIN / "buildbot-worker", "stop", base, check=False, timeout=60)
        assert stop.returncode == 0 and "is dead" in stop.stdout, stop.stdout + stop.stderr
        assert time.monotonic() - started < 15
    finally:
        stop_daemon("buildbot-worker", base)
    assert os.path.exists(base / "twistd.log")


def test_a_basedir_that_cannot_be_written_binds_nothing(master, tmp_path):
    """The FURL is bound only once the key is on disk: a rerun elsewhere (a new key) still works."""
    furl = bbenroll(master, "add", "worker1")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = create(blocker / "w1", "-", furl=furl)
    assert proc.returncode == 1 and "cannot write" in proc.stderr, proc.stderr
    assert "bound" not in tomllib.loads(master.read_text())["workers"]["worker1"]
    proc = create(tmp_path / "w1", "-", furl=furl)
    assert proc.returncode == 0, proc.stderr
    assert "bound" in tomllib.loads(master.read_text())["workers"]["worker1"]
