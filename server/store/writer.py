"""The single writer of a tenant: one connection, whole transactions, group commit.

Writers hand their job to the tenant's `Writer`. Whoever finds it idle becomes the leader:
it takes every job waiting at that moment and runs them in ONE `BEGIN IMMEDIATE` transaction
(each job in its own savepoint, so one failure undoes only that job), commits once, and hands
each caller its own result. A lone writer runs its job straight away in its own thread; under
concurrency, commits (and fsyncs under `synchronous=FULL`) are shared by the whole group.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..errors import HeadlesslyError, StorageError
from .events import GENESIS_HASH, EventRow, chain_hash

T = TypeVar("T")
MAX_GROUP = 512


@dataclass(frozen=True)
class Head:
    """The end of the log: last seq, last hash, last timestamp (µs)."""

    seq: int
    hash: str
    ts_us: int


class Txn:
    """What a write job sees: the writer connection inside an open transaction, and the log head."""

    def __init__(self, conn: sqlite3.Connection, head: Head, clock: Callable[[], int]) -> None:
        self.conn = conn
        self.head = head
        self._clock = clock

    def next_ts_us(self) -> int:
        return max(self._clock(), self.head.ts_us + 1)

    def append(self, row: dict[str, Any], ts_us: int, ts: str) -> EventRow:
        """Insert one event at `ts_us` (from `next_ts_us`; `ts` is its text) and advance the head."""
        if ts_us <= self.head.ts_us:
            raise ValueError("event timestamps must strictly increase")
        seq = self.head.seq + 1
        h = chain_hash(
            self.head.hash, seq, row["id"], row["type"], row["target"], row["actor"], ts, row["version"],
            row["data"], row["changes"], row["state"], row["reason"], row["caused_by"],
        )  # fmt: skip
        event = EventRow(
            seq=seq, id=row["id"], type=row["type"], entity_type=row["entity_type"], action=row["action"],
            target=row["target"], actor=row["actor"], ts=ts, version=row["version"], data=row["data"],
            changes=row["changes"], state=row["state"], reason=row["reason"], caused_by=row["caused_by"],
            prev_hash=self.head.hash, hash=h,
        )  # fmt: skip
        self.conn.execute(
            f"INSERT INTO events ({EventRow.COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                event.seq, event.id, event.type, event.entity_type, event.action, event.target, event.actor,
                event.ts, event.version, event.data, event.changes, event.state, event.reason, event.caused_by,
                event.prev_hash, event.hash,
            ),
        )  # fmt: skip
        self.head = Head(seq=seq, hash=h, ts_us=ts_us)
        return event

    def append_verbatim(self, event: EventRow) -> None:
        """Insert an event exactly as it was recorded elsewhere (a restore), after checking that it
        continues this log: next seq, chained to the head's hash, and its own hash intact."""
        from ..errors import ValidationFailed
        from ..timeutil import parse_time
        from .events import row_hash

        if event.seq != self.head.seq + 1 or event.prev_hash != self.head.hash or row_hash(event) != event.hash:
            raise ValidationFailed(
                f"event {event.id} (seq {event.seq}) does not continue the log at seq {self.head.seq}",
                hint="The source has a gap, a duplicate or an altered event; nothing of this batch was written.",
            )
        self.conn.execute(
            f"INSERT INTO events ({EventRow.COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                event.seq, event.id, event.type, event.entity_type, event.action, event.target, event.actor,
                event.ts, event.version, event.data, event.changes, event.state, event.reason, event.caused_by,
                event.prev_hash, event.hash,
            ),
        )  # fmt: skip
        self.head = Head(seq=event.seq, hash=event.hash, ts_us=parse_time(event.ts))


class _DryRun(Exception):
    def __init__(self, result: Any) -> None:
        self.result = result


class _Job(Generic[T]):
    __slots__ = ("done", "dry_run", "error", "fn", "result")

    def __init__(self, fn: Callable[[Txn], T], dry_run: bool) -> None:
        self.fn = fn
        self.dry_run = dry_run
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None


def read_head(conn: sqlite3.Connection) -> Head:
    from ..timeutil import parse_time

    row = conn.execute("SELECT seq, hash, ts FROM events ORDER BY seq DESC LIMIT 1").fetchone()
    if row is None:
        return Head(seq=0, hash=GENESIS_HASH, ts_us=0)
    return Head(seq=row[0], hash=row[1], ts_us=parse_time(row[2]))


class Writer:
    """The one writer connection of a tenant, shared by leader/follower group commit."""

    def __init__(self, conn: sqlite3.Connection, clock: Callable[[], int]) -> None:
        self._conn = conn
        self._clock = clock
        self._head = read_head(conn)
        self._data_version = conn.execute("PRAGMA data_version").fetchone()[0]
        self._cv = threading.Condition()
        self._pending: list[_Job[Any]] = []
        self._busy = False
        self.commits = 0  # transactions committed (a group counts once)

    @property
    def head(self) -> Head:
        return self._head

    def run(self, fn: Callable[[Txn], T], dry_run: bool = False) -> T:
        """Run `fn` inside a write transaction and return its result once committed.

        With `dry_run`, everything `fn` wrote is rolled back and its result returned."""
        job: _Job[T] = _Job(fn, dry_run)
        with self._cv:
            self._pending.append(job)
            while not job.done and self._busy:
                self._cv.wait()
            if job.done:
                return _outcome(job)
            self._busy = True
            group, self._pending = self._pending[:MAX_GROUP], self._pending[MAX_GROUP:]
        try:
            self._run_group(group)
        finally:
            with self._cv:
                self._busy = False
                self._cv.notify_all()
        return _outcome(job)

    def _run_group(self, group: list[_Job[Any]]) -> None:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            # Another process (a second `headlessly serve` on the same data dir) may have written
            # since our last commit. data_version changes exactly when another connection has
            # committed, so the head is re-read (under the write lock) only then.
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            if version != self._data_version:
                self._head, self._data_version = read_head(conn), version
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            _fail_all(group, exc)
            return
        start = self._head
        single = len(group) == 1
        ok: list[_Job[Any]] = []
        for job in group:
            before = self._head
            txn = Txn(conn, before, self._clock)
            if not single:
                conn.execute("SAVEPOINT job")
            try:
                result = job.fn(txn)
                if job.dry_run:
                    raise _DryRun(result)
            except _DryRun as dry:
                job.result = dry.result
                self._undo_job(single)
                job.done = True
                continue
            except BaseException as exc:
                job.error = _translate(exc)
                self._undo_job(single)
                job.done = True
                if single:
                    return
                continue
            if not single:
                conn.execute("RELEASE job")
            self._head = txn.head
            job.result = result
            ok.append(job)
        try:
            if conn.in_transaction:
                conn.execute("COMMIT")
                self.commits += 1
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._head = start
            _fail_all(ok, exc)
        for job in ok:
            job.done = True

    def _undo_job(self, single: bool) -> None:
        if single:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        else:
            self._conn.execute("ROLLBACK TO job")
            self._conn.execute("RELEASE job")

    def close(self) -> None:
        with self._cv:
            while self._busy:
                self._cv.wait()
            self._conn.close()


def _fail_all(jobs: list[_Job[Any]], exc: BaseException) -> None:
    err = _translate(exc)
    for job in jobs:
        job.error, job.result, job.done = err, None, True


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, HeadlesslyError) or not isinstance(exc, sqlite3.Error):
        return exc
    return StorageError(
        f"the tenant database refused the write: {exc}",
        hint="Nothing was written; retry, and run `headlessly verify` if it persists.",
    )


def _outcome(job: _Job[T]) -> T:
    if job.error is not None:
        raise job.error
    return job.result  # type: ignore[no-any-return]
