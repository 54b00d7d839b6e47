"""``bbenroll worker run``'s pieces: credentials, exit statuses, the marker, the log, signals; CLI errors.

The real thing (a master, buildbot-worker, revoke/remove) is tests/worker/test_run_buildbot.py.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime
from io import BytesIO

import pytest

from bbenroll.errors import BBEnrollError
from bbenroll.worker import run as wrun
from tests.helpers.cli import HINT, run_cli

FURL = f"pb://{'a' * 32}@{HINT}/{'s' * 32}"
INVITE = f"pb://{'a' * 32}@{HINT}/{'i' * 32}"
NOW = datetime(2026, 12, 3, 16, 0, 0, tzinfo=UTC)


# -- credentials -------------------------------------------------------------------------------


def test_no_credential_anywhere_is_none():
    assert wrun.find_credential(None, None, {}) is None


def test_the_environment_gives_a_furl_or_an_invite():
    assert wrun.find_credential(None, None, {"BBENROLL_FURL": f" {FURL}\n"}) == wrun.Credential(
        "furl", FURL, "BBENROLL_FURL")
    found = wrun.find_credential(None, None, {"BBENROLL_INVITE": INVITE})
    assert (found.kind, found.text) == ("invite", INVITE)


def test_secret_files_from_the_environment(tmp_path):
    path = tmp_path / "furl"
    path.write_text(f"# serial 3\n{FURL}\n")  # a worker's own bbenroll.furl is accepted
    found = wrun.find_credential(None, None, {"BBENROLL_FURL_FILE": str(path)})
    assert (found.kind, found.text) == ("furl", FURL)
    invite = tmp_path / "invite"
    invite.write_text(INVITE + "\n")
    found = wrun.find_credential(None, None, {"BBENROLL_INVITE_FILE": str(invite)})
    assert (found.kind, found.text) == ("invite", INVITE)


def test_options_win_over_the_environment(tmp_path):
    path = tmp_path / "invite"
    path.write_text(INVITE)
    found = wrun.find_credential(None, path, {"BBENROLL_FURL": FURL})
    assert (found.kind, found.text) == ("invite", INVITE)


@pytest.mark.parametrize("environ, message", [
    ({"BBENROLL_FURL": FURL, "BBENROLL_INVITE": INVITE}, "BBENROLL_FURL, BBENROLL_INVITE are set at once"),
    ({"BBENROLL_FURL": "garbage"}, "BBENROLL_FURL: a FURL starts with pb://"),
    ({"BBENROLL_INVITE_FILE": "/nonexistent/i"}, "BBENROLL_INVITE_FILE: cannot read /nonexistent/i"),
])
def test_bad_environment_is_one_message(environ, message):
    with pytest.raises(BBEnrollError) as e:
        wrun.find_credential(None, None, environ)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_files(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(BBEnrollError, match=r"--invite-file: .*empty is empty"):
        wrun.find_credential(None, empty, {})
    big = tmp_path / "big"
    big.write_bytes(b"x" * (wrun.MAX_CREDENTIAL_BYTES + 1))
    with pytest.raises(BBEnrollError, match="which is not a FURL"):
        wrun.find_credential(None, big, {})
    with pytest.raises(BBEnrollError, match="not both"):
        wrun.find_credential(empty, empty, {})


# -- the basedir -------------------------------------------------------------------------------


def test_a_basedir_is_ready_only_when_whole(tmp_path):
    assert not wrun.basedir_ready(tmp_path)
    (tmp_path / "buildbot.tac").write_text("connection_string = 'bbenroll:furlfile=x:keyfile=y'\n")
    assert not wrun.basedir_ready(tmp_path)  # a crash before the FURL file was written
    (tmp_path / "bbenroll.furl").write_text(FURL + "\n")
    assert not wrun.basedir_ready(tmp_path)  # ... or before the key
    (tmp_path / "bbenroll.pem").write_text("key")
    assert wrun.basedir_ready(tmp_path)


# -- the marker --------------------------------------------------------------------------------


def test_the_marker_is_one_private_line(tmp_path):
    path = wrun.write_refused_marker(tmp_path, NOW, "the master refused this FURL: revoked\n(laptop\tstolen)")
    line = "2026-12-03T16:00:00Z the master refused this FURL: revoked (laptop stolen)"
    assert path == tmp_path / wrun.REFUSED_MARKER
    assert path.read_text() == line + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert wrun.read_refused_marker(tmp_path) == line
    wrun.remove_refused_marker(tmp_path)
    assert wrun.read_refused_marker(tmp_path) is None
    wrun.remove_refused_marker(tmp_path)  # none: fine


# -- exit statuses -----------------------------------------------------------------------------


@pytest.mark.parametrize("returncode, forwarded, refused, status", [
    (0, set(), None, 0),
    (0, set(), "2026-12-03T16:00:00Z revoked", wrun.EXIT_REFUSED),
    (1, set(), "2026-12-03T16:00:00Z revoked", wrun.EXIT_REFUSED),
    (-signal.SIGTERM, {signal.SIGTERM}, None, 0),  # twistd re-raises the signal that stopped it
    (-signal.SIGINT, {signal.SIGINT}, None, 0),
    (-signal.SIGTERM, set(), None, 128 + signal.SIGTERM),  # nobody asked: not a clean stop
    (-signal.SIGKILL, {signal.SIGTERM}, None, 128 + signal.SIGKILL),
    (1, set(), None, 1),
    (wrun.EXIT_REFUSED, set(), None, 1),  # 3 means the refusal only
    (2, set(), None, 2),
])
def test_exit_status(returncode, forwarded, refused, status):
    assert wrun.exit_status(returncode, forwarded, refused) == status


def test_the_child_runs_twistd_in_the_foreground_without_a_pidfile_and_without_the_secrets():
    command = wrun.twistd_command("/py")
    assert command[0] == "/py" and "--nodaemon" in command and "--pidfile=" in command
    assert command[-2:] == ["-y", "buildbot.tac"]
    env = wrun.child_environment({"PATH": "/bin", "BBENROLL_FURL": FURL, "BBENROLL_INVITE_FILE": "/run/x"})
    assert env["BBENROLL_EXIT_ON_REFUSAL"] == "1" and env["PATH"] == "/bin"
    assert "BBENROLL_FURL" not in env and "BBENROLL_INVITE_FILE" not in env


# -- the log -----------------------------------------------------------------------------------


def test_the_log_is_followed_across_a_rotation(tmp_path):
    log = tmp_path / "twistd.log"
    log.write_bytes(b"an earlier run\n")
    out = BytesIO()
    follower = wrun.LogFollower(log, out)
    with open(log, "ab") as f:
        f.write(b"one\n")
    follower.pump()
    with open(log, "ab") as f:
        f.write(b"two\n")
    os.rename(log, tmp_path / "twistd.log.1")  # what twisted's LogFile does
    log.write_bytes(b"three\n")
    follower.pump()
    follower.close()
    assert out.getvalue() == b"one\ntwo\nthree\n"


def test_a_log_that_appears_later_is_followed_from_its_start(tmp_path):
    out = BytesIO()
    follower = wrun.LogFollower(tmp_path / "twistd.log", out)
    follower.pump()
    (tmp_path / "twistd.log").write_bytes(b"first\n")
    follower.pump()
    assert out.getvalue() == b"first\n"


# -- signals -----------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import signal, sys, time
    got = []
    for name in ("SIGTERM", "SIGINT", "SIGHUP"):
        signal.signal(getattr(signal, name), lambda n, f: got.append(n))
    open("ready", "w").close()
    deadline = time.monotonic() + 20
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    open("got", "w").write(" ".join(map(str, got)))
    sys.exit(7 if got else 9)
""")


def signal_when_ready(tmp_path, signum):
    def go():
        deadline = time.monotonic() + 20
        while not (tmp_path / "ready").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signum)  # to us: supervise must pass it on

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("signum", wrun.FORWARDED_SIGNALS)
def test_signals_are_passed_on_to_the_child(tmp_path, signum):
    before = {s: signal.getsignal(s) for s in wrun.FORWARDED_SIGNALS}
    thread = signal_when_ready(tmp_path, signum)
    outcome = wrun.supervise([sys.executable, "-c", CHILD], cwd=tmp_path, env=os.environ)
    thread.join()
    assert outcome.returncode == 7
    assert outcome.forwarded == {signum}
    assert (tmp_path / "got").read_text() == str(int(signum))
    assert {s: signal.getsignal(s) for s in wrun.FORWARDED_SIGNALS} == before  # ours put back


def test_a_child_dying_of_the_forwarded_signal_is_a_clean_stop(tmp_path):
    script = "import time; open('ready', 'w').close(); time.sleep(30)"
    thread = signal_when_ready(tmp_path, signal.SIGTERM)
    outcome = wrun.supervise([sys.executable, "-c", script], cwd=tmp_path, env=os.environ)
    thread.join()
    assert outcome.returncode == -signal.SIGTERM
    assert wrun.exit_status(outcome.returncode, outcome.forwarded, None) == 0


def test_the_child_is_stopped_when_we_fail(tmp_path):
    script = "import time; open('ready', 'w').close(); time.sleep(30)"
    children = []

    def boom(child):
        children.append(child)
        raise RuntimeError("ours")

    with pytest.raises(RuntimeError):
        wrun.supervise([sys.executable, "-c", script], cwd=tmp_path, env=os.environ, on_start=boom)
    assert children[0].poll() is not None


# -- the command: bad input --------------------------------------------------------------------

CLEAN = {"BBENROLL_FURL": None, "BBENROLL_INVITE": None, "BBENROLL_FURL_FILE": None,
         "BBENROLL_INVITE_FILE": None}


def one_error(result, text, code=1):
    assert result.code == code
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], result.err
    assert "Traceback" not in result.err


@pytest.mark.parametrize("args, env, text", [
    ([], {}, "holds no worker yet, and no FURL or invite was given"),
    ([], {"BBENROLL_FURL": "pb://nonsense"}, "BBENROLL_FURL: "),
    ([], {"BBENROLL_FURL": FURL, "BBENROLL_INVITE": INVITE}, "set only one"),
    (["--furl-file", "/nonexistent/furl"], {}, "--furl-file: cannot read /nonexistent/furl"),
    (["--furl-file", "/nonexistent/a", "--invite-file", "/nonexistent/b"], {}, "not both"),
])
def test_bad_input_is_one_line_and_exit_1(tmp_path, args, env, text):
    basedir = tmp_path / "w"
    result = run_cli(["worker", "run", str(basedir), *args], env={**CLEAN, **env})
    one_error(result, text)
    assert result.out == ""
    assert not basedir.exists()  # nothing written

    as_json = run_cli(["--json", "worker", "run", str(basedir), *args], env={**CLEAN, **env})
    assert as_json.code == 1
    document = json.loads(as_json.out)  # exactly one document
    assert document["exit"] == 1 and text in document["error"]


def test_a_basedir_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    one_error(run_cli(["worker", "run", str(path)], env={**CLEAN, "BBENROLL_FURL": FURL}),
              "is a file", code=2)  # click's usage error: one line too
    assert path.read_text() == "x"
