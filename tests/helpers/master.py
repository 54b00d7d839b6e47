"""The world of the deterministic service tests: one service, one clock, in-memory links."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from foolscap.api import Referenceable
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from zope.interface import implementer

from bbenroll.master.service import EnrollmentService
from bbenroll.master.tub import SHUTDOWN_GRACE
from bbenroll.tunnel.core import Frame
from bbenroll.tunnel.wire import FrameSink, RITunnelPeer
from tests.helpers.cli import FIXED_NOW, run_cli
from tests.helpers.foolscap import MemoryLink, pump, resolve


@implementer(RITunnelPeer)
class Receiver(FrameSink, Referenceable):
    """The worker's end of a tunnel session: records the frames it gets."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []

    def receive_frame(self, frame: Frame) -> None:
        self.frames.append(frame)


class World:
    """An EnrollmentService on a MemoryReactorClock (the network and the one clock),
    Foolscap's eventual queue on the same clock, and the CLI on the same time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.clock = MemoryReactorClock()
        self.clock.advance(FIXED_NOW.timestamp())
        self.service: EnrollmentService | None = None
        self.links: list[MemoryLink] = []
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.seconds(), UTC)

    def cli(self, *args: str) -> str:
        result = run_cli(["--registry", str(self.path), *args], clock=self.now)
        assert result.code == 0, result.err
        return result.out.strip()

    def add(self, name: str, *args: str) -> str:
        """Enroll ``name``; its swissnum."""
        return self.cli("add", name, *args).rsplit("/", 1)[1]

    def start(self, **options: Any) -> EnrollmentService:
        self.service = EnrollmentService(self.path, reactor=self.clock, clock=self.clock, **options)
        self.service.startService()
        resolve(self.clock, self.service.when_listening())
        return self.service

    def connect(self) -> MemoryLink:
        assert self.service is not None and self.service.tub is not None
        link = MemoryLink(self.service.tub, self.clock)
        self.links.append(link)
        return link

    def accepted(self, swissnum: str) -> tuple[MemoryLink, Any]:
        """A new connection on which ``swissnum`` was accepted, and the reference it got."""
        link = self.connect()
        return link, link.reference(swissnum)

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        pump(self.clock)

    def call(self, ref: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        return resolve(self.clock, ref.callRemote(method, *args, **kwargs))

    def logged(self, text: str) -> list[dict[str, Any]]:
        return [e for e in self.events if text in str(e.get("log_format", ""))]

    def finish(self) -> None:
        """Stop everything; nothing may be left scheduled on the clock."""
        globalLogPublisher.removeObserver(self.events.append)
        assert self.logged("unexpected error") == []  # the loop swallows (and logs) its errors
        for link in self.links:
            link.close()
        if self.service is not None and self.service.running:
            resolve(self.clock, self.service.stopService())
        self.advance(SHUTDOWN_GRACE)  # the brokers' shutdown aborts
        assert self.clock.getDelayedCalls() == []
