"""A tenant's new events read from its log straight into the table's Arrow columns: one SQLite
fetch and one Arrow array per column, no object per event."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..store import Store
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

    @property
    def size(self) -> int:
        return int(self.rows.num_rows)


def read_batch(store: Store, tenant: str, after_seq: int, until_seq: int, limit: int) -> Batch | None:
    """Up to `limit` events of `tenant` with `after_seq` < seq <= `until_seq` (None when there is none)."""
    rows = read_rows(store, tenant, after_seq, until_seq, limit)
    if not rows:
        return None
    first, last = rows[0], rows[-1]
    return Batch(tenant, arrow_batch(tenant, rows), first[_PREV_HASH], last[_SEQ], last[_HASH], first[_TS])


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
