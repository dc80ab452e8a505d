"""The single writer of a tenant: one connection, whole transactions, group commit.

Writers hand their job to the tenant's `Writer`. Whoever finds it idle becomes the leader:
it takes every job waiting at that moment and runs them in ONE `BEGIN IMMEDIATE` transaction
(each job in its own savepoint, so one failure undoes only that job), commits once, and hands
each caller its own result. A lone writer runs its job straight away in its own thread; under
concurrency, commits (and fsyncs under `synchronous=FULL`) are shared by the whole group.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..errors import HeadlesslyError, StorageError, TenantBusy, ValidationFailed
from ..timeutil import MAX_US, format_us, parse_time
from .checkpoints import EVERY_COMMITS
from .events import EVENT_ROW_COLUMNS, GENESIS_HASH, EventRow, chain_hash
from .sqlite import damaged, out_of_space

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_GROUP = 512
GATHER_SECONDS = 0.001
CLOCK_BEHIND_US = 1_000_000  # events stamped this far ahead of the clock are logged (see _clock_behind)
SETTLE_SECONDS = 10.0  # how long a read of a past instant waits for a write group that may still stamp events at it
WRITE_WAIT_SECONDS = 30.0  # how long a write waits for the writes before it, past which it gives up unstarted
INSERT_EVENT = f"INSERT INTO events ({EVENT_ROW_COLUMNS}) VALUES ({', '.join('?' * 16)})"


@dataclass(frozen=True)
class Head:
    """The end of the log: last seq, last hash, last timestamp (µs)."""

    seq: int
    hash: str
    ts_us: int


# Set in a thread while it runs a write group of any tenant: a write it asks for then (a BEFORE hook that writes)
# would wait for itself, or, to another tenant, for a group whose own hook may be waiting for this one.
_leading = threading.local()


def write_inside_a_write() -> ValidationFailed:
    return ValidationFailed(
        "a write from inside a write (a BEFORE hook that writes?) would wait for itself, or for a write that "
        "waits for it",
        hint="BEFORE hooks must not write, to any tenant: change ctx.data, or write from an AFTER hook.",
    )


class Txn:
    """What a write job sees: the writer connection inside an open transaction, and the log head."""

    def __init__(
        self, conn: sqlite3.Connection, head: Head, clock: Callable[[], int], floor: int = 0,
        behind: Callable[[int], None] | None = None,
    ) -> None:  # fmt: skip
        self.conn = conn
        self.head = head
        self._first_seq = head.seq  # the log's end when the job began: later seqs are its own events
        self._clock = clock
        self._floor = floor  # no stamp of this group is earlier (what reads of the past wait on: Writer.settle)
        self._behind = behind  # told how far ahead of the clock a stamp is, past CLOCK_BEHIND_US

    def next_ts_us(self) -> int:
        """The clock's time for a job's first event; each next event of the job (a batch, a revert) takes the
        microsecond after the one before, so an asOf can fall between a request's events only within them."""
        if self.head.seq > self._first_seq:
            ts = self.head.ts_us + 1
        else:
            now = self._clock()
            ts = max(now, self.head.ts_us + 1, self._floor)
            if ts - now > CLOCK_BEHIND_US and self._behind is not None:
                self._behind(ts - now)
        if ts > MAX_US:
            raise StorageError(
                "the next event would be stamped after 9999-12-31T23:59:59.999999Z, the last time the log can hold "
                "(the server's clock, or an event stamped by a clock that was that far ahead); nothing was written",
                hint="This is a fault of the server's clock: report it to the operator.",
            )
        return ts

    def append(
        self, event_id: str, type_: str, entity_type: str, action: str, target: str, actor: str, ts_us: int,
        ts: str, version: int, data: str, changes: str, state: str, reason: str | None, caused_by: str | None,
    ) -> EventRow:  # fmt: skip
        """Insert one event at `ts_us` (from `next_ts_us`; `ts` is its text) and advance the head."""
        head = self.head
        if ts_us <= head.ts_us:
            raise ValueError("event timestamps must strictly increase")
        seq = head.seq + 1
        try:
            h = chain_hash(
                head.hash, seq, event_id, type_, target, actor, ts, version, data, changes, state, reason, caused_by
            )
        except UnicodeEncodeError as exc:  # a lone surrogate (\ud800-\udfff): Python text, not Unicode
            raise ValidationFailed(
                f"the write holds text that is not valid Unicode ({exc.reason}: {exc.object[exc.start : exc.end]!r})",
                hint="Send every string as valid UTF-8; lone surrogates (\\ud800-\\udfff) cannot be stored.",
            ) from None
        event = EventRow(
            seq, event_id, type_, entity_type, action, target, actor, ts, version, data, changes, state, reason,
            caused_by, head.hash, h,
        )  # fmt: skip
        self.conn.execute(INSERT_EVENT, event)
        self.head = Head(seq, h, ts_us)
        return event


class Settled:
    """The latest instant (µs) a read of a tenant's past has settled: no later event of this process may be
    stamped at or before it. Kept by the pool across the tenant's closes and reopens."""

    __slots__ = ("up_to",)

    def __init__(self) -> None:
        self.up_to = 0


class _DryRun(Exception):
    def __init__(self, result: Any) -> None:
        self.result = result


class _Job(Generic[T]):
    __slots__ = ("done", "dry_run", "error", "fn", "result", "wake")

    def __init__(self, fn: Callable[[Txn], T], dry_run: bool) -> None:
        self.fn = fn
        self.dry_run = dry_run
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.wake = threading.Lock()  # held until a leader finishes this job or hands it the lead
        self.wake.acquire()


def read_head(conn: sqlite3.Connection) -> Head:
    row = conn.execute("SELECT seq, hash, ts FROM events ORDER BY seq DESC LIMIT 1").fetchone()
    if row is None:
        return Head(seq=0, hash=GENESIS_HASH, ts_us=0)
    return Head(seq=row[0], hash=row[1], ts_us=parse_time(row[2]))


class Writer:
    """The one writer connection of a tenant, shared by leader/follower group commit."""

    def __init__(
        self, conn: sqlite3.Connection, clock: Callable[[], int], checkpoint_due: Callable[[], None] | None = None,
        tenant: str | None = None, settled: Settled | None = None,
    ) -> None:  # fmt: skip
        self._conn = conn
        self._tenant = tenant  # (named in the errors of a damaged file)
        # A savepoint's journal of the pages it changes grows superlinearly in memory (temp_store MEMORY): a
        # revert of 12,000 entities (one savepoint) took 38 s, 2.8 s with this journal in a temporary file,
        # which SQLite keeps in memory up to 64 KiB anyway. The readers keep MEMORY for their sorts.
        conn.execute("PRAGMA temp_store = FILE")
        self._clock = clock
        self._checkpoint_due = checkpoint_due
        # data_version first: a commit by another connection in between then shows as a change, and the
        # first group re-reads the head (the other order could keep a head that is behind for good).
        self._data_version: int | None = conn.execute("PRAGMA data_version").fetchone()[0]
        self._head = read_head(conn)
        self._mutex = threading.Lock()
        self._idle = threading.Condition(self._mutex)
        self._arrived = threading.Condition(self._mutex)
        self._queued = threading.Condition(self._mutex)  # a job was queued (see wait_queued)
        self._pending: list[_Job[Any]] = []
        self._handed: _Job[Any] | None = None  # the pending job handed the lead, until it takes it (see _give_up)
        self._busy = False  # a leader is running a group, or the lead is being handed over
        self._gathering = False
        self._last_group = 0
        # The earliest stamp the group in flight may give its events (None: no group in flight). Its events are
        # not visible before it commits, so a read of a past instant at or after it waits (see settle).
        self._held_from: int | None = None
        self._settled = threading.Condition(self._mutex)
        self._held = threading.Condition(self._mutex)  # a read was held (see wait_held)
        self._past_read = settled or Settled()  # (see settle: a clock that steps back cannot stamp under it)
        self.held_reads = 0
        self._warned_at: float | None = None  # when a clock behind the log was last logged (see _clock_behind)
        self.commits = 0  # transactions committed (a group counts once)
        self._closed = False  # (see close)

    @property
    def head(self) -> Head:
        return self._head

    def run(self, fn: Callable[[Txn], T], dry_run: bool = False) -> T:
        """Run `fn` inside a write transaction and return its result once committed.

        With `dry_run`, everything `fn` wrote is rolled back and its result returned."""
        if getattr(_leading, "group", False):
            raise write_inside_a_write()
        job: _Job[T] = _Job(fn, dry_run)
        with self._mutex:
            if self._closed:
                raise StorageError(
                    f"tenant {self._tenant!r} was closed (the server is shutting down); nothing was written",
                    hint="Retry once the server is up again (with an idempotencyKey, a retry never writes twice).",
                )
            self._pending.append(job)
            self._queued.notify_all()
            follower, self._busy = self._busy, True
            if follower and self._gathering:
                self._arrived.notify()
        if follower:
            if not job.wake.acquire(timeout=WRITE_WAIT_SECONDS):
                self._give_up(job)
                job.wake.acquire()  # (taken into a group, or handed the lead: either comes)
            # woken exactly once: with our result, or to lead the next group
            if job.done:
                return _outcome(job)
        with self._mutex:  # we lead: our job is the first pending one
            self._handed = None
            if self._last_group > 1 and len(self._pending) < self._last_group:
                self._gather()
            group, self._pending = self._pending[:MAX_GROUP], self._pending[MAX_GROUP:]
            self._last_group = len(group)
            floor = self._held_from = max(self._clock(), self._head.ts_us + 1, self._past_read.up_to + 1)
        _leading.group = True
        try:
            self._run_group(group, floor)
        finally:
            _leading.group = False
            try:
                if not all(other.done for other in group):  # the group itself broke (e.g. KeyboardInterrupt)
                    for other in group:
                        if not other.done:
                            other.error = StorageError(
                                "the write was interrupted; nothing was written",
                                hint="Send it again (with an idempotencyKey, a retry never writes twice).",
                            )
                            other.done = True
                    if (failed := self._roll_back()) is not None:  # e.g. the connection was closed under us
                        log.error("could not roll back a broken write group", exc_info=failed)
            finally:  # whatever recovery met (a closed connection, an I/O error), the next writers go on
                with self._mutex:
                    self._held_from = None
                    self._settled.notify_all()
                    leader = self._handed = self._pending[0] if self._pending else None
                    if leader is None:
                        self._busy = False
                        self._idle.notify_all()
                for other in group[1:]:
                    other.wake.release()
                if leader is not None:
                    leader.wake.release()
        return _outcome(job)

    def _give_up(self, job: _Job[Any]) -> None:
        """Withdraw a job that has waited WRITE_WAIT_SECONDS, if no group has taken it and it was not handed the
        lead: a group that never ends (a BEFORE hook waiting for a write it started in another thread, which
        waits for that hook's group) then ends when the hook sees this error, instead of holding every write."""
        with self._mutex:
            if job is self._handed or job not in self._pending:
                return
            self._pending.remove(job)
        raise TenantBusy(
            f"the writes before this one have taken over {WRITE_WAIT_SECONDS:g} s (a slow BEFORE hook, or one "
            "waiting for a write it started in another thread?), so this write was not started; nothing was written",
            hint="Retry shortly (with an idempotencyKey, a retry never writes twice).",
        )

    def settle(self, as_of_us: int, timeout: float | None = None) -> None:
        """Wait until no write group in flight may still stamp an event at or before `as_of_us`, so that a read of
        that instant, once settled, never changes. An instant not yet past (now or later) waits only for the group
        in flight at the call: later writes may still stamp events at it anyway."""
        if getattr(_leading, "group", False):  # a BEFORE hook's read: its own group cannot end first
            return
        until = min(as_of_us, self._clock())
        timeout = SETTLE_SECONDS if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._mutex:
            counted = False
            while self._held_from is not None and self._held_from <= until:
                if not counted:
                    counted, self.held_reads = True, self.held_reads + 1
                    self._held.notify_all()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TenantBusy(
                        f"a write has been in progress for over {timeout:g} s (a slow BEFORE hook?) and may still "
                        f"add events at {format_us(as_of_us)} or before, so that instant cannot be read yet",
                        hint="Nothing was read. Retry when the write has finished, or read a time before it began.",
                    )
                self._settled.wait(remaining)
            self._past_read.up_to = max(self._past_read.up_to, until)  # (a clock that steps back cannot stamp under it)

    def _clock_behind(self, by_us: int) -> None:
        """Say (at most once a minute) that events are stamped ahead of the clock: it stepped back, or an earlier
        event was stamped by a clock that ran ahead, and the log's times must still grow."""
        if self._warned_at is None or time.monotonic() - self._warned_at >= 60:
            self._warned_at = time.monotonic()
            log.warning(
                "tenant %s: the clock is %.3f s behind the last event's time: new events are stamped just after "
                "it, so their times run ahead of the clock until it catches up (check the machine's clock)",
                self._tenant, by_us / 1e6,
            )  # fmt: skip

    def wait_held(self, n: int, timeout: float) -> bool:
        """Block until `n` reads in all have waited in `settle` (False after `timeout` seconds)."""
        with self._held:
            return self._held.wait_for(lambda: self.held_reads >= n, timeout)

    def wait_queued(self, n: int, timeout: float) -> bool:
        """Block until at least `n` jobs wait behind the running group (False after `timeout` seconds):
        how a caller (a test, a diagnosis) knows writers have queued without polling."""
        with self._queued:
            return self._queued.wait_for(lambda: len(self._pending) >= n, timeout)

    def _roll_back(self) -> sqlite3.Error | None:
        """Undo the open transaction, whatever it held; the next group re-reads the head. SQLite's refusal is
        returned, not raised: the next group then rolls back first (a closed connection cannot even say)."""
        self._data_version = None
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            return exc
        return None

    def _gather(self) -> None:
        """Under concurrency, wait (briefly) for the writers just answered to queue their next jobs:
        otherwise the first one back commits alone, and groups alternate between 1 and everyone."""
        deadline = time.monotonic() + GATHER_SECONDS
        self._gathering = True
        try:
            while len(self._pending) < self._last_group:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._arrived.wait(remaining)
        finally:
            self._gathering = False

    def _run_group(self, group: list[_Job[Any]], floor: int) -> None:
        conn = self._conn
        try:
            if conn.in_transaction:  # left open by a ROLLBACK that failed after a failed COMMIT
                conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            # Another process (a second `headlessly serve` on the same data dir) may have written
            # since our last commit. data_version changes exactly when another connection has
            # committed, so the head is re-read (under the write lock) only then.
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            if version != self._data_version:
                self._head, self._data_version = read_head(conn), version
        except sqlite3.Error as exc:
            self._roll_back()
            _fail_all(group, exc, self._tenant)
            return
        start = self._head
        single = len(group) == 1
        ok: list[_Job[Any]] = []
        broken: BaseException | None
        for job in group:
            txn = Txn(conn, self._head, self._clock, floor, self._clock_behind)
            undo = single  # what there is to undo: alone, the transaction; in a group, the savepoint once made
            try:
                if not single:
                    conn.execute("SAVEPOINT job")
                    undo = True
                result = job.fn(txn)
                if job.dry_run:
                    raise _DryRun(result)
                if not single:
                    conn.execute("RELEASE job")
            except _DryRun as dry:
                job.result, job.done = dry.result, True
                broken = self._undo_job(single)
            except BaseException as exc:
                job.error, job.done = _translate(exc, self._tenant), True
                # SQLite may have undone the whole group itself (a full disk, an I/O error mid-statement)
                broken = (self._undo_job(single) if undo else None) if conn.in_transaction else exc
                if broken is None and single:
                    return
            else:
                self._head = txn.head
                job.result = result
                ok.append(job)
                continue
            if broken is not None:  # the group's transaction is gone, and with it what the others wrote
                self._head = start
                _fail_all([other for other in group if not other.done], broken, self._tenant)
                return
        try:
            if conn.in_transaction:
                conn.execute("COMMIT")
                self.commits += 1
        except sqlite3.Error as exc:
            self._roll_back()
            self._head = start
            _fail_all(ok, exc, self._tenant)
        for job in ok:
            job.done = True
        if self._checkpoint_due is not None and self.commits % EVERY_COMMITS == 0:
            self._checkpoint_due()

    def _undo_job(self, single: bool) -> sqlite3.Error | None:
        """Undo the job that just ran (alone: the transaction; in a group: its savepoint). If SQLite refuses, the
        whole transaction is rolled back instead (or by the next group, if that fails too) and the error returned:
        the group's other jobs then fail with it, since what they wrote is gone with it."""
        try:
            if single:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
            else:
                self._conn.execute("ROLLBACK TO job")
                self._conn.execute("RELEASE job")
            return None
        except sqlite3.Error as exc:
            self._roll_back()
            return exc

    def close(self) -> None:
        """Close the connection once the write in flight (and every one queued behind it) has committed; a
        write asked for later is refused as the server shutting down."""
        with self._idle:
            while self._busy:
                self._idle.wait()
            self._closed = True
            self._conn.close()


def _fail_all(jobs: list[_Job[Any]], exc: BaseException, tenant: str | None) -> None:
    err = _translate(exc, tenant)
    for job in jobs:
        job.error, job.result, job.done = err, None, True


def _translate(exc: BaseException, tenant: str | None) -> BaseException:
    if isinstance(exc, HeadlesslyError) or not isinstance(exc, sqlite3.Error):
        return exc
    if (damage := damaged(exc, tenant, writing=True) or out_of_space(exc, tenant)) is not None:
        return damage
    return StorageError(
        f"the tenant database refused the write: {exc}",
        hint="Nothing was written; retry, and run `headlessly verify` if it persists.",
    )


def _outcome(job: _Job[T]) -> T:
    if job.error is not None:
        raise job.error
    return job.result  # type: ignore[no-any-return]
