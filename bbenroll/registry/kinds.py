"""Kinds of TOML values the registry holds: each one's type, rule and message.

A kind's ``convert`` takes what ``tomllib`` returned and gives the model's
value, or raises :class:`Invalid` saying what is wrong (the caller knows
where). It tries the common, well-formed case first with exact type checks:
that is what keeps reading thousands of workers fast, with one path for
good and bad files alike. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from bbenroll.errors import FurlError, TimeSpecError
from bbenroll.furl import check_hint, check_swissnum, check_tubid
from bbenroll.times import parse_duration, to_utc

TYPE_NAMES = {str: "a string", int: "an integer", list: "an array", dict: "a table"}


def toml_type(value: Any) -> str:
    """``a string``, ``a date``...: how a message names the type of a TOML value."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, datetime | date):
        return "a date"
    if isinstance(value, float):
        return "a float"
    for t, name in TYPE_NAMES.items():
        if isinstance(value, t):
            return name
    return type(value).__name__


class Invalid(Exception):
    """A value breaks its kind's rule. ``items`` are ``(key suffix, message)``
    pairs: the suffix (``.until``, ``[2]``) places a problem inside the value."""

    def __init__(self, message: str, suffix: str = "") -> None:
        super().__init__(message)
        self.items = [(suffix, message)]

    @classmethod
    def many(cls, items: list[tuple[str, str]]) -> Invalid:
        error = cls(items[0][1], items[0][0])
        error.items = items
        return error


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Kind:
    doc: str  # the type as docs/registry.md names it
    convert: Callable[[Any], Any]  # plain data -> model value; raises Invalid
    to_data: Callable[[Any], Any] = _same  # model value -> plain data
    is_table: bool = False  # written as a [sub.table] of its own


def _string(value: Any) -> str:
    if type(value) is str:
        return value
    raise Invalid(f"must be a string, not {toml_type(value)}")


def _non_empty_string(value: Any) -> str:
    if type(value) is str and value:
        return value
    _string(value)
    raise Invalid("may not be empty")


def _checked_by(check: Callable[[str], str]) -> Callable[[Any], str]:
    """A string kind whose rule is one of :mod:`bbenroll.furl`'s checks."""

    def convert(value: Any) -> str:
        try:
            return check(_string(value))
        except FurlError as e:
            raise Invalid(str(e)) from None

    return convert


def _time(value: Any) -> datetime:
    if type(value) is datetime and value.tzinfo is UTC and not value.microsecond:
        return value  # what bbenroll writes
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise Invalid("must include a time zone, like 2027-01-01T00:00:00Z")
        try:
            return to_utc(value)
        except OverflowError:
            raise Invalid("is out of range") from None
    if isinstance(value, date):  # a bare date means midnight UTC
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    raise Invalid("must be a date-time, like 2027-01-01T00:00:00Z")


def _tags(value: Any) -> tuple[str, ...]:
    if type(value) is list and all(type(t) is str and t for t in value):
        return tuple(value)
    raise Invalid("must be an array of non-empty strings")


def _hints(value: Any) -> tuple[str, ...]:
    if type(value) is not list or not value:
        raise Invalid("must be a non-empty array of connection hints")
    bad = []
    for i, hint in enumerate(value):
        try:
            check_hint(hint)
        except FurlError as e:
            bad.append((f"[{i}]", str(e)))
    if bad:
        raise Invalid.many(bad)
    return tuple(value)


def _boolean(value: Any) -> bool:
    if type(value) is bool:
        return value
    raise Invalid(f"must be true or false, not {toml_type(value)}")


def _count(value: Any) -> int:
    if type(value) is int and value >= 0:
        return value
    if type(value) is not int:
        raise Invalid(f"must be an integer, not {toml_type(value)}")
    raise Invalid("may not be negative")


def _duration(value: Any) -> timedelta:
    if type(value) is not str:
        raise Invalid(f'must be a duration string like "90d", not {toml_type(value)}')
    try:
        return parse_duration(value)
    except TimeSpecError as e:
        raise Invalid(str(e)) from None


def format_duration(value: timedelta) -> str:
    """``90d``: the largest unit that says ``value`` exactly (how bbenroll writes a duration)."""
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


NEVER_TEXT = "never"


def _policy(value: Any) -> timedelta:
    # timedelta(0) is model.NEVER: an explicit "no policy rotation", which a
    # missing key (None: follow [master]) cannot say
    if type(value) is str and value.strip().lower() == NEVER_TEXT:
        return timedelta(0)
    return _duration(value)


def _policy_to_data(value: timedelta) -> str:
    return NEVER_TEXT if not value else format_duration(value)


def _table(value: Any) -> Mapping[str, Any]:
    if type(value) is dict:
        return value
    raise Invalid("must be a table")


STRING = Kind("string", _string)
NON_EMPTY_STRING = Kind("non-empty string", _non_empty_string)
SECRET = Kind("string", _checked_by(check_swissnum))
TUBID = Kind("string", _checked_by(check_tubid))
TIME = Kind("date-time", _time)
TAGS = Kind("array of non-empty strings", _tags, to_data=list)
HINTS = Kind("array of strings", _hints, to_data=list)
TABLE = Kind("table", _table, to_data=dict, is_table=True)
COUNT = Kind("integer", _count)
BOOLEAN = Kind("boolean", _boolean)
DURATION = Kind('duration string (`"90d"`, `"12h"`, `"2w"`)', _duration, to_data=format_duration)
POLICY = Kind('duration string or `"never"`', _policy, to_data=_policy_to_data)
