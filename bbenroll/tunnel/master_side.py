"""The master's end of the tunnel: each stream becomes a PB connection to Buildbot.

Each stream's :class:`PBLeg` is joined straight to a protocol of Buildbot's PB
server factory, in this process (:mod:`bbenroll.tunnel.inprocess`), when the
session has a ``pb_server_factory`` (the Buildbot hook gives it): no socket, no
file descriptor, no kernel round trip. Without one (tests, the service run on
its own, a master with no PB port yet) the leg is a loopback TCP connection to
Buildbot's PB port. Either way the leg is the same protocol and every bound
below holds.

A :class:`MasterSession` outlives the worker's Foolscap connections: when the
link drops, it keeps its streams (and their PB connections, which Buildbot sees
as idle but alive) until the worker resumes or the resume deadline passes.

What one session may cost the master is bounded (docs/security.md): at most
:data:`MAX_STREAMS_PER_SESSION` streams (an open past it is reset and never
reaches the PB port), at most :data:`MAX_PENDING_BYTES` held for a PB connection
that is still being made, and while the link is down its PB legs are not read
(their data waits in Buildbot's socket, not in our memory). After
:data:`MAX_SHORT_LEGS` PB connections in a row that each ended within
:data:`SHORT_LEG` seconds (failed logins: Buildbot logs a traceback for each),
the session's opens are reset for :data:`LOGIN_COOL_DOWN` seconds.

A PB server speaks first. A leg that hears nothing from Buildbot within
:data:`PB_GREETING_TIMEOUT` seconds of its open (a TCP connect lost in a SYN
flood, a handshake whose last packet a SYN-cookie kernel dropped: the client
believes it is connected) is reset; buildbot-worker sees its connection lost and
retries, instead of waiting forever.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer, error, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from bbenroll.endpoints import endpoint_parts, tcp_server
from bbenroll.tunnel import frames
from bbenroll.tunnel.adapter import TunnelAdapter
from bbenroll.tunnel.core import Settings
from bbenroll.tunnel.inprocess import connect_in_process
from bbenroll.tunnel.pblogin import LoginCheck, Verdict

log = Logger(namespace="bbenroll")

# buildbot-worker keeps one PB connection at a time; the others allow a reconnect
# to overlap the close of the previous connection
MAX_STREAMS_PER_SESSION = 4
# bytes from the worker held for a stream whose PB connection is not made yet
# (a PB login is a few hundred bytes)
MAX_PENDING_BYTES = 1024 * 1024
# what the core may queue per stream before it resets it: the leg is paused at the
# high-water mark (8 MiB), so only a leg that ignores the pause gets here
MASTER_MAX_BUFFER = 2 * Settings().high_water

# A PB connection that ends this soon after it was made carried a login attempt
# and little more (a wrong password, an unknown or already attached worker):
# buildbot-worker's own connection lasts as long as the worker runs. Buildbot
# logs each refused login with a traceback (about 640 bytes of twistd.log).
SHORT_LEG = 10.0  # seconds
MAX_SHORT_LEGS = 3  # short PB connections in a row; then opens are reset for a while
LOGIN_COOL_DOWN = 60.0  # seconds during which a session's new streams are reset

# Buildbot's PB server sends its greeting as soon as it has the connection; a leg
# without it this long after its open is stuck (see the module docstring)
PB_GREETING_TIMEOUT = 10.0  # seconds

# why a stream was reset (the Closed event's reason; never sent to the worker)
TOO_MANY_STREAMS = "too many streams in this session"
TOO_MUCH_PENDING = "too much data before the PB connection was made"
TOO_MANY_SHORT_LEGS = "too many short PB connections in a row (failed logins?)"
LOGIN_REFUSED = "PB login refused: a tunnel logs in only as its own worker"
PB_SILENT = "no greeting from Buildbot's PB port"


def pb_client_endpoint(reactor: Any, server_endpoint: str) -> Any:
    """How to reach the PB port given as a server endpoint (``tcp:9990:interface=127.0.0.1``)."""
    tcp = tcp_server(server_endpoint)
    if tcp is not None:
        kind, port, interface = tcp
        host = interface or ("127.0.0.1" if kind == "tcp" else "::1")
        if port is None:
            raise ValueError(f"no port in {server_endpoint!r}")
        if ":" in host:
            return TCP6ClientEndpoint(reactor, host, port)
        return TCP4ClientEndpoint(reactor, host, port)
    kind, *parts = endpoint_parts(server_endpoint)
    if kind == "unix":
        address = parts[0]
        for part in parts:
            if part.startswith("address="):
                address = part[len("address=") :]
        return UNIXClientEndpoint(reactor, address)
    raise ValueError(f"cannot connect to PB endpoint {server_endpoint!r}")


def master_settings(resume_deadline: float) -> Settings:
    """The core settings of a master session: the defaults, bounded by :data:`MASTER_MAX_BUFFER`."""
    return Settings(resume_deadline=resume_deadline, max_buffer=MASTER_MAX_BUFFER)


class PBLeg(protocol.Protocol):
    """The master's PB connection of one stream: in-process into Buildbot's PB factory, or TCP."""

    def __init__(self, session: MasterSession, stream: int) -> None:
        self.session = session
        self.stream = stream
        self.closed_by_tunnel = False
        self.window_full = False  # the core asked to pause this stream (flow control)
        self.reading = True  # whether we read from Buildbot's end
        self.made_at: float | None = None  # when the PB connection was made (the session's clock)
        self.heard = False  # Buildbot sent something (its greeting, at least)
        self.lost = False

    def read_while(self, link_up: bool) -> None:
        """Read from Buildbot only while the link is up and the stream's window has room."""
        want = link_up and not self.window_full
        if want != self.reading and self.transport is not None:
            self.reading = want
            if want:
                self.transport.resumeProducing()
            else:
                self.transport.pauseProducing()

    def connectionMade(self) -> None:
        self.made_at = self.session.clock.seconds()
        # PB's many small request/answer messages must not wait for Nagle's
        # algorithm on this loopback hop (measured: +10-20 ms per small build)
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)

    def dataReceived(self, data: bytes) -> None:
        if not self.heard:
            self.heard = True
            self.session.pb_heard(self.stream)
        self.session.write(self.stream, data)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True
        self.session.pb_lost(self.stream, self)


class MasterSession(TunnelAdapter):
    """The master's end of one worker's tunnel session; its bounds are attributes."""

    max_streams: int = MAX_STREAMS_PER_SESSION
    max_pending: int = MAX_PENDING_BYTES
    short_leg: float = SHORT_LEG
    max_short_legs: int = MAX_SHORT_LEGS
    login_cool_down: float = LOGIN_COOL_DOWN
    pb_greeting_timeout: float = PB_GREETING_TIMEOUT

    def __init__(
        self,
        *,
        worker: str,
        session_id: str,
        pb_endpoint: Any,
        clock: IReactorTime,
        settings: Settings,
        on_expired: Callable[[MasterSession], None],
        on_link_dead: Callable[[MasterSession], None],
        pb_server_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.worker = worker
        self.session_id = session_id
        self.pb_endpoint = pb_endpoint  # the TCP fallback
        # Buildbot's PB server factory now, or None (then the leg dials pb_endpoint); asked per
        # open, because Buildbot makes a new one when its PB port moves (legacy_pb)
        self.pb_server_factory = pb_server_factory
        self.legs: dict[int, PBLeg] = {}
        self.pending: dict[int, bytearray] = {}  # data that arrived before the PB connection
        self.dials: dict[int, Any] = {}  # the TCP connect Deferred of each pending stream
        self.greeting_timers: dict[int, Any] = {}  # streams whose leg has not heard Buildbot yet
        # streams whose PB login was not seen yet (pblogin.py), and the bytes held until it is:
        # nothing reaches Buildbot before the login names this session's worker
        self.logins: dict[int, LoginCheck] = {}
        self.held: dict[int, bytearray] = {}
        self.refused_streams = 0  # opens past max_streams (logged once)
        self.short_legs = 0  # PB connections in a row that ended within short_leg seconds
        self.cool_down_until: float | None = None  # opens before then are reset
        self.expired_callback = on_expired
        self.link_dead_callback = on_link_dead
        self.closed = False
        super().__init__(clock, frames.Role.MASTER, settings)

    @property
    def ticking(self) -> bool:
        return not self.closed

    # -- the link ---------------------------------------------------------------

    def attach(self, peer: Any, worker_received: dict[int, int]) -> dict[int, int]:
        """A (re)connected worker took over this session; returns what we have received."""
        ours = self.core.received()
        self.peer = peer
        try:
            self.core.link_up(self.clock.seconds(), worker_received)
        except frames.ProtocolError as e:  # the worker claims bytes we never sent
            self.core.link_down(self.clock.seconds())
            self.on_protocol_error(e)  # drops the link; the session waits for a sane resume
        self.flush()
        self._link_changed()
        return ours

    def detach(self, peer: Any) -> None:
        if peer is self.peer:
            self.peer = None
            self.core.link_down(self.clock.seconds())
            self.flush()
            self._link_changed()

    def _link_changed(self) -> None:
        """Stop (or start again) reading the PB legs: a down link must not fill our memory."""
        link_up = self.link_up
        for leg in list(self.legs.values()):
            leg.read_while(link_up)

    def receive(self, frame: frames.Frame) -> None:
        if not self.closed:
            super().receive(frame)

    def on_protocol_error(self, error: frames.ProtocolError) -> None:
        log.warn(
            "bbenroll: worker {worker!r}: tunnel protocol error: {error}", worker=self.worker, error=error
        )
        self._link_changed()
        self.link_dead_callback(self)

    # -- PB legs --------------------------------------------------------------------

    def pb_heard(self, stream: int) -> None:
        """Buildbot spoke on ``stream``'s leg: it is not stuck."""
        timer = self.greeting_timers.pop(stream, None)
        if timer is not None and timer.active():
            timer.cancel()

    def pb_lost(self, stream: int, leg: PBLeg) -> None:
        if self.legs.get(stream) is leg:
            del self.legs[stream]
        self.pb_heard(stream)  # a lost leg's greeting timer is moot (stream ids are never reused)
        # a leg that never heard Buildbot carried no login: it does not count towards the cool-down
        if not self.closed and leg.made_at is not None and leg.heard:
            self._count_leg(self.clock.seconds() - leg.made_at)
        if not leg.closed_by_tunnel and not self.closed:
            self.close(stream)

    def _greeting_overdue(self, stream: int) -> None:
        self.greeting_timers.pop(stream, None)
        log.warn(
            "bbenroll: worker {worker!r}: Buildbot's PB port said nothing within {timeout:.0f} s;"
            " resetting the stream (buildbot-worker reconnects)",
            worker=self.worker,
            timeout=self.pb_greeting_timeout,
        )
        self.reset(stream, PB_SILENT)  # its Closed event closes the leg or cancels the dial

    def _worker_address(self) -> Any:
        """The worker's address as its Foolscap connection has it (what Buildbot shows), or None."""
        get_peer = getattr(self.peer, "getPeer", None)
        try:
            return get_peer() if get_peer is not None else None
        except Exception:  # a reference whose broker is gone: no address is better than no leg
            return None

    def _connect_leg(self, stream: int) -> None:
        leg = PBLeg(self, stream)
        self.greeting_timers[stream] = self.clock.callLater(
            self.pb_greeting_timeout, self._greeting_overdue, stream
        )
        factory = self.pb_server_factory() if self.pb_server_factory is not None else None
        if factory is not None:
            self._connect_in_process(stream, leg, factory)
            return
        self.pending[stream] = bytearray()
        d = self.pb_endpoint.connect(protocol.Factory.forProtocol(lambda: leg))
        self.dials[stream] = d

        def connected(proto: PBLeg) -> None:
            self.dials.pop(stream, None)
            if stream not in self.pending or self.closed:  # closed meanwhile
                proto.closed_by_tunnel = True
                proto.transport.loseConnection()
                return
            self.legs[stream] = proto
            early = self.pending.pop(stream)
            if early:
                proto.transport.write(bytes(early))
            proto.read_while(self.link_up)

        def failed(failure: Any) -> None:
            self.dials.pop(stream, None)
            self.pending.pop(stream, None)
            if self.closed or failure.check(defer.CancelledError):  # cancelled: the stream is gone
                return
            log.error(
                "bbenroll: worker {worker!r}: cannot connect to the master's PB port: {error}",
                worker=self.worker,
                error=failure.getErrorMessage(),
            )
            self.reset(stream, "PB port unreachable")

        d.addCallbacks(connected, failed)

    def _connect_in_process(self, stream: int, leg: PBLeg, factory: Any) -> None:
        """Join ``leg`` to a new protocol of Buildbot's PB factory: no socket (inprocess.py)."""
        try:
            connect_in_process(factory, leg, self.worker, self._worker_address())
        except error.ConnectError as e:
            log.error(
                "bbenroll: worker {worker!r}: Buildbot's PB factory refused a connection: {error}",
                worker=self.worker,
                error=str(e),
            )
            self.reset(stream, "PB port unreachable")
            return
        if leg.lost:  # Buildbot hung up while greeting it (pb_lost closed the stream)
            return
        if stream not in self.core.streams or self.closed:  # the stream ended while Buildbot greeted
            leg.closed_by_tunnel = True
            leg.transport.loseConnection()
            return
        self.legs[stream] = leg
        leg.read_while(self.link_up)

    def _count_leg(self, lived: float) -> None:
        """A PB connection ended after ``lived`` seconds: short ones in a row start a cool-down."""
        if lived >= self.short_leg:
            self.short_legs = 0
            return
        self.short_legs += 1
        if self.short_legs >= self.max_short_legs:  # and again after each cool-down, at the next one
            self.cool_down_until = self.clock.seconds() + self.login_cool_down
            log.warn(
                "bbenroll: worker {worker!r}: {count} PB connections in a row ended within {short:.0f} s"
                " (failed logins?); resetting its new streams for {cool:.0f} s",
                worker=self.worker,
                count=self.short_legs,
                short=self.short_leg,
                cool=self.login_cool_down,
            )

    def _close_leg(self, stream: int) -> None:
        self.pb_heard(stream)  # the greeting timer is moot
        dial = self.dials.pop(stream, None)
        if dial is not None:
            dial.cancel()  # a TCP connect still in flight (a SYN lost in a storm)
        self.pending.pop(stream, None)
        self.logins.pop(stream, None)
        self.held.pop(stream, None)
        leg = self.legs.pop(stream, None)
        if leg is not None and leg.transport is not None:
            leg.closed_by_tunnel = True
            leg.transport.loseConnection()

    # -- events of the core -----------------------------------------------------------

    def on_deliver(self, event: frames.Deliver) -> None:
        data = event.data
        check = self.logins.get(event.stream)
        if check is not None:
            data = self._check_login(event.stream, check, data)
            if data is None:
                return
        leg = self.legs.get(event.stream)
        if leg is not None:
            leg.transport.write(data)
        elif event.stream in self.pending:
            early = self.pending[event.stream]
            early += data
            if len(early) > self.max_pending:
                self.reset(event.stream, TOO_MUCH_PENDING)

    def _check_login(self, stream: int, check: LoginCheck, data: bytes) -> bytes | None:
        """The bytes to pass on once the login is allowed; None while it is not (yet)."""
        held = self.held.setdefault(stream, bytearray())
        held += data  # bounded: the check refuses past MAX_LOGIN_BYTES
        outcome = check.feed(data)
        if outcome.verdict is Verdict.PENDING:
            return None
        del self.logins[stream]
        data = bytes(self.held.pop(stream))
        if outcome.verdict is Verdict.ALLOWED:
            return data
        if outcome.name is not None:
            log.warn(
                "bbenroll: worker {worker!r}: its tunnel tried to log in to Buildbot as {name!r};"
                " refused (a tunnel logs in only as its own worker)",
                worker=self.worker,
                name=outcome.name,
            )
        else:
            log.warn(
                "bbenroll: worker {worker!r}: refused a PB connection through its tunnel: {why}",
                worker=self.worker,
                why=outcome.reason,
            )
        self.reset(stream, LOGIN_REFUSED)
        return None

    def on_opened(self, event: frames.Opened) -> None:
        if len(self.core.streams) > self.max_streams:  # the new stream is counted
            self._refuse_stream(event.stream)
            return
        if self.cool_down_until is not None and self.clock.seconds() < self.cool_down_until:
            self.reset(event.stream, TOO_MANY_SHORT_LEGS)  # logged when the cool-down began
            return
        self.logins[event.stream] = LoginCheck(self.worker)
        self._connect_leg(event.stream)

    def _refuse_stream(self, stream: int) -> None:
        """An open past the cap: reset it, never connect it; warn once per session."""
        self.refused_streams += 1
        if self.refused_streams == 1:
            log.warn(
                "bbenroll: worker {worker!r}: more than {cap} streams in one tunnel session;"
                " resetting the extra ones (further ones are not logged)",
                worker=self.worker,
                cap=self.max_streams,
            )
        self.reset(stream, TOO_MANY_STREAMS)

    def on_closed(self, event: frames.Closed) -> None:
        self._close_leg(event.stream)

    def on_pause(self, event: frames.Pause) -> None:
        self._window(event.stream, full=True)

    def on_resume(self, event: frames.Resume) -> None:
        self._window(event.stream, full=False)

    def _window(self, stream: int, full: bool) -> None:
        leg = self.legs.get(stream)
        if leg is not None:
            leg.window_full = full
            leg.read_while(self.link_up)

    def on_link_dead(self, event: frames.LinkDead) -> None:
        log.info(
            "bbenroll: worker {worker!r}: tunnel link dead ({why})", worker=self.worker, why=event.reason
        )
        self._link_changed()
        self.link_dead_callback(self)

    def on_expired(self, event: frames.Expired) -> None:
        log.info(
            "bbenroll: worker {worker!r}: no reconnect within the resume deadline; closing its streams",
            worker=self.worker,
        )
        self.terminate("expired")

    def terminate(self, reason: str) -> None:
        """End the session now: reset every stream, close every PB connection."""
        if self.closed:
            return
        now = self.clock.seconds()
        for stream in list(self.core.streams):
            self.core.reset(stream, now, reason)
        self.flush()
        for stream in list(self.legs) + list(self.pending):
            self._close_leg(stream)
        self.closed = True
        self._reschedule()
        self.expired_callback(self)
