"""What buildbot-worker's PB protocol sees as its TCP connection: one stream of the tunnel.

:class:`StreamTransport` turns ITransport calls into the tunnel's stream
operations and the tunnel's deliveries back into ``dataReceived`` and
``connectionLost``, as a TCP connection would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IAddress, IConsumer, IPushProducer, ITransport
from twisted.python.failure import Failure
from zope.interface import implementer

if TYPE_CHECKING:
    from bbenroll.tunnel.worker_side import WorkerTunnel


@implementer(IAddress)
class TunnelAddress:
    def __init__(self, furl_hints: str) -> None:
        self.hints = furl_hints

    def __repr__(self) -> str:
        return f"TunnelAddress({self.hints})"


@implementer(ITransport, IConsumer, IPushProducer)
class StreamTransport:
    """What buildbot-worker's protocol sees as its TCP connection."""

    disconnecting = False
    connected = True

    def __init__(self, tunnel: WorkerTunnel, stream: int, protocol: Any, factory: Any = None) -> None:
        self.tunnel = tunnel
        self.stream = stream
        self.protocol = protocol
        self.factory = factory
        self.producer: Any = None
        self._lost = False

    # ITransport
    def write(self, data: bytes) -> None:
        if not self._lost and data:
            self.tunnel.write(self.stream, bytes(data))

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        if not self.disconnecting and not self._lost:
            self.disconnecting = True
            self.tunnel.close(self.stream)

    def abortConnection(self) -> None:
        if not self._lost:
            self.tunnel.reset(self.stream)

    def getPeer(self) -> Any:
        return self.tunnel.address

    def getHost(self) -> Any:
        return IPv4Address("TCP", "127.0.0.1", 0)

    # what buildbot-worker and PB poke at on TCP transports
    def setTcpKeepAlive(self, enabled: int) -> None:
        pass  # the tunnel has its own heartbeat

    def setTcpNoDelay(self, enabled: int) -> None:
        pass

    def getTcpKeepAlive(self) -> int:
        return 0

    # IConsumer
    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    # IPushProducer (nothing to pause: the data comes from the tunnel)
    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self.loseConnection()

    # from the tunnel
    def deliver(self, data: bytes) -> None:
        if not self._lost:
            self.protocol.dataReceived(data)

    def lost(self, reason: str, clean: bool = False) -> None:
        """The stream is over; ``clean``: an orderly close (ConnectionDone), else ConnectionLost."""
        if self._lost:
            return
        self._lost = True
        self.connected = False
        self.disconnecting = True
        if self.producer is not None:
            self.producer.stopProducing()
        exc = error.ConnectionDone(reason) if clean else error.ConnectionLost(reason)
        self.protocol.connectionLost(Failure(exc))
        if self.factory is not None:
            self.factory.doStop()  # as Twisted's connectors do: buildbot-worker waits for it
            self.factory = None
