"""Connect failures are classified by exception type: real Foolscap failures on 127.0.0.1."""

from __future__ import annotations

import pytest
import pytest_twisted
from foolscap.api import Referenceable, Tub
from foolscap.tokens import BananaError, NegotiationError
from twisted.internet import defer, error, protocol, reactor
from twisted.python.failure import Failure

from bbenroll.tunnel.failures import FailureKind, classify
from bbenroll.tunnel.wire import Refused, start_client_tub
from tests.helpers.net import free_port

pytestmark = pytest.mark.network


class LegacyRefused(Exception):
    """What masters before the package layout raised: the same class, at its old path."""


LegacyRefused.__module__, LegacyRefused.__name__ = "bbenroll.service", "Refused"


class Master(Referenceable):
    """Stands in for the master's EnrolledWorker: refuses, or fails for another reason."""

    def remote_get_worker_config(self) -> dict:
        raise Refused("worker revoked")

    def remote_old_master_config(self) -> dict:
        raise LegacyRefused("worker revoked")

    def remote_open_session(self) -> dict:
        raise KeyError("a bug on the master")


@pytest.fixture
def server():
    tub = Tub()
    tub.startService()
    port = free_port()
    tub.listenOn(f"tcp:{port}:interface=127.0.0.1")
    tub.setLocation(f"tcp:127.0.0.1:{port}")
    furl = tub.registerReference(Master(), "s" * 32)
    client = start_client_tub()
    yield tub, client, furl
    pytest_twisted.blockon(defer.gatherResults([client.stopService(), tub.stopService()]))


def fails(d):
    """A Deferred of ``[the Failure d fails with]``; it fails the test if ``d`` succeeds.

    (In a list: a Deferred whose result is a Failure is a failed Deferred.)"""

    def succeeded(result):
        raise AssertionError(f"did not fail: {result!r}")

    return d.addCallbacks(succeeded, lambda failure: [failure])


@pytest.mark.parametrize(
    ("method", "kind", "message"),
    [
        ("get_worker_config", FailureKind.REFUSED, "the master refused this FURL: worker revoked"),
        ("old_master_config", FailureKind.REFUSED, "the master refused this FURL: worker revoked"),
        # not a refusal; and no remote text or traceback in the message
        ("open_session", FailureKind.FAILED, "the master failed (KeyError); see its log"),
    ],
)
@pytest_twisted.inlineCallbacks
def test_only_refused_is_a_refusal(server, method, kind, message):
    _, client, furl = server
    ref = yield client.getReference(furl)
    (failure,) = yield fails(ref.callRemote(method))
    assert (classify(failure).kind, classify(failure).message) == (kind, message)


@pytest_twisted.inlineCallbacks
def test_a_tub_with_another_identity_is_the_wrong_master(server):
    tub, client, furl = server
    impostor_furl = furl.replace(tub.getTubID(), Tub().getTubID())  # same address, other key
    (failure,) = yield fails(client.getReference(impostor_furl))
    assert failure.check(BananaError)
    assert classify(failure).kind is FailureKind.WRONG_MASTER


@pytest_twisted.inlineCallbacks
def test_a_server_that_is_not_foolscap_is_the_wrong_master(server):
    tub, client, _ = server

    class Http(protocol.Protocol):
        def dataReceived(self, data):
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            self.transport.loseConnection()

    port = reactor.listenTCP(0, protocol.Factory.forProtocol(Http), interface="127.0.0.1")
    try:
        furl = f"pb://{tub.getTubID()}@tcp:127.0.0.1:{port.getHost().port}/x"
        (failure,) = yield fails(client.getReference(furl))
    finally:
        yield port.stopListening()
    assert classify(failure).kind is FailureKind.WRONG_MASTER


@pytest_twisted.inlineCallbacks
def test_a_closed_port_is_unreachable(server):
    tub, client, _ = server
    (failure,) = yield fails(client.getReference(f"pb://{tub.getTubID()}@tcp:127.0.0.1:{free_port()}/x"))
    assert failure.check(error.ConnectionRefusedError)
    why = classify(failure)
    assert why.kind is FailureKind.UNREACHABLE
    assert why.message.startswith("cannot reach the master at any of the FURL's addresses (Connection was")


@pytest.mark.parametrize(
    "exception",
    [
        error.DNSLookupError("no results for hostname lookup: x.invalid"),  # not a ConnectError
        error.TCPTimedOutError(),
        error.TimeoutError(),
        defer.CancelledError(),
        NegotiationError("negotiation timeout"),
        NegotiationError("no connection established within client timeout"),
    ],
)
def test_no_answer_is_unreachable(exception):
    assert classify(Failure(exception)).kind is FailureKind.UNREACHABLE


@pytest.mark.parametrize(
    "exception",
    [error.ConnectionLost("unknown TubID, wrong Tub"), ValueError("negotiation failed"), KeyError("TubID")],
)
def test_the_type_decides_never_the_text(exception):
    assert classify(Failure(exception)).kind is FailureKind.FAILED


def test_the_refusal_type_names_are_the_wire_contract():
    """Moving Refused changes what masters send: the current name must stay first in the contract."""
    from twisted.python import reflect

    from bbenroll.tunnel.wire import REFUSED_TYPE_NAMES

    assert REFUSED_TYPE_NAMES == (reflect.qual(Refused), "bbenroll.service.Refused")
