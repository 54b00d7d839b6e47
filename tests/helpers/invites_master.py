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


# -- a real Buildbot master with the hook, for many enrollments at once -----------------------

RECONFIG_DONE = "configuration update complete"  # Buildbot's log line at the end of each reconfig

FARM_CFG = """\
import os
from buildbot.plugins import schedulers, steps, util
from bbenroll.master import Enrollment
from bbenroll.master import hook
{tuning}
c = BuildmasterConfig = {{}}
enrollment = Enrollment("workers.toml", basedir=basedir)
enrollment.configure(c)
names = [w.name for w in c["workers"]] or ["nobody"]
factory = util.BuildFactory([steps.ShellCommand(command=["true"])])
c["builders"] = [util.BuilderConfig(name="b", workernames=names, factory=factory)]
c["schedulers"] = [schedulers.ForceScheduler(name="force", builderNames=["b"])]
c["www"] = {{"port": "tcp:{www}:interface=127.0.0.1", "plugins": {{}}}}
c["buildbotURL"] = "http://127.0.0.1:{www}/"
c["db"] = {{"db_url": "sqlite:///state.sqlite"}}
c["buildbotNetUsageData"] = None
"""


class InviteFarm:
    """A Buildbot master with the bbenroll hook on 127.0.0.1 (no workers yet); workers enroll
    into it with ``bbenroll worker create BASEDIR INVITE``. ``debounce=False``: the hook's
    reconfig debounce off (for the measurement of what it saves)."""

    def __init__(self, tmp: Path, *, debounce: bool = True) -> None:
        from tests.helpers.buildbot import BIN, run
        from tests.helpers.net import free_port

        self.tmp = tmp
        self.basedir = tmp / "master"
        self.registry = self.basedir / "workers.toml"
        self.www = free_port()
        port = free_port()
        self.workers: list[Path] = []
        run(BIN / "buildbot", "create-master", "--quiet", "--db", "sqlite:///state.sqlite", self.basedir)
        tuning = "" if debounce else "hook.RECONFIG_QUIET = 0.0\nhook.RECONFIG_DEBOUNCE_MAX = 0.0\n"
        (self.basedir / "master.cfg").write_text(FARM_CFG.format(www=self.www, tuning=tuning))
        store.create(self.registry, location=[f"tcp:127.0.0.1:{port}"],
                     listen=f"tcp:{port}:interface=127.0.0.1", pb=f"tcp:{free_port()}:interface=127.0.0.1",
                     identity="master.pem")
        from tests.helpers.cli import run_cli

        # Buildbot refuses a configuration without workers: one that never connects
        added = run_cli(["--registry", str(self.registry), "add", "standby"], clock=utc_now)
        assert added.code == 0, added.err
        run(BIN / "buildbot", "start", self.basedir, timeout=120)

    def master_log(self) -> str:
        return (self.basedir / "twistd.log").read_text(errors="replace")

    def reconfigs(self) -> int:
        return self.master_log().count(RECONFIG_DONE)

    def create(self, basedir: Path, invite: str) -> Any:
        from tests.helpers.buildbot import BIN, run

        # --timeout 120: many at once from one address wait on the guard's per-address bounds
        return run(BIN / "bbenroll", "worker", "create", basedir, "-", "--timeout", "120", check=False,
                   input_text=invite, timeout=300)

    def start_worker(self, basedir: Path) -> None:
        from tests.helpers.buildbot import BIN, run

        run(BIN / "buildbot-worker", "start", basedir, timeout=120)
        self.workers.append(basedir)

    def connected(self) -> set[str]:
        from tests.helpers.buildbot import configured_workers

        return {name for name, w in configured_workers(self.www).items() if w["connected_to"]}

    def stop(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from tests.helpers.buildbot import stop_daemon

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda b: stop_daemon("buildbot-worker", b), self.workers))
        stop_daemon("buildbot", self.basedir)
