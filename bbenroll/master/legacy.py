"""The gradual cut-over (docs/migration.md): the old public PB port, moved workers. Pure where possible.

During a cut-over (``[master] legacy_pb``) Buildbot's PB port is public, so a
password alone must not be enough for every worker:

- a worker imported with ``legacy = true`` and not ``moved`` yet logs in as it
  always did, directly, with its old password;
- every other registry worker (moved, or enrolled by bbenroll) logs in only
  through its bbenroll tunnel: a stolen ``buildbot.tac`` of a moved worker is
  worth nothing. A moved worker is held to this even without ``legacy_pb``.
- workers Buildbot knows that are not in the registry (declared by hand) are
  not ours to judge.

How a login through a tunnel is told from a direct one: the tunnel's master
side is this very process, and it knows the local address (127.0.0.1, port) of
each of its own TCP connections to the PB port. Buildbot sees that address as
the login's peer. A direct client, even one on 127.0.0.1, has a socket of its
own, with a port that no live tunnel leg holds while it is connected: it cannot
borrow a leg's address.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from bbenroll.endpoints import tcp_server
from bbenroll.errors import BBEnrollError
from bbenroll.registry.model import Worker

Address = tuple[str, int]  # (host, port) as Twisted's IPv4Address/IPv6Address give them

MOVED_ONLY_THROUGH_TUNNEL = "it has moved to its FURL: its password logs in only through its bbenroll tunnel"
ONLY_THROUGH_TUNNEL = "it is enrolled with bbenroll: its password logs in only through its bbenroll tunnel"


def check_legacy_pb(endpoint: str) -> str:
    """``[master] legacy_pb``: a Twisted TCP server endpoint with a port (``tcp:9989``)."""
    text = str(endpoint).strip()
    tcp = tcp_server(text)
    if tcp is None or tcp[1] is None:
        raise BBEnrollError(
            f"master.legacy_pb {text!r} is not a TCP server endpoint with a port 1-65535, like 'tcp:9989' "
            "(the old public PB port from master.cfg)"
        )
    return text


def tunnel_endpoint(legacy_pb: str) -> str:
    """Where the tunnels' master side dials a PB port that listens on ``legacy_pb``: loopback.

    An explicit interface is kept (the port listens only there); every interface
    (none given, ``0.0.0.0``, ``::``) is reached on the loopback address.
    """
    tcp = tcp_server(legacy_pb)
    if tcp is None or tcp[1] is None:
        raise BBEnrollError(f"master.legacy_pb {legacy_pb!r} has no TCP port to connect to")
    kind, port, interface = tcp
    if interface in (None, "", "0.0.0.0"):  # noqa: S104  (read, not bound: it is dialled as loopback)
        interface = "127.0.0.1"
    elif interface == "::":
        interface = "::1"
    kind = "tcp6" if ":" in interface else "tcp"
    return f"{kind}:{port}:interface={interface}"


def pb_port(master_pb: str | None, legacy_pb: str | None) -> str | None:
    """The PB server endpoint Buildbot listens on: the public legacy port during a cut-over."""
    return legacy_pb if legacy_pb is not None else master_pb


def needs_tunnel(worker: Worker | None, *, legacy_pb: str | None) -> str | None:
    """Why ``worker``'s password must arrive through its tunnel, or None if it may log in directly.

    ``worker`` None: not in the registry (declared by hand in master.cfg).
    """
    if worker is None:
        return None
    if worker.moved is not None:
        return MOVED_ONLY_THROUGH_TUNNEL
    if worker.legacy:
        return None
    # a bbenroll worker's password was only ever handed out through its FURL; while the PB
    # port is public it must not work from anywhere else. On the loopback port it is not
    # reachable from other machines anyway (and tests of old call it directly).
    return ONLY_THROUGH_TUNNEL if legacy_pb is not None else None


def login_refusal(
    worker: Worker | None, peer: Address | None, tunnel_addresses: Iterable[Address], *, legacy_pb: str | None
) -> str | None:
    """Why a PB login as ``worker`` from ``peer`` is refused (one line for the log), or None."""
    why = needs_tunnel(worker, legacy_pb=legacy_pb)
    if why is None:
        return None
    if peer is not None and peer in set(tunnel_addresses):
        return None
    return why


def address(addr: Any) -> Address | None:
    """(host, port) of a Twisted address; None for one without (UNIX sockets)."""
    host, port = getattr(addr, "host", None), getattr(addr, "port", None)
    if isinstance(host, str) and isinstance(port, int):
        return (host, port)
    return None


def leg_addresses(sessions: Iterable[Any]) -> set[Address]:
    """The local addresses of every live tunnel connection to the PB port (MasterSession.legs)."""
    found: set[Address] = set()
    for session in sessions:
        for leg in list(getattr(session, "legs", {}).values()):
            transport = getattr(leg, "transport", None)
            if transport is None or getattr(transport, "disconnected", False):
                continue
            local = address(transport.getHost())
            if local is not None:
                found.add(local)
    return found


def mark_moved(worker: Worker, now: datetime) -> Worker | None:
    """``worker`` once its first FURL connection was accepted; None if nothing changes."""
    if not worker.legacy or worker.moved is not None:
        return None
    return replace(worker, moved=now)


def left_to_move(workers: Mapping[str, Worker], now: datetime) -> list[str]:
    """The usable legacy workers that have not moved yet (sorted): who ``legacy_pb`` still serves."""
    return sorted(
        name
        for name, worker in workers.items()
        if worker.legacy and worker.moved is None and worker.is_usable(now)
    )


def migration_state(worker: Worker) -> str:
    """``legacy`` (may log in on the old port), ``moved`` (imported, now through its FURL), or ``""``."""
    if worker.moved is not None:
        return "moved"
    if worker.legacy:
        return "legacy"
    return ""


__all__ = [
    "Address",
    "address",
    "check_legacy_pb",
    "left_to_move",
    "leg_addresses",
    "login_refusal",
    "mark_moved",
    "migration_state",
    "needs_tunnel",
    "pb_port",
    "tunnel_endpoint",
]
