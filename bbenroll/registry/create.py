"""Making a new registry and master identity: ``bbenroll init`` (``store.create``)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bbenroll.errors import BBEnrollError, RegistryError
from bbenroll.fileio import atomic_write
from bbenroll.registry import audit
from bbenroll.registry.audit import AuditHead
from bbenroll.registry.store import LoadedRegistry, audit_table, identity_path, real_path, registry_from_text

REGISTRY_TEMPLATE = """\
# bbenroll registry: this master's identity and every worker's enrollment.
# Edit it with the bbenroll CLI; comments and layout you add are kept.
# Schema: docs/registry.md. Keep this file private (mode 0600): it holds secrets.
version = 2

[master]
# TLS key and certificate of this master, relative to this file (mode 0600).
identity = {identity}
# Derived from the identity and checked on every load; every FURL pins it.
tubid = {tubid}
# Connection hints written into every FURL: how workers reach this master.
location = {location}
# Where the master's Foolscap service listens (a Twisted server endpoint).
listen = {listen}
# The master's own PB port: loopback only, workers arrive through the tunnel.
pb = {pb}

{audit}
# One [workers.NAME] table per worker, added by 'bbenroll add'.
"""


REGISTRY_EXISTS = "already exists; refusing to overwrite a registry"
AUDIT_EXISTS = "already exists (the audit log of an earlier registry?); move it away first"


def create_registry(
    path: Path,
    *,
    location: list[str],
    listen: str,
    pb: str,
    identity: str,
    now: datetime | None = None,
    actor: Mapping[str, str] | None = None,
) -> LoadedRegistry:
    """Write a new registry and a new master identity; refuses to replace either.

    The audit log starts here with one ``initialized`` record (``now``: its
    time, the wall clock if not given; ``actor``: the CLI's user and host).
    """
    import tomlkit

    from bbenroll.endpoints import check_listen_endpoint, check_loopback_endpoint
    from bbenroll.errors import FurlError
    from bbenroll.furl import check_hint
    from bbenroll.identity import create_identity

    path = Path(path)
    for hint in location:
        try:
            check_hint(hint)
        except FurlError as e:
            raise RegistryError("--location", str(e)) from None
    for option, value, check_endpoint in (
        ("--listen", listen, check_listen_endpoint),
        ("--pb", pb, check_loopback_endpoint),
    ):
        try:
            check_endpoint(value)
        except BBEnrollError as e:
            raise RegistryError(option, str(e)) from None
    if path.exists():
        raise RegistryError(str(path), REGISTRY_EXISTS)
    if not path.parent.is_dir():
        raise RegistryError(str(path), f"directory {path.parent} does not exist")
    log = audit.log_path(real_path(path))
    if log.exists() or log.is_symlink():
        raise RegistryError(str(log), AUDIT_EXISTS)
    ident_path = identity_path(path, identity)
    if ident_path.exists():
        raise RegistryError(str(ident_path), "already exists; refusing to overwrite a master identity")
    ident = create_identity(ident_path)

    def toml(value: Any) -> str:
        return tomlkit.item(value).as_string()

    (record,) = audit.chain(
        [audit.Change("initialized", reason=f"tubid {ident.tubid}")],
        after_seq=0,
        prev=None,
        now=now if now is not None else datetime.now(UTC),
        actor=actor if actor is not None else audit.cli_actor(),
    )
    head = AuditHead(record["hash"], record["seq"])
    text = REGISTRY_TEMPLATE.format(
        audit=audit_table(head),
        identity=toml(identity),
        tubid=toml(ident.tubid),
        location=toml(list(location)),
        listen=toml(listen),
        pb=toml(pb),
    )
    registry = registry_from_text(path, text)  # never write what we could not read back
    try:
        audit.append(log, [record])  # first, like every edit: see bbenroll.registry.audit
        atomic_write(path, text.encode("utf-8"), exclusive=True)
    except BaseException as e:
        ident_path.unlink()
        if log.exists() and not log.is_symlink():
            log.unlink()  # nothing was created: the log of a registry that never existed goes too
        if isinstance(e, FileExistsError):
            raise RegistryError(str(path), REGISTRY_EXISTS) from None
        if isinstance(e, OSError):
            raise RegistryError(str(path), f"cannot write: {e.strerror}") from None
        raise
    return LoadedRegistry(path, registry, text, audit=head)
