"""The master's end of the tunnel: each stream becomes a TCP connection to the PB port.

A :class:`MasterSession` outlives the worker's Foolscap connections: when the
link drops, it keeps its streams (and their PB connections, which Buildbot sees
as idle but alive) until the worker resumes or the resume deadline passes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from bbenroll.endpoints import endpoint_parts, tcp_server
from bbenroll.tunnel import frames
from bbenroll.tunnel.adapter import TunnelAdapter
from bbenroll.tunnel.core import Settings

log = Logger(namespace="bbenroll")


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


class PBLeg(protocol.Protocol):
    """The master-side TCP connection of one stream, to Buildbot's PB port."""

    def __init__(self, session: MasterSession, stream: int) -> None:
        self.session = session
        self.stream = stream
        self.closed_by_tunnel = False

    def connectionMade(self) -> None:
        # PB's many small request/answer messages must not wait for Nagle's
        # algorithm on this loopback hop (measured: +10-20 ms per small build)
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)

    def dataReceived(self, data: bytes) -> None:
        self.session.write(self.stream, data)

    def connectionLost(self, reason: Any = None) -> None:
        self.session.pb_lost(self.stream, self)


class MasterSession(TunnelAdapter):
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
    ) -> None:
        self.worker = worker
        self.session_id = session_id
        self.pb_endpoint = pb_endpoint
        self.legs: dict[int, PBLeg] = {}
        self.pending: dict[int, list[bytes]] = {}  # data that arrived before the PB connection
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
        self.core.link_up(self.clock.seconds(), worker_received)
        self.flush()
        return ours

    def detach(self, peer: Any) -> None:
        if peer is self.peer:
            self.peer = None
            self.core.link_down(self.clock.seconds())
            self.flush()

    def receive(self, frame: frames.Frame) -> None:
        if not self.closed:
            super().receive(frame)

    def on_protocol_error(self, error: frames.ProtocolError) -> None:
        log.warn(
            "bbenroll: worker {worker!r}: tunnel protocol error: {error}", worker=self.worker, error=error
        )
        self.link_dead_callback(self)

    # -- PB legs --------------------------------------------------------------------

    def pb_lost(self, stream: int, leg: PBLeg) -> None:
        if self.legs.get(stream) is leg:
            del self.legs[stream]
        if not leg.closed_by_tunnel and not self.closed:
            self.close(stream)

    def _connect_leg(self, stream: int) -> None:
        leg = PBLeg(self, stream)
        self.pending[stream] = []
        d = self.pb_endpoint.connect(protocol.Factory.forProtocol(lambda: leg))

        def connected(proto: PBLeg) -> None:
            if stream not in self.pending or self.closed:  # closed meanwhile
                proto.closed_by_tunnel = True
                proto.transport.loseConnection()
                return
            self.legs[stream] = proto
            for data in self.pending.pop(stream):
                proto.transport.write(data)

        def failed(failure: Any) -> None:
            self.pending.pop(stream, None)
            if self.closed:
                return
            log.error(
                "bbenroll: worker {worker!r}: cannot connect to the master's PB port: {error}",
                worker=self.worker,
                error=failure.getErrorMessage(),
            )
            self.core.reset(stream, self.clock.seconds(), "PB port unreachable")
            self.flush()

        d.addCallbacks(connected, failed)

    def _close_leg(self, stream: int) -> None:
        self.pending.pop(stream, None)
        leg = self.legs.pop(stream, None)
        if leg is not None and leg.transport is not None:
            leg.closed_by_tunnel = True
            leg.transport.loseConnection()

    # -- events of the core -----------------------------------------------------------

    def on_deliver(self, event: frames.Deliver) -> None:
        leg = self.legs.get(event.stream)
        if leg is not None:
            leg.transport.write(event.data)
        elif event.stream in self.pending:
            self.pending[event.stream].append(event.data)

    def on_opened(self, event: frames.Opened) -> None:
        self._connect_leg(event.stream)

    def on_closed(self, event: frames.Closed) -> None:
        self._close_leg(event.stream)

    def on_pause(self, event: frames.Pause) -> None:
        leg = self.legs.get(event.stream)
        if leg is not None:
            leg.transport.pauseProducing()

    def on_resume(self, event: frames.Resume) -> None:
        leg = self.legs.get(event.stream)
        if leg is not None:
            leg.transport.resumeProducing()

    def on_link_dead(self, event: frames.LinkDead) -> None:
        log.info(
            "bbenroll: worker {worker!r}: tunnel link dead ({why})", worker=self.worker, why=event.reason
        )
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
