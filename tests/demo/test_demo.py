"""bbenroll demo: a real master, worker and build on loopback, and nothing left behind.

The slow tests run ``bbenroll demo`` as a real subprocess with ``$TMPDIR`` pointing
at a fresh directory, so "nothing left behind" is exact: that directory must end
up empty, and no process may still run from it or mention it on its command line.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import bbenroll.demo
from bbenroll.demo import results, story
from bbenroll.demo.errors import DemoError
from tests.helpers.buildbot import BIN
from tests.helpers.cli import run_cli
from tests.helpers.qr import decode_terminal

FURL_RE = re.compile(r"^pb://[a-z2-7]{32}@tcp:127\.0\.0\.1:\d+/([a-z2-7]{32,})$")


def demo_env(tmpdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "BBENROLL_REGISTRY")}
    env["TMPDIR"] = str(tmpdir)
    return env


def processes_using(path: Path) -> list[str]:
    """Processes whose command line mentions ``path`` or whose cwd is under it."""
    needle = str(path)
    found = []
    if Path("/proc/self/cmdline").exists():
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue  # gone, or not ours to look at
            if needle in cmdline or cwd.startswith(needle):
                found.append(f"{entry.name}: {cmdline.strip()} (cwd {cwd})")
        return found
    ps = subprocess.run(["ps", "-axo", "pid=,args="], capture_output=True, text=True, check=True)
    return [line for line in ps.stdout.splitlines() if needle in line]


def assert_nothing_left(tmpdir: Path) -> None:
    deadline = time.monotonic() + 5  # a killed build step may take an instant to go
    while (left := processes_using(tmpdir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"processes left behind: {left}"
    assert list(tmpdir.iterdir()) == [], f"left in $TMPDIR: {list(tmpdir.iterdir())}"


@pytest.fixture
def tmpdir_(tmp_path: Path) -> Path:
    directory = tmp_path / "tmp"
    directory.mkdir()
    return directory


# --- fast -----------------------------------------------------------------------------


def test_missing_extras_is_one_clear_line_and_creates_nothing(monkeypatch, tmp_path):
    monkeypatch.setattr(story, "missing_extras", lambda: ["buildbot"])
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    result = run_cli(["demo"])
    assert result.code == 1
    assert result.err == "error: buildbot is not installed: pip install 'bbenroll[all]'\n"
    assert result.out == ""
    assert list(tmp_path.iterdir()) == []


def test_missing_extras_looks_for_every_distribution(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("buildbot_worker", "buildbot_www") else real(name, *a),
    )
    assert story.missing_extras() == ["buildbot-worker", "buildbot-www"]
    with pytest.raises(DemoError, match=r"^buildbot-worker, buildbot-www are not installed: pip"):
        story.check_extras()


def test_the_cli_shares_the_story_s_timeout_without_importing_the_story():
    """`bbenroll --help` imports every command module: cli/demo.py must not load the demo."""
    import subprocess
    import sys

    probe = (
        "import sys, bbenroll.cli.demo as c, bbenroll.demo.limits as l; "
        "print(c.DEFAULT_TIMEOUT is l.DEFAULT_TIMEOUT, 'bbenroll.demo.story' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False"]
    assert story.DEFAULT_TIMEOUT is __import__("bbenroll.demo.limits").demo.limits.DEFAULT_TIMEOUT


@pytest.mark.parametrize("json_mode", [False, True])
def test_a_failed_build_is_reported_then_exits_1(monkeypatch, json_mode):
    build = results.BuildResult(
        number=1,
        builder="demo",
        worker="demo-worker",
        result="failure",
        duration=3.0,
        log_tail=["boom", "program finished with exit code 1"],
    )

    def fake_run_demo(events, *, timeout, keep):
        events.build_done(build)
        furl = "pb://x@tcp:127.0.0.1:1/abcd…"
        return results.DemoResult(build=build, furl=furl, directory=None, elapsed=9.5)

    monkeypatch.setattr(bbenroll.demo, "run_demo", fake_run_demo)
    result = run_cli(["demo", *(["--json"] if json_mode else [])])
    assert result.code == 1
    assert result.err.splitlines()[-1] == "error: the demo build finished with failure"
    if json_mode:
        doc = json.loads(result.out)
        assert doc["ok"] is False and doc["result"] == "failure" and doc["build"]["duration"] == 3.0
    else:
        assert result.out.splitlines() == [
            "build 1 on demo-worker: failure in 3s",
            "  | boom",
            "  | program finished with exit code 1",
        ]


def test_help_lists_the_options():
    result = run_cli(["demo", "--help"])
    assert result.code == 0
    assert "--keep" in result.out and "--timeout" in result.out and "--json" in result.out


# --- real processes -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.network
def test_demo_runs_a_build_shows_the_furl_and_leaves_nothing(tmpdir_):
    started = time.monotonic()
    proc = subprocess.run(
        [BIN / "bbenroll", "demo"], capture_output=True, text=True, timeout=240, env=demo_env(tmpdir_)
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    furl_lines = [i for i, line in enumerate(lines) if line.startswith("pb://")]
    assert len(furl_lines) == 1, proc.stdout
    furl = lines[furl_lines[0]]
    swissnum = FURL_RE.match(furl).group(1)
    # the QR code printed just before the FURL line decodes to it
    assert decode_terminal("\n".join(lines[: furl_lines[0]])) == [furl]
    assert re.search(r"^build 1 on demo-worker: success in \d", proc.stdout, re.M), proc.stdout
    assert "  | Hello from the bbenroll demo build!" in lines
    for message in (
        "starting master...",
        "worker attached",
        "build 1 running...",
        "stopping master and worker...",
    ):
        assert message in proc.stderr
    assert swissnum not in proc.stderr  # shown once, deliberately, on stdout only
    assert_nothing_left(tmpdir_)
    print(f"bbenroll demo took {elapsed:.1f}s end to end")


@pytest.mark.slow
@pytest.mark.network
def test_demo_json_keep_redacts_the_furl_and_keeps_the_secret_out_of_logs(tmpdir_):
    proc = subprocess.run(
        [BIN / "bbenroll", "demo", "--json", "--keep"],
        capture_output=True,
        text=True,
        timeout=240,
        env=demo_env(tmpdir_),
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # exactly one JSON document: no QR code, no FURL line
    assert doc["ok"] is True and doc["result"] == "success" and doc["kept"] is True
    assert doc["build"]["number"] == 1 and doc["build"]["worker"] == "demo-worker"
    assert "Hello from the bbenroll demo build!" in doc["build"]["log_tail"]
    assert doc["furl"].endswith("…")
    kept = Path(doc["directory"])
    assert kept.parent == tmpdir_.resolve() and (kept / "master" / "master.cfg").is_file()
    # processes are stopped even with --keep
    deadline = time.monotonic() + 5
    while processes_using(tmpdir_) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_using(tmpdir_) == []
    # the secret is only where it must be: the registry (and its read cache, a 0600 copy
    # of what was parsed from it: registry/readcache.py) and the worker's FURL file
    entry = (kept / "master" / "workers.toml").read_text()
    swissnum = re.search(r'swissnum = "([a-z2-7]+)"', entry).group(1)
    assert swissnum not in doc["furl"] and doc["furl"].endswith(f"/{swissnum[:4]}…")
    holders = sorted(
        str(p.relative_to(kept))
        for p in kept.rglob("*")
        if p.is_file() and swissnum.encode() in p.read_bytes()
    )
    assert holders == ["master/.workers.toml.cache", "master/workers.toml", "worker/bbenroll.furl"]
    assert (kept / "master" / ".workers.toml.cache").stat().st_mode & 0o077 == 0
    assert swissnum not in proc.stdout + proc.stderr
    shutil.rmtree(kept)


class Recorder:
    def __init__(self) -> None:
        self.messages: list[str] = []

    def progress(self, text: str) -> None:
        self.messages.append(text)

    def furl(self, name: str, furl: str) -> None:
        self.messages.append("FURL shown")

    def build_done(self, build: results.BuildResult) -> None:
        self.messages.append(f"build {build.result}")


@pytest.mark.slow
@pytest.mark.network
def test_a_master_that_cannot_start_is_one_line_and_leaves_nothing(monkeypatch, tmpdir_):
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir_))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        ports = iter([busy.getsockname()[1], story.free_port(), story.free_port()])  # www first
        monkeypatch.setattr(story, "free_port", lambda: next(ports))
        started = time.monotonic()
        result = run_cli(["demo"])
    assert result.code == 1
    assert result.err.count("error:") == 1 and "Traceback" not in result.err
    last = result.err.splitlines()[-1]
    assert last.startswith("error: the master stopped unexpectedly: CannotListenError: "), result.err
    assert last.endswith("(run with --keep to read its log)")
    assert "stopping master..." in result.err
    assert time.monotonic() - started < 30
    assert_nothing_left(tmpdir_)


@pytest.mark.slow
def test_timeout_stops_what_runs_and_removes_the_directory(monkeypatch, tmpdir_):
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir_))
    events = Recorder()
    with pytest.raises(DemoError, match=r"^timed out after 0.5s waiting for buildbot create-master"):
        story.Demo(events, timeout=0.5).run()
    assert events.messages[-2] == "stopping buildbot create-master..."
    assert events.messages[-1].startswith(f"removed {tmpdir_.resolve()}")
    assert_nothing_left(tmpdir_)


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.parametrize("when", ["master running", "build 1 running..."])
def test_ctrl_c_stops_everything_promptly(tmpdir_, when):
    proc = subprocess.Popen(
        [BIN / "bbenroll", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=demo_env(tmpdir_),
    )
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if line.startswith(when):
                break
        else:
            pytest.fail(f"the demo never said {when!r}: {''.join(seen)}")
        assert processes_using(tmpdir_), "the process check sees nothing: it would prove nothing"
        interrupted = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
        took = time.monotonic() - interrupted
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert took < 15, f"took {took:.1f}s to stop"
    assert err.strip().splitlines()[-1] == "error: interrupted (the demo's processes were stopped)"
    assert "Traceback" not in err
    assert_nothing_left(tmpdir_)
    print(f"stopped {took:.1f}s after Ctrl-C at {when!r}", file=sys.stderr)
