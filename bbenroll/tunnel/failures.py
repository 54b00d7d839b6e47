"""Why connecting to a FURL failed, as a kind the code decides on and a line the user reads.

``worker create`` and the worker's tunnel share this classification: the
tunnel picks its reconnect policy from :class:`FailureKind`, never from the
text of a message. The kinds come from exception types, as Foolscap and
Twisted raise them (found in their source, checked against real failures in
tests/tunnel/test_failures.py):

- the master's refusal: our client Tub has ``expose-remote-exception-types``
  off (wire.CLIENT_TUB_OPTIONS), so it fails with ``foolscap.tokens.RemoteException``
  around a ``CopiedFailure``; ``CopiedFailure.check`` compares the qualified names
  of the remote exception's classes, so ``check(wire.Refused)`` recognises it;
- a wrong TubID or an impostor: ``foolscap.tokens.BananaError`` from the
  negotiation ("TubID mismatch", "connected to the wrong Tub", or the other
  Tub's "unknown TubID" answer), which is also what any non-Foolscap server gives;
- unreachable: Twisted's ``ConnectError`` family (refused, timed out, no route),
  ``DNSLookupError`` (not a ConnectError), a cancelled attempt, and Foolscap's
  ``NegotiationError`` ("negotiation timeout", "no connection established within
  client timeout").
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class FailureKind(enum.Enum):
    UNREACHABLE = "unreachable"  # no address of the FURL answered (yet): retry soon
    WRONG_MASTER = "wrong-master"  # something answered, but not with the master's TLS identity
    REFUSED = "refused"  # the master refused the secret (unknown, revoked, expired, retired)
    FAILED = "failed"  # anything else


@dataclass(frozen=True)
class ConnectFailure:
    kind: FailureKind
    message: str  # one line for the user; never holds the secret
    # a REFUSED that retrying cannot change (wire.RefusedForGood): revoked, removed, ...
    permanent: bool = False


WRONG_MASTER_MESSAGE = (
    "the server at the FURL's address is not the master this FURL names (its TLS identity "
    "differs): the FURL may be outdated, or someone is impersonating the master"
)

NO_USABLE_HINTS_MESSAGE = (
    "none of the FURL's connection hints can be used here: bbenroll connects over tcp:HOST:PORT hints only"
)


def classify(failure: Any) -> ConnectFailure:
    """Classify a Twisted Failure from ``Tub.getReference``/``callRemote``."""
    from foolscap.tokens import BananaError, NegotiationError, NoLocationHintsError, RemoteException
    from twisted.internet import defer, error

    from bbenroll.tunnel.wire import REFUSED_FOR_GOOD_TYPE_NAMES, REFUSED_TYPE_NAMES

    if failure.check(RemoteException):
        copied = failure.value.failure  # a CopiedFailure: .value is the remote message
        if copied.check(*REFUSED_TYPE_NAMES):
            return ConnectFailure(
                FailureKind.REFUSED,
                f"the master refused this FURL: {copied.value}",
                permanent=bool(copied.check(*REFUSED_FOR_GOOD_TYPE_NAMES)),
            )
        # not a refusal: a fault on the master; its type name is all worth showing here
        return ConnectFailure(FailureKind.FAILED, f"the master failed ({copied.type.__name__}); see its log")
    if failure.check(BananaError):
        return ConnectFailure(FailureKind.WRONG_MASTER, WRONG_MASTER_MESSAGE)
    if failure.check(NoLocationHintsError):  # Foolscap's own message is empty
        return ConnectFailure(FailureKind.UNREACHABLE, NO_USABLE_HINTS_MESSAGE)
    if failure.check(
        error.ConnectError,
        error.DNSLookupError,
        error.TimeoutError,
        defer.CancelledError,
        NegotiationError,
    ):
        return ConnectFailure(
            FailureKind.UNREACHABLE,
            f"cannot reach the master at any of the FURL's addresses ({failure.getErrorMessage()})",
        )
    return ConnectFailure(FailureKind.FAILED, f"connection to the master failed: {failure.getErrorMessage()}")
