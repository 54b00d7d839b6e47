"""Why connecting to a FURL failed, as a kind the code decides on and a line the user reads.

``worker create`` and the worker's tunnel share this classification: the
tunnel picks its reconnect policy from :class:`FailureKind`, never from the
text of a message.
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


def classify(failure: Any) -> ConnectFailure:
    """Classify a Twisted Failure from ``Tub.getReference``/``callRemote``."""
    from twisted.internet import defer, error

    value = failure.value
    copied = getattr(value, "failure", None)  # RemoteException around the master's refusal
    if copied is not None:
        return ConnectFailure(FailureKind.REFUSED, f"the master refused this FURL: {copied.value}")
    text = str(value)
    if "TubID" in text or "wrong Tub" in text or "unknown TubID" in text:
        return ConnectFailure(
            FailureKind.WRONG_MASTER,
            "the server at the FURL's address is not the master this FURL names (its TLS identity "
            "differs): the FURL may be outdated, or someone is impersonating the master",
        )
    if failure.check(
        error.ConnectionRefusedError,
        error.ConnectError,
        error.DNSLookupError,
        error.TimeoutError,
        defer.CancelledError,
    ):
        return ConnectFailure(
            FailureKind.UNREACHABLE,
            f"cannot reach the master at any of the FURL's addresses ({failure.getErrorMessage()})",
        )
    if "negotiation" in text.lower() or "NegotiationError" in repr(value):
        return ConnectFailure(
            FailureKind.UNREACHABLE, f"cannot reach the master at any of the FURL's addresses ({text})"
        )
    return ConnectFailure(FailureKind.FAILED, f"connection to the master failed: {failure.getErrorMessage()}")
