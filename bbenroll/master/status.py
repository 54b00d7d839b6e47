"""What the master knows about each worker's connection, and its state file.

The running service keeps a :class:`StatusBook` (pure) and writes it as a
small JSON file beside the registry (never into ``workers.toml``), so that
``bbenroll status`` can show it without talking to the master.
"""

from __future__ import annotations

import json
import os
import socket
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

    @property
    def state(self) -> str:
        return "connected" if self.connections else "disconnected"


class StatusBook:
    def __init__(self) -> None:
        self.workers: dict[str, WorkerLink] = {}
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
        self.changed = True

    def seen(self, name: str, now: datetime) -> None:
        link = self.workers.get(name)
        if link is not None:
            link.last_seen = now  # saved with the next heartbeat, not on every call

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
        self.changed = True

    def offered(self, name: str, serial: int) -> None:
        link = self.workers.get(name)
        if link is not None and link.offer_pending != serial:
            link.offer_pending = serial
            self.changed = True

    def delivered(self, name: str, serial: int) -> None:
        """``name`` confirmed ``serial``: no offer pending up to it, its failure is history."""
        link = self.workers.get(name)
        if link is None:
            return
        if link.offer_pending is not None and link.offer_pending <= serial:
            link.offer_pending = None
            link.update_failure = link.update_failure_at = None
            self.changed = True

    def update_failed(self, name: str, serial: int, reason: str, now: datetime) -> None:
        link = self.workers.get(name)
        if link is not None:
            link.update_failure = f"serial {serial}: {reason}"
            link.update_failure_at = now
            self.changed = True

    def forget(self, names: set[str]) -> None:
        """Drop workers that are no longer in the registry and not connected."""
        for name in list(self.workers):
            if name not in names and not self.workers[name].connections:
                del self.workers[name]
                self.changed = True

    def to_json(self, now: datetime, *, running: bool = True, listen: str | None = None) -> dict[str, Any]:
        return {
            "version": STATUS_VERSION,
            "running": running,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "listen": listen,
            "updated": format_time(now),
            "workers": {
                name: {
                    "state": link.state,
                    "since": format_time(link.since),
                    "peer": link.peer,
                    "last_seen": format_time(link.last_seen),
                    **_update_fields(link),
                }
                for name, link in sorted(self.workers.items())
            },
        }


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


def write_status(path: Path, document: dict[str, Any]) -> None:
    atomic_write(path, (json.dumps(document, indent=1) + "\n").encode("utf-8"))


class StatusWriter:
    """Writes a :class:`StatusBook` to ``path``: on a change, and every :data:`HEARTBEAT`.

    A write that fails (a full disk, a read-only directory) is retried with the next
    heartbeat rather than on every tick; :meth:`write` returns the error message
    (for the caller to log) or None.
    """

    def __init__(self, path: Path, book: StatusBook) -> None:
        self.path = path
        self.book = book
        self.last_write: datetime | None = None
        self.failing = False

    def write(self, now: datetime, *, listen: str | None, force: bool = False,
              running: bool = True) -> str | None:
        due = self.last_write is None or now - self.last_write >= HEARTBEAT
        if not (force or due or (self.book.changed and not self.failing)):
            return None
        try:
            write_status(self.path, self.book.to_json(now, running=running, listen=listen))
        except OSError as e:
            self.last_write = now
            self.failing = True
            return f"cannot write {self.path}: {e}"
        self.failing = False
        self.book.changed = False
        self.last_write = now
        return None


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
                value is None or isinstance(value, str) for value in entry.values()
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
