"""Upkeep of the Iceberg table `headlessly.events`: closed days compacted, old snapshots expired, orphan
files of crashed commits removed, old metadata pruned; every row and every watermark kept (CONTRACT §11).

Event times come from the fake clock (January 2026); snapshot times and file times are the machine's, so a
maintenance run that must treat everything as old is given `now` two days after the machine's clock."""

from __future__ import annotations

import os
import random
import string
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyiceberg.exceptions import CommitFailedException

from server.lake import catalog as cat
from server.lake import maintain as maintain_module
from server.lake import snapshots
from server.lake.flusher import Flusher
from server.lake.maintain import MAX_RACES, MaintainReport, maintain
from server.lake.restore import check_tenant, read_tenant
from server.store import Store
from server.timeutil import parse_time

TENANT = "acme"
ACTOR = "agent_lake"


pytestmark = pytest.mark.usefixtures("no_pyiceberg_config")


# ---- helpers --------------------------------------------------------------------------------------


class Crash(Exception):
    """A simulated crash of the flushing process."""


def crash_before_commit(stage: str) -> None:
    if stage == "before_commit":
        raise Crash(stage)


def later() -> datetime:
    """A maintenance time after every snapshot and file of the test, and after every event's day."""
    return datetime.now(UTC) + timedelta(days=2)


def write_events(store: Store, clock: Any, n: int, tenant: str = TENANT) -> None:
    for i in range(n):
        clock.advance(0.000013)
        store.do(tenant, ACTOR, {"action": "create", "type": "Contact", "data": {"name": f"Person {i}"}})


def flush_rounds(store: Store, clock: Any, rounds: int, events: int) -> Flusher:
    """`rounds` times: write `events` events, then flush them, all with one Flusher (returned, to reuse)."""
    flusher = Flusher(store)
    for _ in range(rounds):
        write_events(store, clock, events)
        flusher.flush()
    return flusher


def lake_table(data_dir: Path) -> Any:
    """The table as it is now in the catalog (a fresh load, not a flusher's cached copy)."""
    return cat.load(data_dir).load_table(f"{cat.NAMESPACE}.{cat.TABLE}")


def rows(table: Any, tenant: str = TENANT) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = read_tenant(table, tenant).to_pylist()
    return found


def data_files_on_disk(table: Any) -> set[str]:
    root = Path(urlparse(table.location()).path) / "data"
    return {os.path.normpath(p) for p in map(str, root.rglob("*")) if Path(p).is_file()}


def referenced_files(table: Any) -> set[str]:
    if not table.metadata.snapshots:
        return set()
    paths = table.inspect.all_files().column("file_path").to_pylist()
    return {os.path.normpath(urlparse(p).path) for p in paths}


def files_per_partition(table: Any) -> dict[tuple[str, date], int]:
    counts: dict[tuple[str, date], int] = {}
    for p in table.inspect.data_files().column("partition").to_pylist():
        day = p["timestamp_day"]
        day = day if isinstance(day, date) else date(1970, 1, 1) + timedelta(days=int(day))
        counts[(p["tenant"], day)] = counts.get((p["tenant"], day), 0) + 1
    return counts


def assert_exactly_once(store: Store, table: Any, tenant: str = TENANT) -> None:
    log = store.log(tenant, 0, 1_000_000)
    found = rows(table, tenant)
    assert [(r["seq"], r["id"], r["hash"], r["state"]) for r in found] == [(e.seq, e.id, e.hash, e.state) for e in log]
    assert cat.watermark(table, tenant) == store.head(tenant)
    assert check_tenant(store, table, tenant) == []


def at(text: str) -> int:
    return parse_time(text)


# ---- compaction and expiry ------------------------------------------------------------------------


def test_maintenance_compacts_each_closed_day_into_one_file_and_keeps_every_row(store: Store, clock: Any) -> None:
    flusher = Flusher(store)
    clock.now = at("2026-01-15T23:59:58Z")
    for _ in range(3):  # three flushes on the 15th, in both tenants
        write_events(store, clock, 2, "acme")
        write_events(store, clock, 2, "beta")
        flusher.flush()
    clock.now = at("2026-01-15T23:59:59.999999Z")  # the last microsecond of the 15th
    store.do(TENANT, ACTOR, {"action": "create", "type": "Contact", "data": {"name": "Last of the 15th"}})
    flusher.flush()
    for _ in range(2):  # two flushes on the 16th, from 00:00:00.000013
        write_events(store, clock, 2, "acme")
        flusher.flush()
    table = lake_table(store.data_dir)
    assert files_per_partition(table) == {
        ("acme", date(2026, 1, 15)): 4, ("acme", date(2026, 1, 16)): 2, ("beta", date(2026, 1, 15)): 3,
    }  # fmt: skip
    before_rows = {t: rows(table, t) for t in ("acme", "beta")}
    before_marks = cat.watermarks(table)
    files_before = data_files_on_disk(table)

    report = maintain(table, retain=timedelta(days=1), now=later())

    table = lake_table(store.data_dir)
    assert report.days_compacted == ["acme/2026-01-15", "acme/2026-01-16", "beta/2026-01-15"]
    assert (report.files_before, report.files_after) == (9, 3)
    assert files_per_partition(table) == {
        ("acme", date(2026, 1, 15)): 1, ("acme", date(2026, 1, 16)): 1, ("beta", date(2026, 1, 15)): 1,
    }  # fmt: skip
    assert len(table.metadata.snapshots) == 2 and report.snapshots_expired >= 6
    # The state before the run stays, tagged: the run's time names it, for --retain-days from then.
    assert report.tag is not None and report.tag.startswith("headlessly-maintain-")
    assert table.metadata.refs[report.tag].snapshot_id != table.metadata.current_snapshot_id
    assert cat.watermarks(table) == before_marks
    assert {t: rows(table, t) for t in ("acme", "beta")} == before_rows
    for tenant in ("acme", "beta"):
        assert_exactly_once(store, table, tenant)
    assert report.orphans_removed == 0 and files_before < data_files_on_disk(table) == referenced_files(table)

    again = maintain(lake_table(store.data_dir), retain=timedelta(days=1), now=later() + timedelta(days=1, hours=1))

    table = lake_table(store.data_dir)
    assert again.days_compacted == [] and again.tag is None and again.tags_removed == 1
    assert len(table.metadata.snapshots) == 1 and set(table.metadata.refs) == {"main"}
    on_disk = data_files_on_disk(table)
    assert on_disk == referenced_files(table)  # the compacted-away files went with the expired snapshot
    assert again.orphans_removed == len(files_before - on_disk) == 9
    assert {t: rows(table, t) for t in ("acme", "beta")} == before_rows


def test_a_day_larger_than_a_compacted_file_becomes_files_of_at_most_that_many_rows_and_stays_so(
    store: Store, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(maintain_module, "COMPACT_ROWS", 5)  # (100,000 by default)
    clock.now = at("2026-01-15T09:00:00Z")
    flush_rounds(store, clock, 9, 2)  # 9 files of 2 rows: 18 rows
    table = lake_table(store.data_dir)
    before = rows(table)

    report = maintain(table, retain=timedelta(days=1), now=later())
    table = lake_table(store.data_dir)
    sizes = table.inspect.data_files().column("record_count").to_pylist()
    moved = [Path(cat.local_path(f)) for f in table.inspect.data_files().column("file_path").to_pylist()]
    for path in moved:  # the next run decides from the table's metadata: it reads no data file
        path.rename(path.with_suffix(".away"))
    again = maintain(table, retain=timedelta(days=1), orphan_age=timedelta(days=30), now=later())  # (keeps .away)
    for path in moved:
        path.with_suffix(".away").rename(path)

    assert report.days_compacted == ["acme/2026-01-15"] and (report.files_before, report.files_after) == (9, 5)
    assert sorted(sizes) == [2, 4, 4, 4, 4]  # runs of files that fit in 5 rows, each one file
    assert rows(lake_table(store.data_dir)) == before
    assert_exactly_once(store, lake_table(store.data_dir))
    assert again.days_compacted == [] and again.files_after == 5  # merging again would change nothing


@given(st.lists(st.tuples(st.integers(min_value=1, max_value=150_000), st.integers(1, 50 << 20)), max_size=30))
def test_runs_to_merge_are_consecutive_files_that_fit_and_leave_nothing_to_merge_again(
    files: list[tuple[int, int]],
) -> None:
    spans, seq = [], 1
    for n, size in files:  # files of a day in seq order: (first seq, last seq, rows, bytes)
        spans.append((seq, seq + n - 1, n, size))
        seq += n

    runs = maintain_module._runs_to_merge(spans)

    first_of = {span[0]: i for i, span in enumerate(spans)}
    last_of = {span[1]: i for i, span in enumerate(spans)}
    ends = {first_of[a]: last_of[b] for a, b in runs}  # each run starts and ends at a file's boundary
    for i, j in ends.items():
        assert j > i and sum(span[2] for span in spans[i : j + 1]) <= maintain_module.COMPACT_ROWS
        assert sum(span[3] for span in spans[i : j + 1]) <= maintain_module.COMPACT_BYTES
    merged, i = [], 0
    while i < len(spans):
        j = ends.get(i, i)
        run = spans[i : j + 1]
        merged.append((spans[i][0], spans[j][1], sum(span[2] for span in run), sum(span[3] for span in run)))
        i = j + 1
    assert maintain_module._runs_to_merge(merged) == []  # a second maintenance run merges nothing


@pytest.mark.parametrize("text", ["random", "compressible"])
def test_files_of_large_events_are_merged_only_up_to_a_compacted_files_bytes_as_read(
    store: Store, clock: Any, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    """Bounded by the column data uncompressed (what reading the file takes), not by the size on disk, which
    for text that compresses well may be a thousandth of it."""
    clock.now = at("2026-01-15T09:00:00Z")
    flusher = Flusher(store)
    for i in range(6):  # 6 files of one event each, of ~30,000 characters
        clock.advance(1)
        name = "".join(random.Random(i).choices(string.ascii_letters, k=30_000)) if text == "random" else "x" * 30_000
        store.do(TENANT, "agent_lake", {"action": "create", "type": "Contact", "data": {"name": name}})
        flusher.flush()
    table = lake_table(store.data_dir)
    paths = [cat.local_path(f) for f in table.inspect.data_files().column("file_path").to_pylist()]
    sizes = [sum(m.row_group(i).total_byte_size for i in range(m.num_row_groups)) for m in map(pq.read_metadata, paths)]
    monkeypatch.setattr(maintain_module, "COMPACT_BYTES", 2 * max(sizes) + min(sizes) // 2)  # 2 files fit, not 3

    report = maintain(table, retain=timedelta(days=1), now=later())
    table = lake_table(store.data_dir)
    again = maintain(table, retain=timedelta(days=1), now=later())

    assert (report.files_before, report.files_after) == (6, 3)
    assert sorted(table.inspect.data_files().column("record_count").to_pylist()) == [2, 2, 2]
    assert_exactly_once(store, table)
    assert again.days_compacted == [] and again.files_after == 3


def test_maintenance_says_when_each_step_starts_and_what_it_did(store: Store, clock: Any) -> None:
    flush_rounds(store, clock, 2, 2)
    said: list[str] = []

    maintain(lake_table(store.data_dir), retain=timedelta(days=1), now=later(), progress=said.append)

    steps = [line.split(" ")[0] for line in said if not line.startswith("compacted ")]
    assert steps == ["tagged", "expiring", "expired", "looking", "removed", "looking", "removed"]
    assert said[-2] == "looking for unreferenced metadata files..."


def test_maintenance_leaves_an_open_day_and_young_snapshots_alone(store: Store, clock: Any) -> None:
    flush_rounds(store, clock, 3, 2)
    table = lake_table(store.data_dir)
    snapshots = [s.snapshot_id for s in table.metadata.snapshots]
    files = data_files_on_disk(table)
    today = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=clock.now)  # the events' own day

    report = maintain(table, retain=timedelta(days=7), now=today)

    table = lake_table(store.data_dir)
    assert report == MaintainReport(files_before=3, files_after=3)
    assert [s.snapshot_id for s in table.metadata.snapshots] == snapshots
    assert data_files_on_disk(table) == files
    assert_exactly_once(store, table)


def test_maintenance_compacts_an_open_day_once_it_has_many_files_and_flushes_go_on_after_it(
    store: Store, clock: Any
) -> None:
    flusher = flush_rounds(store, clock, 3, 2)
    today = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=clock.now)
    table = lake_table(store.data_dir)
    before_rows, before_marks = rows(table, TENANT), cat.watermarks(table)

    report = maintain(table, retain=timedelta(days=7), now=today, open_day_files=3)
    write_events(store, clock, 2)
    flusher.flush()  # the open day goes on taking flushes

    table = lake_table(store.data_dir)
    assert report.days_compacted == [f"{TENANT}/{today.date().isoformat()}"]
    assert (report.files_before, report.files_after) == (3, 1)
    assert rows(table, TENANT)[: len(before_rows)] == before_rows and len(rows(table, TENANT)) == 8
    assert cat.watermarks(table)[TENANT][0] == before_marks[TENANT][0] + 2
    assert_exactly_once(store, table)


def test_maintenance_expires_snapshots_an_append_superseded_and_keeps_the_one_before_a_compaction_to_the_end_of_retention(
    store: Store, clock: Any
) -> None:
    clock.now = at("2026-01-15T09:00:00Z")
    flush_rounds(store, clock, 3, 2)  # three snapshots, three files of a day that is closed by later()
    flushed_files = data_files_on_disk(lake_table(store.data_dir))

    first = maintain(lake_table(store.data_dir), retain=timedelta(days=7), now=later())

    table = lake_table(store.data_dir)
    # Kept: the last flush's snapshot (a compaction replaced its files) and the compaction's own result.
    assert first.snapshots_expired == 3 and len(table.metadata.snapshots) == 2
    assert first.orphans_removed == 0 and flushed_files < data_files_on_disk(table) == referenced_files(table)
    assert_exactly_once(store, table)

    second = maintain(lake_table(store.data_dir), retain=timedelta(days=7), now=later() + timedelta(days=8))

    table = lake_table(store.data_dir)
    assert second.snapshots_expired == 1 and len(table.metadata.snapshots) == 1
    assert second.orphans_removed == 3 and data_files_on_disk(table) == referenced_files(table)
    assert_exactly_once(store, table)


def test_a_run_on_a_table_idle_for_longer_than_the_retention_keeps_the_snapshot_before_it_for_the_retention(
    store: Store, clock: Any
) -> None:
    clock.now = at("2026-01-15T09:00:00Z")
    flush_rounds(store, clock, 3, 2)  # the last commit: more than --retain-days before the runs below
    flushed_files = data_files_on_disk(lake_table(store.data_dir))
    idle = later() + timedelta(days=8)

    first = maintain(lake_table(store.data_dir), retain=timedelta(days=7), now=idle)

    table = lake_table(store.data_dir)  # a reader that planned on the state before the run still finds its files
    assert first.days_compacted == ["acme/2026-01-15"] and len(table.metadata.snapshots) == 2
    assert first.orphans_removed == 0 and flushed_files < data_files_on_disk(table) == referenced_files(table)
    assert_exactly_once(store, table)

    kept = maintain(lake_table(store.data_dir), retain=timedelta(days=7), now=idle + timedelta(days=6))
    assert kept.tags_removed == 0 and len(lake_table(store.data_dir).metadata.snapshots) == 2
    second = maintain(lake_table(store.data_dir), retain=timedelta(days=7), now=idle + timedelta(days=7, hours=1))

    table = lake_table(store.data_dir)  # the run's tag has aged out: its snapshot and files go
    assert second.tags_removed == 1 and len(table.metadata.snapshots) == 1
    assert second.orphans_removed == len(flushed_files) == 3
    assert_exactly_once(store, table)


def test_a_maintenance_run_keeps_one_snapshot_from_before_its_compactions_however_many_it_commits(
    store: Store, clock: Any
) -> None:
    clock.now = at("2026-01-15T09:00:00Z")
    flusher = Flusher(store)
    for _ in range(3):  # three files a day in each of two tenants: two compaction commits
        write_events(store, clock, 2, "acme")
        write_events(store, clock, 2, "beta")
        flusher.flush()
    flushed_files = data_files_on_disk(lake_table(store.data_dir))
    found = {snapshot.snapshot_id for snapshot in lake_table(store.data_dir).metadata.snapshots}

    first = maintain(lake_table(store.data_dir), retain=timedelta(days=7))  # now: the wall clock, as the CLI runs

    table = lake_table(store.data_dir)
    assert first.days_compacted == ["acme/2026-01-15", "beta/2026-01-15"]
    # Two commits of a delete and an append each: the run adds only its last snapshot to those it found (the
    # flushes', younger than the grace for superseded ones), the newest of which holds every file it replaced.
    assert {snapshot.snapshot_id for snapshot in table.metadata.snapshots} == found | {
        table.metadata.current_snapshot_id
    }
    assert flushed_files < data_files_on_disk(table) == referenced_files(table)
    for tenant in ("acme", "beta"):
        assert_exactly_once(store, table, tenant)

    second = maintain(lake_table(store.data_dir), retain=timedelta(days=7), now=later())

    table = lake_table(store.data_dir)  # the flushes' first two, superseded, are gone; the run's base stays
    assert second.days_compacted == [] and len(table.metadata.snapshots) == 2
    for tenant in ("acme", "beta"):
        assert_exactly_once(store, table, tenant)

    third = maintain(lake_table(store.data_dir), retain=timedelta(days=7), now=later() + timedelta(days=8))

    table = lake_table(store.data_dir)
    assert len(table.metadata.snapshots) == 1 and third.orphans_removed == len(flushed_files) == 6
    for tenant in ("acme", "beta"):
        assert_exactly_once(store, table, tenant)


def test_a_run_overlapping_another_keeps_its_own_state_before_it_and_the_other_keeps_its_own(
    store: Store, clock: Any
) -> None:
    clock.now = at("2026-01-15T09:00:00Z")
    flusher = Flusher(store)
    for _ in range(3):
        write_events(store, clock, 2, "acme")
        write_events(store, clock, 2, "beta")
        flusher.flush()
    found = {snapshot.snapshot_id for snapshot in lake_table(store.data_dir).metadata.snapshots}
    inner: list[MaintainReport] = []
    stages: list[str] = []

    def second_run_during_the_firsts_second_commit(stage: str) -> None:
        stages.append(stage)
        if stages.count("before_commit") == 2:  # the first run has compacted acme; the second compacts beta on it
            inner.append(maintain(lake_table(store.data_dir), retain=timedelta(days=7)))

    outer = maintain(
        lake_table(store.data_dir), retain=timedelta(days=7), fault=second_run_during_the_firsts_second_commit
    )

    table = lake_table(store.data_dir)
    assert inner[0].days_compacted == ["beta/2026-01-15"] and outer.days_compacted == ["acme/2026-01-15"]
    ids = {snapshot.snapshot_id for snapshot in table.metadata.snapshots}
    assert outer.tag and inner[0].tag
    assert table.metadata.refs[outer.tag].snapshot_id in found & ids
    assert table.metadata.refs[inner[0].tag].snapshot_id in ids - found  # the first run made it, yet it stays
    assert referenced_files(table) <= data_files_on_disk(table)
    for tenant in ("acme", "beta"):
        assert_exactly_once(store, table, tenant)


def test_runs_started_at_the_same_time_that_overlap_each_tag_their_own_state_before_them(
    store: Store, clock: Any
) -> None:
    clock.now = at("2026-01-15T09:00:00Z")
    flusher = flush_rounds(store, clock, 3, 2)
    first_base = lake_table(store.data_dir).metadata.current_snapshot_id
    now = later()
    inner: list[MaintainReport] = []
    second_base: list[int] = []

    def another_run_and_a_flush_before_the_firsts_first_commit(stage: str) -> None:
        if stage == "before_commit" and not inner:
            inner.append(maintain(lake_table(store.data_dir), retain=timedelta(days=7), now=now))
            write_events(store, clock, 2)
            flusher.flush()  # the day has two files again: the first run's redone compaction merges them
            second_base.append(lake_table(store.data_dir).metadata.current_snapshot_id)

    outer = maintain(lake_table(store.data_dir), retain=timedelta(days=7), now=now, fault=another_run_and_a_flush_before_the_firsts_first_commit)  # fmt: skip

    table = lake_table(store.data_dir)
    assert inner[0].tag and outer.tag and inner[0].tag != outer.tag
    assert table.metadata.refs[inner[0].tag].snapshot_id == first_base  # not moved by the first run's tag
    assert table.metadata.refs[outer.tag].snapshot_id == second_base[0]
    assert outer.tag == snapshots.TAG_PREFIX + now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond + 1:06d}Z"
    assert_exactly_once(store, table)


def test_a_run_given_a_naive_time_takes_it_as_local_time_and_ages_the_tags_by_it(store: Store, clock: Any) -> None:
    clock.now = at("2026-01-15T09:00:00Z")
    flush_rounds(store, clock, 3, 2)
    first = maintain(lake_table(store.data_dir), retain=timedelta(days=7), now=later())
    assert first.tag
    local = (later() + timedelta(days=1)).astimezone().replace(tzinfo=None)  # the same instant, naive

    young = maintain(lake_table(store.data_dir), retain=timedelta(days=7), now=local)
    old = maintain(lake_table(store.data_dir), retain=timedelta(days=7), now=local + timedelta(days=7))

    assert young.tags_removed == 0 and old.tags_removed == 1
    assert set(lake_table(store.data_dir).metadata.refs) == {"main"}


def test_two_runs_removing_the_same_aged_tag_count_it_once(store: Store, clock: Any) -> None:
    clock.now = at("2026-01-15T09:00:00Z")
    flush_rounds(store, clock, 3, 2)
    assert maintain(lake_table(store.data_dir), retain=timedelta(days=7), now=later()).tag
    stages: list[str] = []
    inner: list[MaintainReport] = []
    aged = later() + timedelta(days=8)

    def another_run_removes_it_first(stage: str) -> None:
        stages.append(stage)
        if stage == "before_untag" and not inner:
            inner.append(maintain(lake_table(store.data_dir), retain=timedelta(days=7), now=aged))

    outer = maintain(lake_table(store.data_dir), retain=timedelta(days=7), now=aged, fault=another_run_removes_it_first)

    assert inner[0].tags_removed == 1 and outer.tags_removed == 0
    assert stages.count("before_untag") == 2  # the first run's removal lost the race, and was redone without it
    assert set(lake_table(store.data_dir).metadata.refs) == {"main"}


def test_maintenance_sets_again_the_no_blind_retry_property_another_tool_unset(store: Store, clock: Any) -> None:
    clock.now = at("2026-01-15T09:00:00Z")
    flush_rounds(store, clock, 3, 2)
    with lake_table(store.data_dir).transaction() as tx:
        tx.set_properties({"commit.retry.num-retries": "4"})

    report = maintain(lake_table(store.data_dir), retain=timedelta(days=7), now=later())

    table = lake_table(store.data_dir)
    assert table.metadata.properties["commit.retry.num-retries"] == "0"
    assert report.tag and table.metadata.refs[report.tag].snapshot_id in {
        s.snapshot_id for s in table.metadata.snapshots
    }


def test_a_run_whose_tag_was_not_kept_says_so_and_still_keeps_the_state_before_it(
    store: Store, clock: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock.now = at("2026-01-15T09:00:00Z")
    flush_rounds(store, clock, 3, 2)
    base = lake_table(store.data_dir).metadata.current_snapshot_id
    # As pyiceberg's own commit retry does (were it on): the overwrite re-applied, the tag dropped.
    monkeypatch.setattr(snapshots, "stage_tag", lambda tx, snapshot_id, name: None)

    idle = later() + timedelta(days=8)  # the table idle for longer than the retention: the base is old

    report = maintain(lake_table(store.data_dir), retain=timedelta(days=7), now=idle)

    table = lake_table(store.data_dir)
    assert report.days_compacted == [f"{TENANT}/2026-01-15"] and report.tag is None
    assert "was not kept" in caplog.text and set(table.metadata.refs) == {"main"}
    assert base in {snapshot.snapshot_id for snapshot in table.metadata.snapshots}
    assert report.orphans_removed == 0  # the files it replaced are still the kept snapshot's
    assert_exactly_once(store, table)


def test_a_file_flushed_during_a_run_and_compacted_by_it_stays_on_disk_for_the_orphan_age(
    store: Store, clock: Any
) -> None:
    flusher = Flusher(store)
    for _ in range(3):  # two tenants' open days, three files each
        write_events(store, clock, 1, "acme")
        write_events(store, clock, 1, "beta")
        flusher.flush()
    today = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=clock.now)
    commits: list[str] = []

    def flush_before_the_second_compaction(stage: str) -> None:
        commits.append(stage)
        if commits.count("before_commit") == 2:  # acme's committed; beta's now loses to this flush, then redoes
            write_events(store, clock, 1, "beta")
            flusher.flush()

    before = data_files_on_disk(lake_table(store.data_dir))
    report = maintain(lake_table(store.data_dir), now=today, open_day_files=3, fault=flush_before_the_second_compaction)

    table = lake_table(store.data_dir)
    assert report.days_compacted == [f"acme/{today.date()}", f"beta/{today.date()}"]
    unreferenced = data_files_on_disk(table) - referenced_files(table)  # (also the lost commit's merged file)
    [flushed_during] = [f for f in unreferenced if pq.read_metadata(f).num_rows == 1]
    # Only the snapshot it was flushed into referenced it, and this run expired that one (it kept the one
    # from before its first compaction): the file is younger than the orphan age, so it is still there.
    assert flushed_during not in before
    for tenant in ("acme", "beta"):
        assert_exactly_once(store, table, tenant)

    maintain(lake_table(store.data_dir), now=later())  # an orphan age later, every file is older than it

    assert flushed_during not in data_files_on_disk(lake_table(store.data_dir))


def test_maintenance_whose_expiry_loses_to_a_flushers_expiry_redoes_it(store: Store, clock: Any) -> None:
    flush_rounds(store, clock, 3, 1)
    stages: list[str] = []

    def flusher_expires_first(stage: str) -> None:
        stages.append(stage)
        if stages.count("before_expire") == 1:  # a background flush expires the same snapshots first
            write_events(store, clock, 1)
            Flusher(store, expire_at=1, grace=timedelta(0)).flush()

    report = maintain(lake_table(store.data_dir), retain=timedelta(days=7), now=later(), fault=flusher_expires_first)

    table = lake_table(store.data_dir)
    assert stages.count("before_expire") == 2  # lost once, then redone on the table as it was
    # Kept: the one before the compaction, and the flush's. Gone: the two flushes' and both of the compaction's.
    assert len(table.metadata.snapshots) == 2 and report.snapshots_expired == 4
    assert_exactly_once(store, table)


def test_maintenance_of_a_table_with_no_snapshot_does_nothing(store: Store) -> None:
    table = cat.events_table(cat.load(store.data_dir))

    report = maintain(table, retain=timedelta(0), now=later())

    assert report == MaintainReport()
    assert lake_table(store.data_dir).metadata.snapshots == []


# ---- orphans --------------------------------------------------------------------------------------


def test_maintenance_removes_the_orphan_files_of_a_crashed_commit_and_a_later_flush_still_works(
    store: Store, clock: Any
) -> None:
    write_events(store, clock, 4)
    Flusher(store).flush()
    write_events(store, clock, 3)
    with pytest.raises(Crash):
        Flusher(store, fault=crash_before_commit).flush()  # data files written, never committed
    table = lake_table(store.data_dir)
    orphans = data_files_on_disk(table) - referenced_files(table)
    assert len(orphans) >= 1
    assert cat.watermark(table, TENANT)[0] == 4

    report = maintain(table, now=later())

    table = lake_table(store.data_dir)
    assert report.orphans_removed == len(orphans)
    assert not any(Path(p).exists() for p in orphans)
    assert data_files_on_disk(table) == referenced_files(table)
    assert [r["seq"] for r in rows(table)] == [1, 2, 3, 4]

    assert Flusher(store).flush().tenants == {TENANT: 3}

    assert_exactly_once(store, lake_table(store.data_dir))


def test_maintenance_keeps_young_orphans_which_may_belong_to_a_commit_in_flight(store: Store, clock: Any) -> None:
    write_events(store, clock, 2)
    Flusher(store).flush()
    write_events(store, clock, 2)
    with pytest.raises(Crash):
        Flusher(store, fault=crash_before_commit).flush()
    table = lake_table(store.data_dir)
    orphans = data_files_on_disk(table) - referenced_files(table)
    assert orphans

    report = maintain(table, orphan_age=timedelta(hours=1), now=datetime.now(UTC))

    assert report.orphans_removed == 0
    assert all(Path(p).exists() for p in orphans)


def test_a_flush_racing_maintenance_writes_its_rows_once(store: Store, clock: Any) -> None:
    flush_rounds(store, clock, 3, 2)
    write_events(store, clock, 3)
    reports: list[MaintainReport] = []

    def maintain_meanwhile(stage: str) -> None:
        if stage == "before_commit" and not reports:  # maintenance commits while our transaction is open
            reports.append(maintain(lake_table(store.data_dir), orphan_age=timedelta(days=3), now=later()))

    report = Flusher(store, fault=maintain_meanwhile).flush()

    assert reports[0].days_compacted == [f"{TENANT}/2026-01-15"]
    assert report.tenants == {TENANT: 3} and report.commits == 1
    table = lake_table(store.data_dir)
    assert files_per_partition(table) == {(TENANT, date(2026, 1, 15)): 2}
    assert_exactly_once(store, table)


def test_maintenance_whose_compaction_loses_a_race_with_a_flush_redoes_it_and_keeps_every_row_once(
    store: Store, clock: Any
) -> None:
    flush_rounds(store, clock, 3, 2)  # three files on the 15th
    write_events(store, clock, 3)  # also on the 15th, flushed while maintenance is about to commit
    flushed: list[Any] = []
    stages: list[str] = []

    def flush_meanwhile(stage: str) -> None:
        stages.append(stage)
        if stage == "before_commit" and not flushed:  # the flush commits first: maintenance's commit fails
            flushed.append(Flusher(store).flush())

    report = maintain(lake_table(store.data_dir), now=later(), fault=flush_meanwhile)

    assert flushed[0].tenants == {TENANT: 3} and flushed[0].commits == 1
    assert stages == ["before_commit", "before_commit", "before_untag", "before_expire"]  # the compaction, redone once
    assert report.days_compacted == [f"{TENANT}/2026-01-15"]
    table = lake_table(store.data_dir)
    assert files_per_partition(table) == {(TENANT, date(2026, 1, 15)): 1}  # the flushed rows compacted too
    assert data_files_on_disk(table) == referenced_files(table)  # the lost commit's file was swept
    assert_exactly_once(store, table)


def test_maintenance_that_keeps_losing_races_gives_up_and_leaves_every_row_once(store: Store, clock: Any) -> None:
    flush_rounds(store, clock, 3, 2)

    def flush_each_time(stage: str) -> None:
        if stage == "before_commit":
            write_events(store, clock, 1)
            Flusher(store).flush()

    with pytest.raises(CommitFailedException):
        maintain(lake_table(store.data_dir), now=later(), fault=flush_each_time)

    table = lake_table(store.data_dir)
    assert files_per_partition(table) == {(TENANT, date(2026, 1, 15)): 3 + MAX_RACES + 1}  # nothing compacted
    assert_exactly_once(store, table)


def test_an_open_day_whose_compaction_keeps_losing_to_flushes_is_left_and_the_rest_of_maintenance_runs(
    store: Store, clock: Any
) -> None:
    flush_rounds(store, clock, 3, 2)
    today = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=clock.now)
    stages: list[str] = []

    def flush_each_time(stage: str) -> None:
        stages.append(stage)
        if stage == "before_commit":
            write_events(store, clock, 1)
            Flusher(store).flush()

    report = maintain(lake_table(store.data_dir), now=today, fault=flush_each_time, open_day_files=3)

    table = lake_table(store.data_dir)
    assert report.days_compacted == []
    assert stages == ["before_commit"] * (MAX_RACES + 1) + ["before_untag", "before_expire"]  # then the expiry ran
    assert files_per_partition(table) == {(TENANT, today.date()): 3 + MAX_RACES + 1}
    assert_exactly_once(store, table)


# ---- metadata -------------------------------------------------------------------------------------


def test_old_metadata_files_are_pruned_as_commits_go_on(store: Store, clock: Any) -> None:
    flush_rounds(store, clock, 25, 1)

    table = lake_table(store.data_dir)
    metadata = list((Path(urlparse(table.location()).path) / "metadata").glob("*.metadata.json"))
    assert len(table.metadata.snapshots) == 25
    assert len(table.metadata.metadata_log) <= 20
    assert len(metadata) <= 21  # the current file and at most 20 previous ones
    assert_exactly_once(store, table)


def metadata_files_on_disk(table: Any) -> set[str]:
    root = Path(urlparse(table.location()).path) / "metadata"
    return {os.path.normpath(str(p)) for p in root.iterdir() if p.name.endswith((".avro", ".metadata.json"))}


def referenced_metadata(table: Any) -> set[str]:
    paths = [table.metadata_location, *(e.metadata_file for e in table.metadata.metadata_log)]
    paths += [s.manifest_list for s in table.metadata.snapshots]
    if table.metadata.snapshots:
        paths += table.inspect.all_manifests().column("path").to_pylist()
    return {os.path.normpath(urlparse(p).path) for p in paths}


def test_maintenance_removes_the_manifests_of_expired_snapshots_and_every_row_stays(store: Store, clock: Any) -> None:
    flusher = flush_rounds(store, clock, 6, 2)
    table = lake_table(store.data_dir)
    unreferenced_before = metadata_files_on_disk(table) - referenced_metadata(table)

    report = maintain(table, retain=timedelta(0), now=later())

    table = lake_table(store.data_dir)
    assert unreferenced_before == set()  # expiry is what leaves them behind
    assert len(table.metadata.snapshots) == 2  # of six flushes and a compaction: the run's kept one and the last
    assert report.snapshots_expired == 6
    assert report.metadata_removed >= 6  # at least the six manifest lists
    assert metadata_files_on_disk(table) == referenced_metadata(table)
    write_events(store, clock, 1)
    assert flusher.flush().tenants == {TENANT: 1}  # a kept flusher (as the server's) saw a swept snapshot
    assert_exactly_once(store, lake_table(store.data_dir))


def test_maintenance_keeps_young_unreferenced_metadata_which_may_belong_to_a_commit_in_flight(
    store: Store, clock: Any
) -> None:
    flush_rounds(store, clock, 3, 1)
    before = metadata_files_on_disk(lake_table(store.data_dir))

    report = maintain(lake_table(store.data_dir), retain=timedelta(0), orphan_age=timedelta(hours=1))

    assert report.snapshots_expired == 3  # two flushes, the compaction's delete half; the run's kept one stays
    assert report.metadata_removed == 0
    assert before <= metadata_files_on_disk(lake_table(store.data_dir))


def seq_spans(table: Any, tenant: str = TENANT) -> list[tuple[int, int, int]]:
    """Each of the tenant's data files' first seq, last seq and rows, in seq order, from the table's metadata."""
    files = table.inspect.data_files()
    return sorted(
        (m["seq"]["lower_bound"], m["seq"]["upper_bound"], n)
        for p, m, n in zip(
            files.column("partition").to_pylist(),
            files.column("readable_metrics").to_pylist(),
            files.column("record_count").to_pylist(),
            strict=True,
        )
        if p["tenant"] == tenant
    )


def test_a_table_made_before_the_file_size_property_gets_it_and_compacted_runs_stay_one_file_in_seq_order(
    store: Store, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(maintain_module, "COMPACT_ROWS", 12)
    clock.now = at("2026-01-15T09:00:00Z")
    for k in range(6):  # rows of different sizes, two to a flush
        clock.advance(1)
        store.do(TENANT, ACTOR, {"action": "create", "type": "Contact", "data": {"name": "x" * (200 + 700 * (k % 3))}})
        store.do(TENANT, ACTOR, {"action": "create", "type": "Contact", "data": {"name": "y"}})
        Flusher(store).flush()
    table = lake_table(store.data_dir)
    with table.transaction() as tx:  # as pyiceberg's default (512 MB) would for runs larger than it: split
        tx.set_properties({"write.target-file-size-bytes": "6000"})

    first = maintain(lake_table(store.data_dir), now=later())
    after = seq_spans(lake_table(store.data_dir))
    second = maintain(lake_table(store.data_dir), now=later())

    assert (
        lake_table(store.data_dir).properties["write.target-file-size-bytes"]
        == cat.WRITE_PROPERTIES["write.target-file-size-bytes"]
    )
    assert first.days_compacted == ["acme/2026-01-15"] and after == [(1, 12, 12)]  # one file, not overlapping parts
    assert second.days_compacted == []
    assert_exactly_once(store, lake_table(store.data_dir))


def test_a_day_of_many_runs_whose_commits_lose_a_race_now_and_then_is_compacted_whole(
    store: Store, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(maintain_module, "COMPACT_ROWS", 2)
    clock.now = at("2026-01-15T09:00:00Z")
    flush_rounds(store, clock, 2 * (MAX_RACES + 2), 1)  # one-row files: MAX_RACES + 2 runs of two
    commits: list[str] = []

    def every_other(stage: str) -> None:  # another tenant's flush wins every other commit: never two in a row
        if stage == "before_commit":
            commits.append(stage)
            if len(commits) % 2:
                write_events(store, clock, 1, "beta")
                Flusher(store).flush(["beta"])

    report = maintain(lake_table(store.data_dir), now=later(), fault=every_other)

    assert report.days_compacted == ["acme/2026-01-15"]
    assert seq_spans(lake_table(store.data_dir)) == [(n, n + 1, 2) for n in range(1, 2 * (MAX_RACES + 2), 2)]
    assert_exactly_once(store, lake_table(store.data_dir))
    assert_exactly_once(store, lake_table(store.data_dir), "beta")


def test_a_day_whose_runs_another_maintenance_finished_is_still_reported_by_the_one_that_began_them(
    store: Store, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(maintain_module, "COMPACT_ROWS", 5)
    clock.now = at("2026-01-15T09:00:00Z")
    flush_rounds(store, clock, 4, 2)  # files of 2, 2, 2, 2 rows: runs [2, 2] and [2, 2]
    commits: list[str] = []
    other: list[MaintainReport] = []

    def fault(stage: str) -> None:
        if stage == "before_commit":
            commits.append(stage)
            if len(commits) == 2:  # our first run is in: another maintenance merges the second first
                other.append(maintain(lake_table(store.data_dir), now=later()))

    report = maintain(lake_table(store.data_dir), now=later(), fault=fault)

    assert report.days_compacted == ["acme/2026-01-15"] and other[0].days_compacted == ["acme/2026-01-15"]
    assert seq_spans(lake_table(store.data_dir)) == [(1, 4, 4), (5, 8, 4)]
    assert_exactly_once(store, lake_table(store.data_dir))
