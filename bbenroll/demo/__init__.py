"""``bbenroll demo``: a real master, worker and build on loopback.

The package's public names, which the CLI imports (standard library only, so
importing them costs little):

- :func:`run_demo` and :data:`DEFAULT_TIMEOUT` (:mod:`bbenroll.demo.story`, the story);
- :class:`DemoError`, :class:`DemoInterrupted`, :class:`DemoTerminated`
  (:mod:`bbenroll.demo.errors`);
- :class:`BuildResult`, :class:`DemoResult`, :class:`Events`, :func:`format_seconds`
  (:mod:`bbenroll.demo.results`).

The rest: :mod:`bbenroll.demo.processes` supervises the child processes,
:mod:`bbenroll.demo.rest` talks to the master's REST API, :mod:`bbenroll.demo.logs`
reads why a process failed from its log.
"""

from bbenroll.demo.errors import DemoError, DemoInterrupted, DemoTerminated
from bbenroll.demo.results import BuildResult, DemoResult, Events, format_seconds
from bbenroll.demo.story import DEFAULT_TIMEOUT, run_demo

__all__ = [
    "DEFAULT_TIMEOUT",
    "BuildResult",
    "DemoError",
    "DemoInterrupted",
    "DemoResult",
    "DemoTerminated",
    "Events",
    "format_seconds",
    "run_demo",
]
