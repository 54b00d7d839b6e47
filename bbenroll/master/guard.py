"""Bounds on connections that have not authenticated, and on guessing: pure policy.

Anyone who can reach the Foolscap port can open connections and present
swissnums without knowing any secret. :class:`Guard` decides, per peer address,
what that may cost the master; the Tub (:mod:`bbenroll.master.tub`) applies it
to real connections, and the service to lookups. Nothing here touches the
network or reads a clock: every method that depends on time takes ``now``
(seconds, from the Tub's injected clock).

- At most :data:`MAX_UNAUTHENTICATED_PER_ADDRESS` connections of one address
  may be open without an accepted secret once they have sent something, and
  at most :data:`MAX_SILENT_PER_ADDRESS` that have sent nothing yet (each for
  at most :data:`SILENT_TIMEOUT`). A new one beyond a cap makes another go: the
  oldest of those that got least far (:class:`Progress`), never the new one
  itself. So an attacker behind a NAT can hold no more than that, a worker
  behind the same NAT still gets in (its new connection is never the one
  dropped), and a flood of connections that send nothing (cheap: no TLS) only
  ever pushes out other silent ones. The silent cap is above Twisted's listen
  backlog (50): one batch of accepts cannot push out a worker's connection
  before its first bytes are read. (With one cap of 8 and the oldest dropped
  whatever its progress, such a flood made most enrollments from the flooding
  address fail: docs/performance.md.)
- A refusal is answered at once the first time, then later and later for an
  address that keeps failing (:meth:`Guard.refused`), up to
  :data:`MAX_FAILURE_DELAY`. An accepted secret is never delayed, whatever
  its address did: the delay is only ever applied to a refusal.
- Refusals and drops are logged as one line per address per
  :data:`SUMMARY_INTERVAL` (:meth:`Guard.summaries`), the first one at once.
- Memory is bounded: at most :data:`MAX_TRACKED_ADDRESSES` failing addresses
  are remembered (the least recently failing one is forgotten first, its
  unlogged counts folded into an "other addresses" line), and an address is
  forgotten :data:`FAILURE_MEMORY` seconds after its last failure.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import Counter, OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field

AUTH_TIMEOUT = 10.0  # s from the end of negotiation (the Broker's start) to an accepted secret
NEGOTIATION_TIMEOUT = 30.0  # s from TCP accept to the end of Foolscap's negotiation (TLS included)
MAX_UNAUTHENTICATED_PER_ADDRESS = 8  # connections of one address that spoke, without an accepted secret
# connections of one address that have sent nothing yet: above Twisted's listen backlog (50),
# so a batch of accepts cannot push a worker out before its first bytes are read
MAX_SILENT_PER_ADDRESS = 64
SILENT_TIMEOUT = 5.0  # s from TCP accept to the first bytes (a client sends at once)
MAX_REFUSALS_PER_CONNECTION = 3  # refusals on one connection before it is dropped
FIRST_FAILURE_DELAY = 0.1  # s before answering an address's second failure in a row ...
MAX_FAILURE_DELAY = 5.0  # ... doubling with each further one, up to this
FAILURE_MEMORY = 600.0  # s after an address's last failure: its record (and its delay) is forgotten
MAX_TRACKED_ADDRESSES = 4096  # failing addresses remembered at once
SUMMARY_INTERVAL = 60.0  # s: at most one log line of refusals per address per interval
IPV6_PREFIX = 64  # IPv6 peers are counted per /64: one host can have all of it
OPEN_FILES_WARNING = 0.8  # warn when open files reach this fraction of the soft limit
OPEN_FILES_TARGET = 65536  # soft limit to raise to when the hard limit is unlimited

# What a refused client is told when its connection already had too many refusals.
TOO_MANY_REFUSALS = "too many refusals on this connection"
# What the summaries count besides the refusal reasons of the gate.
TIMED_OUT = "no accepted secret in time"
OVER_CAP = "too many unauthenticated connections from this address"
OTHER_ADDRESSES = "other addresses"  # the summary of addresses forgotten before their line


def address_key(host: str) -> str:
    """The unit the per-address bounds count: the IP address, or its /64 for IPv6."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host  # not an IP address (a UNIX socket, a test transport): itself
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # ::ffff:a.b.c.d is the IPv4 peer a.b.c.d
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/{IPV6_PREFIX}", strict=False))
    return str(address)


class Progress(enum.IntEnum):
    """How far a connection without an accepted secret got: over the cap, the
    least far goes first. Each step costs a peer more than the one before."""

    SILENT = 0  # TCP accepted, nothing received yet
    NEGOTIATING = 1  # sent its negotiation request (TLS follows)
    NEGOTIATED = 2  # TLS done, the Broker runs: next comes its secret


@dataclass(frozen=True)
class Refusal:
    """How to answer one refusal."""

    delay: float  # seconds to wait before sending the refusal
    log_now: bool  # the address's first refusal in a while: log it at once, not in a summary


@dataclass(frozen=True)
class Summary:
    """One log line: what happened to one address since its last line."""

    address: str
    counts: dict[str, int]  # by reason
    seconds: float  # since the address's previous line (or its first failure)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def describe(self) -> str:
        return ", ".join(f"{reason} x{count}" for reason, count in sorted(self.counts.items()))


@dataclass
class _Failing:
    """What is remembered of an address that failed."""

    failures: int  # in a row, since it was last forgotten
    last: float  # time of its last failure or drop
    logged: float  # time of its last log line
    unlogged: Counter[str] = field(default_factory=Counter)


class Guard:
    """Per-address counters of unauthenticated connections and failures (see module doc).

    The limits are attributes (defaults: the module's constants), so a test or
    a deployment can change one without touching the others.
    """

    max_unauthenticated_per_address = MAX_UNAUTHENTICATED_PER_ADDRESS
    max_silent_per_address = MAX_SILENT_PER_ADDRESS
    max_refusals_per_connection = MAX_REFUSALS_PER_CONNECTION
    first_failure_delay = FIRST_FAILURE_DELAY
    max_failure_delay = MAX_FAILURE_DELAY
    failure_memory = FAILURE_MEMORY
    max_tracked_addresses = MAX_TRACKED_ADDRESSES
    summary_interval = SUMMARY_INTERVAL

    def __init__(self) -> None:
        # address -> its open unauthenticated connections and their progress, oldest first
        self._unauthenticated: dict[str, OrderedDict[Hashable, Progress]] = {}
        self._failing: OrderedDict[str, _Failing] = OrderedDict()  # least recently failing first
        self._forgotten: Counter[str] = Counter()  # unlogged counts of addresses forgotten early

    # -- connections without an accepted secret ---------------------------------

    def arrived(self, address: str, connection: Hashable) -> list[Hashable]:
        """A new (silent) connection from ``address``; the connections to drop now to keep the caps.

        Over a cap, the oldest of the connections that got least far goes,
        never ``connection`` itself (see the module doc).
        """
        open_ = self._unauthenticated.setdefault(address, OrderedDict())
        open_[connection] = Progress.SILENT
        return self._over_caps(open_, connection)

    def progressed(self, address: str, connection: Hashable, progress: Progress) -> list[Hashable]:
        """``connection`` got as far as ``progress`` (it keeps its place by age); the
        connections to drop now, as for :meth:`arrived`."""
        open_ = self._unauthenticated.get(address)
        if open_ is None or connection not in open_ or progress <= open_[connection]:
            return []
        open_[connection] = progress
        return self._over_caps(open_, connection)

    def _over_caps(self, open_: OrderedDict[Hashable, Progress], keep: Hashable) -> list[Hashable]:
        silent = [c for c, p in open_.items() if p is Progress.SILENT]
        spoke = [c for c, p in open_.items() if p is not Progress.SILENT]
        dropped = []
        for group, cap in ((silent, self.max_silent_per_address),
                           (spoke, self.max_unauthenticated_per_address)):
            excess = len(group) - max(1, cap)
            if excess > 0:
                # least far first, oldest first among equals (sorted() is stable)
                others = sorted((c for c in group if c is not keep), key=open_.__getitem__)
                for victim in others[:excess]:
                    del open_[victim]
                    dropped.append(victim)
        return dropped

    def settled(self, address: str, connection: Hashable) -> None:
        """``connection`` authenticated or closed: it no longer counts against ``address``."""
        open_ = self._unauthenticated.get(address)
        if open_ is None:
            return
        open_.pop(connection, None)
        if not open_:
            del self._unauthenticated[address]

    def unauthenticated(self, address: str) -> int:
        """How many connections of ``address`` are open without an accepted secret."""
        return len(self._unauthenticated.get(address, ()))

    # -- failures -----------------------------------------------------------------

    def refused(self, address: str, reason: str, now: float) -> Refusal:
        """Count a refused lookup of ``address``; when and whether to answer it and log it."""
        record, new = self._record(address, now)
        delay = self._delay_after(record.failures)
        record.failures += 1
        if not new:
            record.unlogged[reason] += 1
        return Refusal(delay, log_now=new)

    def dropped(self, address: str, reason: str, now: float) -> None:
        """Count a connection of ``address`` dropped for ``reason`` (for the summary only)."""
        record, _ = self._record(address, now)
        record.unlogged[reason] += 1

    def delay_for(self, address: str) -> float:
        """The delay the next refusal of ``address`` would get (for tests and status)."""
        record = self._failing.get(address)
        return self._delay_after(record.failures if record is not None else 0)

    def _delay_after(self, failures: int) -> float:
        """The delay of a refusal that follows ``failures`` failures in a row."""
        if failures == 0:
            return 0.0
        return min(self.max_failure_delay, self.first_failure_delay * 2 ** (failures - 1))

    def tracked(self) -> int:
        """How many failing addresses are remembered."""
        return len(self._failing)

    def summaries(self, now: float, *, all_due: bool = False) -> list[Summary]:
        """The lines due at ``now`` (their counts start again), forgetting quiet addresses.

        ``all_due``: every address with counts not logged yet (the master stops).
        """
        due = []
        for address, record in list(self._failing.items()):
            if record.unlogged and (all_due or now - record.logged >= self.summary_interval):
                due.append(Summary(address, dict(record.unlogged), now - record.logged))
                record.unlogged.clear()
                record.logged = now
            if not record.unlogged and now - record.last >= self.failure_memory:
                del self._failing[address]
        if self._forgotten:
            due.append(Summary(OTHER_ADDRESSES, dict(self._forgotten), self.summary_interval))
            self._forgotten.clear()
        return due

    def _record(self, address: str, now: float) -> tuple[_Failing, bool]:
        record = self._failing.get(address)
        if record is not None and now - record.last >= self.failure_memory and not record.unlogged:
            del self._failing[address]  # quiet long enough: it starts afresh
            record = None
        if record is None:
            while len(self._failing) >= self.max_tracked_addresses:
                _, forgotten = self._failing.popitem(last=False)
                self._forgotten.update(forgotten.unlogged)
            record = self._failing[address] = _Failing(failures=0, last=now, logged=now)
            return record, True
        record.last = now
        self._failing.move_to_end(address)
        return record, False


# -- open files -----------------------------------------------------------------


def open_files_target(soft: int, hard: int, unlimited: int) -> int | None:
    """The soft open-files limit to set at start (``None``: leave it), given the
    current ``soft`` and ``hard`` limits and the platform's value for "unlimited"."""
    target = OPEN_FILES_TARGET if hard == unlimited else hard
    if soft != unlimited and soft < target:
        return target
    return None


def near_open_files_limit(open_files: int, limit: int, unlimited: int) -> bool:
    """Whether ``open_files`` is close enough to the soft ``limit`` to warn."""
    return limit != unlimited and limit > 0 and open_files >= OPEN_FILES_WARNING * limit
