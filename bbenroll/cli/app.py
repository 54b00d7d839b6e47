"""What every command gets: the registry path, the output, the clock, -v."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from bbenroll.cli.output import Output
from bbenroll.registry import DEFAULT_REGISTRY

if TYPE_CHECKING:  # the registry store imports more than a fast start allows
    from contextlib import AbstractContextManager

    from bbenroll.registry.store import Editor, LoadedRegistry


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class App:
    """The state one run of the CLI shares between the group and its command."""

    registry_path: Path = field(default_factory=lambda: Path(DEFAULT_REGISTRY))
    out: Output = field(default_factory=Output)
    clock: Callable[[], datetime] = utcnow  # injected: tests move time, commands never read the wall clock
    verbose: bool = False
    argv: list[str] = field(default_factory=list)  # as given: options click answers early (--version) read it

    def now(self) -> datetime:
        return self.clock().astimezone(UTC).replace(microsecond=0)

    def load(self) -> LoadedRegistry:
        from bbenroll.registry import store

        loaded = store.load(self.registry_path)
        self.warn_all(loaded.warnings)
        return loaded

    def edit(self) -> AbstractContextManager[Editor]:
        from bbenroll.fileio import permission_problem
        from bbenroll.registry import store

        problem = permission_problem(self.registry_path)
        if problem:
            self.out.warn(problem)
        return store.edit(self.registry_path, now=self.now())  # audit records get the injected clock

    def warn_all(self, warnings: Sequence[str]) -> None:
        for warning in warnings:
            self.out.warn(warning)
