"""Flush new events of every tenant into `headlessly.events`, exactly once.

Each commit appends a batch of one tenant's events AND moves that tenant's watermark (a table
property, which survives snapshot expiry) in ONE Iceberg transaction. pyiceberg's own commit retry
is off for this table: a flusher that loses a race refreshes the table, re-reads the watermark and
sends only what is still missing. So a crash at any step, or two flushers at once, can neither
lose nor duplicate a row."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..store import Store
from ..store.events import EventRow
from ..timeutil import now_us, parse_time
from . import catalog as cat

log = logging.getLogger(__name__)
BATCH = 100_000
MAX_RACES = 20

Fault = Callable[[str], None]  # called at "before_write", "before_commit", "after_commit": a test's crash point


class LakeDiverged(Exception):
    """The table and the log disagree at the watermark: flushing would break exactly-once."""


@dataclass
class FlushReport:
    tenants: dict[str, int] = field(default_factory=dict)  # events flushed per tenant
    commits: int = 0
    lag_seconds: dict[str, float] = field(default_factory=dict)  # age of the oldest event flushed

    @property
    def events(self) -> int:
        return sum(self.tenants.values())


def arrow_batch(tenant: str, events: list[EventRow]) -> Any:
    import pyarrow as pa

    arrow_schema = _arrow_schema()
    columns = {
        "tenant": [tenant] * len(events),
        "seq": [e.seq for e in events],
        "id": [e.id for e in events],
        "type": [e.type for e in events],
        "entity_type": [e.entity_type for e in events],
        "target": [e.target for e in events],
        "actor": [e.actor for e in events],
        # Arrow parses our fixed-format RFC 3339 strings in C: no Python call per row.
        "timestamp": pa.array([e.ts for e in events]).cast(pa.timestamp("us", tz="UTC")),
        "version": [e.version for e in events],
        "data": [e.data for e in events],
        "changes": [e.changes for e in events],
        "state": [e.state for e in events],
        "reason": [e.reason for e in events],
        "hash": [e.hash for e in events],
        "caused_by": [e.caused_by for e in events],
        "prev_hash": [e.prev_hash for e in events],
    }
    return pa.Table.from_pydict(columns, schema=arrow_schema)


_ARROW: Any = None


def _arrow_schema() -> Any:
    global _ARROW
    if _ARROW is None:
        from pyiceberg.io.pyarrow import schema_to_pyarrow

        _ARROW = schema_to_pyarrow(cat.schema(), include_field_ids=False)
    return _ARROW


class Flusher:
    """Flushes the tenants of one store into one table."""

    def __init__(
        self, store: Store, data_dir: Path | None = None, fault: Fault | None = None, batch: int = BATCH
    ) -> None:
        self.store = store
        self.data_dir = Path(data_dir or store.data_dir)
        self.fault = fault or (lambda _stage: None)
        self.batch = batch
        self._table: Any = None

    @property
    def table(self) -> Any:
        if self._table is None:
            self._table = cat.open_table(self.data_dir)
        return self._table

    def flush(
        self, tenants: list[str] | None = None, progress: Callable[[str, int], None] | None = None
    ) -> FlushReport:
        report = FlushReport()
        for tenant in tenants if tenants is not None else self.store.tenants():
            self.flush_tenant(tenant, report, progress)
        return report

    def flush_tenant(
        self, tenant: str, report: FlushReport, progress: Callable[[str, int], None] | None = None
    ) -> None:
        races = 0
        # Only what was written before this round: under a steady stream of writes, chasing the head
        # would never return and would turn into a commit per handful of events.
        until = self.store.head(tenant)[0]
        while True:
            table = self.table
            seq, h = cat.watermark(table, tenant)
            if seq >= until:
                return
            events = self.store.log(tenant, seq, min(self.batch, until - seq))
            if not events:
                return  # nothing new: commit nothing
            if events[0].prev_hash != h:
                raise LakeDiverged(
                    f"tenant {tenant}: the table's watermark (seq {seq}) does not match the log's event before seq {events[0].seq}"
                )
            self.fault("before_write")
            from pyiceberg.exceptions import CommitFailedException

            try:
                with table.transaction() as tx:
                    tx.append(arrow_batch(tenant, events))
                    tx.set_properties({cat.WATERMARK_PREFIX + tenant: f"{events[-1].seq}:{events[-1].hash}"})
                    self.fault("before_commit")
            except CommitFailedException:
                races += 1
                if races > MAX_RACES:
                    raise
                log.info("flush of %s lost a commit race; re-reading the watermark", tenant)
                self._table = None  # reload: another flusher moved the table on
                continue
            self.fault("after_commit")
            races = 0  # the limit is on races lost in a row, for one batch
            report.commits += 1
            report.tenants[tenant] = report.tenants.get(tenant, 0) + len(events)
            age = (now_us() - parse_time(events[0].ts)) / 1e6
            report.lag_seconds[tenant] = max(report.lag_seconds.get(tenant, 0.0), age)
            if progress:
                progress(tenant, len(events))
