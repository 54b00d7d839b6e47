"""The fault-injecting test proxy (tests/helpers/netproxy.py) against real sockets on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.helpers.netproxy import CHUNK, FaultyProxy

pytestmark = pytest.mark.network

TIMEOUT = 5.0


class EchoServer:
    """Echoes every connection on 127.0.0.1 back to the sender, forwarding half-close."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, name="echo-accept", daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._echo, args=(conn,), name="echo-conn", daemon=True)
            self.threads.append(thread)
            thread.start()

    def _echo(self, conn: socket.socket) -> None:
        conn.settimeout(TIMEOUT)
        buf = bytearray(1 << 16)
        with conn:
            try:
                while n := conn.recv_into(buf):
                    conn.sendall(buf[:n])
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # reset by a cut, or a test that gave up

    def stop(self) -> None:
        self.stopping.set()
        self.acceptor.join(TIMEOUT)
        self.listener.close()
        for thread in self.threads:
            thread.join(TIMEOUT)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.stop()


@pytest.fixture
def target() -> Iterator[socket.socket]:
    """A listener the test accepts from itself, to hold both ends of a proxied connection."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        yield listener


@pytest.fixture
def proxy_to(request: pytest.FixtureRequest) -> Iterator[Callable[..., FaultyProxy]]:
    proxies: list[FaultyProxy] = []

    def make(port: int, **kwargs: object) -> FaultyProxy:
        proxy = FaultyProxy("127.0.0.1", port, **kwargs).start()  # type: ignore[arg-type]
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.stop()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)


def pair(proxy: FaultyProxy, target: socket.socket) -> tuple[socket.socket, socket.socket]:
    """A client connected through ``proxy`` and the server end accepted from ``target``."""
    client = connect(proxy.port)
    server, _ = target.accept()
    server.settimeout(TIMEOUT)
    return client, server


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def recv_all(sock: socket.socket) -> bytes:
    buf = bytearray()
    while chunk := sock.recv(1 << 20):
        buf += chunk
    return bytes(buf)


def assert_silent(sock: socket.socket, seconds: float = 0.3) -> None:
    readable, _, _ = select.select([sock], [], [], seconds)
    assert not readable, f"expected nothing, got {sock.recv(100)!r}"


def assert_reset(sock: socket.socket) -> None:
    with pytest.raises(ConnectionResetError):
        # A reset may surface on recv or, if the peer was reset mid-send, on the next send.
        sock.recv(1)
        sock.sendall(b"x")


def assert_refused(port: int) -> None:
    """The handshake completes in the kernel's backlog, then the proxy resets the connection.

    Depending on timing the reset surfaces in connect() itself or on the first recv().
    """
    try:
        sock = connect(port)
    except ConnectionResetError:
        return
    with sock:
        assert_reset(sock)


def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def send_in_thread(sock: socket.socket, data: bytes) -> threading.Thread:
    thread = threading.Thread(target=sock.sendall, args=(data,), daemon=True)
    thread.start()
    return thread


def test_one_megabyte_round_trip_is_intact(echo: EchoServer, proxy_to: Callable[..., FaultyProxy]) -> None:
    proxy = proxy_to(echo.port)
    data = os.urandom(1_000_000)
    with connect(proxy.port) as client:
        sender = threading.Thread(
            target=lambda: (client.sendall(data), client.shutdown(socket.SHUT_WR)), daemon=True)
        sender.start()
        echoed = recv_all(client)  # EOF comes back only after the half-close went through
        sender.join(TIMEOUT)
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(data).digest()
    assert proxy.bytes_forwarded("c2s") == proxy.bytes_forwarded("s2c") == len(data)
    assert proxy.connections_accepted == 1
    wait_until(lambda: proxy.connections_active == 0)


def test_half_close_is_forwarded_each_way(target: socket.socket,
                                          proxy_to: Callable[..., FaultyProxy]) -> None:
    proxy = proxy_to(target.getsockname()[1])
    client, server = pair(proxy, target)
    with client, server:
        client.sendall(b"request")
        client.shutdown(socket.SHUT_WR)
        assert recv_all(server) == b"request"  # EOF reached the server
        server.sendall(b"response after the client's FIN")
        server.shutdown(socket.SHUT_WR)
        assert recv_all(client) == b"response after the client's FIN"
    wait_until(lambda: proxy.connections_active == 0)


def test_stall_holds_both_directions_until_unstall(target: socket.socket,
                                                   proxy_to: Callable[..., FaultyProxy]) -> None:
    proxy = proxy_to(target.getsockname()[1])
    client, server = pair(proxy, target)
    with client, server:
        client.sendall(b"ping")
        assert recv_exactly(server, 4) == b"ping"
        proxy.stall()
        client.sendall(b"up")
        server.sendall(b"down")
        client.shutdown(socket.SHUT_WR)  # a FIN is held too
        assert_silent(server)
        assert_silent(client)
        assert proxy.connections_active == 1
        proxy.unstall()
        assert recv_all(server) == b"up"
        assert recv_exactly(client, 4) == b"down"


def test_stall_buffers_a_bounded_amount_and_delivers_it_all(
        target: socket.socket, proxy_to: Callable[..., FaultyProxy]) -> None:
    limit = 64 * 1024
    proxy = proxy_to(target.getsockname()[1], buffer_limit=limit)
    client, server = pair(proxy, target)
    data = os.urandom(8_000_000)
    with client, server:
        proxy.stall()
        sender = send_in_thread(client, data)
        wait_until(lambda: proxy.buffered_bytes() >= limit)
        time.sleep(0.2)
        assert limit <= proxy.buffered_bytes() < limit + CHUNK  # stopped reading: backpressure
        assert_silent(server, 0.05)
        proxy.unstall()
        received = recv_exactly(server, len(data))
        sender.join(TIMEOUT)
    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()


def test_connection_made_during_a_stall_reaches_the_server_on_unstall(
        target: socket.socket, proxy_to: Callable[..., FaultyProxy]) -> None:
    proxy = proxy_to(target.getsockname()[1])
    proxy.stall()
    with connect(proxy.port) as client:
        client.sendall(b"hello")
        proxy.wait_for_connections(1, timeout=TIMEOUT)
        assert_silent(target)  # nothing reached the server: no accept pending
        proxy.unstall()
        server, _ = target.accept()
        with server:
            server.settimeout(TIMEOUT)
            assert recv_exactly(server, 5) == b"hello"


def test_cut_resets_both_sides_and_new_connections_work(
        target: socket.socket, echo: EchoServer, proxy_to: Callable[..., FaultyProxy]) -> None:
    proxy = proxy_to(target.getsockname()[1])
    client, server = pair(proxy, target)
    with client, server:
        client.sendall(b"before")
        assert recv_exactly(server, 6) == b"before"
        proxy.cut()
        assert_reset(client)
        assert_reset(server)
    assert proxy.connections_active == 0

    # Against the echo server: a cut mid-stream, then a fresh connection carries on.
    proxy = proxy_to(echo.port)
    with connect(proxy.port) as first:
        first.sendall(b"one")
        assert recv_exactly(first, 3) == b"one"
        proxy.cut()
        assert_reset(first)
    with connect(proxy.port) as second:
        second.sendall(b"two")
        assert recv_exactly(second, 3) == b"two"
    assert proxy.connections_accepted == 2


def test_cut_while_stalled_discards_what_was_held(target: socket.socket,
                                                  proxy_to: Callable[..., FaultyProxy]) -> None:
    proxy = proxy_to(target.getsockname()[1])
    client, server = pair(proxy, target)
    with client, server:
        proxy.stall()
        client.sendall(b"lost")
        wait_until(lambda: proxy.buffered_bytes() == 4)
        proxy.cut()
        assert proxy.stalled  # a cut does not end the stall
        assert_reset(server)
        assert_reset(client)
    proxy.unstall()
    client, server = pair(proxy, target)
    with client, server:
        client.sendall(b"fresh")
        assert recv_exactly(server, 5) == b"fresh"


def test_block_refuses_new_connections_until_unblock(
        echo: EchoServer, proxy_to: Callable[..., FaultyProxy]) -> None:
    proxy = proxy_to(echo.port)
    with connect(proxy.port) as existing:
        existing.sendall(b"up")
        assert recv_exactly(existing, 2) == b"up"
        proxy.block()
        assert_reset(existing)  # the network went down under it
    for _ in range(3):
        assert_refused(proxy.port)
    wait_until(lambda: proxy.connections_refused == 3)
    assert proxy.connections_accepted == 1
    proxy.unblock()
    with connect(proxy.port) as client:
        client.sendall(b"back")
        assert recv_exactly(client, 4) == b"back"
    assert proxy.connections_accepted == 2


def test_record_captures_the_bytes_both_ways(target: socket.socket,
                                             proxy_to: Callable[..., FaultyProxy]) -> None:
    proxy = proxy_to(target.getsockname()[1], record=True)
    client, server = pair(proxy, target)
    with client, server:
        client.sendall(b"secret-token-")
        assert recv_exactly(server, 13) == b"secret-token-"
        server.sendall(b"reply-")
        assert recv_exactly(client, 6) == b"reply-"
        client.sendall(b"more")
        assert recv_exactly(server, 4) == b"more"
    assert proxy.recorded() == b"secret-token-reply-more"
    assert proxy.recorded("c2s") == b"secret-token-more"
    assert proxy.recorded("s2c") == b"reply-"
    assert not proxy.record_truncated


def test_record_limit_bounds_the_recording(target: socket.socket,
                                           proxy_to: Callable[..., FaultyProxy]) -> None:
    proxy = proxy_to(target.getsockname()[1], record=True, record_limit=10)
    unrecorded = proxy_to(target.getsockname()[1])
    for p in (proxy, unrecorded):
        client, server = pair(p, target)
        with client, server:
            client.sendall(b"0123456789abcdef")
            assert recv_exactly(server, 16) == b"0123456789abcdef"
    assert proxy.recorded() == b"0123456789"
    assert proxy.record_truncated
    assert unrecorded.recorded() == b""


def test_unreachable_target_resets_the_client(proxy_to: Callable[..., FaultyProxy]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]  # closed again: nothing listens there
    proxy = proxy_to(port)
    assert_refused(proxy.port)
    assert proxy.connections_failed == 1


def test_wait_for_connections(echo: EchoServer, proxy_to: Callable[..., FaultyProxy]) -> None:
    proxy = proxy_to(echo.port)
    with pytest.raises(TimeoutError):
        proxy.wait_for_connections(1, timeout=0.05)
    connected = threading.Event()

    def connect_later() -> None:
        time.sleep(0.1)
        with connect(proxy.port):
            connected.wait(TIMEOUT)  # keep it open until the waiter saw it

    late = threading.Thread(target=connect_later, daemon=True)
    late.start()
    proxy.wait_for_connections(1, timeout=TIMEOUT)
    connected.set()
    late.join(TIMEOUT)
    assert proxy.connections_accepted == 1


def test_faults_set_before_start_apply_from_the_start(target: socket.socket) -> None:
    proxy = FaultyProxy("127.0.0.1", target.getsockname()[1])
    proxy.stall()
    with proxy:
        with connect(proxy.port) as client:
            client.sendall(b"x")
            proxy.wait_for_connections(1, timeout=TIMEOUT)
            assert_silent(target)
        with pytest.raises(RuntimeError):
            proxy.start()


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
@pytest.mark.process_wide  # every thread and fd of the process: before any background scenario
def test_stop_leaves_no_thread_or_socket(echo: EchoServer, target: socket.socket) -> None:
    threads_before = set(threading.enumerate())
    fds_before = _open_fds()
    proxy = FaultyProxy("127.0.0.1", target.getsockname()[1], record=True)
    with proxy:
        client, server = pair(proxy, target)
        proxy.stall()
        client.sendall(b"held")
        with connect(proxy.port):
            proxy.wait_for_connections(2, timeout=TIMEOUT)
        assert any(t.name.startswith("FaultyProxy") for t in threading.enumerate())
    client.close()
    server.close()
    assert not any(t.name.startswith("FaultyProxy") for t in threading.enumerate())
    assert set(threading.enumerate()) <= threads_before
    assert _open_fds() <= fds_before
    proxy.stop()  # idempotent
