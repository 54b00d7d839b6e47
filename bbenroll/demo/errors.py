"""How the demo fails: each a one-line :class:`BBEnrollError`, with the exit status it means."""

from __future__ import annotations

import signal

from bbenroll.errors import BBEnrollError


class DemoError(BBEnrollError):
    """Something in the demo went wrong; the message says what (and where its log is)."""


class DemoInterrupted(BBEnrollError):
    """Ctrl-C, reported once the demo has cleaned up."""

    exit_code = 128 + signal.SIGINT

    def __init__(self) -> None:
        super().__init__("interrupted (the demo's processes were stopped)")


class DemoTerminated(BBEnrollError):
    """SIGTERM or SIGHUP arrived (Ctrl-C is a KeyboardInterrupt, as everywhere)."""

    def __init__(self, signum: int) -> None:
        self.exit_code = 128 + signum
        super().__init__(f"terminated by {signal.Signals(signum).name}")
