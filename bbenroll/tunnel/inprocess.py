"""A tunnel stream connected straight into Buildbot's PB server factory, in this process.

Instead of a loopback TCP connection per stream (two file descriptors, a kernel
round trip each way), :func:`connect_in_process` builds Buildbot's PB protocol
with ``factory.buildProtocol(addr)`` and joins it to the stream's
:class:`~bbenroll.tunnel.master_side.PBLeg` with a pair of in-memory transports
(:class:`PipeEnd`). Each end is what its protocol sees as its TCP connection:

- ``write`` hands the bytes to the other end's protocol at once (``dataReceived``),
  unless that end is paused or already inside ``dataReceived`` (then they are
  queued, in order, and delivered when it resumes or returns: no re-entrant
  delivery, no reordering);
- ``pauseProducing``/``resumeProducing`` on an end stop and restart deliveries to
  its protocol, like a TCP transport that stops reading its socket. The queue of
  a paused end is bounded by ``max_queued``: past it the pair is aborted (the
  writer ignored every signal); past ``high_water`` the writer's registered
  producer is paused, below ``low_water`` resumed, as a TCP transport's write
  buffer does;
- ``loseConnection`` lets the queued bytes reach the other side first, then both
  protocols see ``connectionLost`` (``ConnectionDone``); ``abortConnection`` drops
  them (``ConnectionLost``).

Addresses: Buildbot's end answers ``getPeer()`` with the worker's own address
(what Buildbot logs and shows for the worker); every other address is a
:class:`PipeAddress`, which has no host or port, so no TCP-leg bookkeeping
(``legacy.leg_addresses``) counts it. A login on a :class:`PipeEnd` came through
a tunnel by construction: nothing outside this process can make one.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet import error
from twisted.internet.interfaces import IAddress, IConsumer, IPushProducer, ITransport
from twisted.python.failure import Failure
from zope.interface import implementer

# what a paused end may hold for its protocol before the pair is aborted; the
# session pauses its leg at the core's high-water mark (8 MiB) and resets a
# stream whose core buffer passes twice that, so this is never the first bound hit
MAX_QUEUED = 16 * 1024 * 1024
# the writer's producer (if it registered one) is paused above this, resumed below LOW_WATER
HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024


@implementer(IAddress)
class PipeAddress:
    """The address of an in-process PB leg: no host, no port."""

    def __init__(self, worker: str) -> None:
        self.worker = worker

    def __repr__(self) -> str:
        return f"PipeAddress({self.worker!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PipeAddress) and other.worker == self.worker

    def __hash__(self) -> int:
        return hash(("PipeAddress", self.worker))


@implementer(ITransport, IConsumer, IPushProducer)
class PipeEnd:
    """One end of an in-memory connection; see the module docstring."""

    max_queued: int = MAX_QUEUED
    high_water: int = HIGH_WATER
    low_water: int = LOW_WATER

    def __init__(self, host: Any, peer: Any) -> None:
        self.host = host
        self.peer = peer
        self.protocol: Any = None
        self.other: PipeEnd = self  # set by pipe()
        self.connected = True
        self.disconnecting = False
        self.disconnected = False
        self.producer: Any = None  # what writes into this end (IConsumer), paused by our queue's peer
        self.streaming = True
        self.producer_paused = False
        self.paused = False  # our protocol asked us not to deliver (IPushProducer)
        self._queue: deque[bytes] = deque()  # bytes for our protocol, waiting
        self._queued = 0
        self._delivering = False

    # -- ITransport: what our protocol calls ----------------------------------------

    def write(self, data: bytes) -> None:
        if self.disconnecting or not data:
            return  # like TCP after loseConnection
        self.other._arrive(bytes(data))

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """Close once what we wrote reached the other protocol (it may be paused)."""
        if self.disconnecting:
            return
        self.disconnecting = True
        self.other._finish_when_drained()

    def abortConnection(self) -> None:
        self._close(error.ConnectionLost("in-process PB leg aborted"))

    def getPeer(self) -> Any:
        return self.peer

    def getHost(self) -> Any:
        return self.host

    # what PB and buildbot poke at on TCP transports: no socket here
    def setTcpNoDelay(self, enabled: int) -> None:
        pass

    def setTcpKeepAlive(self, enabled: int) -> None:
        pass

    def getTcpNoDelay(self) -> int:
        return 1

    def getTcpKeepAlive(self) -> int:
        return 0

    # -- IConsumer: a producer that writes into us --------------------------------------

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        # a pull producer is asked once: nothing here drains a write buffer later (neither
        # Buildbot's PB side nor PBLeg registers one; PB's own Pager is not used on this path)
        self.producer = producer
        self.streaming = streaming
        self.producer_paused = False
        if not streaming:
            producer.resumeProducing()

    def unregisterProducer(self) -> None:
        self.producer = None

    # -- IPushProducer: our protocol stops and restarts its deliveries ------------------

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            self._drain()

    def stopProducing(self) -> None:
        self.loseConnection()

    # -- the other end's bytes -------------------------------------------------------

    def _arrive(self, data: bytes) -> None:
        if self.disconnected:
            return
        if self.paused or self._delivering or self._queue:
            self._queue.append(data)
            self._queued += len(data)
            if self._queued > self.max_queued:
                self._close(error.ConnectionLost(f"more than {self.max_queued} bytes queued in-process"))
                return
            self.other._queue_grew(self._queued)
            return
        self._deliver(data)
        self._drain()

    def _deliver(self, data: bytes) -> None:
        self._delivering = True
        try:
            self.protocol.dataReceived(data)
        finally:
            self._delivering = False

    def _drain(self) -> None:
        """Deliver the queue while our protocol reads; then finish a pending close."""
        while self._queue and not self.paused and not self._delivering and not self.disconnected:
            data = self._queue.popleft()
            self._queued -= len(data)
            self._deliver(data)
        self.other._queue_shrank(self._queued)
        if not self._queue and self.other.disconnecting and not self.disconnected:
            self._close(error.ConnectionDone("in-process PB leg closed"))

    def _finish_when_drained(self) -> None:
        if not self._queue:
            self._close(error.ConnectionDone("in-process PB leg closed"))

    def _queue_grew(self, queued: int) -> None:
        """Our bytes wait at the other end: pause what writes into us, as TCP would."""
        if self.producer is None or not self.streaming or self.producer_paused:
            return
        if queued > self.high_water:
            self.producer_paused = True
            self.producer.pauseProducing()

    def _queue_shrank(self, queued: int) -> None:
        if self.producer is not None and self.producer_paused and queued <= self.low_water:
            self.producer_paused = False
            self.producer.resumeProducing()

    def _close(self, reason: Exception) -> None:
        """Both ends are over: each protocol hears it once; producers are stopped."""
        ends = (self, self.other)
        if all(end.disconnected for end in ends):
            return
        for end in ends:
            end.disconnected = True
            end.disconnecting = True
            end.connected = False
            end._queue.clear()
            end._queued = 0
        for end in ends:
            producer, end.producer = end.producer, None
            if producer is not None:
                producer.stopProducing()
        for end in ends:
            if end.protocol is not None:
                end.protocol.connectionLost(Failure(reason))


def pipe(worker: str, worker_address: Any) -> tuple[PipeEnd, PipeEnd]:
    """Two joined ends: (the leg's, Buildbot's). Buildbot's ``getPeer()`` is ``worker_address``."""
    here = PipeAddress(worker)
    leg_end = PipeEnd(host=here, peer=here)
    buildbot_end = PipeEnd(host=here, peer=worker_address if worker_address is not None else here)
    leg_end.other, buildbot_end.other = buildbot_end, leg_end
    return leg_end, buildbot_end


def connect_in_process(server_factory: Any, leg: Any, worker: str, worker_address: Any) -> PipeEnd:
    """Join ``leg`` (a protocol) to a new protocol of Buildbot's ``server_factory``; returns
    the leg's transport. Buildbot's protocol is made first, so its greeting (a PB server
    speaks first) reaches a leg that is already connected."""
    leg_end, buildbot_end = pipe(worker, worker_address)
    server = server_factory.buildProtocol(buildbot_end.peer)
    if server is None:  # a factory may refuse (Twisted's contract); like a refused TCP connect
        raise error.ConnectionRefusedError("Buildbot's PB factory refused the connection")
    leg_end.protocol, buildbot_end.protocol = leg, server
    leg.makeConnection(leg_end)
    server.makeConnection(buildbot_end)
    return leg_end


def is_in_process(transport: Any) -> bool:
    """Whether ``transport`` is an end of an in-process PB leg (its login came through a tunnel)."""
    return isinstance(transport, PipeEnd)


__all__ = [
    "HIGH_WATER",
    "LOW_WATER",
    "MAX_QUEUED",
    "PipeAddress",
    "PipeEnd",
    "connect_in_process",
    "is_in_process",
    "pipe",
]
