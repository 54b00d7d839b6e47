"""A fault-injecting TCP proxy on 127.0.0.1 for end-to-end tests of the resumable tunnel.

The proxy runs a ``selectors`` event loop in its own daemon thread, so blocking test code
(subprocesses, ``time.sleep``, plain sockets) can drive it synchronously::

    with FaultyProxy("127.0.0.1", server_port) as proxy:
        start_client(port=proxy.port)
        proxy.wait_for_connections(1, timeout=10)
        proxy.stall()      # the network hangs: nothing moves, nothing is closed
        proxy.unstall()    # everything held is delivered, in order
        proxy.cut()        # every connection is reset (RST) on both sides
        proxy.block()      # the network is down: new connections are reset at once
        proxy.unblock()

Control methods are executed by the loop thread and return once they have taken effect
(e.g. after ``cut()`` returns, every RST has been sent).  Called before ``start()`` they
just set the initial state (a proxy can start stalled or blocked).

Forwarding is full-duplex with ``recv_into`` into one large scratch buffer and a direct
``send`` when nothing is queued; only what the destination does not take at once is copied
into a per-direction queue.  A direction stops reading once ``buffer_limit`` bytes are
queued for it (backpressure; during a stall this is what a hung network looks like).
Half-close is forwarded: EOF from one side becomes ``shutdown(SHUT_WR)`` towards the other,
after everything queued has been sent; a connection is closed once both directions are done.
Errors (reset, broken pipe) on either side reset the whole connection.

Run ``python -m tests.netproxy [MB]`` for a loopback throughput comparison.
"""

from __future__ import annotations

import collections
import errno
import selectors
import socket
import struct
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal

__all__ = ["FaultyProxy"]

LOOPBACK = "127.0.0.1"
DEFAULT_BUFFER_LIMIT = 4 * 1024 * 1024
CHUNK = 256 * 1024
_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
_IN_PROGRESS = {errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, errno.EALREADY}
_LINGER_RST = struct.pack("ii", 1, 0)
_COMMAND_TIMEOUT = 10.0

Direction = Literal["c2s", "s2c"]


def _rst_close(sock: socket.socket) -> None:
    """Close abruptly: SO_LINGER 0 makes the kernel send RST instead of FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    except OSError:
        pass
    sock.close()


def _tune(sock: socket.socket) -> None:
    sock.setblocking(False)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


class _Pipe:
    """One direction of a connection: bytes read from ``src`` and queued for ``dst``."""

    __slots__ = ("buf", "conn", "direction", "dst", "eof", "shut", "src")

    def __init__(self, conn: _Conn, direction: Direction, src: socket.socket | None,
                 dst: socket.socket | None) -> None:
        self.conn = conn
        self.direction = direction
        self.src = src
        self.dst = dst
        self.buf = bytearray()
        self.eof = False  # src sent FIN
        self.shut = False  # FIN forwarded to dst


_PENDING, _CONNECTING, _OPEN = "pending", "connecting", "open"


class _Conn:
    __slots__ = ("c2s", "client", "closed", "reg", "s2c", "server", "state")

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.server: socket.socket | None = None
        self.state = _PENDING
        self.closed = False
        self.c2s = _Pipe(self, "c2s", client, None)
        self.s2c = _Pipe(self, "s2c", None, client)
        self.reg: dict[socket.socket, int] = {}  # events currently registered per socket


class FaultyProxy:
    """A TCP proxy on 127.0.0.1 whose network can be stalled, cut and blocked from tests."""

    def __init__(self, target_host: str, target_port: int, listen_port: int = 0, record: bool = False,
                 record_limit: int | None = None, buffer_limit: int = DEFAULT_BUFFER_LIMIT) -> None:
        self.target = (target_host, target_port)
        self.port = listen_port
        self.record = record
        self.record_limit = record_limit
        self.record_truncated = False
        self.buffer_limit = buffer_limit

        self._cond = threading.Condition()  # connection counters and their waiters
        self._accepted = 0
        self._refused = 0
        self._failed = 0
        self._active = 0
        self._forwarded = {"c2s": 0, "s2c": 0}
        self._chunks: list[tuple[Direction, bytes]] = []
        self._recorded_size = 0

        self._ctl = threading.Lock()  # serialises command submission against loop shutdown
        self._commands: collections.deque[tuple[Callable[[], Any], threading.Event, list[Any]]] = (
            collections.deque())
        self._running = False
        self._started = False
        self._stopping = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

        # Loop-thread state.
        self._stalled = False
        self._blocked = False
        self._conns: set[_Conn] = set()
        self._sel: selectors.BaseSelector | None = None
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._family = socket.AF_INET
        self._addr: Any = None
        self._scratch = bytearray(CHUNK)
        self._view = memoryview(self._scratch)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FaultyProxy:
        if self._started:
            raise RuntimeError("FaultyProxy can only be started once")
        self._started = True
        family, _, _, _, addr = socket.getaddrinfo(*self.target, type=socket.SOCK_STREAM)[0]
        self._family, self._addr = family, addr
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((LOOPBACK, self.port))
            listener.listen(128)
            listener.setblocking(False)
            self._wake_r, self._wake_w = socket.socketpair()
        except BaseException:
            listener.close()
            raise
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._sel = selectors.DefaultSelector()
        self._sel.register(listener, _READ, None)
        self._sel.register(self._wake_r, _READ, self._wake_r)
        self._running = True
        self._thread = threading.Thread(target=self._run, name=f"FaultyProxy-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Reset every connection, close every socket and join the loop thread. Idempotent."""
        thread = self._thread
        if thread is None:
            return
        self._call(self._do_stop)
        thread.join(_COMMAND_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError("FaultyProxy thread did not stop")
        self._thread = None
        if self._error is not None:
            raise RuntimeError("FaultyProxy loop failed") from self._error

    def __enter__(self) -> FaultyProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (f"<FaultyProxy 127.0.0.1:{self.port} -> {self.target[0]}:{self.target[1]}"
                f" stalled={self._stalled} blocked={self._blocked} accepted={self._accepted}>")

    # ------------------------------------------------------------------ faults

    def stall(self) -> None:
        """Stop forwarding both ways; keep connections open; buffer up to ``buffer_limit`` each way.

        Connections accepted while stalled are counted but only connected upstream on unstall().
        """
        self._call(self._do_stall)

    def unstall(self) -> None:
        """Forward everything held (and any FIN), then carry on."""
        self._call(self._do_unstall)

    def cut(self) -> None:
        """Reset (RST) every current connection on both sides, discarding anything held."""
        self._call(self._do_cut)

    def block(self) -> None:
        """The network is down: cut current connections and reset new ones as soon as accepted."""
        self._call(self._do_block)

    def unblock(self) -> None:
        self._call(self._do_unblock)

    @property
    def stalled(self) -> bool:
        return self._stalled

    @property
    def blocked(self) -> bool:
        return self._blocked

    # ------------------------------------------------------------------ observation

    @property
    def connections_accepted(self) -> int:
        """Connections accepted and proxied (not counting those reset while blocked)."""
        with self._cond:
            return self._accepted

    @property
    def connections_refused(self) -> int:
        """Connections reset on arrival because the proxy was blocked."""
        with self._cond:
            return self._refused

    @property
    def connections_failed(self) -> int:
        """Accepted connections whose upstream connect failed (the client was reset)."""
        with self._cond:
            return self._failed

    @property
    def connections_active(self) -> int:
        with self._cond:
            return self._active

    def bytes_forwarded(self, direction: Direction | None = None) -> int:
        """Bytes delivered so far, in one direction or in both."""
        return self._call(lambda: self._forwarded["c2s"] + self._forwarded["s2c"] if direction is None
                          else self._forwarded[direction])

    def buffered_bytes(self) -> int:
        """Bytes currently held by the proxy (read but not yet delivered), all connections."""
        return self._call(lambda: sum(len(c.c2s.buf) + len(c.s2c.buf) for c in self._conns))

    def recorded(self, direction: Direction | None = None) -> bytes:
        """With ``record=True``: the bytes forwarded, chunk by chunk in delivery order.

        ``direction`` ("c2s" or "s2c") gives one direction only, which keeps each direction's
        stream contiguous (a secret split across two chunks is still found by a substring search).
        Anything a peer has received is in the recording by the time this returns.
        """
        # Through the loop thread: a chunk is recorded just after it is sent, in the same step.
        return self._call(lambda: b"".join(data for d, data in self._chunks
                                           if direction is None or d == direction))

    def wait_for_connections(self, n: int, timeout: float) -> None:
        """Block until at least ``n`` connections were accepted in total, else TimeoutError."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._accepted >= n, timeout):
                raise TimeoutError(f"{self._accepted} connection(s) accepted after {timeout}s, wanted {n}")

    # ------------------------------------------------------------------ command plumbing

    def _call(self, fn: Callable[[], Any]) -> Any:
        if threading.current_thread() is self._thread:
            return fn()
        with self._ctl:
            if not self._running:
                return fn()
            done = threading.Event()
            box: list[Any] = []
            self._commands.append((fn, done, box))
            try:
                self._wake_w.send(b"\0")  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError):
                pass  # the loop is already due to wake up
        if not done.wait(_COMMAND_TIMEOUT):
            raise RuntimeError(f"FaultyProxy did not execute {fn!r}") from self._error
        if box and isinstance(box[0], BaseException):
            raise box[0]
        return box[1] if len(box) > 1 else None

    def _run_commands(self) -> None:
        while self._commands:
            fn, done, box = self._commands.popleft()
            try:
                box[:] = [None, fn()]
            except BaseException as e:
                box[:] = [e]
            done.set()

    # ------------------------------------------------------------------ loop

    def _run(self) -> None:
        sel = self._sel
        assert sel is not None
        try:
            while not self._stopping:
                for key, mask in sel.select():
                    data = key.data
                    if data is None:
                        self._accept()
                    elif isinstance(data, _Conn):
                        if not data.closed:
                            self._on_event(data, key.fileobj, mask)  # type: ignore[arg-type]
                    else:
                        try:
                            while self._wake_r.recv(4096):  # type: ignore[union-attr]
                                pass
                        except (BlockingIOError, InterruptedError):
                            pass
                        self._run_commands()
                    if self._stopping:
                        break
        except BaseException as e:
            self._error = e
        finally:
            self._cleanup()
            with self._ctl:
                self._running = False
                self._run_commands()  # late arrivals run against the closed proxy

    def _cleanup(self) -> None:
        for conn in list(self._conns):
            self._abort(conn)
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        if self._sel is not None:
            self._sel.close()

    def _accept(self) -> None:
        assert self._listener is not None
        for _ in range(64):
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. ECONNABORTED, EMFILE: try again on the next event
                return
            if self._blocked:
                _rst_close(client)
                with self._cond:
                    self._refused += 1
                continue
            _tune(client)
            conn = _Conn(client)
            self._conns.add(conn)
            with self._cond:
                self._accepted += 1
                self._active += 1
                self._cond.notify_all()
            if not self._stalled:
                self._connect(conn)
            if not conn.closed:
                self._update(conn)

    def _connect(self, conn: _Conn) -> None:
        server = socket.socket(self._family, socket.SOCK_STREAM)
        _tune(server)
        conn.server = server
        conn.c2s.dst = server
        conn.s2c.src = server
        err = server.connect_ex(self._addr)
        if err == 0:
            self._opened(conn)
        elif err in _IN_PROGRESS:
            conn.state = _CONNECTING
        else:
            self._connect_failed(conn)

    def _opened(self, conn: _Conn) -> None:
        conn.state = _OPEN
        self._flush(conn.c2s)  # anything the client sent while pending

    def _connect_failed(self, conn: _Conn) -> None:
        with self._cond:
            self._failed += 1
        self._abort(conn)

    def _on_event(self, conn: _Conn, sock: socket.socket, mask: int) -> None:
        if sock is conn.server and conn.state == _CONNECTING:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                self._connect_failed(conn)
                return
            self._opened(conn)
        else:
            out, inn = (conn.c2s, conn.s2c) if sock is conn.client else (conn.s2c, conn.c2s)
            if mask & _READ:
                self._read(conn, out)
            if mask & _WRITE and not conn.closed:
                self._flush(inn)
        if not conn.closed:
            self._update(conn)

    def _read(self, conn: _Conn, pipe: _Pipe) -> None:
        src = pipe.src
        assert src is not None
        try:
            n = src.recv_into(self._scratch)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._abort(conn)
            return
        if n == 0:
            pipe.eof = True
            self._flush(pipe)
            return
        view = self._view[:n]
        if pipe.buf or self._stalled or conn.state != _OPEN:
            pipe.buf += view
            return
        try:
            sent = pipe.dst.send(view)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._abort(conn)
            return
        if sent:
            self._delivered(pipe.direction, view[:sent])
        if sent < n:
            pipe.buf += view[sent:]

    def _flush(self, pipe: _Pipe) -> None:
        """Send what is queued for ``pipe.dst``; forward EOF once drained; close when all is done."""
        if self._stalled or pipe.dst is None:
            return
        conn = pipe.conn
        if conn.state != _OPEN or conn.closed:
            return
        buf = pipe.buf
        while buf:
            try:
                sent = pipe.dst.send(buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._abort(conn)
                return
            if self.record:
                with memoryview(buf) as mv:  # released before the buffer is resized below
                    self._delivered(pipe.direction, mv[:sent])
            else:
                self._delivered(pipe.direction, None, sent)
            del buf[:sent]
        if pipe.eof and not pipe.shut:
            try:
                pipe.dst.shutdown(socket.SHUT_WR)
            except OSError:
                self._abort(conn)
                return
            pipe.shut = True
            if conn.c2s.shut and conn.s2c.shut:
                self._close(conn)

    def _delivered(self, direction: Direction, data: memoryview | None, size: int = 0) -> None:
        # Loop thread only; readers go through _call(), so no lock on this hot path.
        if data is not None:
            size = len(data)
        self._forwarded[direction] += size
        if not self.record or data is None or self.record_truncated:
            return
        if self.record_limit is not None and self._recorded_size + size > self.record_limit:
            data = data[: self.record_limit - self._recorded_size]
            self.record_truncated = True
        if len(data):
            self._chunks.append((direction, bytes(data)))
            self._recorded_size += len(data)

    def _wanted(self, conn: _Conn, sock: socket.socket) -> int:
        if sock is conn.server and conn.state == _CONNECTING:
            return _WRITE
        out, inn = (conn.c2s, conn.s2c) if sock is conn.client else (conn.s2c, conn.c2s)
        events = 0
        if out.src is sock and not out.eof and len(out.buf) < self.buffer_limit:
            events |= _READ
        if inn.buf and not self._stalled and conn.state == _OPEN:
            events |= _WRITE
        return events

    def _update(self, conn: _Conn) -> None:
        sel = self._sel
        assert sel is not None
        for sock in (conn.client, conn.server):
            if sock is None:
                continue
            want = self._wanted(conn, sock)
            have = conn.reg.get(sock, 0)
            if want == have:
                continue
            if not have:
                sel.register(sock, want, conn)
            elif not want:
                sel.unregister(sock)
            else:
                sel.modify(sock, want, conn)
            conn.reg[sock] = want

    def _forget(self, conn: _Conn) -> None:
        conn.closed = True
        self._conns.discard(conn)
        if self._sel is not None:
            for sock, events in conn.reg.items():
                if events:
                    self._sel.unregister(sock)
        conn.reg.clear()
        with self._cond:
            self._active -= 1

    def _abort(self, conn: _Conn) -> None:
        if conn.closed:
            return
        self._forget(conn)
        for sock in (conn.client, conn.server):
            if sock is not None:
                _rst_close(sock)

    def _close(self, conn: _Conn) -> None:
        if conn.closed:
            return
        self._forget(conn)
        for sock in (conn.client, conn.server):
            if sock is not None:
                sock.close()

    # ------------------------------------------------------------------ commands (loop thread)

    def _do_stop(self) -> None:
        self._stopping = True

    def _do_stall(self) -> None:
        self._stalled = True
        for conn in list(self._conns):
            self._update(conn)

    def _do_unstall(self) -> None:
        self._stalled = False
        for conn in list(self._conns):
            if conn.state == _PENDING:
                self._connect(conn)
            else:
                self._flush(conn.c2s)
                if not conn.closed:
                    self._flush(conn.s2c)
            if not conn.closed:
                self._update(conn)

    def _do_cut(self) -> None:
        for conn in list(self._conns):
            self._abort(conn)

    def _do_block(self) -> None:
        self._blocked = True
        self._do_cut()

    def _do_unblock(self) -> None:
        self._blocked = False


# ---------------------------------------------------------------------- benchmark


def _sink_server() -> tuple[socket.socket, threading.Thread, list[int]]:
    """A server that reads everything, counting bytes; returns (listener, thread, [count])."""
    listener = socket.create_server((LOOPBACK, 0))
    total = [0]

    def serve() -> None:
        conn, _ = listener.accept()
        buf = bytearray(1 << 20)
        with conn:
            while n := conn.recv_into(buf):
                total[0] += n
            conn.sendall(b"ok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread, total


def _transfer(port: int, size: int) -> float:
    import time

    chunk = b"\xa5" * (1 << 20)
    with socket.create_connection((LOOPBACK, port)) as s:
        t0 = time.perf_counter()
        left = size
        while left > 0:
            s.sendall(chunk[: min(left, len(chunk))])
            left -= len(chunk)
        s.shutdown(socket.SHUT_WR)
        assert s.recv(2) == b"ok"
        return time.perf_counter() - t0


def _benchmark(megabytes: int = 100) -> None:
    size = megabytes * 1_000_000
    for label in ("direct", "proxied"):
        listener, thread, total = _sink_server()
        port = listener.getsockname()[1]
        if label == "direct":
            elapsed = _transfer(port, size)
        else:
            with FaultyProxy(LOOPBACK, port) as proxy:
                elapsed = _transfer(proxy.port, size)
        thread.join()
        listener.close()
        assert total[0] == size, (total[0], size)
        print(f"{label:8} {megabytes} MB in {elapsed:.3f} s = {size / elapsed / 1e6:.0f} MB/s")


if __name__ == "__main__":
    import sys

    _benchmark(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
