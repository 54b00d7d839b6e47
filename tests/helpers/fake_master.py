"""A small master for the worker's update tests: real Foolscap Tubs on 127.0.0.1.

It serves objects implementing ``RIEnrolledWorker`` under FURLs it makes on any
of its Tubs (another swissnum on the same Tub, or another Tub: another TubID and
port), all sharing one table of tunnel sessions, so a session opened over one
FURL can be resumed over another, as on the real master. It records every
``subscribe_updates``/``confirm_furl``/``furl_update_failed`` with the FURL it
came over, and can push ``offer_furl`` to the newest subscriber. Sessions are
real tunnel cores (role master) that record the bytes of each stream.

Also :func:`read_only_directory`, for the "cannot write the FURL file" cases.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from foolscap.api import Referenceable, Tub
from twisted.internet import defer, task
from zope.interface import implementer

from bbenroll.furl import new_swissnum
from bbenroll.tunnel.adapter import TunnelAdapter
from bbenroll.tunnel.core import Settings
from bbenroll.tunnel.frames import Deliver, Frame, ProtocolError, Role
from bbenroll.tunnel.wire import FrameSink, RIEnrolledWorker
from tests.helpers.net import free_port


class FakeSession(TunnelAdapter):
    """The master's end of one tunnel session: records what each stream delivers."""

    def __init__(self, clock: Any, session_id: str) -> None:
        super().__init__(clock, Role.MASTER, Settings(resume_deadline=60))
        self.session_id = session_id
        self.via: EnrolledWorker | None = None  # the object (FURL) the session is bound to now
        self.data: dict[int, bytes] = {}
        self.errors: list[ProtocolError] = []

    def attach(self, via: EnrolledWorker, receiver: Any, worker_received: dict[int, int]) -> dict[int, int]:
        received = self.core.received()
        self.via, self.peer = via, receiver
        self.core.link_down(self.clock.seconds())
        self.core.link_up(self.clock.seconds(), worker_received)
        self.flush()
        return received

    def on_deliver(self, event: Deliver) -> None:
        self.data[event.stream] = self.data.get(event.stream, b"") + event.data

    def on_protocol_error(self, error: ProtocolError) -> None:
        self.errors.append(error)

    def stop(self) -> None:
        self.peer = None
        self._timer.cancel()


@implementer(RIEnrolledWorker)
class EnrolledWorker(FrameSink, Referenceable):
    """What one FURL of the fake master resolves to."""

    def __init__(self, master: FakeMaster, label: str) -> None:
        self.master = master
        self.label = label
        self.stale_frames = 0  # frames that came over this FURL after the session moved away

    def receive_frame(self, frame: Frame) -> None:
        session = self.master.session
        if session is None or session.via is not self:
            self.stale_frames += 1
            return
        session.receive(frame)

    def remote_get_worker_config(self) -> dict[str, Any]:
        return {"name": "worker1", "password": "secret"}

    def remote_open_session(
        self, session: str, receiver: Any, received: dict[int, int], resume: bool, deadline: int
    ) -> dict[str, Any]:
        self.master.calls.append(("open_session", self.label, resume))
        known = self.master.session
        if known is not None and known.session_id == session:
            status = "resumed"
        elif resume:
            return {"status": "unknown", "received": {}}
        else:
            if known is not None:
                known.stop()
            known = self.master.session = FakeSession(self.master.clock, session)
            status = "new"
        receiver.notifyOnDisconnect(self.master.lost.append, self.label)
        return {"status": status, "received": known.attach(self, receiver, received)}

    def remote_subscribe_updates(self, updater: Any, serial: int) -> None:
        self.master.calls.append(("subscribe_updates", self.label, serial))
        self.master.updater = updater

    def remote_confirm_furl(self, serial: int) -> dict[str, Any]:
        self.master.calls.append(("confirm_furl", self.label, serial))
        return {"status": "confirmed"}

    def remote_furl_update_failed(self, serial: int, reason: str) -> None:
        self.master.calls.append(("furl_update_failed", self.label, serial, reason))


class OldEnrolledWorker(EnrolledWorker):
    """A master from before pushed rotation: it has no update methods at all."""

    remote_subscribe_updates = None  # type: ignore[assignment]
    remote_confirm_furl = None  # type: ignore[assignment]
    remote_furl_update_failed = None  # type: ignore[assignment]


class FakeMaster:
    """Tubs on 127.0.0.1 serving :class:`EnrolledWorker` objects; one session table for all."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.tubs: list[Tub] = []
        self.session: FakeSession | None = None
        self.updater: Any = None
        self.calls: list[tuple[Any, ...]] = []
        self.lost: list[str] = []  # labels of the FURLs whose worker connection ended

    def new_tub(self) -> Tub:
        """A started Tub with its own TubID, listening on a fresh port of 127.0.0.1."""
        tub = Tub()
        port = free_port()
        tub.listenOn(f"tcp:{port}:interface=127.0.0.1")
        tub.setLocation(f"tcp:127.0.0.1:{port}")
        tub.startService()
        self.tubs.append(tub)
        return tub

    def furl(self, tub: Tub, label: str, *, old: bool = False) -> str:
        """A new FURL on ``tub`` (a fresh swissnum), whose calls are recorded as ``label``."""
        kind = OldEnrolledWorker if old else EnrolledWorker
        return tub.registerReference(kind(self, label), name=new_swissnum())

    def offer(self, serial: int, furl: str) -> defer.Deferred:
        """Push ``furl`` numbered ``serial`` to the newest subscriber."""
        assert self.updater is not None, "no worker subscribed"
        return self.updater.callRemote("offer_furl", serial=serial, furl=furl)

    def named(self, method: str) -> list[tuple[Any, ...]]:
        return [call[1:] for call in self.calls if call[0] == method]

    def delivered(self, stream: int = 1) -> bytes:
        return self.session.data.get(stream, b"") if self.session is not None else b""

    def stop(self) -> defer.Deferred:
        if self.session is not None:
            self.session.stop()
        return defer.gatherResults([defer.maybeDeferred(tub.stopService) for tub in self.tubs])


async def wait_until(clock: Any, condition: Any, timeout: float = 10.0, what: str = "the condition") -> None:
    """Poll ``condition`` on the real reactor every 10 ms until it holds; fail after ``timeout``."""
    waited = 0.0
    while not condition():
        if waited >= timeout:
            raise AssertionError(f"{what} did not happen in {timeout}s")
        await task.deferLater(clock, 0.01, lambda: None)
        waited += 0.01


@contextlib.contextmanager
def read_only_directory(path: Path) -> Iterator[None]:
    """``path`` refuses new entries for the block: mode 0500, or ``chattr +i`` for root
    (whom modes do not stop); the test is skipped where neither works."""
    if os.name != "posix":
        pytest.skip("needs POSIX permissions")
    if os.geteuid() != 0:
        path.chmod(0o500)
        try:
            yield
        finally:
            path.chmod(0o700)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("running as root on a file system without chattr +i: cannot make a directory read-only")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True, capture_output=True)
