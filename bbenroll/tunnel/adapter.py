"""The one timer each tunnel adapter keeps for its core's :meth:`TunnelCore.next_wakeup`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class WakeupTimer:
    """Calls ``callback`` at an absolute time on ``clock``; moving it reuses the DelayedCall.

    ``flush()`` runs once per frame, so rescheduling must not cancel and create a
    DelayedCall each time when the wake-up time has not moved.
    """

    def __init__(self, clock: Any, callback: Callable[[], None]) -> None:
        self.clock = clock
        self.callback = callback
        self._call: Any = None

    def schedule(self, when: float | None) -> None:
        """Fire at ``when`` (absolute seconds on the clock), or never if None."""
        if when is None:
            self.cancel()
            return
        delay = max(0.0, when - self.clock.seconds())
        call = self._call
        if call is not None and call.active():
            if call.getTime() != when:
                call.reset(delay)
            return
        self._call = self.clock.callLater(delay, self._fire)

    def cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _fire(self) -> None:
        self._call = None
        self.callback()
