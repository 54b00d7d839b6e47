"""Worker keys for the binding tests (docs/security.md): in-memory links that present a TubID."""

from __future__ import annotations

import itertools
import tomllib
from pathlib import Path
from typing import Any

from foolscap.referenceable import TubRef

from bbenroll.furl import base32_encode
from tests.helpers.foolscap import MemoryLink

KEY_A = base32_encode(b"\x01" * 20)  # 32 base32 characters, as Foolscap's TubIDs
KEY_B = base32_encode(b"\x02" * 20)


_hosts = itertools.count(1)


def keyed_link(world: Any, tubid: str | None, host: str | None = None) -> MemoryLink:
    """A new in-memory connection to ``world``'s service whose client key has TubID ``tubid``
    (what Foolscap's negotiation leaves on the master's Broker); None: no key at all.

    Each from its own address unless ``host`` is given, so that the guard's growing delay
    for an address that keeps failing does not hold up the next test step."""
    link = MemoryLink(world.service.tub, world.clock, host=host or f"10.0.{next(_hosts) % 250}.1")
    world.links.append(link)
    link.server.remote_tubref = TubRef(tubid) if tubid is not None else None
    return link


def bound_of(path: Path, name: str) -> dict[str, Any] | None:
    """The ``bound`` table of worker ``name`` as the registry file holds it."""
    return tomllib.loads(Path(path).read_text())["workers"][name].get("bound")
