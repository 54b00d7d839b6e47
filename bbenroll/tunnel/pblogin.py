"""Which Buildbot worker a PB connection through a worker's tunnel logs in as. Pure.

A worker's FURL authenticates the worker to bbenroll, but the stream it opens
ends at Buildbot's PB port, where Buildbot checks a name and a password of its
own. Without a check here, worker A's tunnel with worker B's PB password (an
old ``buildbot.tac`` of B, say) would log in to Buildbot as B. So the master's
side of the tunnel reads the first PB messages of every stream, and lets the
stream through only once its ``login`` names the tunnel's own worker.

A PB client speaks Banana: it first picks a dialect (``pb``), then sends
``[version, 6]``, then ``[message, 1, root, login, 1, [tuple, NAME], [dictionary]]``
(NAME as bytes, or ``[unicode, bytes]`` when the client passes a ``str``). The
login message comes before the password's answer (``respond``), so refusing it
keeps the password from ever being checked for the wrong worker. Anything else
first (another method, another object, malformed Banana, or more than
:data:`MAX_LOGIN_BYTES` without a login) is refused too: Buildbot's PB root
offers nothing but ``login``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from twisted.spread import banana

# A buildbot-worker login is about 60 bytes (dialect, version, login call);
# far more without one is not a PB client logging in.
MAX_LOGIN_BYTES = 16 * 1024
# Banana's own prefix limit (twisted.spread.banana._PREFIX_LIMIT): number prefixes
# longer than this are refused by Buildbot's side too.
PREFIX_LIMIT = 64


class Verdict(enum.Enum):
    PENDING = "pending"  # no login seen yet: hold the bytes
    ALLOWED = "allowed"  # logs in as the tunnel's worker: pass everything from now on
    REFUSED = "refused"  # anything else: reset the stream


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    # for REFUSED: the name the client tried to log in as, if it sent one
    name: str | None = None
    # for REFUSED: why, for the master's log (never sent to the worker)
    reason: str | None = None


PENDING = Outcome(Verdict.PENDING)
ALLOWED = Outcome(Verdict.ALLOWED)


class _Refusal(Exception):
    def __init__(self, reason: str, name: str | None = None) -> None:
        super().__init__(reason)
        self.outcome = Outcome(Verdict.REFUSED, name=name, reason=reason)


class _Decoder(banana.Banana):
    """Banana's decoder, reading one direction and sending nothing."""

    def __init__(self, on_expression: Any) -> None:
        super().__init__(isClient=0)
        self.currentDialect = None
        self.setPrefixLimit(PREFIX_LIMIT)
        self._on_expression = on_expression

    def callExpressionReceived(self, obj: Any) -> None:
        if self.currentDialect is None:  # the client's choice among the server's dialects
            if obj not in self.knownDialects:
                raise _Refusal(f"not a PB client (dialect {_short(obj)})")
            self.currentDialect = obj
            return
        self._on_expression(obj)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _login_name(argument: Any) -> str:
    """The NAME of ``[tuple, NAME]``: bytes, or ``[unicode, bytes]``."""
    if isinstance(argument, list) and len(argument) == 2 and argument[0] == b"unicode":
        argument = argument[1]
    if not isinstance(argument, bytes):
        raise _Refusal(f"login with a name that is not a string ({_short(argument)})")
    try:
        return argument.decode("utf-8")
    except UnicodeDecodeError:
        raise _Refusal("login with a name that is not UTF-8") from None


class LoginCheck:
    """Feed it the bytes a worker sends on one stream until it says ALLOWED or REFUSED.

    ``expected`` is the tunnel's worker name (from the registry, by the FURL
    that opened the tunnel). After a verdict other than PENDING it keeps that
    verdict and reads nothing more.
    """

    max_bytes: int = MAX_LOGIN_BYTES

    def __init__(self, expected: str) -> None:
        self.expected = expected
        self.outcome = PENDING
        self._seen = 0
        self._expressions = 0
        self._decoder = _Decoder(self._expression)

    def feed(self, data: bytes) -> Outcome:
        if self.outcome.verdict is not Verdict.PENDING:
            return self.outcome
        self._seen += len(data)
        try:
            self._decoder.dataReceived(data)
            if self.outcome.verdict is Verdict.PENDING and self._seen > self.max_bytes:
                raise _Refusal(f"no PB login within {self.max_bytes} bytes")
        except _Refusal as refusal:
            self.outcome = refusal.outcome
        except Exception as e:  # BananaError, NotImplementedError (bad type byte), KeyError (vocab)...
            self.outcome = Outcome(Verdict.REFUSED, reason=f"malformed PB data ({type(e).__name__})")
        if self.outcome.verdict is not Verdict.PENDING:
            self._decoder = None  # type: ignore[assignment]  # its buffers are not needed any more
        return self.outcome

    def _expression(self, expression: Any) -> None:
        if self.outcome.verdict is not Verdict.PENDING:
            return  # the rest of a chunk after the verdict: Buildbot reads it, we do not
        self._expressions += 1
        if not isinstance(expression, list) or not expression:
            raise _Refusal(f"unexpected PB data {_short(expression)}")
        kind = expression[0]
        if kind == b"version" and self._expressions == 1:
            return
        if kind != b"message" or len(expression) != 7:
            raise _Refusal(f"a PB {_short(kind)} before the login")
        _, _request, target, method, _answer, arguments, _kw = expression
        if target != b"root" or method != b"login":
            raise _Refusal(f"a PB call of {_short(method)} on {_short(target)} before the login")
        if not (isinstance(arguments, list) and len(arguments) == 2 and arguments[0] == b"tuple"):
            raise _Refusal("a PB login without exactly one argument")
        name = _login_name(arguments[1])
        if name != self.expected:
            raise _Refusal("PB login for another worker", name=name)
        self.outcome = ALLOWED
