"""The values the tunnel core exchanges: frames (on the link) and events (for the adapter).

One small frozen type per frame and per event, so code dispatches on the type
(a dict lookup on ``type(x)``, not a chain of string comparisons) and each kind
carries exactly the fields it has.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeAlias, get_args


class ProtocolError(Exception):
    """The peer broke the protocol; the link should be dropped (state is kept)."""


class Role(enum.Enum):
    """Which end of a tunnel a core runs: only the worker opens streams."""

    WORKER = "worker"
    MASTER = "master"


# -- frames: what goes over the link ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Open:
    """The worker opens ``stream`` (the master connects it to the PB port)."""

    stream: int


@dataclass(frozen=True, slots=True)
class Data:
    """Bytes of ``stream`` starting at ``offset``."""

    stream: int
    offset: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Ack:
    """The receiver's next expected offset of ``stream`` (cumulative; final+1 acks a close)."""

    stream: int
    offset: int


@dataclass(frozen=True, slots=True)
class Close:
    """The sender's end of ``stream``, at its final ``offset``."""

    stream: int
    offset: int


@dataclass(frozen=True, slots=True)
class Reset:
    """Drop ``stream`` at once."""

    stream: int


@dataclass(frozen=True, slots=True)
class Ping:
    """Keeps an idle link from being declared dead."""


Frame: TypeAlias = Open | Data | Ack | Close | Reset | Ping
FRAME_TYPES: tuple[type, ...] = get_args(Frame)  # each table keyed by frame type covers these


# -- events: what the adapter acts on -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Deliver:
    """Bytes of ``stream`` for the application, in order, exactly once."""

    stream: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Opened:
    """Master side: the worker opened ``stream``; connect it."""

    stream: int


@dataclass(frozen=True, slots=True)
class Closed:
    """``stream`` is over. ``clean``: an orderly close (by either side), not a failure."""

    stream: int
    reason: str
    clean: bool = False


@dataclass(frozen=True, slots=True)
class Pause:
    """Too much unacknowledged data on ``stream``: stop reading from the application."""

    stream: int


@dataclass(frozen=True, slots=True)
class Resume:
    """``stream`` is below the low-water mark again."""

    stream: int


@dataclass(frozen=True, slots=True)
class LinkDead:
    """Nothing heard for ``dead_after``: drop the link and reconnect."""

    reason: str


@dataclass(frozen=True, slots=True)
class Expired:
    """The link stayed down past the resume deadline: the session is over."""


Event: TypeAlias = Deliver | Opened | Closed | Pause | Resume | LinkDead | Expired
EVENT_TYPES: tuple[type, ...] = get_args(Event)
