"""What buildbot-worker's PB protocol sees as its TCP connection: one stream of the tunnel.

:class:`StreamTransport` turns ITransport calls into the tunnel's stream
operations and the tunnel's deliveries back into ``dataReceived`` and
``connectionLost``, as a TCP connection would.

Backpressure (docs/architecture.md, "Backpressure"): when the tunnel's core holds
``high_water`` bytes of the stream (its ``Pause``), the transport pauses what feeds
it, and resumes it on ``Resume``: a producer registered on it, as a TCP transport
would, and, because buildbot-worker registers none (a command's output goes from
its pipe through ``callRemote("update")`` straight to ``write``), the output pipes
of the buildbot-worker commands whose updates go over this stream
(:func:`command_stream`). A held command's pipe fills and the command waits in
``write(2)``, so the worker's memory stays bounded by the window and high_water.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IAddress, IConsumer, IPushProducer, ITransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

if TYPE_CHECKING:
    from bbenroll.tunnel.worker_side import WorkerTunnel

log = Logger(namespace="bbenroll")


def command_stream(process: Any) -> Any:
    """The transport the updates of the buildbot-worker command running ``process`` go to, or None.

    ``process`` is a Twisted process transport (``Process``, ``PTYProcess``). Its protocol
    is buildbot-worker's ``RunProcessPP``, whose ``command`` (a ``RunProcess``) sends its
    output with ``send_update``, a bound method of the step's ``ProtocolCommandPb``, whose
    ``command_ref`` (the master's ``RemoteCommand``) lives on the PB broker of one
    connection. Every step is read with a default: another buildbot-worker (or any other
    process) is simply not found, and only the core's ``max_buffer`` bounds its output.
    """
    protocol = getattr(process, "proto", None)
    command = getattr(protocol, "command", None)
    protocol_command = getattr(getattr(command, "send_update", None), "__self__", None)
    broker = getattr(getattr(protocol_command, "command_ref", None), "broker", None)
    return getattr(broker, "transport", None)


def reactor_processes(readers: Iterable[Any]) -> list[Any]:
    """The process transports among a reactor's readers, once each (a process has a reader per
    pipe; a ``PTYProcess`` is its own reader)."""
    found: dict[int, Any] = {}
    for reader in readers:
        process = getattr(reader, "proc", reader)
        if callable(getattr(process, "pauseProducing", None)) and hasattr(process, "proto"):
            found.setdefault(id(process), process)
    return list(found.values())


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

    def __init__(
        self,
        tunnel: WorkerTunnel,
        stream: int,
        protocol: Any,
        factory: Any = None,
        readers: Callable[[], Iterable[Any]] | None = None,
    ) -> None:
        self.tunnel = tunnel
        self.stream = stream
        self.protocol = protocol
        self.factory = factory
        self.producer: Any = None
        self.streaming = True  # the registered producer's kind: push (True) or pull
        self._lost = False
        # the reactor's getReaders (None: no processes to hold, as with a test clock)
        self.readers = readers
        self.paused = False  # the tunnel's core holds high_water bytes of this stream
        self.held: dict[int, Any] = {}  # command processes this transport paused, by id
        self._told_nothing_held = False
        self._pull: Any = None  # the pending resumeProducing of a pull producer

    # ITransport
    def write(self, data: bytes) -> None:
        if not self._lost and data:
            self.tunnel.write(self.stream, bytes(data))
            if self.paused:
                self._hold_commands()  # a command started since the pause writes too: hold it
            elif not self.streaming:
                self._ask_pull_producer()

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

    # IConsumer, as Twisted's FileDescriptor: a push producer is paused while the core holds
    # high_water bytes; a pull producer is asked for more whenever it does not
    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError(
                f"Cannot register producer {producer}, because producer {self.producer} "
                "was never unregistered."
            )
        if self._lost:
            producer.stopProducing()
            return
        self.producer, self.streaming = producer, bool(streaming)
        if not self.streaming:
            self._ask_pull_producer()
        elif self.paused:
            producer.pauseProducing()

    def unregisterProducer(self) -> None:
        self.producer, self.streaming = None, True
        self._cancel_pull()

    # the tunnel's flow control (its core's Pause and Resume for this stream)
    def pause_output(self) -> None:
        """The core holds high_water bytes of this stream: stop what feeds it."""
        if self._lost or self.paused:
            return
        self.paused = True
        self._cancel_pull()
        if self.producer is not None and self.streaming:
            self.producer.pauseProducing()
        self._hold_commands()
        if self.producer is None and not self.held and not self._told_nothing_held:
            self._told_nothing_held = True  # once per stream: it may be a source nothing can pause
            log.info(
                "bbenroll: stream {stream} is behind the link and nothing feeding it can be paused; "
                "it is buffered in memory",
                stream=self.stream,
            )

    def resume_output(self) -> None:
        """The core sent most of what it held: let the feeders go on."""
        if not self.paused:
            return
        self.paused = False
        self._release_commands()
        if self.producer is not None:
            if self.streaming:
                self.producer.resumeProducing()
            else:
                self._ask_pull_producer()

    def _hold_commands(self) -> None:
        if self.readers is None:
            return
        for process in reactor_processes(self.readers()):
            if id(process) not in self.held and command_stream(process) is self:
                process.pauseProducing()  # stops reading its pipes: the command blocks on write
                self.held[id(process)] = process

    def _release_commands(self) -> None:
        held, self.held = self.held, {}
        for process in held.values():
            process.resumeProducing()

    def _ask_pull_producer(self) -> None:
        # later, not now: a pull producer writes from resumeProducing, which would recurse
        if self._pull is None or not self._pull.active():
            self._pull = self.tunnel.clock.callLater(0, self._pull_more)

    def _pull_more(self) -> None:
        self._pull = None
        if self.producer is not None and not self.streaming and not self.paused and not self._lost:
            self.producer.resumeProducing()

    def _cancel_pull(self) -> None:
        if self._pull is not None and self._pull.active():
            self._pull.cancel()
        self._pull = None

    # IPushProducer of the other direction (master -> worker): nothing to pause, the
    # tunnel's window bounds what the master may send
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
        self.paused = False
        self._cancel_pull()
        # a held command must read its pipes again, or buildbot-worker's interrupt of it (the
        # stream is gone) would never see it end
        self._release_commands()
        if self.producer is not None:
            self.producer.stopProducing()
        exc = error.ConnectionDone(reason) if clean else error.ConnectionLost(reason)
        self.protocol.connectionLost(Failure(exc))
        if self.factory is not None:
            self.factory.doStop()  # as Twisted's connectors do: buildbot-worker waits for it
            self.factory = None
