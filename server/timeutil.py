"""Time in headlessly: integer microseconds since the epoch, shown as RFC 3339 UTC with a `Z`."""

from __future__ import annotations

import re
import time
from datetime import UTC, date, datetime, timedelta

from .errors import InvalidAsOf, shown

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MIN_US = -62_135_596_800_000_000  # 0001-01-01T00:00:00Z
MAX_US = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$", re.ASCII)  # (ASCII: \d would also take other scripts' digits)
_DATETIME = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-](?P<oh>\d{2}):?(?P<om>\d{2}))$", re.ASCII
)


def now_us() -> int:
    return time.time_ns() // 1000


_second_cache: tuple[int, str] = (-1, "")


def format_us(us: int) -> str:
    """`1768555800000000` → `2026-01-16T09:30:00.000000Z`."""
    global _second_cache
    seconds, micros = divmod(us, 1_000_000)
    cached = _second_cache  # one read: safe across threads
    if cached[0] != seconds:  # the date-time part changes once a second: format it once
        dt = _EPOCH + timedelta(seconds=seconds)  # fixed width (years < 1000 too): strings sort as times
        text = f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"
        cached = _second_cache = (seconds, text)
    return f"{cached[1]}.{micros:06d}Z"


_PAST_MICROSECONDS = re.compile(r"\.\d{6}(\d*[1-9])")


def between_microseconds(value: object) -> bool:
    """A time given with digits past the microsecond that are not all zero: it falls between two
    stored times (parse_time rounds it down)."""
    return isinstance(value, str) and _PAST_MICROSECONDS.search(value) is not None


ASCII_SPACE = " \t\r\n"


def parse_time(value: object) -> int:
    """An RFC 3339 time with an offset, or a date (start of that day, UTC), as microseconds.

    Raises ValueError saying what is accepted."""
    if not isinstance(value, str):
        raise ValueError(f"expected a time string, got {shown(value)}")
    text = value.strip(ASCII_SPACE)  # (not other Unicode spaces, as digits are ASCII only)
    if _DATE.fullmatch(text):
        try:
            d = date.fromisoformat(text)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a valid date: {exc}") from None
        dt = datetime(d.year, d.month, d.day, tzinfo=UTC)
    elif m := _DATETIME.fullmatch(text):
        if m["oh"] is not None and (int(m["oh"]) > 23 or int(m["om"]) > 59):
            raise ValueError(f"{value!r} is not a valid time: its offset is past 23:59 hours")
        frac = re.search(r"\.(\d+)", text)
        if frac and len(frac.group(1)) > 6:  # fromisoformat takes at most microseconds
            text = text.replace(frac.group(0), "." + frac.group(1)[:6], 1)
        leap = re.search(r"(?<=\d\d:\d\d):60(\.\d+)?", text)
        if leap:  # RFC 3339's leap second: read as the last microsecond of its minute
            text = text[: leap.start()] + ":59.999999" + text[leap.end() :]
        try:
            dt = datetime.fromisoformat(text.replace("z", "Z").replace("t", "T"))
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a valid time: {exc}") from None
    else:
        raise ValueError(
            f"{value!r} is not an RFC 3339 time with an offset (2026-01-16T09:30:00Z, "
            "2026-01-16T10:30:00+01:00) or a date (2026-01-16)"
        )
    try:
        delta = dt - _EPOCH
    except OverflowError:
        raise ValueError(f"{value!r} is outside the years 0001 to 9999 in UTC") from None
    us = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if not MIN_US <= us <= MAX_US:
        raise ValueError(f"{value!r} is outside the years 0001 to 9999 in UTC")
    return us


def normalize_time(value: object) -> str:
    """Any accepted time input as the canonical string (UTC, microseconds, `Z`)."""
    return format_us(parse_time(value))


def parse_as_of(value: object, name: str = "asOf") -> int:
    try:
        return parse_time(value)
    except ValueError as exc:
        raise InvalidAsOf(
            f"{name}: {exc}",
            hint="Use an RFC 3339 time such as 2026-01-16T09:30:00Z, or a date such as 2026-01-16.",
        ) from None
