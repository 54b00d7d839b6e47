"""Clocks for code that sleeps (threads and processes, not the reactor)."""

from __future__ import annotations


class SleepingClock:
    """``monotonic`` and ``sleep`` for the code under test: sleeping moves time on, at once."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
