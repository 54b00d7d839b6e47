"""The master side: the master.cfg hook and the Foolscap service it runs.

``from bbenroll.master import Enrollment`` is the public name master.cfg uses.
It is imported lazily, so that ``bbenroll.master.status`` (read by the CLI)
does not pull in Buildbot.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Enrollment", "EnrollmentMasterService"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from bbenroll.master import hook

        return getattr(hook, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
