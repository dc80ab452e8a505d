"""Where a read of the past cuts the log: at a time, but never inside one request (a batch, a revert), which is
atomic and happened as a whole at its last event's time (the `spans` table records requests of two events
or more)."""

from __future__ import annotations

import sqlite3

from ..timeutil import format_us


def seq_at(conn: sqlite3.Connection, as_of_us: int) -> int:
    """The last seq of the log as it was at asOf: the last event stamped then or before (timestamps grow with
    seq), unless that event is inside a request that went on later (a batch, a revert): then the last one
    before that request, which happened as a whole at its last event's time."""
    # ORDER BY ts ... LIMIT 1 walks the unique ts index; max(seq) with a ts condition would scan the log.
    row = conn.execute(
        "SELECT seq FROM events WHERE ts <= ? ORDER BY ts DESC LIMIT 1", (format_us(as_of_us),)
    ).fetchone()
    if row is None:
        return 0
    span = _span_of(conn, row[0])
    return span[0] - 1 if span is not None and span[1] > row[0] else int(row[0])


def first_seq_from(conn: sqlite3.Connection, since_us: int) -> int | None:
    """The first seq of the log from `since` on: of the first event stamped then or later, or of the request it
    ends (begun before `since`, it happened at its last event's time). None when no event is that late."""
    row = conn.execute("SELECT seq FROM events WHERE ts >= ? ORDER BY ts LIMIT 1", (format_us(since_us),)).fetchone()
    if row is None:
        return None
    span = _span_of(conn, row[0])
    return span[0] if span is not None else int(row[0])


def _span_of(conn: sqlite3.Connection, seq: int) -> tuple[int, int] | None:
    """The (first, last) seq of the request of two events or more that `seq` belongs to, if any."""
    span = conn.execute(
        "SELECT first_seq, last_seq FROM spans WHERE first_seq <= ? ORDER BY first_seq DESC LIMIT 1", (seq,)
    ).fetchone()
    return (int(span[0]), int(span[1])) if span is not None and span[1] >= seq else None
