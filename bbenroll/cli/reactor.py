"""Running Twisted code from a command: ``task.react``, but the result comes back.

Library code returns Deferreds and never touches the global reactor; a command
that needs the network hands such a function to :func:`react`, which runs the
reactor once (``task.react`` ends the process, so its exit is caught here) and
returns the result or raises the error, so that :func:`bbenroll.cli.run`
reports it like any other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def react(main: Callable[[Any], Any]) -> Any:
    """Run ``main(reactor)`` (a Deferred, or a plain value) to completion."""
    from twisted.internet import defer, task
    from twisted.python.failure import Failure

    outcome: list[Any] = []

    def run(reactor: Any) -> Any:
        d = defer.maybeDeferred(main, reactor)
        d.addBoth(outcome.append)  # react must see success: the outcome is ours to report
        return d

    try:
        task.react(run)
    except SystemExit:
        pass  # react always exits; the outcome tells what happened
    if not outcome:
        raise KeyboardInterrupt  # the reactor stopped (Ctrl-C) before main finished
    result = outcome[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result
