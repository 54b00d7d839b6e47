"""Twisted endpoint strings as the registry holds them. Pure: no Twisted import."""

from __future__ import annotations

import ipaddress

from bbenroll.errors import BBEnrollError
from bbenroll.furl import BLANKS, is_ascii_decimal


def endpoint_parts(text: str) -> list[str]:
    """Split a Twisted endpoint string on unescaped colons, unescaping the parts."""
    parts, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


TCP_KINDS = ("tcp", "tcp6")


def _ascii_port(text: str) -> int | None:
    # str.isdigit() also takes other scripts' digits, which int() reads: ASCII only
    if is_ascii_decimal(text) and len(text) <= 5 and 0 < int(text) < 65536:
        return int(text)
    return None


def tcp_server(text: str) -> tuple[str, int | None, str | None] | None:
    """``(kind, port, interface)`` of a ``tcp:``/``tcp6:`` server endpoint, or None for other kinds.

    As Twisted reads it: the port is ``port=N`` or the first argument without a
    name, in any order with ``interface=`` and ``backlog=``; a bare number is
    ``tcp:N``. The port is None when there is none, or it is not 1-65535.
    """
    text = str(text).strip(BLANKS)
    parts = endpoint_parts(text)
    if len(parts) == 1:
        return ("tcp", _ascii_port(parts[0]), None) if parts[0] else None
    kind, arguments = parts[0], parts[1:]
    if kind not in TCP_KINDS:
        return None
    port: int | None = None
    interface: str | None = None
    positional = [a for a in arguments if "=" not in a]
    for argument in arguments:
        name, _, value = argument.partition("=")
        if name == "port" and "=" in argument:
            port = _ascii_port(value)
        elif name == "interface" and "=" in argument:
            interface = value
    if port is None and positional and not any(a.startswith("port=") for a in arguments):
        port = _ascii_port(positional[0])
    if not text.isascii():  # the ASCII grammar: a non-ASCII option never reaches Twisted's parser
        port = None
    return kind, port, interface


# the listen backlog of a TCP port whose endpoint string names none: Twisted's default (50)
# overflows when a fleet reconnects at once (a master restart), and an overflowing PB port
# makes the kernel use SYN cookies, which can leave a client "connected" to nobody. The
# kernel caps it at net.core.somaxconn (docs/deploy.md).
DEFAULT_BACKLOG = 1024


def with_backlog(endpoint: str, backlog: int = DEFAULT_BACKLOG) -> str:
    """``endpoint`` with ``backlog=`` added if it is a TCP server endpoint that names none.

    ``tcp:9989`` -> ``tcp:9989:backlog=1024``; a bare ``9989`` becomes ``tcp:9989:backlog=1024``;
    an explicit backlog and other kinds (``unix:``, ``systemd:``) are left as they are.
    """
    text = str(endpoint).strip(BLANKS)
    tcp = tcp_server(text)
    if tcp is None or tcp[1] is None:  # not TCP, or not valid: the checks name the original
        return text
    parts = endpoint_parts(text)
    if len(parts) == 1:
        return f"tcp:{text}:backlog={backlog}"
    if any(part.startswith("backlog=") for part in parts[1:]):
        return text
    return f"{text}:backlog={backlog}"


def listen_port(listen: str) -> int | None:
    """The TCP port a server endpoint listens on (``tcp:9989``, ``tcp:port=9989:...``, ``9989``), or None."""
    server = tcp_server(listen)
    return server[1] if server is not None else None


def check_listen_endpoint(text: str) -> str:
    """A plausible server endpoint for the master's Foolscap service (``tcp:9989`` ...)."""
    parts = endpoint_parts(str(text).strip(BLANKS))
    kind = parts[0]
    if kind == "ssl":
        raise BBEnrollError(
            f"listen endpoint {text!r}: Foolscap makes its own TLS connection (that is what pins the "
            "master's identity), so it cannot listen behind 'ssl:'; use 'tcp:PORT'"
        )
    if listen_port(text) is not None:
        return text
    if kind == "unix" and len(parts) > 1 and parts[1]:
        return text
    if kind in ("systemd", "onion", "i2p") and len(parts) > 1:
        return text
    raise BBEnrollError(f"listen endpoint {text!r} is not a Twisted server endpoint like 'tcp:9989'")


def check_loopback_endpoint(endpoint: str) -> str:
    """Refuse a PB port that other machines could reach: workers must use the FURL."""
    text = str(endpoint).strip(BLANKS)
    parts = endpoint_parts(text)
    kind, rest = parts[0], parts[1:]
    if kind == "ssl":
        raise BBEnrollError(
            f"master.pb {text!r}: TLS on the loopback PB port is not needed (the tunnel is encrypted) "
            "and the tunnel cannot connect to it; use 'tcp:9990:interface=127.0.0.1'"
        )
    tcp = tcp_server(text)
    if tcp is not None:
        _, port, interface = tcp
        if port is None:
            raise BBEnrollError(
                f"master.pb {text!r} has no port 1-65535 (digits 0-9); use 'tcp:9990:interface=127.0.0.1'"
            )
        if interface is None:
            raise BBEnrollError(
                f"master.pb {text!r} listens on every interface; workers must arrive only through "
                "bbenroll, so bind it to loopback, e.g. 'tcp:9990:interface=127.0.0.1'"
            )
        try:
            loopback = ipaddress.ip_address(interface).is_loopback
        except ValueError:
            loopback = interface == "localhost"
        if not loopback:
            raise BBEnrollError(
                f"master.pb {text!r} listens on {interface}, which is not a loopback address; "
                "use interface=127.0.0.1"
            )
        return text
    if kind == "unix" and rest and rest[0]:
        return text
    raise BBEnrollError(f"master.pb {text!r}: use 'tcp:PORT:interface=127.0.0.1' (or a unix: socket)")
