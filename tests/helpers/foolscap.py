"""In-memory Foolscap connections, driven by one clock: deterministic service tests.

In the style of Foolscap's own tests (``foolscap/test/common.py``: ``Loopback``,
``TargetMixin.setupBrokers``): two Brokers joined by a pair of memory
transports, no sockets, no TLS negotiation. The server Broker is the master's
real :class:`~bbenroll.master.tub.EnrollmentBroker` attached to the service's
real Tub, so a lookup goes through ``remote_getReferenceByName`` exactly as on
the network. Foolscap's eventual-send queue normally runs on the global
reactor; :func:`eventual_queue_on` moves it onto the test's clock, so that
``clock.advance(0)`` (see :func:`pump`) is the only thing that moves messages.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from foolscap import eventual
from foolscap.broker import Broker
from foolscap.referenceable import TubRef
from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from bbenroll.master.tub import EnrollmentBroker

_ports = itertools.count(40000)


def eventual_queue_on(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run Foolscap's eventual-send queue on ``clock`` (a fresh queue, for this test only)."""
    monkeypatch.setattr(eventual, "reactor", clock)
    monkeypatch.setattr(eventual, "_theSimpleQueue", eventual._SimpleCallQueue())


def pump(clock: Clock, limit: int = 10_000) -> None:
    """Run everything that is due now (eventual sends, callLater(0)), without moving time."""
    for _ in range(limit):
        if not any(call.getTime() <= clock.seconds() for call in clock.getDelayedCalls()):
            return
        clock.advance(0)
    raise AssertionError("the eventual-send queue never settles")


def resolve(clock: Clock, d: defer.Deferred[Any]) -> Any:
    """Pump until ``d`` has fired; its result, or raise its failure's exception."""
    results: list[Any] = []
    d.addBoth(results.append)
    pump(clock)
    assert results, "the Deferred did not fire"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


class MemoryTransport:
    """One end of an in-memory connection; writes arrive eventually, in order."""

    disconnecting = False
    hold_on_close = False  # True: loseConnection waits forever, like a peer that never closes TLS

    def __init__(self, protocol: Any, address: IPv4Address) -> None:
        self.protocol = protocol
        self.address = address
        self.peer: MemoryTransport | None = None
        self.connected = True
        self.aborted = False

    def write(self, data: bytes) -> None:
        eventual.eventually(self._deliver, bytes(data))

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def _deliver(self, data: bytes) -> None:
        if self.connected and self.peer is not None and self.peer.connected:
            self.peer.protocol.dataReceived(data)

    def loseConnection(self) -> None:
        if not self.hold_on_close:
            self._close(Failure(error.ConnectionDone()))

    def abortConnection(self) -> None:
        if self.connected:
            self.aborted = True
        self._close(Failure(error.ConnectionLost("aborted")))

    def _close(self, why: Failure) -> None:
        if not self.connected:
            return
        self.connected = False
        assert self.peer is not None
        self.peer.connected = False
        eventual.eventually(self.protocol.connectionLost, why)
        eventual.eventually(self.peer.protocol.connectionLost, why)

    def getPeer(self) -> IPv4Address:
        assert self.peer is not None
        return self.peer.address

    def getHost(self) -> IPv4Address:
        return self.address


class MemoryLink:
    """A worker's Foolscap connection to the service's Tub, in memory."""

    def __init__(self, tub: Any, clock: Clock, host: str = "127.0.0.1") -> None:
        self.clock = clock
        self.server = EnrollmentBroker(TubRef("worker"))
        self.server.setTub(tub)
        self.client = Broker(TubRef(tub.tubID))  # the FURL pins this TubID
        self.client._expose_remote_exception_types = False  # as the worker's Tub: RemoteException
        port = next(_ports)
        self.server.transport = MemoryTransport(self.server, IPv4Address("TCP", "127.0.0.1", 9989))
        self.client.transport = MemoryTransport(self.client, IPv4Address("TCP", host, port))
        self.server.transport.peer = self.client.transport
        self.client.transport.peer = self.server.transport
        self.peer = f"{host}:{port}"  # how the master's log names this connection
        self.server.connectionMade()
        self.client.connectionMade()

    def reference(self, swissnum: str) -> Any:
        """The object the FURL with ``swissnum`` resolves to (raises what the master raised)."""
        return resolve(self.clock, self.client.getYourReferenceByName(swissnum))

    def refusal(self, swissnum: str) -> str:
        """The reason the master gives for refusing ``swissnum`` (fails if it is accepted)."""
        try:
            self.reference(swissnum)
        except Exception as e:  # RemoteException wrapping the master's CopiedFailure
            copied = getattr(e, "failure", None)
            assert copied is not None, repr(e)
            assert "File " not in copied.getTraceback()  # no server traceback reaches the client
            return str(copied.value)
        raise AssertionError("the master accepted the secret")

    @property
    def connected(self) -> bool:
        return not self.client.disconnected

    def close(self) -> None:
        self.client.transport.loseConnection()
        pump(self.clock)
