"""A tenant's new events read from its log straight into the table's Arrow columns: one SQLite
fetch and one Arrow array per column, no object per event."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..store import Store
from ..store.events import chain_hash
from . import catalog as cat

# The table's columns after `tenant`, in its order, as the events table of a tenant's file names them.
LOG_COLUMNS = (
    "seq, id, type, entity_type, target, actor, ts, version, data, changes, state, reason, hash, caused_by, prev_hash"
)
_SEQ, _TS, _HASH, _PREV_HASH = 0, 6, 12, 14


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

    @property
    def size(self) -> int:
        return int(self.rows.num_rows)


def read_batch(store: Store, tenant: str, after_seq: int, until_seq: int, limit: int) -> Batch | None:
    """Up to `limit` events of `tenant` with `after_seq` < seq <= `until_seq` (None when there is none),
    stopping before the first that is not intact (see `intact`): the batch then says what is wrong with it,
    and may hold no event."""
    rows = read_rows(store, tenant, after_seq, until_seq, limit)
    if not rows:
        return None
    good, problem = intact(rows, after_seq)
    first, kept = rows[0], rows[:good]
    last_seq, last_hash = (kept[-1][_SEQ], kept[-1][_HASH]) if kept else (after_seq, first[_PREV_HASH])
    arrow = arrow_batch(tenant, kept) if kept else _arrow_schema().empty_table()
    return Batch(tenant, arrow, first[_PREV_HASH], last_seq, last_hash, first[_TS], problem)


def intact(rows: list[tuple[Any, ...]], after_seq: int) -> tuple[int, str | None]:
    """How many of `rows` (LOG_COLUMNS tuples), from the first, are intact: each the seq after the one before
    (the first right after `after_seq`), chained to its hash, with the hash its content gives (one hash per
    event, as the writer made it and verify recomputes it); and what is wrong with the next one, if any. The
    first's link to the table (its previous hash against the watermark's) is the flusher's to check."""
    seq, prev = after_seq, rows[0][_PREV_HASH] if rows else ""
    for i, row in enumerate(rows):
        (n, event_id, type_, _entity_type, target, actor, ts, version, data, changes, state, reason, h,
         caused_by, prev_hash) = row  # fmt: skip
        where = f"event {event_id} (seq {n})"
        if n != seq + 1:
            return i, f"{where} comes after seq {seq}: the log has a gap"
        if prev_hash != prev:
            return i, f"{where} does not chain to the hash of seq {seq}"
        if h != chain_hash(prev_hash, n, event_id, type_, target, actor, ts, version, data, changes, state, reason, caused_by):  # fmt: skip
            return i, f"{where} was altered: its hash does not match its content"
        seq, prev = n, h
    return len(rows), None


def read_rows(store: Store, tenant: str, after_seq: int, until_seq: int, limit: int) -> list[tuple[Any, ...]]:
    """The same events as LOG_COLUMNS tuples, in seq order."""
    with store.pool.lease(tenant, create=False) as t, t.reader() as conn:
        return conn.execute(
            f"SELECT {LOG_COLUMNS} FROM events WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
            (after_seq, until_seq, limit),
        ).fetchall()


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
