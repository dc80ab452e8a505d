"""The audit trail read from the table, without touching the live store.

Filters become an Iceberg row filter, so partitions (tenant, day) and files (column statistics)
that cannot match are skipped, and only the columns an event needs are read, a batch at a time."""

from __future__ import annotations

import json
import sqlite3
from collections import deque
from contextlib import closing
from typing import Any

from ..timeutil import between_microseconds, format_us, parse_time
from .scan import TenantRows

COLUMNS = (
    "seq",
    "id",
    "type",
    "entity_type",
    "target",
    "actor",
    "timestamp",
    "version",
    "data",
    "changes",
    "reason",
    "hash",
    "caused_by",
)


def _iceberg_time(text: str, since: bool = False) -> str:
    """An input time as pyiceberg's timestamptz literal parser takes it: an offset, not `Z`. Stored times
    are whole microseconds: a `since` between two of them starts at the next one."""
    us = parse_time(text) + (1 if since and between_microseconds(text) else 0)
    return format_us(us).removesuffix("Z") + "+00:00"


def lake_events(
    table: Any,
    tenant: str,
    type: str | None = None,
    target: str | None = None,
    actor: str | None = None,
    since: str | None = None,
    until: str | None = None,
    limit: int = 100,
    newest_first: bool = False,
) -> list[dict[str, Any]]:
    """Up to `limit` of the tenant's events in the table that match, oldest (or newest) first. The table is
    read a file and a batch at a time, in seq order, until `limit` are found: newest first, each file is
    read forwards keeping only its last matches."""
    import pyiceberg.expressions

    ex: Any = pyiceberg.expressions  # its constructors are typed for bound terms; we pass names
    cond = ex.AlwaysTrue()
    glob = None
    if type is not None:
        if not any(c in type for c in "*?["):
            cond = ex.And(cond, ex.EqualTo("type", type))
        elif type.endswith(".*") and not any(c in type[:-2] for c in "*?["):
            cond = ex.And(cond, ex.EqualTo("entity_type", type[:-2]))
        else:
            glob = type
    if target is not None:
        cond = ex.And(cond, ex.EqualTo("target", target))
    if actor is not None:
        cond = ex.And(cond, ex.EqualTo("actor", actor))
    if since is not None:
        cond = ex.And(cond, ex.GreaterThanOrEqual("timestamp", _iceberg_time(since, since=True)))
    if until is not None:
        cond = ex.And(cond, ex.LessThanOrEqual("timestamp", _iceberg_time(until)))
    runs = TenantRows(table, tenant, cond).runs(COLUMNS)
    found: list[dict[str, Any]] = []
    for run in reversed(list(runs)) if newest_first else runs:
        wanted = limit - len(found)
        if not newest_first:
            for batch in run:
                found += _matching(batch, glob).slice(0, limit - len(found)).to_pylist()
                if len(found) >= limit:
                    break
        else:
            tail: deque[Any] = deque()  # the run's last matching batches, `wanted` rows or a few more
            kept = 0
            for batch in run:
                batch = _matching(batch, glob)
                tail.append(batch)
                kept += batch.num_rows
                while tail and kept - tail[0].num_rows >= wanted:
                    kept -= tail.popleft().num_rows
            rows = [r for batch in tail for r in batch.to_pylist()]
            found += reversed(rows[-wanted:] if wanted else [])
        if len(found) >= limit:
            break
    return [_event(r) for r in found[:limit]]


def _matching(batch: Any, glob: str | None) -> Any:
    """The rows of `batch` whose type matches `glob` (each distinct type tested once), by SQLite's GLOB as
    the live store matches it (`[^...]` negates a class there, where fnmatch would take `[!...]`)."""
    if glob is None:
        return batch
    import pyarrow as pa
    import pyarrow.compute as pc

    types = batch.column("type")
    with closing(sqlite3.connect(":memory:")) as conn:
        found = conn.execute(
            "SELECT value FROM json_each(?) WHERE value GLOB ?", (json.dumps(pc.unique(types).to_pylist()), glob)
        )
        allowed = [t for (t,) in found]
    return batch.filter(pc.is_in(types, value_set=pa.array(allowed, type=types.type)))


def _event(r: dict[str, Any]) -> dict[str, Any]:
    ts = r["timestamp"]
    event: dict[str, Any] = {
        "id": r["id"], "seq": r["seq"], "type": r["type"], "target": r["target"], "actor": r["actor"],
        "timestamp": format_us(int(ts.timestamp()) * 1_000_000 + ts.microsecond), "version": r["version"],
        "data": json.loads(r["data"]), "changes": json.loads(r["changes"]),
    }  # fmt: skip
    if r["reason"] is not None:
        event["reason"] = r["reason"]
    if r["caused_by"] is not None:
        event["causedBy"] = r["caused_by"]
    event["hash"] = r["hash"]
    return event
