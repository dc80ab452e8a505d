"""Flush new events of every tenant into `headlessly.events`, exactly once.

Each commit appends batches of events of one or more tenants AND moves each of those tenants'
watermarks (table properties, which survive snapshot expiry) in ONE Iceberg transaction. pyiceberg's
own commit retry is off for this table: a flusher that loses a race refreshes the table, re-reads the
watermarks and sends only what is still missing. So a crash at any step, or two flushers at once, can
neither lose nor duplicate a row. A flush also expires, now and then, the snapshots its appends superseded
(see snapshots.py): otherwise every commit would cost more than the one before."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ..errors import EmptyFile, HeadlesslyError, TenantBusy
from ..store import Store
from ..timeutil import now_us, parse_time
from . import catalog as cat
from . import snapshots
from .batches import BATCH_CHARS, Batch, read_batch  # (BATCH_CHARS: per commit too, and so per file)

log = logging.getLogger(__name__)
BATCH = 100_000  # rows per commit, all its tenants together: what a commit holds in memory
MAX_RACES = 20

# Called at "before_write", "before_commit", "after_commit" and "before_expire": a test's crash point.
Fault = Callable[[str], None]


class LakeDiverged(Exception):
    """Some tenants were not flushed: a log that does not continue the table (flushing it would break
    exactly-once), one with an altered event (flushed only up to it), or one that could not be read. The
    others were; `report` says what was sent."""

    def __init__(self, problems: dict[str, str], report: FlushReport) -> None:
        super().__init__("; ".join(f"tenant {tenant}: {problem}" for tenant, problem in problems.items()))
        self.tenants = list(problems)
        self.report = report


@dataclass
class FlushReport:
    tenants: dict[str, int] = field(default_factory=dict)  # events flushed per tenant
    commits: int = 0
    snapshots_expired: int = 0  # superseded snapshots expired after the round
    lag_seconds: dict[str, float] = field(default_factory=dict)  # age of the oldest event flushed
    busy: list[str] = field(default_factory=list)  # left for the next round: another process had them to itself

    @property
    def events(self) -> int:
        return sum(self.tenants.values())


class Flusher:
    """Flushes the tenants of one store into one table."""

    def __init__(
        self,
        store: Store,
        data_dir: Path | None = None,
        fault: Fault | None = None,
        batch: int = BATCH,
        batch_chars: int = BATCH_CHARS,
        expire_at: int = snapshots.EXPIRE_AT,
        grace: timedelta = snapshots.SUPERSEDED_GRACE,
    ) -> None:
        self.store = store
        self.data_dir = Path(data_dir or store.data_dir)
        self.fault = fault or (lambda _stage: None)
        self.batch = batch
        self.batch_chars = batch_chars
        self.expire_at = expire_at
        self.grace = grace
        self._table: Any = None

    @property
    def table(self) -> Any:
        if self._table is None:
            self._table = cat.open_table(self.data_dir)
        return self._table

    def flush(
        self, tenants: list[str] | None = None, progress: Callable[[str, int], None] | None = None
    ) -> FlushReport:
        """Send each tenant's events up to the head it had when this round reached it, in commits of
        up to `batch` rows that take the tenants in turn; `progress(tenant, n)` right after each commit.
        A tenant whose log does not continue the table is left out, one whose log has an event that is not
        intact (its hash recomputed, chained from the watermark's) goes only up to that event, and
        LakeDiverged is raised once every other tenant is flushed."""
        from pyiceberg.exceptions import CommitFailedException

        report = FlushReport()
        if self._table is not None:  # a kept flusher: another process may have moved the table on (or
            self._table = self._table.refresh()  # expired and swept the snapshot we last saw)
        pending = list(dict.fromkeys(tenants if tenants is not None else self.store.tenants()))  # once each
        # Only what was written before this round: under a steady stream of writes, chasing the head
        # would never return and would turn into a commit per handful of events.
        until: dict[str, int] = {}
        diverged: dict[str, str] = {}
        races = 0
        while group := self._gather(pending, until, diverged, report.busy):
            table = self.table
            self.fault("before_write")
            try:
                with table.transaction() as tx:
                    if missing := cat.missing_write_properties(table):
                        tx.set_properties(missing)  # first, so that the append writes under them
                    tx.append(_concat([b.rows for b in group]))
                    tx.set_properties({cat.WATERMARK_PREFIX + b.tenant: f"{b.last_seq}:{b.last_hash}" for b in group})
                    self.fault("before_commit")
            except CommitFailedException:
                races += 1
                if races > MAX_RACES:
                    raise
                log.info("a flush of %d tenant(s) lost a commit race; re-reading their watermarks", len(group))
                self._table = None  # reload: another flusher moved the table on
                continue
            self.fault("after_commit")
            races = 0  # the limit is on races lost in a row, for one commit
            self._record(group, report, progress)
            done = {b.tenant for b in group if b.last_seq >= until[b.tenant] or b.problem}
            pending[:] = [t for t in pending if t not in done]
        if report.commits:
            report.snapshots_expired = self._expire_superseded()
        if diverged:
            raise LakeDiverged(diverged, report)
        return report

    def _gather(
        self, pending: list[str], until: dict[str, int], diverged: dict[str, str], busy: list[str]
    ) -> list[Batch]:
        """The next commit: the first pending tenants' events after their watermark, `batch` rows and
        `batch_chars` characters of event text at most (large events make commits of fewer rows); drops from
        `pending` the tenants with nothing (more) to send, and those being restored or rebuilt (into `busy`:
        the next round takes them)."""
        table = self.table
        group: list[Batch] = []
        room, room_chars = self.batch, self.batch_chars
        for tenant in list(pending):
            if room <= 0 or room_chars <= 0:
                break
            seq, h = cat.watermark(table, tenant)
            try:
                head = None
                if tenant not in until:
                    head = self.store.head(tenant)
                    until[tenant] = head[0]
                batch = (
                    read_batch(self.store, tenant, seq, until[tenant], room, room_chars)
                    if seq < until[tenant]
                    else None
                )
            except TenantBusy as exc:
                log.info("not flushing tenant %s this round: %s", tenant, exc.message)
                busy.append(tenant)
                pending.remove(tenant)
                continue
            except HeadlesslyError as exc:  # (an unreadable file): the other tenants still go
                if not (isinstance(exc, EmptyFile) and seq == 0):  # (a file a crash left empty: nothing to send)
                    diverged[tenant] = exc.message
                pending.remove(tenant)
                continue
            if head is not None and head[0] <= seq and head != (seq, h) and seq > 0:
                # Nothing to send, yet the log does not end where the table does: it lost events the
                # table has (an older copy of the file put back, a power loss under durability normal).
                diverged[tenant] = f"the log ends at seq {head[0]}, but the table holds it up to seq {seq}" + (
                    "" if head[0] < seq else " with another hash"
                )
                batch = None
            elif batch is not None and batch.size and batch.prev_hash != h:
                diverged[tenant] = (
                    f"the table's watermark (seq {seq}) does not match the log's event before seq {seq + 1}"
                )
                batch = None
            elif batch is not None and batch.problem:
                # A tampered file: what comes before the first bad event goes, that event and the rest do not
                # (in the table it would make the disaster-recovery copy as bad as the file).
                diverged[tenant] = (
                    f"{batch.problem} (flushed up to seq {batch.last_seq} only; run `headlessly verify --tenant {tenant}`)"
                )
                if not batch.size:
                    batch = None
            if batch is None:
                pending.remove(tenant)
                continue
            group.append(batch)
            room -= batch.size
            room_chars -= batch.chars
        return group

    def _expire_superseded(self) -> int:
        """Expire the snapshots superseded by appends once `expire_at` of them have gathered. Best effort: the
        round's rows are committed already, so a race lost to another commit, or any other failure (logged),
        leaves them for a later round. Returns how many were expired."""
        from pyiceberg.exceptions import CommitFailedException

        table = self.table
        ids = snapshots.superseded_by_appends(table, datetime.now(UTC), self.grace)
        if len(ids) < self.expire_at:
            return 0
        self.fault("before_expire")
        try:
            snapshots.expire(table, ids)
        except CommitFailedException:
            log.info("expiring %d superseded snapshots lost a commit race; a later round will", len(ids))
            self._table = None
            return 0
        except Exception:
            log.warning("expiring %d superseded snapshots failed; a later round will retry", len(ids), exc_info=True)
            self._table = None
            return 0
        return len(ids)

    @staticmethod
    def _record(group: list[Batch], report: FlushReport, progress: Callable[[str, int], None] | None) -> None:
        report.commits += 1
        now = now_us()
        for b in group:
            report.tenants[b.tenant] = report.tenants.get(b.tenant, 0) + b.size
            age = (now - parse_time(b.first_ts)) / 1e6
            report.lag_seconds[b.tenant] = max(report.lag_seconds.get(b.tenant, 0.0), age)
            if progress:
                progress(b.tenant, b.size)


def _concat(tables: list[Any]) -> Any:
    import pyarrow as pa

    return pa.concat_tables(tables)  # no copy: the tenants' tables become chunks of one
