"""Durations and dates as users type them. Pure: ``now`` is always passed in."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

from bbenroll.errors import TimeSpecError
from bbenroll.furl import BLANKS

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# ASCII only: ``\d`` and ``\s`` would also take other scripts' digits and spaces
_DURATION_RE = re.compile(r"([0-9]+)[ \t]*([smhdw])")
_FULL_DURATION_RE = re.compile(r"(?:[ \t]*[0-9]+[ \t]*[smhdw][ \t]*)+")
_MAX = timedelta(days=365 * 100)


def parse_duration(text: str) -> timedelta:
    """``90m``, ``24h``, ``7d``, ``2w``, ``1d12h``: a positive duration."""
    spec = text.strip(BLANKS).lower()
    if not _FULL_DURATION_RE.fullmatch(spec):
        raise TimeSpecError(
            f"duration {text!r} not understood: use a number and a unit, like 90m, 24h, 7d or 2w"
        )
    parts = _DURATION_RE.findall(spec)
    if any(len(n) > 12 for n, _ in parts):
        raise TimeSpecError(f"duration {text!r} is longer than 100 years")
    total = sum(int(n) * _UNITS[unit] for n, unit in parts)
    if total <= 0:
        raise TimeSpecError(f"duration {text!r} must be longer than zero")
    if total > _MAX.total_seconds():
        raise TimeSpecError(f"duration {text!r} is longer than 100 years")
    return timedelta(seconds=total)


def parse_date(text: str) -> datetime:
    """An ISO 8601 date or date-time; naive values are taken as UTC."""
    spec = text.strip(BLANKS)
    try:
        if "T" in spec or " " in spec or ":" in spec:
            value = datetime.fromisoformat(spec.replace("z", "Z"))
        else:
            value = datetime.combine(date.fromisoformat(spec), datetime.min.time())
    except ValueError:
        raise TimeSpecError(
            f"date {text!r} not understood: use ISO 8601, like 2027-06-30 or 2027-06-30T12:00:00Z"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return to_utc(value)
    except OverflowError:
        raise TimeSpecError(f"date {text!r} is out of range") from None


def parse_when(text: str, now: datetime) -> datetime:
    """A point in time given as a duration from ``now`` or as a date."""
    spec = text.strip(BLANKS)
    if _FULL_DURATION_RE.fullmatch(spec.lower()):
        return to_utc(now + parse_duration(spec))
    return parse_date(spec)


def to_utc(value: datetime) -> datetime:
    """Normalise to UTC, whole seconds (what the registry stores)."""
    if value.tzinfo is None:
        raise ValueError("naive datetime")
    return value.astimezone(UTC).replace(microsecond=0)


def format_time(value: datetime | None) -> str | None:
    """``2026-11-29T06:00:00Z``: the one text form of a time, for JSON and tables."""
    if value is None:
        return None
    if value.tzinfo is UTC and not value.microsecond:
        return value.isoformat()[:19] + "Z"  # the common case, several times faster
    return to_utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_short(value: datetime | None) -> str:
    """``2026-11-29 06:00``: the form used in tables."""
    if value is None:
        return ""
    return to_utc(value).strftime("%Y-%m-%d %H:%M")
