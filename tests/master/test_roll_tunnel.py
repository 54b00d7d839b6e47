"""A real WorkerTunnel through a master key rollover: the running master serves both
identities, pushes the FURL under the new TubID, the tunnel moves its session with a
stream open (every byte, both ways, once, in order), and the old identity retires.

Real Foolscap and real sockets on 127.0.0.1; the master's PB port is a plain TCP
server that echoes a numbered reply for what it gets.
"""

from __future__ import annotations

import json
import tomllib

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol

from bbenroll.furl import parse_furl
from bbenroll.tunnel.furlfile import FurlFile, read_furl_file, write_furl_file
from bbenroll.tunnel.worker_side import WorkerTunnel
from tests.helpers.fake_master import wait_until
from tests.helpers.pb import login_bytes

pytestmark = pytest.mark.network


class Recorder(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.lost = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason=None) -> None:
        self.lost = reason


class PBPort(Factory):
    """Stands in for Buildbot's loopback PB port: records each stream's bytes."""

    def __init__(self) -> None:
        self.streams: list[Recorder] = []

    def buildProtocol(self, addr):
        stream = Recorder()
        self.streams.append(stream)
        return stream


@pytest_twisted.ensureDeferred
async def test_a_worker_tunnel_rolls_over_to_the_new_tubid_with_a_stream_open(master, tmp_path):
    pb = tomllib.loads(master.path.read_text())["master"]["pb"]
    pb_port = PBPort()
    listening = await serverFromString(reactor, pb).listen(pb_port)
    furl = master.cli("add", "w1")
    old_tubid = parse_furl(furl).tubid
    master.service.startService()
    await master.service.when_listening()
    path = tmp_path / "bbenroll.furl"
    write_furl_file(path, furl, 0)
    tunnel = WorkerTunnel(furl, reactor=reactor, resume_deadline=60, furlfile=path, serial=0)
    tunnel.start()
    loop = None
    try:
        await tunnel.when_ready(10)
        app = Recorder()
        tunnel.open_stream(app)
        login = login_bytes("w1")  # the master passes a stream on only once it logs in as its worker
        app.transport.write(login)
        await wait_until(reactor, lambda: pb_port.streams and pb_port.streams[0].data, what="the login")
        server = pb_port.streams[0]
        sent, echoed = bytearray(login), bytearray()
        counter = iter(range(10**6))

        def traffic() -> None:  # both ends keep writing, numbered, all through the roll
            n = next(counter)
            chunk = f"w{n:06d};".encode() * 20
            sent.extend(chunk)
            app.transport.write(chunk)
            back = f"m{n:06d};".encode() * 20
            echoed.extend(back)
            server.transport.write(back)

        loop = task.LoopingCall(traffic)
        loop.start(0.005)
        await wait_until(reactor, lambda: len(server.data) > 5_000, what="traffic over the old identity")

        new_tubid = json.loads(master.cli("--json", "master", "roll-identity"))["tubid"]
        new_furl = furl.replace(old_tubid, new_tubid)
        await wait_until(reactor, lambda: tunnel.serial == 1, what="the move to the new identity")
        assert tunnel.furl == new_furl
        # the tunnel confirmed over the new identity: nobody is left on the old one
        await wait_until(reactor, lambda: master.service.identities.tubids() == [new_tubid],
                         what="the old identity's retirement")
        more = len(sent) + 5_000
        await wait_until(reactor, lambda: len(server.data) > more, what="traffic over the new identity")
        loop.stop()
        loop = None
        await wait_until(reactor, lambda: len(server.data) >= len(sent) and len(app.data) >= len(echoed),
                         what="every byte")
        assert server.data == bytes(sent)  # every byte, once, in order
        assert app.data == bytes(echoed)
        assert app.lost is None and server.lost is None and tunnel.link_up
        assert len(pb_port.streams) == 1  # Buildbot's side saw one connection throughout
        assert read_furl_file(path) == FurlFile(new_furl, 1)
        (obj,) = master.service.connections.values()
        assert obj.broker.tub.tubID == new_tubid
        await wait_until(reactor, lambda: "previous" not in master.path.read_text(),
                         what="[master] previous removed")
    finally:
        if loop is not None:
            loop.stop()
        await tunnel.stop()
        await listening.stopListening()
