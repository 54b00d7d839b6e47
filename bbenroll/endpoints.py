"""Twisted endpoint strings as the registry holds them. Pure: no Twisted import."""

from __future__ import annotations

import ipaddress

from bbenroll.errors import BBEnrollError
from bbenroll.furl import is_ascii_decimal


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


def listen_port(listen: str) -> int | None:
    """The TCP port a server endpoint listens on (``tcp:9989``, ``tcp:port=9989:...``, ``9989``), or None."""
    parts = endpoint_parts(str(listen).strip())
    if parts[0] in TCP_KINDS and len(parts) > 1:
        port = parts[1].removeprefix("port=")
    elif len(parts) == 1:
        port = parts[0]
    else:
        return None
    return int(port) if is_ascii_decimal(port) and len(port) <= 5 and 0 < int(port) < 65536 else None


def check_listen_endpoint(text: str) -> str:
    """A plausible server endpoint for the master's Foolscap service (``tcp:9989`` ...)."""
    parts = endpoint_parts(str(text).strip())
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
    text = str(endpoint).strip()
    parts = endpoint_parts(text)
    kind, rest = parts[0], parts[1:]
    if kind == "ssl":
        raise BBEnrollError(
            f"master.pb {text!r}: TLS on the loopback PB port is not needed (the tunnel is encrypted) "
            "and the tunnel cannot connect to it; use 'tcp:9990:interface=127.0.0.1'"
        )
    if is_ascii_decimal(text) or kind in ("tcp", "tcp6"):
        interface = None
        for part in rest:
            if part.startswith("interface="):
                interface = part.split("=", 1)[1]
        if listen_port(text) is None:
            raise BBEnrollError(f"master.pb {text!r}: the port must be a number 1-65535 (digits 0-9)")
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
