"""The audit trail read from the table, without touching the live store.

Filters become an Iceberg row filter, so partitions (tenant, day) and files (column statistics)
that cannot match are skipped, and only the columns an event needs are read."""

from __future__ import annotations

import fnmatch
import json
from typing import Any

from ..timeutil import between_microseconds, format_us, parse_time

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
    import pyiceberg.expressions

    ex: Any = pyiceberg.expressions  # its constructors are typed for bound terms; we pass names
    cond = ex.EqualTo("tenant", tenant)
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
    rows = table.scan(row_filter=cond, selected_fields=COLUMNS).to_arrow()
    rows = rows.sort_by([("seq", "descending" if newest_first else "ascending")])
    out: list[dict[str, Any]] = []
    for r in rows.to_pylist():
        if glob is not None and not fnmatch.fnmatchcase(r["type"], glob):
            continue
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
        out.append(event)
        if len(out) >= limit:
            break
    return out
