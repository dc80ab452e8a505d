"""`$regex`: patterns run by the `regex` library with a time limit per value.

Python's `re` has no time limit and holds the GIL while it backtracks: `(a|aa)+$` against thirty
characters would stall the whole server for minutes. Each value gets MATCH_SECONDS; the first value
that takes longer ends the query, which is then refused as `invalid_filter` naming the pattern."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import regex

from ..errors import InvalidFilter

MATCH_SECONDS = 0.25
_CACHE: dict[str, Any] = {}
_timed_out = threading.local()  # the pattern that ran out of time in this thread's query


def compile_pattern(pattern: str) -> Any:
    """The compiled pattern (cached); `regex.error` when it is not one."""
    compiled = _CACHE.get(pattern)
    if compiled is None:
        if len(_CACHE) > 256:
            _CACHE.clear()
        compiled = _CACHE[pattern] = regex.compile(pattern)
    return compiled


def regexp(pattern: str, value: object) -> bool:
    """SQLite's `regexp(pattern, value)`: does the pattern match anywhere in the value."""
    if not isinstance(value, str):
        return False
    try:
        return compile_pattern(pattern).search(value, timeout=MATCH_SECONDS, concurrent=True) is not None
    except TimeoutError:
        _timed_out.pattern = pattern
        raise


@contextmanager
def refuse_slow_patterns() -> Iterator[None]:
    """Turn the SQLite error of a pattern that ran out of time into `invalid_filter`."""
    _timed_out.pattern = None
    try:
        yield
    except sqlite3.OperationalError:
        pattern, _timed_out.pattern = getattr(_timed_out, "pattern", None), None
        if pattern is None:
            raise
        raise InvalidFilter(
            f"$regex {pattern!r} took longer than {MATCH_SECONDS} s on one value",
            hint="Simplify the pattern: nested or overlapping repetition such as (a|aa)+ backtracks without end; "
            "anchor it or use plain text where you can.",
        ) from None
