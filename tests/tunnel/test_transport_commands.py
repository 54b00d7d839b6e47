"""Backpressure into a real buildbot-worker command: a real ``shell`` step (buildbot-worker's
ProtocolCommandPb, WorkerShellCommand and RunProcess, a real child process on the real reactor)
writes its updates to a stream of a tunnel whose link is down. At high_water the stream holds
the command: its pipe fills and it waits in write(2); once let go it finishes with every byte."""

from __future__ import annotations

import hashlib
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest_twisted
from buildbot_worker.pb import ProtocolCommandPb
from twisted.internet import defer, reactor, task

from bbenroll.tunnel.core import Settings
from bbenroll.tunnel.transport import command_stream
from bbenroll.tunnel.worker_side import WORKER_MAX_BUFFER, WorkerTunnel
from tests.tunnel.test_worker_side import FURL, Recorder

HIGH_WATER = 1024 * 1024
SETTINGS = Settings(window=256 * 1024, chunk=64 * 1024, high_water=HIGH_WATER, low_water=256 * 1024,
                    max_buffer=WORKER_MAX_BUFFER)
LINES = 200_000  # about 20 MB: twenty times high_water
BUFFER_SIZE = 64 * 1024  # buildbot-worker's update buffer (its default)
# what may reach the stream after it said Pause: the update buffer and a pipe read or two
SLACK = 4 * BUFFER_SIZE
NEWLINE_RE = r"(\r\n|\r(?=.)|\033\[u|\033\[[0-9]+;[0-9]+[Hf]|\033\[2J|\x08+)"

SCRIPT = textwrap.dedent(f"""
    import hashlib, sys
    for i in range({LINES}):
        sys.stdout.write("%08d %s\\n" % (i, hashlib.sha256(str(i).encode()).hexdigest()))
""")


def expected_output() -> bytes:
    return "".join(f"{i:08d} {hashlib.sha256(str(i).encode()).hexdigest()}\n" for i in range(LINES)).encode()


class CommandRef:
    """The master's RemoteCommand as buildbot-worker's ProtocolCommandPb uses it, on the
    broker of the stream: each update is written to the stream, as PB would encode it."""

    def __init__(self, transport):
        self.broker = SimpleNamespace(transport=transport)
        self.stdout = bytearray()
        self.written = 0
        self.rc = None
        self.complete: defer.Deferred = defer.Deferred()

    def callRemote(self, name, *args):
        if name == "update":
            for update, _number in args[0]:
                for key, value in update.items():
                    data = value.encode() if key == "stdout" else repr((key, value)).encode()
                    if key == "stdout":
                        self.stdout += data
                    elif key == "rc":
                        self.rc = value
                    self.written += len(data)
                    self.broker.transport.write(data)
        elif name == "complete":
            self.complete.callback(args[0])
        return defer.succeed(None)

    def notifyOnDisconnect(self, callback, *args):
        pass

    def dontNotifyOnDisconnect(self, callback, *args):
        pass


def waiting_on_its_pipe(pid: int) -> bool:
    """The child sleeps in the kernel's pipe write (wchan: pipe_write, anon_pipe_write, ...)."""
    try:
        return "pipe" in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False


async def until(predicate, what: str, timeout: float = 30.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await task.deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


@pytest_twisted.ensureDeferred
async def test_a_real_shell_command_waits_on_its_pipe_while_the_stream_is_paused(tmp_path):
    tunnel = WorkerTunnel(FURL, reactor=reactor, settings=SETTINGS)  # never connected: the link is down
    transport = tunnel.open_stream(Recorder())
    ref = CommandRef(transport)
    args = {"workdir": ".", "command": [sys.executable, "-c", SCRIPT], "timeout": 120, "logEnviron": False}
    step = ProtocolCommandPb("utf-8", str(tmp_path), str(tmp_path), BUFFER_SIZE, 5, 4096, NEWLINE_RE, True,
                             lambda: None, lambda *a: None, "shell", "1", args, ref)
    done = step.command.doStart()  # as buildbot-worker's remote_startCommand does
    done.addCallback(lambda _: None)
    done.addBoth(step.command_complete)
    try:
        await until(lambda: transport.held, "the command to be held")
        (process,) = transport.held.values()
        assert command_stream(process) is transport  # found through buildbot-worker's own objects
        await until(lambda: waiting_on_its_pipe(process.pid), "the command to wait on its full pipe")
        held_at = ref.written
        assert HIGH_WATER < held_at <= HIGH_WATER + SLACK
        await task.deferLater(reactor, 0.5, lambda: None)
        assert ref.written == held_at and not ref.complete.called  # nothing more came: it waits
        transport.resume_output()  # what the core's Resume does
        await until(lambda: ref.complete.called, "the command to finish", timeout=60)
        assert ref.complete.result is None and ref.rc == 0  # no failure, exit status 0
        assert bytes(ref.stdout) == expected_output()
    finally:
        transport.resume_output()
        tunnel.stop()
        await done
