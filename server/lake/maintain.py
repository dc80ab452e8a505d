"""Table upkeep: expire old and superseded snapshots, compact closed days (and open ones with many files),
remove orphan files.

Old metadata files are pruned on every commit by the table properties
`write.metadata.delete-after-commit.enabled` / `write.metadata.previous-versions-max`. Expiring a
snapshot only drops it from the metadata: its manifest list, the manifests no kept snapshot shares and
the data files no kept snapshot reads stay on disk until the orphan sweep here removes them."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any, TypeVar

from ..config import OPEN_DAY_FILES
from . import catalog as cat
from . import snapshots
from .catalog import local_path
from .scan import TenantRows

log = logging.getLogger(__name__)
MAX_RACES = 20  # commits lost in a row by one step
COMPACT_ROWS = 100_000  # rows a compacted file holds at most: what one compaction commit holds in memory, as a flush's
COMPACT_BYTES = 32 << 20  # bytes of column data (uncompressed) merged into one file at most: what reading it takes
T = TypeVar("T")

# Called at "before_commit" (of a compaction), "before_untag" and "before_expire": a test's interleaving point.
Fault = Callable[[str], None]


@dataclass
class MaintainReport:
    snapshots_expired: int = 0
    days_compacted: list[str] = field(default_factory=list)
    files_before: int = 0
    files_after: int = 0
    orphans_removed: int = 0  # data files
    metadata_removed: int = 0  # manifest lists, manifests and metadata files
    tag: str | None = None  # the tag of the table's state before the run (when it compacted)
    tags_removed: int = 0  # runs' tags older than the retention


def maintain(
    table: Any,
    retain: timedelta = timedelta(days=7),
    orphan_age: timedelta = timedelta(hours=1),
    now: datetime | None = None,
    progress: Callable[[str], None] | None = None,
    fault: Fault | None = None,
    open_day_files: int = OPEN_DAY_FILES,
) -> MaintainReport:
    """Compact every closed day that has several files, and the open day (today, UTC) of a tenant once it
    has `open_day_files` (flushes go on adding to it: it is compacted again later), expire snapshots older
    than `retain` (the current one always stays), then delete the data and metadata files no kept snapshot
    references that are older than `orphan_age` (younger ones may belong to a commit in flight).
    A commit that loses a race (a flush committed meanwhile) is redone on the table as it is then."""
    from pyiceberg.exceptions import CommitFailedException

    now = (now or datetime.now(UTC)).astimezone(UTC)  # (a naive time is local, as Python takes it)
    say = progress or (lambda _text: None)
    hook = fault or (lambda _stage: None)
    report = MaintainReport(files_before=_data_file_count(table))
    _retrying(table, _set_write_properties)
    done = _Progress(now=now)  # the run's compaction commits, and its tag
    for tenant, day in _days_to_compact(table, now, open_day_files):
        done.commits = 0
        try:
            _compact_day(table, tenant, day, hook, done)
        except CommitFailedException:
            if day < now.date():
                raise
            # The open day takes a flush every few seconds: it is compacted at the next run, or once closed.
            log.warning("compacting %s's open day %s lost %d races with flushes in a row: left", tenant, day, MAX_RACES)
            say(f"left {tenant} {day.isoformat()} (today): the flushes kept committing first")
            table = table.refresh()
        if done.commits:  # (none: files too large to merge, or another maintenance merged them first)
            report.days_compacted.append(f"{tenant}/{day.isoformat()}")
            say(f"compacted {tenant} {day.isoformat()}")
    if done.tag:
        report.tag = done.tag
        say(f"tagged the table's state before this run {done.tag}")
    before = {snapshot.snapshot_id for snapshot in table.metadata.snapshots}
    # Each sweep below reads every kept snapshot's manifests: seconds to minutes on an old table, so each says
    # when it starts as well as what it did.
    say(
        f"expiring snapshots and runs' tags older than {(now - retain).isoformat(timespec='seconds')}, and the "
        "snapshots superseded by an append..."
    )
    removed: list[str] = []
    # (the first base is tagged, so no expiry takes it; kept here too, should its tag have been lost)
    _retrying(table, lambda t: _expire(t, now, retain, hook, done.bases[1:] + done.made, done.bases[:1], removed))
    table = table.refresh()
    report.snapshots_expired = len(before - {snapshot.snapshot_id for snapshot in table.metadata.snapshots})
    report.tags_removed = len(removed)
    say(f"expired {report.snapshots_expired} snapshots and removed {report.tags_removed} tags")
    say("looking for orphan data files...")
    report.orphans_removed = _remove_orphans(table, now - orphan_age)
    say(f"removed {report.orphans_removed} orphan data files")
    say("looking for unreferenced metadata files...")
    report.metadata_removed = _remove_orphan_metadata(table, now - orphan_age)
    say(f"removed {report.metadata_removed} unreferenced metadata files")
    report.files_after = _data_file_count(table)
    return report


def _retrying(table: Any, step: Callable[[Any], T]) -> T:
    """Run one committing step; when its commit loses a race (pyiceberg's own retry is off for this table,
    see catalog.TABLE_PROPERTIES), reload the table and redo the whole step from what it holds now, up to
    MAX_RACES times in a row. A lost commit changed nothing (its written files are orphans, swept later)."""
    from pyiceberg.exceptions import CommitFailedException

    races = 0
    while True:
        try:
            return step(table)
        except CommitFailedException:
            races += 1
            if races > MAX_RACES:
                raise
            log.info("a maintenance commit lost a race with another commit; redoing it")
            table.refresh()


def _set_write_properties(table: Any) -> None:
    """Set the table's write properties (see catalog.WRITE_PROPERTIES) when a table made before them lacks
    them: a compacted run must be one file, in seq order, and its commit must merge small manifests."""
    if missing := cat.missing_write_properties(table):
        with table.transaction() as tx:
            tx.set_properties(missing)


def _expire(
    table: Any,
    now: datetime,
    retain: timedelta,
    fault: Fault,
    of_this_run: list[int],
    kept: list[int],
    removed: list[str],
) -> None:
    """Remove the runs' tags older than `retain` (one commit; their names go to `removed`), then expire, in
    one commit, the snapshots older than `retain`, those an append superseded (snapshots.py: they hold no file
    their successor lacks), and `of_this_run`: snapshots the run's compaction commits were made on and made
    (not `kept`, the first's base: never expired by its own run, tagged or not). Tagged snapshots stay
    (the state before this run and before the other runs of the last `retain`: each holds every file its run
    replaced, but for files written during the run, which are younger than the orphan sweep's age and so stay
    on disk that long), and so does the current one. One snapshot kept per run, not two or three per
    compaction commit: each kept snapshot makes every later commit slower."""
    stale = snapshots.tags_before(table, now - retain)
    fault("before_untag")
    snapshots.remove_tags(table, stale)  # (another run removing one first: a race lost, redone without it)
    removed.extend(stale)
    ids = dict.fromkeys(
        snapshots.older_than(table, now - retain)
        + snapshots.superseded_by_appends(table, now)
        + snapshots.present(table, of_this_run)
    )
    fault("before_expire")
    snapshots.expire(table, [i for i in ids if i not in kept])


def _data_file_count(table: Any) -> int:
    return table.inspect.data_files().num_rows if table.metadata.current_snapshot() else 0


def _days_to_compact(table: Any, now: datetime, open_day_files: int) -> list[tuple[str, Any]]:
    """The (tenant, day)s with files to merge, told from the table's metadata (each file's rows, seq bounds and
    size on disk), so that days already compacted cost nothing to pass over. Sizes on disk are compressed, so
    this may name a day whose files are too large to merge once read (their footers say so: nothing is done)."""
    if not table.metadata.current_snapshot():
        return []
    files = table.inspect.data_files()
    days: dict[tuple[str, Any], list[tuple[Any, Any, int, int]]] = {}
    for partition, metrics, count, size in zip(
        files.column("partition").to_pylist(),
        files.column("readable_metrics").to_pylist(),
        files.column("record_count").to_pylist(),
        files.column("file_size_in_bytes").to_pylist(),
        strict=True,
    ):
        seq = metrics["seq"]
        days.setdefault((partition["tenant"], partition["timestamp_day"]), []).append(
            (seq["lower_bound"], seq["upper_bound"], count, size)
        )
    today = now.date()
    out = []
    for (tenant, day), spans in sorted(days.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        day_date = day if hasattr(day, "isoformat") else (datetime(1970, 1, 1).date() + timedelta(days=int(day)))
        if len(spans) < 2 or (day_date >= today and len(spans) < open_day_files):
            continue
        if any(first is None or last is None for first, last, *_ in spans):
            out.append((tenant, day_date))  # (no seq bounds: a file another tool wrote) let the day's read decide
            continue
        spans.sort()
        overlapping = any(b[0] <= a[1] for a, b in pairwise(spans))
        if overlapping or _runs_to_merge(spans):
            out.append((tenant, day_date))
    return out


@dataclass
class _Progress:
    now: datetime  # the run's start: its tag's name
    commits: int = 0  # of one day's compaction, across the races it lost (reset for each day)
    bases: list[int] = field(default_factory=list)  # each of the run's commits' snapshot before it, in order
    made: list[int] = field(default_factory=list)  # the snapshots the run's commits added (a delete, an append)
    tag: str = ""  # the run's tag, of the snapshot its first commit was made on (once committed)
    staged: str = ""  # the tag the pending commit stages

    def tag_first(self, tx: Any, base: int | None) -> None:
        """In the run's first commit (`tx`, its overwrite staged), tag its base: atomically, so that no other
        run's expiry can take the state before this run from it. The name is free in the table as `tx` sees it;
        a run that added one since also moved main, so this commit fails (a race lost) and is redone."""
        if self.bases or base is None:
            return
        self.staged = snapshots.free_tag(tx.table_metadata.refs, self.now)
        snapshots.stage_tag(tx, base, self.staged)

    def record(self, table: Any, base: int | None) -> None:
        """Count a commit just made on `base`."""
        if not self.bases and base is not None:
            ref = table.metadata.refs.get(self.staged)
            if ref is not None and ref.snapshot_id == base:
                self.tag = self.staged
            else:  # (re-applied by pyiceberg's own retry, which drops it: commit.retry.num-retries set again)
                log.warning("the tag %s of the state before this maintenance run was not kept", self.staged)
        self.commits += 1
        if base is not None:
            self.bases.append(base)
        self.made.extend(snapshots.made_on(table, base))


def _compact_day(table: Any, tenant: str, day: Any, fault: Fault, done: _Progress) -> None:
    """Rewrite one day of one tenant as few files as it takes to hold at most COMPACT_ROWS rows each: each run
    of consecutive smaller files (in seq order) that fits in COMPACT_ROWS becomes one file, in a snapshot of
    its own that keeps every row (and every table property: the watermarks), read and written a run at a time.
    A flush that commits first (into an open day, say) makes a commit fail, so no row it added is overwritten:
    the day is planned again from the table as it then is (runs already merged are single files by then) and
    goes on; MAX_RACES lost in a row raise CommitFailedException. `done` counts the commits made."""
    from pyiceberg.exceptions import CommitFailedException

    races, commits = 0, done.commits
    while True:
        try:
            _compact_runs(table, tenant, day, fault, done)
            return  # (its runs, merged, are done: merging again would change nothing)
        except CommitFailedException:
            races = 1 if done.commits > commits else races + 1  # lost in a row: none committed in between
            commits = done.commits
            if races > MAX_RACES:
                raise
            log.info("a compaction commit lost a race with another commit; planning the day again")
            table.refresh()


def _compact_runs(table: Any, tenant: str, day: Any, fault: Fault, done: _Progress) -> None:
    """Commit the day's runs to merge, as planned from the table now."""
    import pyarrow as pa
    import pyiceberg.expressions

    ex: Any = pyiceberg.expressions  # its constructors are typed for bound terms; we pass names
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    end = start + timedelta(days=1)
    window = ex.And(ex.GreaterThanOrEqual("timestamp", start.isoformat()), ex.LessThan("timestamp", end.isoformat()))
    rows = TenantRows(table, tenant, window)
    if not rows.streamed:  # (overlapping files, delete files: a table other tools wrote) the whole day at once
        if len(rows.spans) < 2 and rows.total == sum(n for _, _, n, _ in rows.spans):
            return  # (one file, no deletes left to apply)
        whole = ex.And(ex.EqualTo("tenant", tenant), window)
        base = table.metadata.current_snapshot_id
        with table.transaction() as tx:
            tx.overwrite(table.scan(row_filter=whole).to_arrow().sort_by("seq"), overwrite_filter=whole)
            done.tag_first(tx, base)
            fault("before_commit")
        done.record(table, base)
        return
    for first, last in _runs_to_merge(rows.spans):
        span = ex.And(ex.GreaterThanOrEqual("seq", first), ex.LessThanOrEqual("seq", last))
        merged = TenantRows(table, tenant, ex.And(window, span))
        data = pa.Table.from_batches(list(merged.batches()))
        base = table.metadata.current_snapshot_id  # (a commit made on another fails: a race lost)
        with table.transaction() as tx:
            tx.overwrite(data, overwrite_filter=ex.And(ex.EqualTo("tenant", tenant), ex.And(window, span)))
            done.tag_first(tx, base)
            fault("before_commit")
        done.record(table, base)


def _runs_to_merge(spans: list[tuple[int, int, int, int]]) -> list[tuple[int, int]]:
    """The (first, last) seqs of each run of two or more consecutive files (spans: first seq, last seq, rows,
    bytes, in seq order) of at most COMPACT_ROWS rows and COMPACT_BYTES bytes together; greedy, so no two runs
    it leaves (merged or not) fit together: merging again changes nothing. (Screening a day, bytes are on disk;
    planning its merges, they are the column data uncompressed.)"""
    runs: list[list[tuple[int, int, int, int]]] = [[]]
    for span in spans:
        if runs[-1] and (
            sum(r[2] for r in runs[-1]) + span[2] > COMPACT_ROWS
            or sum(r[3] for r in runs[-1]) + span[3] > COMPACT_BYTES
        ):
            runs.append([])
        runs[-1].append(span)
    return [(run[0][0], run[-1][1]) for run in runs if len(run) > 1]


def _remove_orphans(table: Any, older_than: datetime) -> int:
    referenced = (
        {local_path(p) for p in table.inspect.all_files().column("file_path").to_pylist()}
        if table.metadata.snapshots
        else set()
    )
    return _sweep(os.path.join(local_path(table.location()), "data"), referenced, older_than, lambda _name: True)


def _remove_orphan_metadata(table: Any, older_than: datetime) -> int:
    """Manifest lists and manifests of no kept snapshot, and metadata files that are neither current nor in
    the metadata log. Only files of those kinds are touched."""
    metadata = table.metadata
    referenced = {local_path(table.metadata_location)}
    referenced |= {local_path(entry.metadata_file) for entry in metadata.metadata_log}
    referenced |= {local_path(snapshot.manifest_list) for snapshot in metadata.snapshots}
    if metadata.snapshots:
        referenced |= {local_path(p) for p in table.inspect.all_manifests().column("path").to_pylist()}
    return _sweep(
        os.path.join(local_path(table.location()), "metadata"),
        referenced,
        older_than,
        lambda name: name.endswith((".avro", ".metadata.json")),
    )


def _sweep(folder: str, referenced: set[str], older_than: datetime, kind: Callable[[str], bool]) -> int:
    """Delete the files under `folder` of the given kind that are not referenced and older than the cutoff."""
    if not os.path.isdir(folder):
        return 0  # a remote warehouse: orphans there are the object store's lifecycle rules' job
    cutoff = older_than.timestamp()
    removed = 0
    for parent, _dirs, names in os.walk(folder):
        for name in names:
            path = os.path.join(parent, name)
            if kind(name) and path not in referenced and os.path.getmtime(path) < cutoff:
                os.remove(path)
                removed += 1
    return removed
