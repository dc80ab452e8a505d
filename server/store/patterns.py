"""`$regex`: patterns run by the `regex` library with a time limit per value and per search.

Python's `re` has no time limit and holds the GIL while it backtracks: `(a|aa)+$` against thirty
characters would stall the whole server for minutes. Each value gets MATCH_SECONDS, and all the values a
search matches SEARCH_SECONDS in all; the first value past either ends the query, which is then refused as
`invalid_filter` naming the pattern. Counted repetitions are compiled expanded (`(?:b{2000}){2000}` would
take gigabytes), so a pattern whose counts expand it past MAX_EXPANSION items is refused before compiling."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import regex

from ..errors import InvalidFilter

MATCH_SECONDS = 0.25
SEARCH_SECONDS = 2.0
MAX_EXPANSION = 1_000  # items a pattern's counted repetitions may expand it to (~250 bytes each, compiled)
_CACHE: dict[str, Any] = {}
_search = threading.local()  # this thread's search: when its patterns' time is up, and which pattern ran out
_COUNT = regex.compile(r"\{(\d*)(?:,(\d*))?\}")


def compile_pattern(pattern: str) -> Any:
    """The compiled pattern (cached); `regex.error` when it is not one, or expands past MAX_EXPANSION."""
    compiled = _CACHE.get(pattern)
    if compiled is None:
        size = expansion(pattern)
        if size > MAX_EXPANSION:
            raise regex.error(
                f"its counted repetitions ({{n}}, {{n,m}}) expand it to about {size:,} items, more than "
                f"{MAX_EXPANSION:,}: use + or * where an exact count does not matter"
            )
        if len(_CACHE) > 256:
            _CACHE.clear()
        compiled = _CACHE[pattern] = regex.compile(pattern)
    return compiled


def expansion(pattern: str) -> int:
    """Roughly how many items the pattern compiles to: a count `{n,m}` repeats what it follows m (or n)
    times, and nested counts multiply. Character classes and escapes are one item; `* + ?` add nothing."""
    frames = [[0, 0]]  # per open group: [the items before its last one (all alternatives), its last item]
    i = 0
    while i < len(pattern):
        c = pattern[i]
        frame = frames[-1]
        if c == "{" and (count := _COUNT.match(pattern, i)):
            low, high = count.group(1), count.group(2)
            times = int(high) if high else int(low or 0)
            frame[1] *= max(times, 1)
            i = count.end()
            continue
        if c in "*+?":
            i += 1
            continue
        if c == "|":
            _then(frame, 0)  # a new alternative: nothing for a count to repeat yet
        elif c == "(":
            frames.append([0, 0])
        elif c == ")" and len(frames) > 1:
            _then(frames[-2], sum(frames.pop()))
        else:
            if c == "\\":
                i += 1
            elif c == "[":
                i = _class_end(pattern, i)
            _then(frame, 1)
        i += 1
    while len(frames) > 1:  # groups left open
        _then(frames[-2], sum(frames.pop()))
    return sum(frames[0])


def _then(frame: list[int], size: int) -> None:
    """In `frame`, the last item is done and an item of `size` follows (the one a count would repeat)."""
    frame[0], frame[1] = frame[0] + frame[1], size


def _class_end(pattern: str, start: int) -> int:
    """The index of the `]` that closes the character class opened at `start` (escapes and a leading `]`
    skipped), or the last index when it is not closed."""
    i = start + 1
    if i < len(pattern) and pattern[i] == "^":
        i += 1
    if i < len(pattern) and pattern[i] == "]":
        i += 1
    while i < len(pattern) and pattern[i] != "]":
        i += 2 if pattern[i] == "\\" else 1
    return min(i, len(pattern) - 1)


def regexp(pattern: str, value: object) -> bool:
    """SQLite's `regexp(pattern, value)`: does the pattern match anywhere in the value."""
    if not isinstance(value, str):
        return False
    timeout = MATCH_SECONDS
    ends = getattr(_search, "ends", None)
    if ends is not None:
        timeout = min(timeout, ends - time.monotonic())
    try:
        if timeout <= 0:
            raise TimeoutError("the search's time for patterns is up")
        return compile_pattern(pattern).search(value, timeout=timeout, concurrent=True) is not None
    except TimeoutError:
        _search.pattern = pattern
        raise


@contextmanager
def refuse_slow_patterns() -> Iterator[None]:
    """Give the search's patterns SEARCH_SECONDS in all, and turn the SQLite error of a pattern that ran out
    of time into `invalid_filter`."""
    _search.pattern, _search.ends = None, time.monotonic() + SEARCH_SECONDS
    try:
        yield
    except sqlite3.OperationalError:
        pattern, _search.pattern = getattr(_search, "pattern", None), None
        if pattern is None:
            raise
        raise InvalidFilter(
            f"$regex {pattern!r} took longer than {MATCH_SECONDS} s on one value, or the search's patterns "
            f"took longer than {SEARCH_SECONDS:g} s in all",
            hint="Simplify the pattern: nested or overlapping repetition such as (a|aa)+ backtracks without end; "
            "anchor it, narrow the search with other conditions, or use plain text where you can.",
        ) from None
    finally:
        _search.ends = None
