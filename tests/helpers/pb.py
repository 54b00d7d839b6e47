"""Bytes of Buildbot's PB protocol as a real client sends them."""

from __future__ import annotations

from twisted.cred.credentials import UsernamePassword
from twisted.internet.testing import StringTransport
from twisted.spread import banana, pb


def login_bytes(name: str | bytes, password: bytes = b"pw") -> bytes:
    """What Twisted's PB client (buildbot-worker's base) sends up to and including its login as ``name``.

    Made by the real ``PBClientFactory`` on a StringTransport, after the server's
    dialect list: the dialect choice, ``[version, 6]`` and the ``login`` call.
    """
    factory = pb.PBClientFactory()
    broker = factory.buildProtocol(None)
    transport = StringTransport()
    broker.makeConnection(transport)
    broker.dataReceived(banana.encode([b"pb", b"none"]))  # the server's dialects
    d = factory.login(UsernamePassword(name, password), client=pb.Referenceable())
    d.addErrback(lambda _: None)  # no server answers here
    data = transport.value()
    broker.connectionLost(None)
    return data
