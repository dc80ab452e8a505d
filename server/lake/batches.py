"""A tenant's new events read from its log straight into the table's Arrow columns: one SQLite
fetch and one Arrow array per column, no object per event."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from ..store import Store
from ..store.events import chain_hash, misnamed
from . import catalog as cat

# The table's columns after `tenant`, in its order, as the events table of a tenant's file names them.
LOG_COLUMNS = (
    "seq, id, type, entity_type, target, actor, ts, version, data, changes, state, reason, hash, caused_by, prev_hash"
)
SELECT_EVENTS = f"SELECT {LOG_COLUMNS} FROM events WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?"
_SEQ, _TS, _DATA, _CHANGES, _STATE, _HASH, _PREV_HASH = 0, 6, 8, 9, 10, 12, 14
READ_CHUNK = 10_000  # rows read from the log and converted to Arrow at a time, at most
BATCH_CHARS = 64 << 20  # characters of event text (data, changes, state) a batch holds, past its last event


@dataclass(frozen=True)
class Batch:
    """Consecutive events of one tenant, in seq order, as rows of the table."""

    tenant: str
    rows: Any  # pyarrow.Table with the table's schema
    prev_hash: str  # the hash of the event before the first: must be the table's watermark
    last_seq: int
    last_hash: str
    first_ts: str
    problem: str | None = None  # what is wrong with the event after the last: the events stop before it
    chars: int = 0  # of event text (data, changes, state) in its rows

    @property
    def size(self) -> int:
        return int(self.rows.num_rows)


def read_batch(
    store: Store, tenant: str, after_seq: int, until_seq: int, limit: int, max_chars: int = BATCH_CHARS
) -> Batch | None:
    """Up to `limit` events of `tenant` with `after_seq` < seq <= `until_seq` (None when there is none), and
    no more once they hold `max_chars` characters of event text (memory is bounded by size as well as by
    count: an event may hold megabytes), stopping before the first that is not intact (see `intact`): the batch
    then says what is wrong with it, and may hold no event. Read and converted READ_CHUNK rows at a time (in one
    read transaction), so only the Arrow columns of the whole batch are held, not a Python tuple per event."""
    import pyarrow as pa

    tables: list[Any] = []
    first: tuple[Any, ...] | None = None
    problem = None
    seq, prev = after_seq, ""
    chars = 0
    with (
        store.pool.lease(tenant, create=False) as t,
        t.reader() as conn,
        closing(  # (a statement left open would keep the reader's snapshot after it goes back to the pool)
            conn.execute(SELECT_EVENTS, (after_seq, until_seq, limit))
        ) as cursor,
    ):
        for rows, sizes in _chunks(cursor, max_chars):
            if first is None:
                first, prev = rows[0], rows[0][_PREV_HASH]
            good, problem = intact(rows, seq, prev)
            if good:
                tables.append(arrow_batch(tenant, rows[:good]))
                seq, prev = rows[good - 1][_SEQ], rows[good - 1][_HASH]
                chars += sum(sizes[:good])
            if problem:
                break
    if first is None:
        return None
    arrow = pa.concat_tables(tables) if tables else _arrow_schema().empty_table()
    return Batch(tenant, arrow, first[_PREV_HASH], seq, prev, first[_TS], problem, chars)


def _chunks(cursor: Any, max_chars: int) -> Iterator[tuple[list[tuple[Any, ...]], list[int]]]:
    """The cursor's rows in lists of READ_CHUNK at most, each with its rows' characters of event text, up to
    the row by which they hold `max_chars` (taken one by one: how large the next one is cannot be known before)."""
    chunk: list[tuple[Any, ...]] = []
    sizes: list[int] = []
    total = 0
    for row in cursor:
        chunk.append(row)
        sizes.append(len(row[_DATA]) + len(row[_CHANGES]) + len(row[_STATE]))
        total += sizes[-1]
        if total >= max_chars:
            break
        if len(chunk) == READ_CHUNK:
            yield chunk, sizes
            chunk, sizes = [], []
    if chunk:
        yield chunk, sizes


def intact(rows: list[tuple[Any, ...]], after_seq: int, prev: str) -> tuple[int, str | None]:
    """How many of `rows` (LOG_COLUMNS tuples), from the first, are intact: each the seq after the one before
    (the first right after `after_seq`, chained to `prev`), chained to its hash, with the hash its content
    gives (one hash per event, as the writer made it and verify recomputes it); and what is wrong with the
    next one, if any. The first batch's link to the table (its previous hash against the watermark's) is the
    flusher's to check: it passes the first row's own previous hash."""
    seq = after_seq
    for i, row in enumerate(rows):
        (n, event_id, type_, entity_type, target, actor, ts, version, data, changes, state, reason, h,
         caused_by, prev_hash) = row  # fmt: skip
        where = f"event {event_id} (seq {n})"
        if n != seq + 1:
            return i, f"{where} comes after seq {seq}: the log has a gap"
        if prev_hash != prev:
            return i, f"{where} does not chain to the hash of seq {seq}"
        if h != chain_hash(prev_hash, n, event_id, type_, target, actor, ts, version, data, changes, state, reason, caused_by):  # fmt: skip
            return i, f"{where} was altered: its hash does not match its content"
        if wrong := misnamed(type_, entity_type):
            return i, f"{where} was altered: {wrong}"
        seq, prev = n, h
    return len(rows), None


def read_rows(store: Store, tenant: str, after_seq: int, until_seq: int, limit: int) -> list[tuple[Any, ...]]:
    """The same events as LOG_COLUMNS tuples, in seq order, in one fetch (bench/lake.py times it)."""
    with store.pool.lease(tenant, create=False) as t, t.reader() as conn:
        return conn.execute(SELECT_EVENTS, (after_seq, until_seq, limit)).fetchall()


def arrow_batch(tenant: str, rows: list[tuple[Any, ...]]) -> Any:
    """`rows` (LOG_COLUMNS tuples) of `tenant` as an Arrow table with the table's schema."""
    import pyarrow as pa

    schema = _arrow_schema()
    arrays = [pa.array([tenant] * len(rows), schema.field("tenant").type)]
    for field, column in zip(list(schema)[1:], zip(*rows, strict=True), strict=True):
        if field.name == "timestamp":  # Arrow parses our fixed-format RFC 3339 text in C
            arrays.append(pa.array(column, pa.string()).cast(field.type))
        else:
            arrays.append(pa.array(column, field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


_ARROW: Any = None


def _arrow_schema() -> Any:
    global _ARROW
    if _ARROW is None:
        from pyiceberg.io.pyarrow import schema_to_pyarrow

        _ARROW = schema_to_pyarrow(cat.schema(), include_field_ids=False)
    return _ARROW
