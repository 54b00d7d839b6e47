"""What the master knows about each worker's connection, and its state file.

The running service keeps a :class:`StatusBook` (pure) and writes it as a
small JSON file beside the registry (never into ``workers.toml``), so that
``bbenroll status`` can show it without talking to the master.

The file costs the event loop next to nothing (issue #12): each worker's entry
is rendered once per change of that worker (:meth:`StatusBook.render` joins the
cached texts), and :class:`StatusWriter` writes it in a thread (atomically,
0600, fsync'd), at most once per :data:`BATCH_INTERVAL` after changes and once
per :data:`HEARTBEAT` otherwise; a burst of a thousand connects is one write.
The service's stop writes it a last time (``"running": false``).

Per worker: ``state`` (its Foolscap connections), ``since``, ``peer``,
``last_seen``, and, when the master runs under Buildbot, ``attached``: whether
Buildbot's Worker of that name is attached now. A worker "connected" but not
attached is one whose PB login never completed (a stuck one).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bbenroll.errors import BBEnrollError
from bbenroll.fileio import atomic_write
from bbenroll.times import format_time, parse_date

STATUS_VERSION = 1
HEARTBEAT = timedelta(seconds=5)  # the service rewrites the file at least this often
STALE_AFTER = timedelta(seconds=30)  # older than this: the master is not running
# seconds from the first change to the write that carries it: a burst of connects is one write
BATCH_INTERVAL = 1.0


def status_path(registry_path: Path) -> Path:
    """``workers.toml`` -> ``workers.status.json``, in the same directory."""
    registry_path = Path(registry_path)
    return registry_path.with_name(registry_path.stem + ".status.json")


@dataclass
class WorkerLink:
    connections: int = 0
    since: datetime | None = None  # of the current state
    peer: str | None = None
    last_seen: datetime | None = None
    # pushed rotation (docs/rotation.md): the serial offered and not confirmed yet, and
    # the last failure the worker reported; strings in the file, so older readers accept them
    offer_pending: int | None = None
    update_failure: str | None = None
    update_failure_at: datetime | None = None
    # live connections per master identity (TubID) they were made to: during a key rollover
    # ``bbenroll status`` can tell who is still on the old one
    tubids: dict[str, int] = field(default_factory=dict)
    # Buildbot's Worker of this name is attached (None: not known, the service runs without Buildbot)
    attached: bool | None = None

    @property
    def state(self) -> str:
        return "connected" if self.connections else "disconnected"


class StatusBook:
    """Every worker's link; ``changed``: something worth a prompt write happened since the last one.

    Each entry's text is cached until that worker changes, so rendering the file is a join,
    not a walk that formats every worker (``seen`` refreshes a text without ``changed``: it is
    saved with the next heartbeat).
    """

    def __init__(self) -> None:
        self.workers: dict[str, WorkerLink] = {}
        self.changed = True
        self._texts: dict[str, str] = {}  # name -> '"name": {...}', valid unless in _stale
        self._stale: set[str] = set()

    def _touch(self, name: str, *, prompt: bool = True) -> None:
        self._stale.add(name)
        if prompt:
            self.changed = True

    def connected(self, name: str, peer: str, now: datetime, tubid: str | None = None) -> None:
        link = self.workers.setdefault(name, WorkerLink())
        if not link.connections:
            link.since = now
        link.connections += 1
        if tubid is not None:
            link.tubids[tubid] = link.tubids.get(tubid, 0) + 1
        link.peer = peer
        link.last_seen = now
        self._touch(name)

    def seen(self, name: str, now: datetime) -> None:
        link = self.workers.get(name)
        if link is not None:
            link.last_seen = now  # saved with the next heartbeat, not on every call
            self._touch(name, prompt=False)

    def disconnected(self, name: str, now: datetime, tubid: str | None = None) -> None:
        link = self.workers.get(name)
        if link is None or not link.connections:
            return
        link.connections -= 1
        if tubid is not None and tubid in link.tubids:
            link.tubids[tubid] -= 1
            if not link.tubids[tubid]:
                del link.tubids[tubid]
        link.last_seen = now
        if not link.connections:
            link.since = now
        self._touch(name)

    def set_attached(self, name: str, attached: bool) -> bool:
        """Record Buildbot's attachment of ``name``; whether it changed."""
        link = self.workers.get(name)
        if link is None or link.attached is attached:
            return False
        link.attached = attached
        self._touch(name)
        return True

    def watched(self) -> list[str]:
        """Workers whose Buildbot attachment is worth asking about: connected, or attached when
        last asked (a session waiting for its worker's resume keeps Buildbot's Worker attached)."""
        return [name for name, link in self.workers.items() if link.connections or link.attached]

    def offered(self, name: str, serial: int) -> None:
        link = self.workers.get(name)
        if link is not None and link.offer_pending != serial:
            link.offer_pending = serial
            self._touch(name)

    def delivered(self, name: str, serial: int) -> None:
        """``name`` confirmed ``serial``: no offer pending up to it, its failure is history."""
        link = self.workers.get(name)
        if link is None:
            return
        if link.offer_pending is not None and link.offer_pending <= serial:
            link.offer_pending = None
            link.update_failure = link.update_failure_at = None
            self._touch(name)

    def update_failed(self, name: str, serial: int, reason: str, now: datetime) -> None:
        link = self.workers.get(name)
        if link is not None:
            link.update_failure = f"serial {serial}: {reason}"
            link.update_failure_at = now
            self._touch(name)

    def forget_removed(self, removed: set[str]) -> None:
        """Drop the workers a registry change removed, unless still connected (a diff: no walk)."""
        for name in removed:
            link = self.workers.get(name)
            if link is not None and not link.connections:
                self.forget_one(name)

    def forget_one(self, name: str) -> None:
        del self.workers[name]
        self._texts.pop(name, None)
        self._stale.discard(name)
        self.changed = True

    def entries(self) -> dict[str, dict[str, Any]]:
        """Each worker's entry, as the file holds it."""
        return {name: _entry(link) for name, link in sorted(self.workers.items())}

    def to_json(self, now: datetime, *, running: bool = True, listen: str | None = None) -> dict[str, Any]:
        return {**_head(now, running=running, listen=listen), "workers": self.entries()}

    def render(self, now: datetime, *, running: bool = True, listen: str | None = None) -> bytes:
        """The file's bytes: the cached texts of unchanged workers, the changed ones formatted anew."""
        for name in self._stale:
            link = self.workers.get(name)
            if link is not None:
                self._texts[name] = json.dumps(name) + ": " + json.dumps(_entry(link))
        self._stale.clear()
        head = json.dumps(_head(now, running=running, listen=listen), indent=1)[:-2]  # without "\n}"
        workers = ",\n  ".join(self._texts[name] for name in sorted(self._texts))
        return f'{head},\n "workers": {{\n  {workers}\n }}\n}}\n'.encode()


def _head(now: datetime, *, running: bool, listen: str | None) -> dict[str, Any]:
    return {
        "version": STATUS_VERSION,
        "running": running,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "listen": listen,
        "updated": format_time(now),
    }


def _entry(link: WorkerLink) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "state": link.state,
        "since": format_time(link.since),
        "peer": link.peer,
        "last_seen": format_time(link.last_seen),
        **_update_fields(link),
    }
    if link.attached is not None:
        entry["attached"] = link.attached
    return entry


def _update_fields(link: WorkerLink) -> dict[str, str]:
    """The optional pushed-rotation fields: present only when there is something to say."""
    fields: dict[str, str] = {}
    if link.offer_pending is not None:
        fields["offer_pending"] = f"serial {link.offer_pending}"
    if link.update_failure is not None:
        fields["update_failure"] = link.update_failure
        fields["update_failure_at"] = format_time(link.update_failure_at) or ""
    if link.tubids:
        fields["tubids"] = ",".join(sorted(link.tubids))  # a string: older readers accept only those
    return fields


def write_status(path: Path, document: dict[str, Any] | bytes) -> None:
    data = document if isinstance(document, bytes) else (json.dumps(document, indent=1) + "\n").encode()
    atomic_write(path, data)


# runs a blocking function off the event loop; a Deferred of its result (master/writer.py's Runner)
Runner = Callable[[Callable[[], Any]], Any]


class StatusWriter:
    """Writes a :class:`StatusBook` to ``path``, batched, in ``run`` (a thread); see the module.

    :meth:`changed` after the book changed: a write within :data:`BATCH_INTERVAL`.
    :meth:`heartbeat` on every tick: a write if none was made for :data:`HEARTBEAT`.
    One write is in flight at a time; changes meanwhile are carried by the next batch.
    A write that fails (a full disk, a read-only directory) is reported to ``on_error``
    and retried with the next heartbeat rather than at once.
    """

    batch_interval: float = BATCH_INTERVAL

    def __init__(
        self,
        path: Path,
        book: StatusBook,
        *,
        now: Callable[[], datetime],
        listen: Callable[[], str | None],
        run: Runner,
        schedule: Callable[..., Any],
        on_error: Callable[[str], None],
    ) -> None:
        self.path = path
        self.book = book
        self.now = now
        self.listen = listen
        self.run = run
        self.schedule = schedule
        self.on_error = on_error
        self.last_write: datetime | None = None
        self.failing = False
        self.writes = 0  # writes begun (for tests and benches)
        self._timer: Any = None
        self._in_flight: Any = None  # the Deferred of the write being made
        self._closed = False

    def changed(self) -> None:
        """The book changed: write it within the batch interval (one timer for the whole burst)."""
        if self._closed or self._timer is not None or self._in_flight is not None or self.failing:
            return
        self._timer = self.schedule(self.batch_interval, self._batch_due)

    def heartbeat(self) -> None:
        """Write if the last write is older than :data:`HEARTBEAT` (a reader knows we run)."""
        if self._closed or self._timer is not None or self._in_flight is not None:
            return
        if self.last_write is None or self.now() - self.last_write >= HEARTBEAT:
            self.write_now()
        elif self.book.changed and not self.failing:
            self.changed()

    def stop(self) -> None:
        """No more writes (the service stops without a last one: it never ran)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._closed = True

    def _batch_due(self) -> None:
        self._timer = None
        self.write_now()

    def write_now(self, *, running: bool = True) -> Any:
        """Begin a write of the book as it is now (unless one is in flight: it is carried next)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._in_flight is not None:
            return self._in_flight
        now = self.now()
        data = self.book.render(now, running=running, listen=self.listen())  # on the loop: a join
        self.book.changed = False
        self.last_write = now
        self.writes += 1
        path = self.path
        d = self.run(lambda: write_status(path, data))
        self._in_flight = d
        d.addBoth(self._written)
        return d

    def _written(self, result: Any) -> None:
        self._in_flight = None
        error = getattr(result, "value", None)
        if isinstance(error, OSError):
            self.failing = True
            self.on_error(f"cannot write {self.path}: {error}")
        elif error is not None:
            self.failing = True
            self.on_error(f"cannot write {self.path}: {error!r}")
        else:
            self.failing = False
        if self.book.changed and not self.failing:
            self.changed()  # what changed while this write was in flight

    def close(self) -> Any:
        """The last write (``"running": false``), after the one in flight; a Deferred of it."""
        from twisted.internet import defer

        self.stop()
        before = self._in_flight if self._in_flight is not None else defer.succeed(None)
        final: defer.Deferred[None] = defer.Deferred()

        def last(_: Any) -> None:
            self._in_flight = None
            d = self.write_now(running=False)
            d.addBoth(lambda _: final.callback(None))

        before.addBoth(last)
        return final


def read_status(path: Path) -> dict[str, Any] | None:
    """The status document, or None if there is none. Raises on a damaged file."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise BBEnrollError(f"{path}: cannot read master status: {e.strerror}") from None
    try:
        document = json.loads(raw.decode("utf-8"))  # UnicodeDecodeError is a ValueError
        if not isinstance(document, dict) or not isinstance(document.get("workers"), dict):
            raise ValueError
        for entry in document["workers"].values():
            if not isinstance(entry, dict) or not all(
                value is None or isinstance(value, str) or (key == "attached" and isinstance(value, bool))
                for key, value in entry.items()
            ):
                raise ValueError
    except ValueError:
        raise BBEnrollError(
            f"{path}: master status file is damaged; it is rewritten while a master runs"
        ) from None
    return document


def master_running(document: dict[str, Any] | None, now: datetime) -> tuple[bool, str]:
    """Is the master that wrote ``document`` running? And if not, why we think so."""
    if document is None:
        return False, "no master has run with this registry (no status file)"
    if not document.get("running"):
        return False, f"the master stopped at {document.get('updated')}"
    try:
        updated = parse_date(str(document.get("updated")))
    except BBEnrollError:
        return False, "the status file has no valid 'updated' time"
    pid = document.get("pid")
    if document.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid):
        return False, f"the master (pid {pid}) is gone; it stopped without saying so"
    if abs(now - updated) > STALE_AFTER:  # a future time (skew, forgery) is stale too
        return False, f"the master has not updated its status since {document.get('updated')}"
    return True, "running"


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # os.kill(pid, 0) would terminate the process on Windows
    if not 0 < pid < 2**31:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else (or we cannot tell)
    return True
