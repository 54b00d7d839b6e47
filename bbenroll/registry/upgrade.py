"""``bbenroll upgrade``: rewrite an older registry in the current format, keeping every comment.

Version 2 (invites, imported and ephemeral workers, ``legacy_pb``) only adds
optional keys and tables to version 1, so a version 1 file becomes a version 2
file by its ``version`` line alone; the rest of the text is carried over byte
for byte. Each future format adds one step to :data:`STEPS`. The upgraded text
must then load as the current format, or nothing is written.

The old file is kept beside the registry (``X.toml.v1.bak``, 0600, never
overwritten: a second upgrade of a restored old file gets ``.v1.2.bak``), and
the upgrade is one record of the audit log, all under the registry's lock.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bbenroll.errors import BBEnrollError, RegistryError
from bbenroll.registry.model import OLDEST_UPGRADABLE_VERSION, REGISTRY_VERSION

# a root-level ``version = N`` line (before any table header), with what follows it kept
_VERSION_LINE_RE = re.compile(
    r"^(?P<lead>[ \t]*version[ \t]*=[ \t]*)(?P<number>[0-9]+)(?P<tail>[ \t]*(#[^\r\n]*)?)$", re.MULTILINE
)
_TABLE_HEADER_RE = re.compile(r"^[ \t]*\[", re.MULTILINE)
MAX_BACKUPS = 100  # X.toml.v1.bak .. X.toml.v1.100.bak: past that, something is looping


class UpgradeError(BBEnrollError):
    pass


def version_of(text: str, where: str) -> int:
    """The registry version a text declares (UpgradeError: not TOML, or no integer version)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UpgradeError(f"{where}: invalid TOML ({e}); fix it first (bbenroll edit)") from None
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise UpgradeError(f"{where}: no integer 'version' key: not a bbenroll registry")
    return version


def set_version(text: str, old: int, new: int, where: str) -> str:
    """``text`` with its root ``version = old`` line saying ``new``; everything else kept."""
    first_table = _TABLE_HEADER_RE.search(text)
    root_end = first_table.start() if first_table else len(text)
    for match in _VERSION_LINE_RE.finditer(text, 0, root_end):
        if int(match["number"]) == old:
            return text[: match.start("number")] + str(new) + text[match.end("number"):]
    raise UpgradeError(f"{where}: cannot find the line 'version = {old}' before the first table")


def v1_to_v2(text: str, where: str) -> str:
    return set_version(text, 1, 2, where)


# version N -> the step that makes N + 1 of it
STEPS: Mapping[int, Callable[[str, str], str]] = {1: v1_to_v2}


@dataclass(frozen=True)
class Plan:
    """What an upgrade of one file does: from ``old`` to ``new``, the new text (None: nothing to do)."""

    old: int
    new: int
    text: str | None


def plan(text: str, where: str) -> Plan:
    """The upgrade of ``text``; UpgradeError for a file no step applies to."""
    version = version_of(text, where)
    if version == REGISTRY_VERSION:
        return Plan(version, version, None)
    if version > REGISTRY_VERSION:
        raise UpgradeError(
            f"{where}: registry version {version} was written by a newer bbenroll (this one reads "
            f"version {REGISTRY_VERSION}): upgrade bbenroll instead"
        )
    if version < OLDEST_UPGRADABLE_VERSION:
        raise UpgradeError(f"{where}: registry version {version} is not one bbenroll ever wrote")
    new_text = text
    for step_from in range(version, REGISTRY_VERSION):
        new_text = STEPS[step_from](new_text, where)
    return Plan(version, REGISTRY_VERSION, new_text)


def backup_path(registry: Path, version: int) -> Path:
    """The first free ``X.toml.vN.bak`` / ``X.toml.vN.K.bak`` beside ``registry``."""
    for n in range(1, MAX_BACKUPS + 1):
        suffix = f".v{version}.bak" if n == 1 else f".v{version}.{n}.bak"
        candidate = registry.with_name(registry.name + suffix)
        if not candidate.exists() and not candidate.is_symlink():
            return candidate
    raise UpgradeError(
        f"{registry}: {MAX_BACKUPS} backups of version {version} exist already; remove old ones"
    )


@dataclass(frozen=True)
class Upgraded:
    path: Path
    old: int
    new: int
    backup: Path | None  # None: nothing was done (already current, or a dry run)


def upgrade(
    path: Path,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    actor: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> Upgraded:
    """Upgrade the registry at ``path`` in place, under its lock; see the module's docstring."""
    from bbenroll.fileio import atomic_write, exclusive_lock
    from bbenroll.registry import audit, schema, store

    path = Path(path)
    text = store.read_text(path)  # the friendly "not found" / "cannot read"
    if dry_run:
        found = plan(text, str(path))
        _check_loads(path, found)
        return Upgraded(path, found.old, found.new, None)
    real = store.real_path(path)
    with exclusive_lock(store.lock_path(real), timeout=timeout, owned_like=real):
        text = store.read_text(real)  # again, under the lock: what we replace is what we planned on
        found = plan(text, str(path))
        if found.text is None:
            return Upgraded(path, found.old, found.new, None)
        _check_loads(path, found)
        backup = backup_path(real, found.old)
        atomic_write(backup, text.encode("utf-8"), exclusive=True)
        head = schema.audit_from_data(tomllib.loads(text).get("audit"), schema.Problems())
        change = audit.Change("upgraded", reason=f"registry version {found.old} -> {found.new}")
        new_text, _ = store.audited(path, real, head, found.text, [change], now=now, actor=actor)
        try:
            atomic_write(real, new_text.encode("utf-8"))
        except OSError as e:
            raise RegistryError(str(path), f"cannot write: {e.strerror}") from None
    return Upgraded(path, found.old, found.new, backup)


def _check_loads(path: Path, found: Plan) -> None:
    """The upgraded text must read as the current format, or nothing is written."""
    if found.text is None:
        return
    from bbenroll.registry import store

    try:
        store.registry_from_text(path, found.text)
    except RegistryError as e:
        raise UpgradeError(f"{e}; nothing was upgraded (fix that first: bbenroll edit cannot, as it "
                           "reads the current format only; edit the file by hand)") from None
