"""FURLs and secrets: build, parse, validate. Pure: no I/O, no Twisted.

A FURL is ``pb://TUBID@HINT[,HINT...]/SWISSNUM`` exactly as Foolscap reads it
(``foolscap.furl.decode_furl``), but parsed strictly: bbenroll hands these
strings to people, so anything Foolscap would silently ignore is an error here.
"""

from __future__ import annotations

import base64
import re
import secrets
from dataclasses import dataclass

from bbenroll.errors import FurlError

BASE32_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
SWISSNUM_BITS = 160
TUBID_LENGTH = 32  # base32 of a 20-byte SHA-1 digest, as Foolscap computes it
MIN_SWISSNUM_LENGTH = 32  # 32 base32 characters carry 160 bits

_BASE32_RE = re.compile(r"^[a-z2-7]+\Z")
_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*\.?"
# ASCII only, everywhere: ``\d`` and ``str.isdigit()`` also accept other scripts
# digits (``١٩٩٨٩``), which ``int()`` reads but Foolscap and Twisted cannot use.
_DIGIT = "[0-9]"
_IPV4 = rf"{_DIGIT}{{1,3}}\.{_DIGIT}{{1,3}}\.{_DIGIT}{{1,3}}\.{_DIGIT}{{1,3}}"
_IPV6 = r"\[[A-Fa-f0-9:.]+(?:%[a-zA-Z0-9.]+)?\]"
_TCP_HINT_RE = re.compile(rf"^tcp:({_IPV4}|{_IPV6}|{_DNS_NAME}):(\d{{1,5}})\Z")
# Foolscap's generic rule: "TYPE:" then anything but "," and "/" (here: printable ASCII).
_GENERIC_HINT_RE = re.compile(r"^[A-Za-z0-9]+:[!-+\-.0-~]+\Z")
_PORT_ONLY_RE = re.compile(rf"[A-Za-z0-9.\-]+:{_DIGIT}{{1,5}}")  # "host:port": a tcp hint missing its "tcp:"
_ASCII_DECIMAL_RE = re.compile(rf"{_DIGIT}+")
_FURL_RE = re.compile(r"^pb://([^@/]*)@([^/]*)/([^/]*)\Z")


@dataclass(frozen=True)
class Furl:
    tubid: str
    hints: tuple[str, ...]
    swissnum: str

    def __str__(self) -> str:
        return build_furl(self.tubid, self.hints, self.swissnum)

    def redacted(self) -> str:
        """The FURL with its secret hidden: safe for logs."""
        return f"pb://{self.tubid}@{','.join(self.hints)}/{self.swissnum[:4]}…"


def new_swissnum(bits: int = SWISSNUM_BITS) -> str:
    """A fresh unguessable swissnum, encoded like Foolscap's own."""
    if bits < SWISSNUM_BITS or bits % 40:
        raise ValueError("swissnums need at least 160 bits, in multiples of 40")
    return base32_encode(secrets.token_bytes(bits // 8))


def new_password() -> str:
    """A fresh Buildbot PB password (192 bits, URL-safe)."""
    return secrets.token_urlsafe(24)


def base32_encode(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").lower().rstrip("=")


def is_base32(text: str) -> bool:
    return bool(_BASE32_RE.match(text))


def check_tubid(tubid: str) -> str:
    if not isinstance(tubid, str) or len(tubid) != TUBID_LENGTH or not is_base32(tubid):
        raise FurlError(f"tubid {tubid!r} is not {TUBID_LENGTH} lowercase base32 characters")
    return tubid


def check_swissnum(swissnum: str) -> str:
    if not isinstance(swissnum, str) or len(swissnum) < MIN_SWISSNUM_LENGTH or not is_base32(swissnum):
        raise FurlError(
            f"swissnum must be at least {MIN_SWISSNUM_LENGTH} lowercase base32 characters (160 bits)"
        )
    return swissnum


# what is stripped around a value users type; other scripts' spaces are not blanks here
BLANKS = " \t\r\n"


def is_ascii_decimal(text: str) -> bool:
    """``text`` is one or more of the digits 0-9 (``str.isdigit()`` takes ``١٩٩٨٩`` too)."""
    return _ASCII_DECIMAL_RE.fullmatch(text) is not None


def check_hint(hint: str) -> str:
    """Validate one connection hint; returns it unchanged.

    ``tcp:HOST:PORT`` is checked strictly (host name/IPv4/[IPv6], port 1-65535);
    other hint types (``tor:``, ``i2p:`` ...) must follow Foolscap's generic rule.
    Hints are printable ASCII; every refusal says why.
    """
    if not isinstance(hint, str) or not hint:
        raise FurlError("a connection hint may not be empty")
    odd = next((char for char in hint if not "!" <= char <= "~"), None)
    if odd is not None:
        raise FurlError(
            f"connection hint {hint!r} holds {odd!r}: hints are printable ASCII only "
            "(no spaces, digits 0-9 only)"
        )
    if hint.startswith("tcp:"):
        mo = _TCP_HINT_RE.match(hint)
        if not mo:
            raise FurlError(f"connection hint {hint!r} is not tcp:HOST:PORT")
        port = int(mo.group(2))
        if not 1 <= port <= 65535:
            raise FurlError(f"connection hint {hint!r}: port must be 1-65535")
        return hint
    if _PORT_ONLY_RE.fullmatch(hint):
        raise FurlError(f"connection hint {hint!r} has no type: for TCP write tcp:{hint}")
    if not _GENERIC_HINT_RE.match(hint):
        raise FurlError(
            f"connection hint {hint!r} is not TYPE:ADDRESS (like tcp:HOST:PORT or tor:ADDRESS.onion:PORT)"
        )
    return hint


def tcp_hint_port(hint: str) -> int | None:
    """The port of a ``tcp:HOST:PORT`` hint, or None for other hint types."""
    mo = _TCP_HINT_RE.match(hint) if hint.startswith("tcp:") else None
    return int(mo.group(2)) if mo else None


def build_furl(tubid: str, hints: tuple[str, ...] | list[str], swissnum: str) -> str:
    check_tubid(tubid)
    for hint in hints:
        check_hint(hint)
    check_swissnum(swissnum)
    return f"pb://{tubid}@{','.join(hints)}/{swissnum}"


def parse_furl(text: str) -> Furl:
    """Parse a FURL strictly; raises FurlError saying what is wrong."""
    if not isinstance(text, str):
        raise FurlError("a FURL must be text")
    text = text.strip()
    if not text.startswith("pb://"):
        raise FurlError("a FURL starts with pb://")
    mo = _FURL_RE.match(text)
    if not mo:
        raise FurlError("a FURL has the form pb://TUBID@HINT[,HINT...]/SWISSNUM")
    tubid, hints_text, swissnum = mo.groups()
    check_tubid(tubid)
    if not hints_text:
        raise FurlError("the FURL has no connection hints, so nothing can reach the master")
    hints = tuple(hints_text.split(","))
    for hint in hints:
        check_hint(hint)
    check_swissnum(swissnum)
    return Furl(tubid, hints, swissnum)
