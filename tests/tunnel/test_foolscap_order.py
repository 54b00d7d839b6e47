"""What the tunnel assumes of Foolscap's ordering, on a real connection on 127.0.0.1.

Foolscap 24.9's ``RootSlicer`` takes the calls that queued while the broker could not
send from the end of its ``sendQueue``: they leave last-in, first-out. The test puts a
real broker in that state (``paused``, the flag its ``produce`` loop checks), sends the
frames of the soak's failure (small data frames right behind a large one), and checks
that they do arrive reordered and that the core still delivers every byte once, in order.
If a Foolscap release stops reordering, the first assertion says so: docs/architecture.md
("What the tunnel assumes of Foolscap") is then out of date, not the tunnel wrong.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from foolscap.api import Referenceable, Tub
from twisted.internet import defer, reactor, task
from zope.interface import implementer

from bbenroll.tunnel.core import TunnelCore
from bbenroll.tunnel.frames import Data, Deliver, Role
from bbenroll.tunnel.wire import FrameSink, RITunnelPeer, send_frame, start_client_tub
from tests.helpers.net import free_port

pytestmark = pytest.mark.network


@implementer(RITunnelPeer)
class RecordingSink(FrameSink, Referenceable):
    def __init__(self) -> None:
        self.frames: list[object] = []

    def receive_frame(self, frame: object) -> None:
        self.frames.append(frame)


@pytest_twisted.inlineCallbacks
def test_queued_calls_arrive_last_in_first_out_and_the_core_delivers_in_order():
    server = Tub()
    server.startService()
    port = free_port()
    server.listenOn(f"tcp:{port}:interface=127.0.0.1")
    server.setLocation(f"tcp:127.0.0.1:{port}")
    sink = RecordingSink()
    furl = server.registerReference(sink, "s" * 32)
    client = start_client_tub()
    try:
        peer = yield client.getReference(furl)
        worker = TunnelCore(role=Role.WORKER, now=0)
        master = TunnelCore(role=Role.MASTER, now=0)
        worker.link_up(0, {})
        master.link_up(0, {})
        stream = worker.open_stream(0)
        written = [b"L" * 54_000] + [b"%06d" % i for i in range(7)]
        for data in written:
            worker.write(stream, data, 0)
        frames = worker.take()[0]
        broker = peer.tracker.broker
        broker.paused = True  # as while the transport is backed up: calls queue
        for frame in frames:
            send_frame(peer, frame)
        broker.paused = False
        broker.produce()
        for _ in range(200):
            if len(sink.frames) == len(frames):
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        offsets = [f.offset for f in sink.frames if isinstance(f, Data)]
        assert sorted(offsets) == [f.offset for f in frames if isinstance(f, Data)]
        assert offsets != sorted(offsets), "Foolscap kept the order: update docs/architecture.md"
        for frame in sink.frames:
            master.receive(frame, 0)  # never a ProtocolError
        delivered = b"".join(e.data for e in master.take()[1] if isinstance(e, Deliver))
        assert delivered == b"".join(written)
    finally:
        yield defer.gatherResults([client.stopService(), server.stopService()])
