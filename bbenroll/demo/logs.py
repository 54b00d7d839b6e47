"""Reading the logs of the demo's processes: why one failed, in one line for an error message."""

from __future__ import annotations

import re
from pathlib import Path

LOG_REASON_WINDOW = 80  # lines at the end of a log that may explain a failure
_EXCEPTION_RE = re.compile(r"^(?:[A-Za-z_][\w]*\.)*([A-Za-z_]\w*(?:Error|Exception)): (.+)$")


def _strip_twistd_prefix(line: str) -> str:
    # twistd: "2026-01-02 03:04:05+0000 [-] message"
    head, sep, rest = line.partition("] ")
    return rest if sep and head.count("[") == 1 and len(head) < 80 else line


def log_reason(path: Path) -> str:
    """The gist of why a process failed, from its log, on one line (for error messages)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    lines = [_strip_twistd_prefix(line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return ""
    if "Configuration Errors:" in lines:  # Buildbot lists them, indented, after this line
        start = len(lines) - 1 - lines[::-1].index("Configuration Errors:")
        errors = []
        for line in lines[start + 1 :]:
            if line in ("Halting master.", "BuildMaster startup failed"):
                break
            errors.append(line)
        if errors:
            return "configuration errors: " + "; ".join(errors)
    recent = lines[-LOG_REASON_WINDOW:]
    for line in reversed(recent):  # the exception at the end of a traceback says it best
        mo = _EXCEPTION_RE.match(line)
        if mo:
            return f"{mo.group(1)}: {mo.group(2)}"
    for line in reversed(recent):
        if any(word in line for word in ("Error", "error:", "failed", "refused")):
            return line
    return lines[-1]
