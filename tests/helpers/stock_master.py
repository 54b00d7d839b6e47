"""Stock Buildbot masters and workers (no bbenroll in them), the way a site has them before
``bbenroll import`` and ``bbenroll worker migrate`` (docs/migration.md).

``write_stock_master_cfg`` writes only master.cfg (enough for Buildbot's config loader);
``create_stock_master`` makes a whole basedir with ``buildbot create-master`` first, for a
master that is started; ``create_stock_worker`` runs ``buildbot-worker create-worker``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers.buildbot import BIN, run


@dataclass(frozen=True)
class StockWorker:
    """One entry of c['workers']. ``password_source``/``source``: Python text used as is
    (an ``util.Interpolate(...)`` password, a latent worker, a custom class)."""

    name: str
    password: str = "pass"
    options: Mapping[str, Any] = field(default_factory=dict)
    password_source: str | None = None
    source: str | None = None

    def python(self) -> str:
        if self.source is not None:
            return self.source
        password = self.password_source if self.password_source is not None else repr(self.password)
        args = "".join(f", {key}={value!r}" for key, value in self.options.items())
        return f"worker.Worker({self.name!r}, {password}{args})"


STOCK_MASTER_CFG = """\
from buildbot.plugins import schedulers, steps, util, worker

c = BuildmasterConfig = {{}}
c["workers"] = [
{workers}
]
c["protocols"] = {{"pb": {{"port": {pb_port!r}}}}}
factory = util.BuildFactory([steps.ShellCommand(command={command!r})])
c["builders"] = [util.BuilderConfig(name="b", workernames={names!r}, factory=factory)]
c["schedulers"] = [schedulers.ForceScheduler(name="force", builderNames=["b"])]
c["www"] = {{"port": "tcp:{www_port}:interface=127.0.0.1", "plugins": {{}}}}
c["buildbotURL"] = "http://127.0.0.1:{www_port}/"
c["db"] = {{"db_url": "sqlite:///state.sqlite"}}
c["title"] = "stock master"
c["buildbotNetUsageData"] = None
{extra}
"""


def stock_master_cfg(
    workers: Iterable[StockWorker],
    *,
    pb_port: str = "tcp:9989",
    www_port: int = 8010,
    command: Sequence[str] = ("echo", "hi"),
    extra: str = "",
) -> str:
    """master.cfg's text: the workers, one builder ``b`` on all of them, a force scheduler."""
    workers = list(workers)
    return STOCK_MASTER_CFG.format(
        workers="\n".join(f"    {w.python()}," for w in workers),
        pb_port=pb_port,
        command=list(command),
        names=[w.name for w in workers] or ["nobody"],
        www_port=www_port,
        extra=extra,
    )


def write_stock_master_cfg(basedir: Path, workers: Iterable[StockWorker], **kwargs: Any) -> Path:
    """``basedir/master.cfg`` (basedir made if needed); kwargs as for :func:`stock_master_cfg`."""
    basedir.mkdir(parents=True, exist_ok=True)
    path = basedir / "master.cfg"
    path.write_text(stock_master_cfg(workers, **kwargs))
    return path


def create_stock_master(basedir: Path, workers: Iterable[StockWorker], **kwargs: Any) -> Path:
    """A real master basedir (``buildbot create-master``) with a stock master.cfg."""
    run(BIN / "buildbot", "create-master", "--quiet", "--db", "sqlite:///state.sqlite", basedir)
    return write_stock_master_cfg(basedir, workers, **kwargs)


def create_stock_worker(basedir: Path, name: str, password: str, master: str, *options: str) -> Path:
    """``buildbot-worker create-worker [options] BASEDIR MASTER NAME PASSWORD``; the tac's path.

    ``options``: create-worker's own (``--umask=0o22``, ``--maxdelay=20``, ...)."""
    run(BIN / "buildbot-worker", "create-worker", "--quiet", *options, basedir, master, name, password)
    return basedir / "buildbot.tac"


NON_DEFAULT_WORKER_OPTIONS = (
    "--umask=0o27",
    "--maxdelay=17",
    "--numcpus=3",
    "--keepalive=123",
    "--allow-shutdown=file",
    "--maxretries=7",
    "--delete-leftover-dirs",
    "--log-size=2000000",
    "--log-count=4",
)
"""create-worker options that all differ from its defaults: migrate must keep each."""
