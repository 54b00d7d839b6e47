"""Latent workers bbenroll ships, for master.cfg (they run on the master's host).

They live here, not in :mod:`bbenroll.worker` (the code that runs on worker machines,
where Buildbot's master package need not be installed): these classes subclass
Buildbot's ``AbstractLatentWorker`` and are imported only by master.cfg::

    from bbenroll.latent import LocalLatentWorker
    c["workers"] = [enrollment.latent(LocalLatentWorker, "local1", build_wait_timeout=60)]
"""

from bbenroll.latent.local import LocalLatentWorker

__all__ = ["LocalLatentWorker"]
