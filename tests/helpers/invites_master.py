"""Invites for the master-side tests: made straight in the registry (as `bbenroll invite` would),
and a Foolscap client that redeems one as `worker create` does."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bbenroll.furl import build_furl
from bbenroll.registry import store

ACTOR = {"by": "admin", "host": "testhost"}


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def make_invite(reg_path: Path, *, now: datetime | None = None, **options: Any) -> tuple[str, str]:
    """Add an invite to the registry; its ID and its FURL (the only copy of its secret)."""
    from bbenroll.registry import invites

    now = now or utc_now()
    with store.edit(reg_path, 5, actor=ACTOR, now=now) as editor:
        invite, secret = invites.new_invite(
            now, taken_ids=set(editor.invites), by="admin@testhost", **options
        )
        editor.add_invite(invite)
        furl = build_furl(editor.master.tubid, editor.master.location, secret)
    return invite.id, furl


def revoke_invite(reg_path: Path, invite_id: str, now: datetime | None = None) -> None:
    from bbenroll.registry import invites

    now = now or utc_now()
    with store.edit(reg_path, 5, actor=ACTOR, now=now) as editor:
        editor.update_invite(invites.revoke(editor.invite(invite_id), now))


def invites_on_disk(reg_path: Path) -> dict[str, Any]:
    return dict(store.load(reg_path).registry.invites)


def secret_of(furl: str) -> str:
    return furl.rsplit("/", 1)[1]
