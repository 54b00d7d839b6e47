"""A runner (master/writer.py's ``Runner``) that holds each function until the test runs it:
the "thread" of an off-loop parse or write, under the test's control."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer


class Held:
    def __init__(self) -> None:
        self.waiting: list[tuple[Callable[[], Any], defer.Deferred[Any]]] = []

    def __call__(self, function: Callable[[], Any]) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.waiting.append((function, d))
        return d

    def __len__(self) -> int:
        return len(self.waiting)

    def run_one(self) -> None:
        """Run the oldest held function; its Deferred fires with the result."""
        function, d = self.waiting.pop(0)
        d.callback(function())

    def run_all(self) -> None:
        while self.waiting:
            self.run_one()
