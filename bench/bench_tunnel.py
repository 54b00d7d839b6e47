#!/usr/bin/env python3
"""Speed of bbenroll's tunnel: real builds, raw stream throughput, recovery after an outage.

Run from anywhere, with the Python that has bbenroll, buildbot and buildbot-worker installed:

    python bench/bench_tunnel.py [--quick] [--parts builds,stream,outage] [--repeat N] [--markdown FILE]

It measures, in one run, side by side:

1. builds: one Buildbot master (the bbenroll master.cfg hook, sqlite) with two enrolled
   workers, each bound to its own builders. ``direct`` is a plain worker made by
   ``buildbot-worker create-worker`` that logs into the master's loopback PB port with its
   name and password; ``tunnel`` is made by ``bbenroll worker create`` and reaches the same
   PB port through its FURL and the tunnel. Both run the same builds: one printing about
   50 MB (wall time from the force request until the build is complete, polled over REST)
   and 20 small builds in sequence (total wall time);
2. stream: bytes pushed through one tunnel stream (bbenroll's ``WorkerTunnel`` in one
   process; ``EnrollmentService`` and a sink standing in for the PB port in another; the
   master's PB leg is joined in-process to the sink's factory, as the Buildbot hook joins it
   to Buildbot's PB factory; a second tunnel, of another worker, has the loopback TCP leg
   instead, the fallback and what every tunnel had before),
   next to the same bytes over Twisted TCP, Twisted TLS, and pipelined Foolscap
   ``callRemote`` calls of 64 KiB, 256 KiB and 1 MiB between two Tubs (and 256 KiB calls
   whose receiver forwards the bytes to the sink over loopback TCP, as the tunnel's master
   side does); then the round-trip time of a small message over each;
3. outage: a ``FaultyProxy`` (tests/helpers/netproxy.py) between the worker's tunnel and the
   master; data streams continuously; the proxy is blocked for 5 s (and 9 s), then
   unblocked, and the time from ``unblock()`` to the first new byte at the far end is
   measured.

Every part interleaves its variants round by round (in a rotating order), so noise on a
shared machine hits them alike; figures are medians (and minima) over the rounds, and the
ratios compare with the baseline measured in the same run. Exit status 1 if a target fails.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import queue
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
BIN = Path(PYTHON).parent
LOOP = "127.0.0.1"
MB = 1_000_000
MiB = 1024 * 1024
KiB = 1024

# targets
BUILD_RATIO_TARGET = 1.05  # bbenroll / direct, builds
TLS_RATIO_TARGET = 0.3  # tunnel >= this x plain TLS
FOOLSCAP_RATIO_TARGET = 0.8  # tunnel >= this x Foolscap calls of the tunnel's frame size
RECOVERY_TARGET = 2.0  # seconds from unblock() to the first new byte
RTT_TARGET = 1.3  # tunnel round trip <= this x a bare Foolscap call's

FRAME = 256 * KiB  # the tunnel's data frame (core.Settings.chunk)
WINDOW = 4 * MiB  # the tunnel's window (core.Settings.window); Foolscap calls use the same
FOOLSCAP_CHUNKS = (64 * KiB, 256 * KiB, 1 * MiB)
WRITE = 256 * KiB  # the sources write this much at a time
ECHO = 2**64 - 1  # a stream header asking the sink to echo
FOREVER = 2**63  # a stream header for a sink that only counts
PING_BYTES = 64  # round-trip latency: messages of this size, one at a time
GAP = 0.5  # the sink reports data arriving after a silence this long
# Every stream starts as a PB connection does, on every transport alike: the client's first
# bytes are a PB login as the bench's worker (the master lets nothing else through, and
# nothing after it until the server answered: pblogin.py), the sink (the PB stand-in)
# answers it with GREETING (the master resets a tunnel leg that hears nothing from its PB
# port: master_side.PB_GREETING_TIMEOUT), and only then does the client send the rest
GREETING = b"pb?"
BENCH_WORKER = "bench-inproc"  # its tunnel's PB leg is in-process
TCP_LEG_WORKER = "bench-tcpleg"  # its tunnel's PB leg is loopback TCP (same length: same login size)


def login_prefix(worker: str = BENCH_WORKER) -> bytes:
    """What Twisted's PB client sends first, logging in as ``worker``."""
    from tests.helpers.pb import login_bytes

    return login_bytes(worker)
PATTERN_PERIOD = 251  # continuous streams carry byte i = i % 251, checked by the sink
OUTAGE_RATE_CHUNK = 32 * KiB  # continuous stream: this much every OUTAGE_RATE_PERIOD
OUTAGE_RATE_PERIOD = 0.01


class BenchError(Exception):
    pass


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def emit(obj: dict[str, Any]) -> None:
    """Helper processes talk to the orchestrator in JSON lines on stdout."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind((LOOP, 0))
        return s.getsockname()[1]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("BBENROLL_REGISTRY", None)
    env["NO_COLOR"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run(*argv: str | Path, cwd: Path | None = None, timeout: float = 180,
        input_text: str | None = None) -> str:
    proc = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input_text,
        env=child_env(),
    )
    if proc.returncode != 0:
        command = " ".join(map(str, argv))
        raise BenchError(f"{command} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def bbenroll(registry: Path, *args: str, input_text: str | None = None) -> str:
    return run(BIN / "bbenroll", "--registry", registry, *args, input_text=input_text).strip()


def new_registry(directory: Path, *, listen: int, pb: int) -> Path:
    from bbenroll.registry import store

    path = directory / "workers.toml"
    store.create(
        path,
        location=[f"tcp:{LOOP}:{listen}"],
        listen=f"tcp:{listen}:interface={LOOP}",
        pb=f"tcp:{pb}:interface={LOOP}",
        identity="master.pem",
    )
    return path


def furl_via(furl: str, port: int) -> str:
    """The same FURL, with its connection hints replaced by 127.0.0.1:port."""
    return re.sub(r"@[^/]+/", f"@tcp:{LOOP}:{port}/", furl, count=1)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# --- helper processes -----------------------------------------------------------------


class Helper:
    """A child process (this script with --role) that reports JSON lines on stdout."""

    def __init__(self, name: str, role: str, config: dict[str, Any], logfile: Path) -> None:
        self.name = name
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self._err = logfile.open("ab")
        self.proc = subprocess.Popen(
            [PYTHON, str(Path(__file__).resolve()), "--role", role, json.dumps(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._err,
            env=child_env(),
            cwd=ROOT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if line.startswith("{"):
                self.events.put(json.loads(line))

    def expect(self, match: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        """The next event that ``match``es (earlier ones are kept in ``seen``)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.name}: timed out after {timeout:.0f}s waiting for {what}")
            try:
                event = self.events.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.proc.poll() is not None and self.events.empty():
                    code = self.proc.returncode
                    raise BenchError(f"{self.name} exited ({code}) while waiting for {what}") from None
                continue
            if event.get("event") == "error":
                raise BenchError(f"{self.name}: {event.get('error')}")
            self.seen.append(event)
            if match(event):
                return event

    def drain(self) -> list[dict[str, Any]]:
        while True:
            try:
                self.seen.append(self.events.get_nowait())
            except queue.Empty:
                return self.seen

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        self._reader.join(5)
        self._err.close()


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- roles (run inside helper processes, with a Twisted reactor) ------------------------


def pattern_bytes(length: int) -> bytes:
    period = bytes(range(PATTERN_PERIOD))
    return period * (length // PATTERN_PERIOD + 2)


def role_server(config: dict[str, Any]) -> None:
    """The master side: EnrollmentService, the PB stand-in (a sink), TCP/TLS/Foolscap baselines."""
    from foolscap.api import Referenceable, Tub
    from twisted.internet import protocol, reactor, ssl
    from twisted.internet.endpoints import TCP4ClientEndpoint

    from bbenroll.master.service import EnrollmentService

    pattern = pattern_bytes(2 * MiB)
    view = memoryview(pattern)
    login = login_prefix()

    class Sink(protocol.Protocol):
        """Reads an 8-byte length, then that many bytes, then answers b"ok".

        Length 0: an endless stream of the check pattern; reports data after a silence.
        Length ECHO: everything is sent back (round-trip latency).
        """

        def connectionMade(self) -> None:
            self.skip = len(login)  # the client's login comes first; it is answered
            self.header = b""
            self.want: int | None = None
            self.got = 0
            self.last: float | None = None

        def dataReceived(self, data: bytes) -> None:
            now = time.monotonic()
            if self.skip:
                cut = min(self.skip, len(data))
                self.skip -= cut
                data = data[cut:]
                if not self.skip:
                    self.transport.write(GREETING)
                if not data:
                    return
            if self.want is None:
                self.header += data
                if len(self.header) < 8:
                    return
                (self.want,) = struct.unpack("!Q", self.header[:8])
                data = self.header[8:]
                if self.want == 0:
                    emit({"event": "stream", "t": now})
            if not data:
                return
            if self.want == ECHO:
                self.transport.write(data)
                return
            if self.want:
                self.got += len(data)
                if self.got >= self.want:
                    self.transport.write(b"ok")
                return
            if self.last is not None and now - self.last >= GAP:
                emit({"event": "resumed", "t": now, "silence": now - self.last, "offset": self.got})
            self.last = now
            pos = 0
            while pos < len(data):  # the stream must arrive intact: in order, no gap, no repeat
                start = (self.got + pos) % PATTERN_PERIOD
                piece = data[pos : pos + MiB]
                if view[start : start + len(piece)] != piece:
                    emit({"event": "corrupt", "offset": self.got + pos})
                    self.transport.abortConnection()
                    return
                pos += len(piece)
            self.got += len(data)

        def connectionLost(self, reason: Any = None) -> None:
            if self.want == 0:
                emit({"event": "stream-lost", "offset": self.got, "reason": str(reason.value)})

    sink = protocol.Factory.forProtocol(Sink)

    class Forward(protocol.Protocol):
        """A loopback TCP connection to the sink, as the tunnel's master side has to PB."""

        def connectionMade(self) -> None:
            self.transport.write(login + struct.pack("!Q", FOREVER))

    forward: list[Any] = []

    class Chunks(Referenceable):
        def remote_chunk(self, data: bytes) -> None:
            return None

        def remote_forward(self, data: bytes) -> None:
            forward[0].transport.write(data)

        def remote_echo(self, data: bytes) -> bytes:
            return data

    reactor.listenTCP(config["sink_port"], sink, interface=LOOP)
    tcp = reactor.listenTCP(0, sink, interface=LOOP)
    cert = ssl.PrivateCertificate.loadPEM(Path(config["pem"]).read_bytes())
    tls = reactor.listenSSL(0, sink, cert.options(), interface=LOOP)

    tub = Tub()
    fs_port = config["foolscap_port"]
    tub.listenOn(f"tcp:{fs_port}:interface={LOOP}")
    tub.setLocation(f"tcp:{LOOP}:{fs_port}")
    tub.startService()
    fs_furl = tub.registerReference(Chunks())

    from bbenroll.master.sessions import SessionTable
    from bbenroll.tunnel.master_side import MasterSession

    # the bench opens many short streams in a row, which the master takes for failed logins
    # (MAX_SHORT_LEGS, then a cool-down): off here, this measures the data path
    MasterSession.max_short_legs = 10**9
    new_session = SessionTable._new_session

    def bench_session(self: Any, worker: str, session_id: str, deadline: int) -> Any:
        session = new_session(self, worker, session_id, deadline)
        if worker == TCP_LEG_WORKER:  # this one tunnel dials the sink over loopback TCP
            session.pb_server_factory = None
        return session

    SessionTable._new_session = bench_session  # type: ignore[method-assign]
    service = EnrollmentService(config["registry"], reactor=reactor, pb_server_factory=lambda: sink)
    service.startService()
    endpoint = TCP4ClientEndpoint(reactor, LOOP, config["sink_port"])
    connected = endpoint.connect(protocol.Factory.forProtocol(Forward))
    connected.addCallback(forward.append)

    def stop(*_: Any) -> None:
        reactor.callFromThread(reactor.stop)

    signal.signal(signal.SIGTERM, stop)
    emit(
        {
            "event": "ready",
            "pid": os.getpid(),
            "tcp": tcp.getHost().port,
            "tls": tls.getHost().port,
            "foolscap": fs_furl,
        }
    )
    reactor.run(installSignalHandlers=False)


def bench_tunnel_class() -> type:
    """WorkerTunnel plus two things the bench needs (bbenroll's own classes are used as they are).

    - The core's PAUSE/RESUME events reach the producer registered on the stream (the
      worker side does not forward them: buildbot-worker never registers one), so the bench's
      source never queues more than the core's high-water mark (8 MiB) and is never reset
      for passing ``max_buffer`` (64 MiB);
    - connection attempts and the link coming up are reported, for the outage breakdown.
    """
    from twisted.internet import reactor

    from bbenroll.tunnel.frames import Pause, Resume
    from bbenroll.tunnel.worker_side import WorkerTunnel

    class BenchTunnel(WorkerTunnel):
        def on_pause(self, event: Pause) -> None:
            transport = self.streams.get(event.stream)
            if transport is not None and transport.producer is not None:
                transport.producer.pauseProducing()

        def on_resume(self, event: Resume) -> None:
            transport = self.streams.get(event.stream)
            if transport is not None and transport.producer is not None:
                reactor.callLater(0, transport.producer.resumeProducing)

        def _connect(self) -> None:
            if not (self._connecting or self._stopped or self.tub is None):
                emit({"event": "connect", "t": time.monotonic()})
            super()._connect()

        def _connect_failed(self, failure: Any) -> None:
            emit({"event": "connect-failed", "t": time.monotonic(), "why": failure.getErrorMessage()})
            super()._connect_failed(failure)

        def _session_opened(self, answer: dict[str, Any], ref: Any) -> Any:
            result = super()._session_opened(answer, ref)
            if self.peer is not None:
                emit({"event": "link-up", "t": time.monotonic(), "status": answer.get("status")})
            return result

    return BenchTunnel


def source_protocol() -> type:
    from twisted.internet import defer, protocol, task

    logins = {worker: login_prefix(worker) for worker in (BENCH_WORKER, TCP_LEG_WORKER)}

    class Source(protocol.Protocol):
        """Writes an 8-byte length and that many bytes as fast as the transport takes them
        (a streaming producer), then waits for b"ok". ``size`` 0: an endless paced stream of
        the check pattern."""

        def __init__(self, size: int, worker: str = BENCH_WORKER) -> None:
            self.size = size
            self.login = logins[worker]
            self.sent = 0
            self.paused = False
            self.done: defer.Deferred = defer.Deferred()
            self.answer = b""
            self.started = 0.0
            self.loop: task.LoopingCall | None = None
            self.payload = b"\xa5" * WRITE if size else pattern_bytes(OUTAGE_RATE_CHUNK)

        def connectionMade(self) -> None:
            self.greeted = False
            self.started = time.perf_counter()
            self.transport.write(self.login)

        def _greeted(self) -> None:
            self.greeted = True
            self.transport.registerProducer(self, True)
            self.transport.write(struct.pack("!Q", self.size))
            if self.size:
                self.resumeProducing()
            else:
                self.loop = task.LoopingCall(self._tick)
                self.loop.start(OUTAGE_RATE_PERIOD)

        def _tick(self) -> None:
            if not self.paused:
                start = self.sent % PATTERN_PERIOD
                self.transport.write(self.payload[start : start + OUTAGE_RATE_CHUNK])
                self.sent += OUTAGE_RATE_CHUNK

        def pauseProducing(self) -> None:
            self.paused = True

        def resumeProducing(self) -> None:
            self.paused = False
            if not self.size or not self.greeted:
                return
            while not self.paused and self.sent < self.size:
                n = min(WRITE, self.size - self.sent)
                self.transport.write(self.payload if n == WRITE else self.payload[:n])
                self.sent += n
            if self.sent >= self.size and self.transport is not None:
                self.transport.unregisterProducer()

        def stopProducing(self) -> None:
            self.paused = True

        def dataReceived(self, data: bytes) -> None:
            self.answer += data
            if not self.greeted and len(self.answer) >= len(GREETING):
                self._greeted()
            if self.answer[len(GREETING) :].startswith(b"ok") and not self.done.called:
                self.done.callback(time.perf_counter() - self.started)
                self.transport.loseConnection()

        def connectionLost(self, reason: Any = None) -> None:
            if self.loop is not None and self.loop.running:
                self.loop.stop()
            if not self.done.called:
                self.done.errback(reason)

    class Pinger(protocol.Protocol):
        """Sends PING_BYTES and waits for them to come back, ``count`` times: the round trips."""

        def __init__(self, count: int, worker: str = BENCH_WORKER) -> None:
            self.count = count
            self.login = logins[worker]
            self.rtts: list[float] = []
            self.answer = b""
            self.done: defer.Deferred = defer.Deferred()

        def connectionMade(self) -> None:
            self.greeting = len(GREETING)  # bytes of the sink's answer to the login still to come
            self.transport.write(self.login)

        def _ping(self) -> None:
            self.sent_at = time.perf_counter()
            self.transport.write(b"p" * PING_BYTES)

        def dataReceived(self, data: bytes) -> None:
            if self.greeting:
                cut = min(self.greeting, len(data))
                self.greeting -= cut
                data = data[cut:]
                if not self.greeting:
                    self.transport.write(struct.pack("!Q", ECHO))
                    self._ping()
                if not data:
                    return
            self.answer += data
            if len(self.answer) < PING_BYTES:
                return
            self.rtts.append(time.perf_counter() - self.sent_at)
            self.answer = self.answer[PING_BYTES:]
            if len(self.rtts) < self.count:
                self._ping()
            elif not self.done.called:
                self.done.callback(self.rtts)
                self.transport.loseConnection()

        def connectionLost(self, reason: Any = None) -> None:
            if not self.done.called:
                self.done.errback(reason)

    Source.Pinger = Pinger
    return Source


def role_stream_client(config: dict[str, Any]) -> None:
    """The worker side of part 2: runs the schedule of transfers, one JSON line each."""
    from foolscap.api import Tub
    from twisted.internet import defer, protocol, reactor, ssl
    from twisted.internet.endpoints import SSL4ClientEndpoint, TCP4ClientEndpoint

    Source = source_protocol()
    server_pid = config["server_pid"]

    def via_endpoint(endpoint: Any, size: int) -> defer.Deferred:
        source = Source(size)
        d = endpoint.connect(protocol.Factory.forProtocol(lambda: source))
        d.addCallback(lambda _: source.done)
        return d

    def via_endpoint_rtt(endpoint: Any, count: int) -> defer.Deferred:
        pinger = Source.Pinger(count)
        d = endpoint.connect(protocol.Factory.forProtocol(lambda: pinger))
        d.addCallback(lambda _: pinger.done)
        return d

    @defer.inlineCallbacks
    def foolscap_rtt(ref: Any, count: int) -> Any:
        rtts = []
        payload = b"p" * PING_BYTES
        for _ in range(count):
            started = time.perf_counter()
            yield ref.callRemote("echo", payload)
            rtts.append(time.perf_counter() - started)
        return rtts

    def foolscap_calls(ref: Any, size: int, chunk: int, method: str = "chunk") -> defer.Deferred:
        """Pipelined calls, at most WINDOW bytes unanswered. Each call sends a new bytes object,
        as the tunnel does (Foolscap hashes every byte string it sends for its vocabulary table;
        one object sent over and over would be hashed only once)."""
        done: defer.Deferred = defer.Deferred()
        template = memoryview(b"\xa5" * chunk)
        state = {"sent": 0, "acked": 0, "inflight": 0}
        started = time.perf_counter()

        def pump() -> None:
            while state["sent"] < size and state["inflight"] < WINDOW:
                n = min(chunk, size - state["sent"])
                state["sent"] += n
                state["inflight"] += n
                call = ref.callRemote(method, bytes(template[:n]))
                call.addCallbacks(answered, failed, callbackArgs=(n,))

        def answered(_: Any, n: int) -> None:
            state["inflight"] -= n
            state["acked"] += n
            if state["acked"] >= size:
                if not done.called:
                    done.callback(time.perf_counter() - started)
            else:
                pump()

        def failed(failure: Any) -> None:
            if not done.called:
                done.errback(failure)

        pump()
        return done

    @defer.inlineCallbacks
    def main() -> Any:
        tunnel = bench_tunnel_class()(config["furl"], reactor=reactor)
        tunnel.start()
        yield tunnel.when_ready()
        tcp_leg = bench_tunnel_class()(config["tcp_leg_furl"], reactor=reactor)
        tcp_leg.start()
        yield tcp_leg.when_ready()
        tub = Tub()
        tub.startService()
        ref = yield tub.getReference(config["foolscap"])
        tcp = TCP4ClientEndpoint(reactor, LOOP, config["tcp"])
        tls = SSL4ClientEndpoint(reactor, LOOP, config["tls"], ssl.CertificateOptions())

        def transfer(kind: str, size: int) -> defer.Deferred:
            if kind == "tcp":
                return via_endpoint(tcp, size)
            if kind == "tls":
                return via_endpoint(tls, size)
            if kind in ("tunnel", "tunnel-tcp"):
                source = Source(size, BENCH_WORKER if kind == "tunnel" else TCP_LEG_WORKER)
                (tunnel if kind == "tunnel" else tcp_leg).open_stream(source)
                return source.done
            if kind.startswith("foolscap-"):
                chunk = int(kind.split("-")[1])
                return foolscap_calls(ref, size, chunk, "forward" if kind.endswith("-fwd") else "chunk")
            if kind in ("rtt-tunnel", "rtt-tunnel-tcp"):
                pinger = Source.Pinger(size, BENCH_WORKER if kind == "rtt-tunnel" else TCP_LEG_WORKER)
                (tunnel if kind == "rtt-tunnel" else tcp_leg).open_stream(pinger)
                return pinger.done
            if kind == "rtt-tcp":
                return via_endpoint_rtt(tcp, size)
            if kind == "rtt-tls":
                return via_endpoint_rtt(tls, size)
            if kind == "rtt-foolscap":
                return foolscap_rtt(ref, size)
            raise ValueError(kind)

        for kind, size, timed in config["schedule"]:
            cpu_client, cpu_server = time.process_time(), process_cpu(server_pid)
            seconds = yield transfer(kind, size)
            rtts = None
            if isinstance(seconds, list):
                rtts, seconds = seconds, sum(seconds)
            emit(
                {
                    "event": "result",
                    "kind": kind,
                    "bytes": size,
                    "timed": timed,
                    "seconds": seconds,
                    "rtts": rtts,
                    "cpu_client": time.process_time() - cpu_client,
                    "cpu_server": process_cpu(server_pid) - cpu_server,
                }
            )
            yield task_sleep(0.2)  # let the previous transfer's tail (acks, closes) settle
        yield tunnel.shutdown()
        yield tcp_leg.shutdown()
        yield tub.stopService()

    def task_sleep(seconds: float) -> defer.Deferred:
        from twisted.internet import task

        return task.deferLater(reactor, seconds, lambda: None)

    def finished(result: Any) -> None:
        if hasattr(result, "getTraceback"):
            emit({"event": "error", "error": result.getTraceback()})
        emit({"event": "done"})
        reactor.stop()

    reactor.callWhenRunning(lambda: main().addBoth(finished))
    reactor.run()


def role_outage_client(config: dict[str, Any]) -> None:
    """The worker side of part 3: one endless paced stream through the tunnel."""
    from twisted.internet import reactor

    Source = source_protocol()
    tunnel = bench_tunnel_class()(config["furl"], reactor=reactor)

    def go() -> None:
        tunnel.start()
        d = tunnel.when_ready()
        d.addCallback(lambda _: tunnel.open_stream(Source(0)))
        d.addErrback(lambda f: emit({"event": "error", "error": f.getTraceback()}))

    def stop(*_: Any) -> None:
        reactor.callFromThread(reactor.stop)

    signal.signal(signal.SIGTERM, stop)
    reactor.callWhenRunning(go)
    reactor.run(installSignalHandlers=False)


ROLES = {"server": role_server, "stream-client": role_stream_client, "outage-client": role_outage_client}


# --- statistics and tables --------------------------------------------------------------


def med(values: Sequence[float]) -> float:
    return statistics.median(values)


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(":---" if i == 0 else "---:" for i in
                                                              range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class Part:
    title: str
    header: list[str]
    rows: list[list[str]]
    note: str
    checks: list[tuple[str, bool]] = field(default_factory=list)


def rotated(items: Sequence[T], round_: int) -> list[T]:
    shift = round_ % len(items)
    return [*items[shift:], *items[:shift]]


# --- part 1: builds ----------------------------------------------------------------------

MASTER_CFG = """\
from buildbot.plugins import schedulers, steps, util
from bbenroll.master import Enrollment

c = BuildmasterConfig = {{}}
Enrollment("workers.toml", basedir=basedir).configure(c)
big = util.BuildFactory([steps.ShellCommand(name="big", command={big!r})])
small = util.BuildFactory([steps.ShellCommand(name="small", command={small!r})])
c["builders"] = [
    util.BuilderConfig(name=f"{{worker}}-{{kind}}", workernames=[worker], factory=factory)
    for worker in ("direct", "tunnel")
    for kind, factory in (("big", big), ("small", small))
]
c["schedulers"] = [schedulers.ForceScheduler(name="force", builderNames=[b.name for b in c["builders"]])]
c["www"] = {{"port": "tcp:{www}:interface=127.0.0.1", "plugins": {{}}}}
c["buildbotURL"] = "http://127.0.0.1:{www}/"
c["db"] = {{"db_url": "sqlite:///state.sqlite"}}
c["title"] = "bbenroll tunnel benchmark"
c["buildbotNetUsageData"] = None
"""

BIG_OUTPUT = """\
import hashlib, sys
n = {lines}
out = sys.stdout.buffer
for start in range(0, n, 1000):
    out.write(b"".join(
        b"%08d %s build output line\\n" % (i, hashlib.md5(b"%d" % i).hexdigest().encode() * 2)
        for i in range(start, min(n, start + 1000))))
out.flush()
"""
LINE_BYTES = 92  # each line of BIG_OUTPUT


class BuildFarm:
    """A master with the hook; worker ``direct`` over plain PB, worker ``tunnel`` over the FURL."""

    def __init__(self, directory: Path, big_mb: float) -> None:
        self.dir = directory
        self.master = directory / "master"
        self.workers = {"direct": directory / "worker-direct", "tunnel": directory / "worker-tunnel"}
        self.www = free_port()
        self.lines = int(big_mb * MB / LINE_BYTES)
        self.started: list[Path] = []
        self.builderids: dict[str, int] = {}

    def start(self) -> None:
        run(BIN / "buildbot", "create-master", "--quiet", "--db", "sqlite:///state.sqlite", self.master)
        big = [PYTHON, "-c", BIG_OUTPUT.format(lines=self.lines)]
        small = [PYTHON, "-c", "print('hello')"]
        (self.master / "master.cfg").write_text(MASTER_CFG.format(www=self.www, big=big, small=small))
        pb = free_port()
        registry = new_registry(self.master, listen=free_port(), pb=pb)
        bbenroll(registry, "add", "direct")
        furl = bbenroll(registry, "add", "tunnel")
        password = tomllib.loads(registry.read_text())["workers"]["direct"]["password"]
        self.started.append(self.master)
        run(BIN / "buildbot", "start", self.master, timeout=180)
        run(BIN / "buildbot-worker", "create-worker", "--quiet", self.workers["direct"], f"{LOOP}:{pb}",
            "direct", password)
        run(BIN / "bbenroll", "worker", "create", self.workers["tunnel"], "-", input_text=furl)
        for basedir in self.workers.values():
            self.started.append(basedir)
            run(BIN / "buildbot-worker", "start", basedir, timeout=120)
        wait_for(self.both_connected, 60, "both workers to connect", interval=0.3)
        builders = self.rest("builders")["builders"]
        self.builderids = {b["name"]: b["builderid"] for b in builders}

    def stop(self) -> None:
        for basedir in reversed(self.started):
            tool = "buildbot" if basedir == self.master else "buildbot-worker"
            with contextlib.suppress(Exception):
                subprocess.run([str(BIN / tool), "stop", str(basedir)], capture_output=True, timeout=60)
            pidfile = basedir / "twistd.pid"
            if pidfile.exists():  # stop did not work: make sure nothing is left behind
                with contextlib.suppress(Exception):
                    os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
        self.started.clear()

    def rest(self, path: str, body: dict[str, Any] | None = None) -> Any:
        conn = http.client.HTTPConnection(LOOP, self.www, timeout=60)
        try:
            if body is None:
                conn.request("GET", "/api/v2/" + path)
            else:
                conn.request("POST", "/api/v2/" + path, body=json.dumps(body),
                             headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            if response.status != 200:
                raise BenchError(f"REST {path}: HTTP {response.status}: {data[:300]!r}")
            return json.loads(data)
        finally:
            conn.close()

    def both_connected(self) -> bool:
        try:
            workers = self.rest("workers")["workers"]
        except (OSError, BenchError):
            return False
        connected = {w["name"] for w in workers if w["connected_to"]}
        return {"direct", "tunnel"} <= connected

    def build(self, builder: str, poll: float) -> tuple[float, dict[str, Any]]:
        """Force one build and wait for it: (seconds from the force request to complete, build)."""
        params = {"builderid": self.builderids[builder]}
        body = {"jsonrpc": "2.0", "method": "force", "id": 1, "params": params}
        started = time.perf_counter()
        answer = self.rest("forceschedulers/force", body)
        if "error" in answer:
            raise BenchError(f"force {builder}: {answer['error']}")
        brid = answer["result"][0]
        deadline = time.monotonic() + 900
        while True:
            builds = self.rest(f"builds?buildrequestid={brid}")["builds"]
            if builds and builds[0]["complete"]:
                elapsed = time.perf_counter() - started
                build = builds[0]
                if build["results"] != 0:
                    raise BenchError(f"{builder} build {build['number']} failed: results={build['results']}")
                return elapsed, build
            if time.monotonic() > deadline:
                raise BenchError(f"{builder}: build request {brid} not complete after 900 s")
            time.sleep(poll)

    def log_lines(self, build: dict[str, Any]) -> int:
        steps = self.rest(f"builds/{build['buildid']}/steps")["steps"]
        logs = self.rest(f"steps/{steps[-1]['stepid']}/logs")["logs"]
        return next(entry["num_lines"] for entry in logs if entry["name"] == "stdio")


def settle(pid: int, timeout: float = 30.0) -> None:
    """Wait until process ``pid`` is idle (under 10% of a CPU for 0.5 s): a build's tail (log
    compression, database writes) must not be billed to the next measurement."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = process_cpu(pid)
        time.sleep(0.5)
        if process_cpu(pid) - before < 0.05:
            return


def part_builds(tmp: Path, big_mb: float, smalls: int, repeat: int) -> Part:
    farm = BuildFarm(tmp / "builds", big_mb)
    log(f"builds: starting a master and two workers in {farm.dir}")
    farm.dir.mkdir()
    workers = ("direct", "tunnel")
    kinds = ("big", "small")
    times: dict[tuple[str, str], list[float]] = {(w, k): [] for w in workers for k in kinds}
    cpu: dict[tuple[str, str, str], list[float]] = {(w, k, side): [] for w in workers for k in kinds
                                                     for side in ("master", "worker")}
    try:
        farm.start()
        pids = {name: int((path / "twistd.pid").read_text()) for name, path in
                (("master", farm.master), *farm.workers.items())}
        log("builds: warm-up (one small and one big build per worker, not timed)")
        lines = {}
        for worker in workers:
            farm.build(f"{worker}-small", 0.05)
            _, build = farm.build(f"{worker}-big", 0.1)
            lines[worker] = farm.log_lines(build)
        if lines["direct"] != lines["tunnel"] or lines["direct"] < farm.lines:
            raise BenchError(f"the big build's log differs: {lines} lines, expected >= {farm.lines}")
        for round_ in range(repeat):
            order = rotated(workers, round_)
            for kind in kinds:
                for worker in order:
                    settle(pids["master"])
                    before = {name: process_cpu(pid) for name, pid in pids.items()}
                    started = time.perf_counter()
                    for _ in range(1 if kind == "big" else smalls):
                        farm.build(f"{worker}-{kind}", 0.1 if kind == "big" else 0.05)
                    times[worker, kind].append(time.perf_counter() - started)
                    cpu[worker, kind, "master"].append(process_cpu(pids["master"]) - before["master"])
                    cpu[worker, kind, "worker"].append(process_cpu(pids[worker]) - before[worker])
            summary = ", ".join(f"{w} big {times[w, 'big'][-1]:.2f} s, {smalls} small "
                                f"{times[w, 'small'][-1]:.2f} s" for w in workers)
            log(f"builds: round {round_ + 1}/{repeat}: {summary}")
    finally:
        farm.stop()

    header = ["builds", "direct PB (s)", "bbenroll tunnel (s)", "tunnel/direct", "paired",
              "master CPU s: direct", "tunnel", "worker CPU s: direct", "tunnel"]
    rows = []
    checks = []
    labels = {"big": f"1 build printing {farm.lines * LINE_BYTES / MB:.0f} MB",
              "small": f"{smalls} small builds in sequence"}
    for kind in kinds:
        direct, tunnel = times["direct", kind], times["tunnel", kind]
        ratio = med(tunnel) / med(direct)
        paired = med([t / d for t, d in zip(tunnel, direct, strict=True)])
        rows.append([labels[kind], f"{med(direct):.2f} ({min(direct):.2f})",
                     f"{med(tunnel):.2f} ({min(tunnel):.2f})", f"{ratio:.3f}x", f"{paired:.3f}x",
                     *(f"{med(cpu[w, kind, side]):.2f}" for side in ("master", "worker") for w in workers)])
        checks.append((f"builds, {labels[kind]}: tunnel/direct {ratio:.3f}x "
                       f"(target <= {BUILD_RATIO_TARGET}x)", ratio <= BUILD_RATIO_TARGET))
    note = (f"Median (min) wall time over {repeat} interleaved rounds, from the force request to the "
            "build being complete (REST polled every 0.1 s for the big build, 0.05 s for small ones); "
            "tunnel/direct is the ratio of the medians (the target), paired the median of each "
            "round's ratio. CPU: seconds of the master and of the worker process, medians. Both "
            f"logs of the big build checked: {lines['direct']:,} lines each.")
    return Part("Part 1: builds, direct PB vs the bbenroll tunnel", header, rows, note, checks)


# --- parts 2 and 3: a server process with the master side and the baselines ---------------


class StreamFarm:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.helpers: list[Helper] = []

    def start(self) -> None:
        self.dir.mkdir()
        self.listen = free_port()
        self.sink = free_port()
        self.registry = new_registry(self.dir, listen=self.listen, pb=self.sink)
        self.furl = bbenroll(self.registry, "add", BENCH_WORKER)
        self.tcp_leg_furl = bbenroll(self.registry, "add", TCP_LEG_WORKER)
        self.server = self.helper(
            "server",
            "server",
            {"registry": str(self.registry), "sink_port": self.sink, "pem": str(self.dir / "master.pem"),
             "foolscap_port": free_port()},
        )
        self.ready = self.server.expect(lambda e: e.get("event") == "ready", 60, "the server to start")

    def helper(self, name: str, role: str, config: dict[str, Any]) -> Helper:
        helper = Helper(name, role, config, self.dir / f"{name}.log")
        self.helpers.append(helper)
        return helper

    def stop(self) -> None:
        for helper in reversed(self.helpers):
            helper.stop()
        self.helpers.clear()


STREAM_KINDS = ("tunnel", "tunnel-tcp", "tls", "tcp", *(f"foolscap-{c}" for c in FOOLSCAP_CHUNKS),
                f"foolscap-{FRAME}-fwd")
RTT_KINDS = ("rtt-tunnel", "rtt-tunnel-tcp", "rtt-tls", "rtt-tcp", "rtt-foolscap")


def kind_label(kind: str) -> str:
    kind = kind.removeprefix("rtt-")
    if kind == "foolscap":
        return "Foolscap callRemote"
    if kind.startswith("foolscap-"):
        size = int(kind.split("-")[1])
        label = "Foolscap callRemote " + (f"{size // MiB} MiB" if size >= MiB else f"{size // KiB} KiB")
        return label + (" + loopback TCP to the sink" if kind.endswith("-fwd") else "")
    return {"tunnel": "bbenroll tunnel stream (in-process PB leg)",
            "tunnel-tcp": "bbenroll tunnel stream, loopback TCP PB leg (the fallback)",
            "tls": "Twisted TLS", "tcp": "Twisted TCP (no crypto)"}[kind]


def part_stream(farm: StreamFarm, size_mb: float, pings: int, repeat: int) -> list[Part]:
    size = int(size_mb * MB)
    kinds = (*STREAM_KINDS, *RTT_KINDS)

    def amount(kind: str) -> int:
        return pings if kind.startswith("rtt-") else size

    schedule = [[kind, min(amount(kind), 20 * MB), False] for kind in kinds]  # warm-up
    for round_ in range(repeat):
        schedule += [[kind, amount(kind), True] for kind in rotated(kinds, round_)]
    log(f"stream: {len(schedule)} transfers of up to {size_mb:.0f} MB, {repeat} rounds")
    ready = farm.ready
    client = farm.helper(
        "stream-client",
        "stream-client",
        {"furl": farm.furl, "tcp_leg_furl": farm.tcp_leg_furl, "foolscap": ready["foolscap"],
         "tcp": ready["tcp"], "tls": ready["tls"], "server_pid": ready["pid"], "schedule": schedule},
    )
    results: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    for _ in schedule:
        event = client.expect(lambda e: e.get("event") == "result", 600, "a transfer")
        if not event["timed"]:
            continue
        results[event["kind"]].append(event)
        if event["rtts"]:
            log(f"stream: {event['kind']:>16} round trip {med(event['rtts']) * 1e6:7.0f} us (median)")
        else:
            log(f"stream: {event['kind']:>16} {event['bytes'] / MB / event['seconds']:7.1f} MB/s")
    client.expect(lambda e: e.get("event") == "done", 60, "the client to finish")

    def rates(kind: str) -> list[float]:
        return [r["bytes"] / r["seconds"] / MB for r in results[kind]]

    def cpu(kind: str, side: str) -> float:  # CPU seconds per 100 MB
        return med([r[f"cpu_{side}"] / r["bytes"] * 100 * MB for r in results[kind]])

    tunnel = med(rates("tunnel"))
    header = ["transport", "MB/s median (min)", "tunnel / this", "CPU s per 100 MB: sender", "receiver"]
    rows = []
    for kind in STREAM_KINDS:
        ratio = "" if kind == "tunnel" else f"{tunnel / med(rates(kind)):.2f}x"
        rows.append([kind_label(kind), f"{med(rates(kind)):.1f} ({min(rates(kind)):.1f})", ratio,
                     f"{cpu(kind, 'client'):.2f}", f"{cpu(kind, 'server'):.2f}"])
    tls_ratio = tunnel / med(rates("tls"))
    fs_ratio = tunnel / med(rates(f"foolscap-{FRAME}"))
    checks = [
        (f"stream: tunnel {tunnel:.1f} MB/s is {tls_ratio:.2f}x Twisted TLS (target >= {TLS_RATIO_TARGET}x)",
         tls_ratio >= TLS_RATIO_TARGET),
        (f"stream: tunnel is {fs_ratio:.2f}x Foolscap 256 KiB calls, the tunnel's frame size "
         f"(target >= {FOOLSCAP_RATIO_TARGET}x)", fs_ratio >= FOOLSCAP_RATIO_TARGET),
    ]
    note = (f"{size / MB:.0f} MB per transfer, sender and receiver in two processes; median (min) over "
            f"{repeat} interleaved rounds after one warm-up round. CPU is user+system time of each "
            "process during the transfer (the receiver process also runs the EnrollmentService "
            "and the sink). Foolscap calls are pipelined with at most 4 MiB in flight, like the "
            "tunnel's window; the fair Foolscap comparison is 256 KiB calls, the tunnel's frame size.")
    throughput = Part(f"Part 2: raw stream throughput, {size / MB:.0f} MB", header, rows, note, checks)

    def rtt_us(kind: str) -> list[float]:  # the median round trip of each round
        return [med(r["rtts"]) * 1e6 for r in results[kind]]

    def p90_us(kind: str) -> float:
        return med([statistics.quantiles(r["rtts"], n=10)[-1] * 1e6 for r in results[kind]])

    base = med(rtt_us("rtt-tcp"))
    rows = [[kind_label(kind), f"{med(rtt_us(kind)):.0f} ({min(rtt_us(kind)):.0f})", f"{p90_us(kind):.0f}",
             f"{med(rtt_us(kind)) / base:.1f}x"] for kind in RTT_KINDS]
    note = (f"{pings} round trips of {PING_BYTES} bytes, one at a time (echoed by the sink; a "
            "Foolscap call that returns its argument), per round; median (min) over rounds of each "
            "round's median, and the median of each round's 90th percentile. What every PB call of a "
            "build pays on top of the direct connection; the target is the tunnel (in-process PB "
            "leg) within 1.3x of a bare Foolscap call.")
    rtt_ratio = med(rtt_us("rtt-tunnel")) / med(rtt_us("rtt-foolscap"))
    rtt_checks = [(f"round trip: tunnel is {rtt_ratio:.2f}x a bare Foolscap call (target <= {RTT_TARGET}x)",
                   rtt_ratio <= RTT_TARGET)]
    latency = Part("Part 2b: round-trip latency of a small message", ["transport", "median us (min)",
                   "p90 us", "vs TCP"], rows, note, rtt_checks)
    return [throughput, latency]


def part_outage(farm: StreamFarm, outages: Sequence[float], repeat: int) -> Part:
    from tests.helpers.netproxy import FaultyProxy

    proxy = FaultyProxy(LOOP, farm.listen).start()
    data: dict[float, list[dict[str, float]]] = {outage: [] for outage in outages}
    schedule: dict[float, str] = {}
    try:
        client = farm.helper("outage-client", "outage-client", {"furl": furl_via(farm.furl, proxy.port)})
        farm.server.expect(lambda e: e.get("event") == "stream", 60, "the continuous stream to start")
        for round_ in range(repeat):
            for outage in rotated(outages, round_):
                data[outage].append(one_outage(farm.server, client, proxy, outage, schedule))
                row = data[outage][-1]
                log(f"outage: round {round_ + 1}/{repeat}, {outage:g} s: first new byte {row['byte']:.2f} s "
                    f"after unblock (reconnect attempt at +{row['attempt']:.2f} s, link up at "
                    f"+{row['link']:.2f} s)")
        client.stop()  # the master keeps its end of the stream (resumable) until the server stops
    finally:
        proxy.stop()
    events = farm.server.drain()
    streams = sum(1 for e in events if e.get("event") == "stream")
    broken = [e for e in events if e.get("event") in ("corrupt", "stream-lost")]
    if streams != 1 or broken:
        raise BenchError(f"outage: the stream did not survive intact: {streams} streams, {broken}")

    header = ["outage", "unblock -> reconnect attempt (s)", "-> link up (s)", "-> first new byte (s)",
              "max (s)"]
    rows = []
    checks = []
    for outage in outages:
        rounds = data[outage]

        def median_of(key: str, rounds: list[dict[str, float]] = rounds) -> float:
            return med([r[key] for r in rounds])

        worst = max(r["byte"] for r in rounds)
        rows.append([f"{outage:g} s", f"{median_of('attempt'):.2f}", f"{median_of('link'):.2f}",
                     f"{median_of('byte'):.2f}", f"{worst:.2f}"])
        typical = median_of("byte")
        checks.append((f"outage {outage:g} s: first new byte {typical:.2f} s after unblock (median, "
                       f"max {worst:.2f} s; target <= {RECOVERY_TARGET:g} s)", typical <= RECOVERY_TARGET))
    longest = max(outages)
    note = (f"A paced stream ({OUTAGE_RATE_CHUNK // KiB} KiB every {OUTAGE_RATE_PERIOD * 1000:.0f} ms, "
            "worker to master) through a FaultyProxy between the worker's tunnel and the master's "
            f"Foolscap port; after 3 s of flow, block() (existing connections reset, new ones reset "
            f"on arrival) for the outage, then unblock(). Medians over {repeat} rounds, times from "
            "unblock(). One stream throughout: the sink checked every byte for order, gaps and "
            f"repeats. The worker's reconnect attempts after the cut, in one {longest:g} s outage "
            f"(s): {schedule[longest]}.")
    return Part("Part 3: recovery after an outage", header, rows, note, checks)


def one_outage(server: Helper, client: Helper, proxy: Any, outage: float, schedule: dict[float, str]
               ) -> dict[str, float]:
    time.sleep(3)  # data flowing steadily
    client.drain()
    cut = time.monotonic()
    proxy.block()
    time.sleep(outage)
    unblocked = time.monotonic()
    proxy.unblock()

    def after(kind: str) -> Callable[[dict[str, Any]], bool]:
        return lambda e: e.get("event") == kind and e.get("t", 0) > unblocked

    resumed = server.expect(after("resumed"), 60, "data after the outage")
    link = client.expect(after("link-up"), 30, "the tunnel's link")
    attempts = [e["t"] for e in client.drain() if e.get("event") == "connect" and e["t"] > cut]
    if outage not in schedule:
        schedule[outage] = ", ".join(f"{t - cut:.1f}" for t in attempts)
    return {
        "attempt": min(t for t in attempts if t > unblocked) - unblocked,
        "link": link["t"] - unblocked,
        "byte": resumed["t"] - unblocked,
    }


# --- main ------------------------------------------------------------------------------------


def describe_machine() -> str:
    import foolscap

    import twisted

    cpus = os.cpu_count()
    return (f"Python {platform.python_version()}, Twisted {twisted.__version__}, "
            f"Foolscap {foolscap.__version__}, {platform.system()} {platform.release()}, "
            f"{cpus} CPU{'s' if cpus != 1 else ''}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--role"]:
        sys.path.insert(0, str(ROOT))
        try:
            ROLES[argv[1]](json.loads(argv[2]))
        except Exception as e:
            emit({"event": "error", "error": f"{type(e).__name__}: {e}"})
            raise
        return 0

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller and fewer: builds of 10 MB, 5 small "
                        "builds, 50 MB streams, 3 rounds")
    parser.add_argument("--parts", default="builds,stream,outage", help="which parts (default: %(default)s)")
    parser.add_argument("--repeat", type=int, help="rounds per part (default 5, --quick 3)")
    parser.add_argument("--build-mb", type=float, help="output of the big build (default 50, --quick 10)")
    parser.add_argument("--small-builds", type=int, help="small builds per round (default 20, --quick 5)")
    parser.add_argument("--stream-mb", type=float, help="bytes per stream transfer (default 200, --quick 50)")
    parser.add_argument("--outages", help="outage lengths in s, comma-separated (default 5,9; --quick 5)")
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="also write the results as markdown")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, basedirs)")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - {"builds", "stream", "outage"}
    if unknown or not parts:
        parser.error(f"--parts: choose from builds, stream, outage (got {args.parts!r})")
    repeat = args.repeat or (3 if args.quick else 5)
    build_mb = args.build_mb or (10 if args.quick else 50)
    smalls = args.small_builds or (5 if args.quick else 20)
    stream_mb = args.stream_mb or (50 if args.quick else 200)
    try:
        outages = [float(o) for o in (args.outages or ("5" if args.quick else "5,9")).split(",") if o.strip()]
    except ValueError:
        parser.error(f"--outages: not a list of numbers: {args.outages!r}")
    if repeat < 1 or smalls < 1 or build_mb <= 0 or stream_mb <= 0 or not outages or min(outages) <= 0:
        parser.error("sizes, counts and --outage must be positive")

    sys.path.insert(0, str(ROOT))  # tests.netproxy
    started = datetime.now(UTC)
    log(f"bbenroll tunnel benchmark: {describe_machine()}; {repeat} rounds per part")
    tmp = Path(tempfile.mkdtemp(prefix="bbenroll-bench-tunnel-"))
    results: list[Part] = []
    try:
        if "builds" in parts:
            results.append(part_builds(tmp, build_mb, smalls, repeat))
        if "stream" in parts or "outage" in parts:
            farm = StreamFarm(tmp / "stream")
            try:
                farm.start()
                if "stream" in parts:
                    results += part_stream(farm, stream_mb, 100 if args.quick else 300, repeat)
                if "outage" in parts:
                    results.append(part_outage(farm, outages, repeat))
            finally:
                farm.stop()
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    checks = [c for part in results for c in part.checks]
    for part in results:
        print()
        print(part.title)
        print(text_table(part.header, part.rows))
        print(textwrap.fill(part.note, 100))
    print()
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")

    if args.markdown:
        md = [f"Run {started:%Y-%m-%d %H:%M} UTC on {describe_machine()}; {repeat} rounds"
              f"{' (--quick)' if args.quick else ''}.", ""]
        for part in results:
            md += [f"**{part.title}**", "", markdown_table(part.header, part.rows), "", part.note, ""]
        md += [f"- **{'PASS' if ok else 'FAIL'}** {text}" for text, ok in checks]
        args.markdown.write_text("\n".join(md) + "\n", encoding="utf-8")
        log(f"wrote {args.markdown}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
