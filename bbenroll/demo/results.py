"""What the demo reports: the build's result, the whole run's, and the events on the way."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

# Buildbot's result codes (buildbot.process.results), in order: the REST API gives the number.
RESULT_NAMES = ("success", "warnings", "failure", "skipped", "exception", "retry", "cancelled")


class Events(Protocol):
    """What the demo tells its user interface as it goes."""

    def progress(self, text: str) -> None: ...

    def furl(self, name: str, furl: str) -> None: ...

    def build_done(self, build: BuildResult) -> None: ...


@dataclass
class BuildResult:
    number: int
    builder: str
    worker: str
    result: str  # one of RESULT_NAMES
    duration: float | None  # seconds, as Buildbot recorded it
    log_tail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.result == "success"


@dataclass
class DemoResult:
    build: BuildResult
    furl: str  # redacted
    directory: str | None  # kept directory, or None when it was removed
    elapsed: float  # seconds, end to end

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.build.ok,
            "result": self.build.result,
            "build": asdict(self.build),
            "worker": self.build.worker,
            "furl": self.furl,
            "directory": self.directory,
            "kept": self.directory is not None,
            "elapsed": round(self.elapsed, 3),
        }


def result_name(code: Any) -> str:
    """The name of a Buildbot result code (anything unexpected as it came)."""
    return RESULT_NAMES[code] if isinstance(code, int) and 0 <= code < len(RESULT_NAMES) else str(code)


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "an unknown time"
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds == int(seconds) else f"{seconds:.1f}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s"
