"""master.cfg hook pieces that need no running master."""

from __future__ import annotations

import pytest
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, UNIXClientEndpoint
from twisted.internet.testing import MemoryReactor

from bbenroll.endpoints import check_loopback_endpoint, endpoint_parts
from bbenroll.errors import BBEnrollError
from bbenroll.tunnel.master_side import pb_client_endpoint


@pytest.mark.parametrize("text", [
    "tcp:9990:interface=127.0.0.1",
    "tcp:port=9990:interface=127.0.0.2",
    r"tcp6:9990:interface=\:\:1",
    "tcp:9990:interface=localhost",
    "unix:/var/run/buildbot-pb.sock",
])
def test_loopback_pb_ports_are_accepted(text):
    assert check_loopback_endpoint(text) == text


@pytest.mark.parametrize("text, message", [
    ("9990", "listens on every interface"),
    ("tcp:9990", "listens on every interface"),
    ("tcp:9990:interface=0.0.0.0", "listens on 0.0.0.0, which is not a loopback address"),
    (r"tcp6:9990:interface=\:\:", "listens on ::, which is not a loopback address"),
    ("tcp:9990:interface=buildbot.example.org", "not a loopback address"),
    ("ssl:9990:interface=127.0.0.1", "TLS on the loopback PB port is not needed"),
    ("systemd:domain=INET:index=0", "use 'tcp:PORT:interface=127.0.0.1'"),
])
def test_other_pb_ports_are_refused(text, message):
    with pytest.raises(BBEnrollError, match=message):
        check_loopback_endpoint(text)


def test_endpoint_parts_unescape():
    assert endpoint_parts(r"tcp6:9990:interface=\:\:1") == ["tcp6", "9990", "interface=::1"]
    assert endpoint_parts(r"unix:/a\\b") == ["unix", r"/a\b"]


def test_pb_client_endpoint_matches_the_server_endpoint():
    reactor = MemoryReactor()
    e = pb_client_endpoint(reactor, "tcp:9990:interface=127.0.0.1")
    assert isinstance(e, TCP4ClientEndpoint) and (e._host, e._port) == ("127.0.0.1", 9990)
    e = pb_client_endpoint(reactor, r"tcp6:port=9991:interface=\:\:1")
    assert isinstance(e, TCP6ClientEndpoint) and (e._host, e._port) == ("::1", 9991)
    e = pb_client_endpoint(reactor, "unix:/tmp/pb.sock")
    assert isinstance(e, UNIXClientEndpoint) and e._path == "/tmp/pb.sock"
