"""``bbenroll demo``: a real master, worker and build on loopback.

The package's public names, which the CLI imports (each on first use):

- :func:`run_demo` (:mod:`bbenroll.demo.story`, the story) and :data:`DEFAULT_TIMEOUT`
  (:mod:`bbenroll.demo.limits`);
- :class:`DemoError`, :class:`DemoInterrupted`, :class:`DemoTerminated`
  (:mod:`bbenroll.demo.errors`);
- :class:`BuildResult`, :class:`DemoResult`, :class:`Events`, :func:`format_seconds`
  (:mod:`bbenroll.demo.results`).

The rest: :mod:`bbenroll.demo.processes` supervises the child processes,
:mod:`bbenroll.demo.rest` talks to the master's REST API, :mod:`bbenroll.demo.logs`
reads why a process failed from its log.
"""

from __future__ import annotations

import importlib
from typing import Any

from bbenroll.demo.limits import DEFAULT_TIMEOUT

# the rest is imported on first use: the CLI's modules import this package at start
_LAZY = {
    "BuildResult": "bbenroll.demo.results",
    "DemoResult": "bbenroll.demo.results",
    "Events": "bbenroll.demo.results",
    "format_seconds": "bbenroll.demo.results",
    "DemoError": "bbenroll.demo.errors",
    "DemoInterrupted": "bbenroll.demo.errors",
    "DemoTerminated": "bbenroll.demo.errors",
    "run_demo": "bbenroll.demo.story",
}

__all__ = ["DEFAULT_TIMEOUT", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
