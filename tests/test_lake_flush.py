"""Flushing the log into the Iceberg table `headlessly.events` (CONTRACT §11): every event exactly once,
in order, whatever crashes in between and however many flushers run at once.

A real pyiceberg SQL catalog on SQLite under the data dir, isolated from any pyiceberg configuration
of the machine (~/.pyiceberg.yaml, ./.pyiceberg.yaml, $PYICEBERG_HOME, PYICEBERG_* variables)."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import EPOCH
from pyiceberg.transforms import DayTransform, IdentityTransform
from pyiceberg.types import LongType, StringType, TimestamptzType

from server.errors import StorageError
from server.lake import background, batches, snapshots
from server.lake import catalog as cat
from server.lake.flusher import Flusher, FlushReport, LakeDiverged
from server.lake.restore import check_tenant, read_tenant
from server.schema import SchemaSet
from server.store import Store, tenants
from server.store.filelock import TenantLock
from server.store.tenants import tenant_path
from server.timeutil import parse_time

TENANT = "acme"
ACTOR = "agent_lake"
CONTRACT_COLUMNS = [
    "tenant", "seq", "id", "type", "entity_type", "target", "actor", "timestamp",
    "version", "data", "changes", "state", "reason", "hash",
]  # fmt: skip
LAKE_COLUMNS = (*CONTRACT_COLUMNS, "caused_by", "prev_hash")
THREAD_TIMEOUT = 60.0


pytestmark = pytest.mark.usefixtures("no_pyiceberg_config")


# ---- helpers --------------------------------------------------------------------------------------


class Crash(Exception):
    """A simulated crash of the flushing process."""


class CrashAt:
    """A fault that crashes the flusher the `on_call`-th time it reaches `stage`, and never again."""

    def __init__(self, stage: str, on_call: int = 1) -> None:
        self.stage = stage
        self.on_call = on_call
        self.calls = 0

    def __call__(self, stage: str) -> None:
        if stage == self.stage:
            self.calls += 1
            if self.calls == self.on_call:
                raise Crash(stage)


def write_events(store: Store, clock: Any, n: int, tenant: str = TENANT) -> None:
    """`n` events: a contact created, then updated twice, and so on; odd microseconds between events."""
    target = ""
    for i in range(n):
        clock.advance(0.250001)
        if i % 3 == 0:
            request = {"action": "create", "type": "Contact", "data": {"name": f"Person {i}"}}
            target = store.do(tenant, ACTOR, request)["entity"]["$id"]
        else:
            store.do(tenant, ACTOR, {"action": "update", "type": "Contact", "id": target, "data": {"title": f"t{i}"}})


def lake_table(data_dir: Path) -> Any:
    """The table as it is now in the catalog (a fresh load, not a flusher's cached copy)."""
    return cat.events_table(cat.load(data_dir))


def log_rows(store: Store, tenant: str = TENANT) -> list[dict[str, Any]]:
    """The tenant's log as the rows the table must hold (timestamps in microseconds)."""
    out = []
    for e in store.log(tenant, 0, 1_000_000):
        row: dict[str, Any] = {"tenant": tenant, "timestamp": parse_time(e.ts)}
        row.update({name: getattr(e, name) for name in LAKE_COLUMNS if name not in row})
        out.append(row)
    return out


def lake_rows(table: Any, tenant: str = TENANT) -> list[dict[str, Any]]:
    """The tenant's rows in the table, by seq, with timestamps as exact microseconds since the epoch."""
    rows: list[dict[str, Any]] = read_tenant(table, tenant).to_pylist()
    for row in rows:
        row["timestamp"] = (row["timestamp"] - EPOCH) // timedelta(microseconds=1)
    return rows


def assert_exactly_once(store: Store, tenant: str = TENANT) -> None:
    """Every event of the log in the table once, in order, identical; the watermark at the log's head."""
    table = lake_table(store.data_dir)
    expected = log_rows(store, tenant)
    rows = lake_rows(table, tenant)
    assert [r["seq"] for r in rows] == list(range(1, len(expected) + 1))
    assert [{k: r[k] for k in expected[0]} for r in rows] == expected
    assert cat.watermark(table, tenant) == store.head(tenant)
    assert check_tenant(store, table, tenant) == []


def snapshot_count(data_dir: Path) -> int:
    return len(lake_table(data_dir).metadata.snapshots)


def rows_per_commit(data_dir: Path) -> list[int]:
    """The rows each snapshot added, oldest first."""
    return [int(s.summary["added-records"]) for s in lake_table(data_dir).metadata.snapshots]


def write_tenants(store: Store, clock: Any, counts: dict[str, int]) -> None:
    for tenant, n in counts.items():
        write_events(store, clock, n, tenant)


def in_threads(*jobs: Callable[[], Any]) -> list[Any]:
    """Run the jobs at the same moment, one thread each; every job's result (or its exception, raised)."""
    start = threading.Barrier(len(jobs), timeout=THREAD_TIMEOUT)

    def together(job: Callable[[], Any]) -> Any:
        start.wait()
        return job()

    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(together, job) for job in jobs]
        return [f.result(timeout=THREAD_TIMEOUT) for f in futures]


# ---- flushing -------------------------------------------------------------------------------------


def test_flushing_twice_puts_every_event_in_the_table_once_in_log_order(store: Store, clock: Any) -> None:
    write_events(store, clock, 7)
    flusher = Flusher(store)
    first = flusher.flush()
    write_events(store, clock, 5)
    second = flusher.flush()

    assert first.tenants == {TENANT: 7} and first.commits == 1
    assert second.tenants == {TENANT: 5} and second.commits == 1
    assert_exactly_once(store)


def test_a_log_read_a_few_events_at_a_time_goes_into_the_table_whole_and_in_order(
    store: Store, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batches, "READ_CHUNK", 3)
    write_events(store, clock, 7)
    flusher = Flusher(store)
    assert flusher.flush().tenants == {TENANT: 7}
    write_events(store, clock, 5)
    assert flusher.flush().tenants == {TENANT: 5}

    assert_exactly_once(store)
    assert check_tenant(store, lake_table(store.data_dir), TENANT) == []


def test_a_flush_with_nothing_new_commits_nothing(store: Store, clock: Any) -> None:
    write_events(store, clock, 4)
    flusher = Flusher(store)
    flusher.flush()
    before = lake_table(store.data_dir)

    report = flusher.flush()
    again = Flusher(store).flush()

    after = lake_table(store.data_dir)
    assert report == FlushReport() and again == FlushReport()
    assert len(after.metadata.snapshots) == len(before.metadata.snapshots) == 1
    assert after.metadata_location == before.metadata_location
    assert_exactly_once(store)


def test_each_tenant_gets_its_own_watermark_at_its_log_head(store: Store, clock: Any) -> None:
    counts = {"acme": 5, "beta": 2, "gamma": 9}
    for tenant, n in counts.items():
        write_events(store, clock, n, tenant)

    report = Flusher(store).flush()

    table = lake_table(store.data_dir)
    assert report.tenants == counts
    assert cat.watermarks(table) == {tenant: store.head(tenant) for tenant in counts}
    assert {tenant: cat.watermark(table, tenant)[0] for tenant in counts} == counts
    for tenant in counts:
        assert_exactly_once(store, tenant)


def test_flushing_chosen_tenants_moves_only_their_watermarks(store: Store, clock: Any) -> None:
    write_events(store, clock, 3, "acme")
    write_events(store, clock, 4, "beta")
    Flusher(store).flush()
    write_events(store, clock, 2, "acme")
    write_events(store, clock, 2, "beta")

    report = Flusher(store).flush(tenants=["beta"])

    table = lake_table(store.data_dir)
    assert report.tenants == {"beta": 2}
    assert cat.watermark(table, "acme")[0] == 3
    assert cat.watermark(table, "beta") == store.head("beta")
    assert [r["seq"] for r in lake_rows(table, "acme")] == [1, 2, 3]
    assert_exactly_once(store, "beta")


def test_a_tenant_being_restored_is_left_for_the_next_round_and_the_others_are_flushed(
    store: Store, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_events(store, clock, 3, "acme")
    write_events(store, clock, 4, "beta")
    store.pool.forget("acme")
    monkeypatch.setattr(tenants, "LOCK_WAIT_SECONDS", 0.0)
    restoring = TenantLock(tenant_path(store.data_dir, "acme"))
    assert restoring.try_exclusive("restore")
    try:
        report = Flusher(store).flush()
    finally:
        restoring.release()
    later = Flusher(store).flush()

    assert report.tenants == {"beta": 4} and report.busy == ["acme"]
    assert later.tenants == {"acme": 3} and later.busy == []
    assert_exactly_once(store, "acme")
    assert_exactly_once(store, "beta")


def test_the_table_has_the_contract_columns_and_is_partitioned_by_tenant_and_day(store: Store, clock: Any) -> None:
    write_events(store, clock, 2)
    Flusher(store).flush()
    table = lake_table(store.data_dir)
    schema = table.schema()

    names = [f.name for f in schema.fields]
    assert set(CONTRACT_COLUMNS) <= set(names)
    assert isinstance(schema.find_field("timestamp").field_type, TimestamptzType)
    for name in ("seq", "version"):
        assert isinstance(schema.find_field(name).field_type, LongType)
    for name in set(CONTRACT_COLUMNS) - {"seq", "version", "timestamp"}:
        assert isinstance(schema.find_field(name).field_type, StringType), name

    spec = table.spec()
    by_source = {schema.find_column_name(f.source_id): f.transform for f in spec.fields}
    assert len(spec.fields) == 2
    assert isinstance(by_source["tenant"], IdentityTransform)
    assert isinstance(by_source["timestamp"], DayTransform)


def test_the_table_is_headlessly_events_in_a_local_sql_catalog_under_the_data_dir(store: Store, clock: Any) -> None:
    write_events(store, clock, 1)
    Flusher(store).flush()

    catalog = cat.load(store.data_dir)
    lake = (store.data_dir / "lakehouse").resolve()
    assert catalog.name == "headlessly"
    assert (lake / "catalog.db").is_file()
    assert catalog.list_tables("headlessly") == [("headlessly", "events")]
    table = catalog.load_table("headlessly.events")
    assert table.location().startswith(f"{lake / 'warehouse'}/")  # a plain path: see catalog_properties
    assert [r["seq"] for r in lake_rows(table)] == [1]


def test_timestamps_round_trip_to_the_microsecond_and_land_in_their_utc_day(store: Store, clock: Any) -> None:
    clock.now = parse_time("2026-01-15T23:59:59.999997Z")
    for i in range(5):  # .999997 .999998 .999999 | 00:00:00.000000 .000001 the next day
        store.do(TENANT, ACTOR, {"action": "create", "type": "Contact", "data": {"name": f"Midnight {i}"}})
        clock.now += 1
    clock.now = parse_time("2026-01-16T12:34:56.123457Z")
    store.do(TENANT, ACTOR, {"action": "create", "type": "Contact", "data": {"name": "Noon"}})

    Flusher(store).flush()

    table = lake_table(store.data_dir)
    stamps = [r["timestamp"] for r in lake_rows(table)]
    assert stamps == [parse_time(e.ts) for e in store.log(TENANT)]
    assert [e.ts for e in store.log(TENANT)][2:4] == ["2026-01-15T23:59:59.999999Z", "2026-01-16T00:00:00.000000Z"]
    files = table.inspect.data_files().select(["partition", "record_count"]).to_pylist()
    per_day: dict[date, int] = {}
    for f in files:
        day = f["partition"]["timestamp_day"]
        day = day if isinstance(day, date) else date(1970, 1, 1) + timedelta(days=int(day))
        assert f["partition"]["tenant"] == TENANT
        per_day[day] = per_day.get(day, 0) + f["record_count"]
    assert per_day == {date(2026, 1, 15): 3, date(2026, 1, 16): 3}


def test_small_batches_commit_one_batch_at_a_time_and_report_each(store: Store, clock: Any) -> None:
    write_events(store, clock, 10)
    seen: list[tuple[str, int]] = []

    report = Flusher(store, batch=4).flush(progress=lambda tenant, n: seen.append((tenant, n)))

    assert report.commits == 3 and report.tenants == {TENANT: 10}
    assert seen == [(TENANT, 4), (TENANT, 4), (TENANT, 2)]
    assert snapshot_count(store.data_dir) == 3
    assert_exactly_once(store)


def test_many_tenants_go_into_one_commit_with_every_event_once_and_every_watermark_moved(
    store: Store, clock: Any
) -> None:
    counts = {"acme": 5, "beta": 1, "delta": 3, "gamma": 8, "omega": 6}  # the order of store.tenants()
    write_tenants(store, clock, counts)
    in_table_at_progress: list[tuple[str, int, int]] = []

    def progress(tenant: str, n: int) -> None:  # the table already holds what is reported
        in_table_at_progress.append((tenant, n, cat.watermark(lake_table(store.data_dir), tenant)[0]))

    report = Flusher(store).flush(progress=progress)

    assert report.commits == 1 and report.tenants == counts
    assert rows_per_commit(store.data_dir) == [sum(counts.values())]
    assert in_table_at_progress == [(tenant, n, n) for tenant, n in counts.items()]
    assert cat.watermarks(lake_table(store.data_dir)) == {tenant: store.head(tenant) for tenant in counts}
    for tenant in counts:
        assert_exactly_once(store, tenant)


def test_a_commit_holds_at_most_batch_rows_and_a_tenant_may_span_commits(store: Store, clock: Any) -> None:
    write_tenants(store, clock, {"acme": 5, "beta": 5, "gamma": 5})
    seen: list[tuple[str, int]] = []

    report = Flusher(store, batch=4).flush(progress=lambda tenant, n: seen.append((tenant, n)))

    assert rows_per_commit(store.data_dir) == [4, 4, 4, 3]
    assert report.commits == 4 and report.tenants == {"acme": 5, "beta": 5, "gamma": 5}
    assert seen == [("acme", 4), ("acme", 1), ("beta", 3), ("beta", 2), ("gamma", 2), ("gamma", 3)]
    for tenant in ("acme", "beta", "gamma"):
        assert_exactly_once(store, tenant)


def test_large_events_make_commits_of_fewer_rows_and_each_still_reaches_the_table_once(
    store: Store, clock: Any
) -> None:
    big = store.do(TENANT, ACTOR, {"action": "create", "type": "Contact", "data": {"name": "Big"}})["entity"]["$id"]
    for i in range(8):  # each update's event holds its title in data, changes and state
        clock.advance(1)
        title = f"{i}" + "x" * 20_000
        store.do(TENANT, ACTOR, {"action": "update", "type": "Contact", "id": big, "data": {"title": title}})
    write_events(store, clock, 3, "beta")

    report = Flusher(store, batch_chars=150_000).flush()

    # A commit ends with the event by which it holds 150,000 characters: updates hold ~60,000 (the first) and
    # ~100,000 (the others, whose data and changes hold the old title too); beta's 3 small ones come last.
    assert rows_per_commit(store.data_dir) == [3, 2, 2, 2, 3]
    assert report.tenants == {TENANT: 9, "beta": 3}
    assert_exactly_once(store)
    assert_exactly_once(store, "beta")


def test_an_event_larger_than_a_commit_may_hold_still_goes_in_a_commit_of_its_own(store: Store, clock: Any) -> None:
    big = store.do(TENANT, ACTOR, {"action": "create", "type": "Contact", "data": {"name": "x" * 50_000}})
    clock.advance(1)
    store.do(TENANT, ACTOR, {"action": "update", "type": "Contact", "id": big["entity"]["$id"], "data": {"title": "t"}})

    Flusher(store, batch_chars=1_000).flush()

    assert rows_per_commit(store.data_dir) == [1, 1]
    assert_exactly_once(store)


def test_a_tenant_named_twice_is_flushed_once(store: Store, clock: Any) -> None:
    write_tenants(store, clock, {"acme": 4, "beta": 2})

    report = Flusher(store).flush(tenants=["acme", "beta", "acme"])

    assert report.tenants == {"acme": 4, "beta": 2} and report.commits == 1
    for tenant in ("acme", "beta"):
        assert_exactly_once(store, tenant)


# ---- crashes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("restart", [True, False], ids=["new-flusher", "same-flusher"])
@pytest.mark.parametrize(
    ("stage", "committed_before_retry"), [("before_write", 4), ("before_commit", 4), ("after_commit", 8)]
)
def test_a_crash_at_any_stage_then_a_flush_leaves_every_event_exactly_once(
    store: Store, clock: Any, stage: str, committed_before_retry: int, restart: bool
) -> None:
    write_events(store, clock, 10)
    crashing = Flusher(store, fault=CrashAt(stage, on_call=2), batch=4)  # the second batch crashes

    with pytest.raises(Crash):
        crashing.flush()

    table = lake_table(store.data_dir)
    assert [r["seq"] for r in lake_rows(table)] == list(range(1, committed_before_retry + 1))
    assert cat.watermark(table, TENANT)[0] == committed_before_retry
    assert check_tenant(store, table, TENANT) == []

    report = (Flusher(store, batch=4) if restart else crashing).flush()

    assert report.tenants == {TENANT: 10 - committed_before_retry}
    assert_exactly_once(store)


def test_a_crash_in_a_later_commit_of_a_round_keeps_the_tenants_already_committed(store: Store, clock: Any) -> None:
    for tenant in ("acme", "beta", "gamma"):
        write_events(store, clock, 3, tenant)
    with pytest.raises(Crash):  # 3 rows per commit: one tenant each; acme commits, beta crashes
        Flusher(store, fault=CrashAt("before_commit", on_call=2), batch=3).flush()

    table = lake_table(store.data_dir)
    assert cat.watermarks(table) == {"acme": store.head("acme")}

    report = Flusher(store).flush()

    assert report.tenants == {"beta": 3, "gamma": 3}
    for tenant in ("acme", "beta", "gamma"):
        assert_exactly_once(store, tenant)


@pytest.mark.parametrize("restart", [True, False], ids=["new-flusher", "same-flusher"])
@pytest.mark.parametrize(
    ("stage", "committed_before_retry"),
    [
        ("before_write", {"acme": 4, "beta": 1}),
        ("before_commit", {"acme": 4, "beta": 1}),
        ("after_commit", {"acme": 4, "beta": 3, "gamma": 3}),
    ],
)
def test_a_crash_at_any_stage_of_a_commit_of_several_tenants_then_a_flush_leaves_no_duplicate_and_no_gap(
    store: Store, clock: Any, stage: str, committed_before_retry: dict[str, int], restart: bool
) -> None:
    counts = {"acme": 4, "beta": 3, "gamma": 5}
    write_tenants(store, clock, counts)
    # 5 rows per commit: [acme 4, beta 1], then [beta 2, gamma 3] crashes, then [gamma 2]
    crashing = Flusher(store, fault=CrashAt(stage, on_call=2), batch=5)

    with pytest.raises(Crash):
        crashing.flush()

    table = lake_table(store.data_dir)
    assert {t: seq for t, (seq, _) in cat.watermarks(table).items()} == committed_before_retry
    for tenant, n in committed_before_retry.items():
        assert [r["seq"] for r in lake_rows(table, tenant)] == list(range(1, n + 1))
        assert check_tenant(store, table, tenant) == []

    report = (Flusher(store, batch=5) if restart else crashing).flush()

    assert report.tenants == {
        t: n - committed_before_retry.get(t, 0) for t, n in counts.items() if n > committed_before_retry.get(t, 0)
    }
    for tenant in counts:
        assert_exactly_once(store, tenant)


# ---- flushers at once -----------------------------------------------------------------------------


def assert_each_event_sent_by_one_flusher(store: Store, counts: dict[str, int], reports: list[Any]) -> None:
    """Between them, the flushers sent each tenant's events once, and every commit is one snapshot."""
    for tenant, n in counts.items():
        assert sum(r.tenants.get(tenant, 0) for r in reports) == n  # each event sent by exactly one of them
        assert_exactly_once(store, tenant)
    assert sum(r.commits for r in reports) == snapshot_count(store.data_dir)


def test_two_flushers_in_threads_on_one_store_write_every_event_once(store: Store, clock: Any) -> None:
    counts = {"acme": 30, "beta": 23, "gamma": 16}
    for tenant, n in counts.items():
        write_events(store, clock, n, tenant)
    lake_table(store.data_dir)  # the table exists: this test is about commit races, not about first use
    first, second = Flusher(store, batch=7), Flusher(store, batch=7)

    reports = in_threads(first.flush, second.flush)

    assert_each_event_sent_by_one_flusher(store, counts, reports)


def test_two_flushers_at_once_on_many_tenants_send_every_event_once(store: Store, clock: Any) -> None:
    counts = {f"t{i:02d}": 3 + (i * 7) % 11 for i in range(12)}
    write_tenants(store, clock, counts)
    lake_table(store.data_dir)  # the table exists: this test is about commit races, not about first use
    first, second = Flusher(store, batch=10), Flusher(store, batch=10)

    reports = in_threads(first.flush, second.flush)

    assert_each_event_sent_by_one_flusher(store, counts, reports)
    assert sum(rows_per_commit(store.data_dir)) == sum(counts.values())


def test_flushers_of_two_stores_on_one_data_dir_racing_with_writes_send_every_event_once(
    store: Store, clock: Any, schemas: SchemaSet
) -> None:
    write_events(store, clock, 3, "acme")
    write_events(store, clock, 3, "beta")
    Flusher(store).flush()  # the table exists: this test is about commit races, not about first use
    writing = threading.Event()
    writing.set()

    def writer() -> None:
        try:
            for i in range(16):
                write_events(store, clock, 3, "acme" if i % 2 else "beta")
        finally:
            writing.clear()

    def flushing(flusher: Flusher) -> dict[str, int]:
        sent: dict[str, int] = {}
        while True:
            last_round = not writing.is_set()
            for tenant, n in flusher.flush().tenants.items():
                sent[tenant] = sent.get(tenant, 0) + n
            if last_round:
                return sent

    with Store(store.data_dir, schemas, clock=clock) as other:
        _, sent_a, sent_b = in_threads(
            writer, lambda: flushing(Flusher(store, batch=7)), lambda: flushing(Flusher(other, batch=7))
        )

    for tenant in ("acme", "beta"):
        assert store.head(tenant)[0] == 27
        assert sent_a.get(tenant, 0) + sent_b.get(tenant, 0) == 24
        assert_exactly_once(store, tenant)


def test_flushers_starting_together_on_a_fresh_lake_all_succeed(tmp_path: Path, clock: Any, schemas: SchemaSet) -> None:
    for attempt in range(4):  # the first use (catalog tables, namespace, table) is raced several times over
        with Store(tmp_path / f"fresh-{attempt}", schemas, clock=clock) as fresh:
            write_events(fresh, clock, 9)
            flushers = [Flusher(fresh, batch=3) for _ in range(4)]

            reports = in_threads(*(f.flush for f in flushers))

            assert sum(r.events for r in reports) == 9
            assert_exactly_once(fresh)


def test_a_flusher_that_loses_a_commit_race_rereads_the_watermark_and_sends_only_what_is_missing(
    store: Store, clock: Any
) -> None:
    write_events(store, clock, 6)
    rival = Flusher(store)
    rival_reports: list[FlushReport] = []

    def lose_the_race(stage: str) -> None:
        if stage == "before_commit" and not rival_reports:
            rival_reports.append(rival.flush())  # commits first, while our transaction is still open
            write_events(store, clock, 2)

    report = Flusher(store, fault=lose_the_race).flush()

    assert rival_reports[0].tenants == {TENANT: 6}
    # A round flushes up to the head it saw when it began (6): the rival sent all of it, so after
    # losing the race this flusher re-reads the watermark and has nothing left to send.
    assert report.tenants == {} and report.commits == 0
    assert snapshot_count(store.data_dir) == 1
    later = Flusher(store).flush()  # the 2 written during the race go with the next round
    assert later.tenants == {TENANT: 2} and later.commits == 1
    assert_exactly_once(store)


def test_a_flusher_that_loses_a_race_for_several_tenants_sends_only_what_each_still_misses(
    store: Store, clock: Any
) -> None:
    write_tenants(store, clock, {"acme": 6, "beta": 4, "gamma": 2})
    rival_reports: list[FlushReport] = []

    def lose_the_race(stage: str) -> None:
        if stage == "before_commit" and not rival_reports:  # our commit holds all three tenants
            rival_reports.append(Flusher(store).flush(tenants=["beta"]))

    report = Flusher(store, fault=lose_the_race).flush()

    assert rival_reports[0].tenants == {"beta": 4}
    assert report.tenants == {"acme": 6, "gamma": 2} and report.commits == 1
    assert rows_per_commit(store.data_dir) == [4, 8]
    for tenant in ("acme", "beta", "gamma"):
        assert_exactly_once(store, tenant)


def test_a_flusher_that_loses_many_races_but_wins_each_retry_finishes_its_flush(store: Store, clock: Any) -> None:
    write_events(store, clock, 22)  # more batches than MAX_RACES (20)
    attempts: list[str] = []

    def rival_commits_every_other_time(stage: str) -> None:
        if stage == "before_commit":
            attempts.append(stage)
            if len(attempts) % 2:  # another tenant's commit lands while our transaction is open
                write_events(store, clock, 1, "beta")
                Flusher(store).flush(tenants=["beta"])

    report = Flusher(store, fault=rival_commits_every_other_time, batch=1).flush(tenants=[TENANT])

    assert report.tenants == {TENANT: 22} and report.commits == 22
    assert len(attempts) == 44  # each batch lost one race, then won
    assert_exactly_once(store)
    assert_exactly_once(store, "beta")


def test_a_log_that_does_not_continue_the_table_is_refused_and_nothing_is_written(
    tmp_path: Path, store: Store, clock: Any, schemas: SchemaSet
) -> None:
    write_events(store, clock, 3)
    Flusher(store).flush()
    before = lake_table(store.data_dir)

    with Store(tmp_path / "elsewhere", schemas, clock=clock) as other:
        write_events(other, clock, 5)  # another history under the same tenant name, longer than the table's
        with pytest.raises(LakeDiverged):
            Flusher(other, data_dir=store.data_dir).flush()

    after = lake_table(store.data_dir)
    assert after.metadata_location == before.metadata_location
    assert cat.watermark(after, TENANT) == store.head(TENANT)
    assert_exactly_once(store)


def test_a_tenant_whose_log_does_not_continue_the_table_does_not_hold_back_the_others(
    tmp_path: Path, store: Store, clock: Any, schemas: SchemaSet
) -> None:
    write_events(store, clock, 3, "beta")
    Flusher(store).flush()

    with Store(tmp_path / "elsewhere", schemas, clock=clock) as other:
        write_tenants(other, clock, {"alpha": 2, "beta": 5, "gamma": 4})  # beta: another history than the table's
        with pytest.raises(LakeDiverged, match="tenant beta"):
            Flusher(other, data_dir=store.data_dir).flush()

        table = lake_table(store.data_dir)
        assert cat.watermark(table, "alpha") == other.head("alpha")
        assert cat.watermark(table, "gamma") == other.head("gamma")
        assert [r["seq"] for r in lake_rows(table, "gamma")] == [1, 2, 3, 4]
    assert cat.watermark(table, "beta") == store.head("beta")
    assert_exactly_once(store, "beta")


@pytest.mark.parametrize(("elsewhere", "words"), [(3, "ends at seq 3, but the table holds it up to seq 5"),
                                                 (5, "up to seq 5 with another hash")])  # fmt: skip
def test_a_log_that_ends_at_or_before_the_watermark_with_another_history_is_named_not_passed_over(
    tmp_path: Path, store: Store, clock: Any, schemas: SchemaSet, elsewhere: int, words: str
) -> None:
    write_events(store, clock, 5, "beta")
    Flusher(store).flush()

    with Store(tmp_path / "elsewhere", schemas, clock=clock) as other:  # beta as an older copy of its file left it
        write_tenants(other, clock, {"alpha": 2, "beta": elsewhere})
        with pytest.raises(LakeDiverged) as diverged:
            Flusher(other, data_dir=store.data_dir).flush()
        alpha_flushed = cat.watermark(lake_table(store.data_dir), "alpha") == other.head("alpha")

    assert diverged.value.tenants == ["beta"] and words in str(diverged.value)
    assert diverged.value.report.tenants == {"alpha": 2} and alpha_flushed
    assert_exactly_once(store, "beta")


def test_an_unreadable_tenant_file_is_named_and_the_other_tenants_are_flushed(
    store: Store, clock: Any, tmp_path: Path
) -> None:
    write_tenants(store, clock, {"alpha": 2, "gamma": 3})
    (store.data_dir / "tenants" / "broken.db").write_text("not a database")

    with pytest.raises(LakeDiverged) as failed:
        Flusher(store).flush()

    assert failed.value.tenants == ["broken"] and "not a database" in str(failed.value)
    assert failed.value.report.tenants == {"alpha": 2, "gamma": 3}
    assert_exactly_once(store, "alpha")
    assert_exactly_once(store, "gamma")


def alter_event(
    store: Store, seq: int, tenant: str = TENANT, change: str = "data = json_set(data, '$.title', 'forged')"
) -> None:
    """Edit an event in the tenant's file as someone with shell access can: the trigger that refuses it
    dropped, the row changed (`change`: an SQL assignment; its data by default), the trigger put back (its
    hash left as it was)."""
    with closing(sqlite3.connect(tenant_path(store.data_dir, tenant), isolation_level=None)) as conn:
        (guard,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'events_refuse_update'").fetchone()
        conn.execute("DROP TRIGGER events_refuse_update")
        conn.execute(f"UPDATE events SET {change} WHERE seq = ?", (seq,))
        conn.execute(guard)


@pytest.mark.parametrize(
    "change", ["data = json_set(data, '$.title', 'forged')", "entity_type = 'Invoice'"]
)  # (entity_type: a column the hash does not cover, derived from the type)
@pytest.mark.parametrize("altered", [7, 9, 10])  # the first event after the watermark, and ones after others
@pytest.mark.parametrize("read_chunk", [batches.READ_CHUNK, 2])  # 2: the log is read two events at a time
def test_a_flush_sends_a_tenant_only_up_to_an_event_altered_in_its_file_and_names_it_and_the_others_go(
    store: Store, clock: Any, altered: int, read_chunk: int, change: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batches, "READ_CHUNK", read_chunk)
    write_tenants(store, clock, {TENANT: 6, "beta": 2})
    Flusher(store).flush()
    write_tenants(store, clock, {TENANT: 6, "beta": 3})  # acme seq 7..12
    intact = {e.seq: e.hash for e in store.log(TENANT, 0, 100)}
    alter_event(store, altered, change=change)
    assert not store.verify(TENANT)["ok"]

    with pytest.raises(LakeDiverged) as refused:
        Flusher(store).flush()
    with pytest.raises(LakeDiverged) as again:  # not passed over on the next round either
        Flusher(store).flush()

    message = str(refused.value)
    assert refused.value.tenants == ["acme"] and again.value.tenants == ["acme"]
    assert f"tenant acme: event {store.log(TENANT, altered - 1, 1)[0].id} (seq {altered}) was altered" in message
    assert f"flushed up to seq {altered - 1} only" in message and "headlessly verify --tenant acme" in message
    sent = {TENANT: altered - 7, "beta": 3} if altered > 7 else {"beta": 3}
    assert refused.value.report.tenants == sent and again.value.report.tenants == {}
    table = lake_table(store.data_dir)
    assert [r["seq"] for r in lake_rows(table, TENANT)] == list(range(1, altered))
    assert cat.watermark(table, TENANT) == (altered - 1, intact[altered - 1])
    assert check_tenant(store, table, TENANT) == []  # what went is the log's, unaltered
    assert_exactly_once(store, "beta")


def test_a_flush_refuses_a_log_whose_events_no_longer_chain_where_an_event_was_removed(
    store: Store, clock: Any
) -> None:
    write_events(store, clock, 5)
    with closing(sqlite3.connect(tenant_path(store.data_dir, TENANT), isolation_level=None)) as conn:
        (guard,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'events_refuse_delete'").fetchone()
        conn.execute("DROP TRIGGER events_refuse_delete")
        conn.execute("DELETE FROM events WHERE seq = 3")
        conn.execute(guard)

    with pytest.raises(LakeDiverged) as refused:
        Flusher(store).flush()

    assert "(seq 4) comes after seq 2: the log has a gap" in str(refused.value)
    assert refused.value.report.tenants == {TENANT: 2}
    assert [r["seq"] for r in lake_rows(lake_table(store.data_dir))] == [1, 2]


# ---- a data dir copied or moved -------------------------------------------------------------------


def files_under(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under `folder`: its size, modification time and content."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def assert_refused_as_elsewhere(refusal: pytest.ExceptionInfo[StorageError], table_dir: Path) -> None:
    """A refusal that names the table's other data dir, says nothing was written and what to do."""
    message, hint = refusal.value.message, refusal.value.hint
    assert f"points at a table in {table_dir.resolve() / 'lakehouse' / 'warehouse'}" in message
    assert "copied or moved" in message and "nothing was written" in message
    assert "Move the data dir back" in hint and "`lakehouse/` folder aside" in hint and "seq 1" in hint
    assert "verify and restore of the original on the original" in hint


def flushed_copy(store: Store, clock: Any, events: int, copy: Path) -> dict[str, tuple[int, int, bytes]]:
    """Write and flush `events` events, copy the data dir to `copy`; the original lakehouse's files."""
    write_events(store, clock, events)
    Flusher(store).flush()
    shutil.copytree(store.data_dir, copy)
    return files_under(store.data_dir / "lakehouse")


def test_flushing_a_copy_of_a_flushed_data_dir_is_refused_and_the_originals_table_stays_as_it_was(
    tmp_path: Path, store: Store, clock: Any, schemas: SchemaSet
) -> None:
    copy = tmp_path / "copy"
    original_lake = flushed_copy(store, clock, 3, copy)

    refusals = []
    with Store(copy, schemas, clock=clock) as copied:
        write_events(copied, clock, 2)
        for _ in range(3):  # flushes that used to write into the original's warehouse and prune its metadata
            with pytest.raises(StorageError) as refused:
                Flusher(copied).flush()
            refusals.append(refused)
        for opening in (cat.open_table, cat.existing_table):  # flush's, and the read commands' (verify, restore...)
            with pytest.raises(StorageError):
                opening(copy)

    for refused in refusals:
        assert_refused_as_elsewhere(refused, store.data_dir)
    assert files_under(store.data_dir / "lakehouse") == original_lake
    assert_exactly_once(store)
    write_events(store, clock, 1)
    assert Flusher(store).flush().tenants == {TENANT: 1}  # the original goes on as before
    assert_exactly_once(store)


def test_a_copy_whose_lakehouse_is_moved_aside_flushes_its_events_anew_into_a_table_of_its_own(
    tmp_path: Path, store: Store, clock: Any, schemas: SchemaSet
) -> None:
    copy = tmp_path / "copy"
    original_lake = flushed_copy(store, clock, 3, copy)
    (copy / "lakehouse").rename(copy / "lakehouse.aside")  # as the refusal advises

    with Store(copy, schemas, clock=clock) as copied:
        write_events(copied, clock, 2)
        report = Flusher(copied).flush()
        assert report.tenants == {TENANT: 5}  # from seq 1
        assert lake_table(copy).location().startswith(f"{(copy / 'lakehouse' / 'warehouse').resolve()}/")
        assert_exactly_once(copied)

    assert files_under(store.data_dir / "lakehouse") == original_lake
    assert_exactly_once(store)


def test_a_moved_data_dir_refuses_its_lakehouse_the_same_way_and_works_again_once_moved_back(
    tmp_path: Path, clock: Any, schemas: SchemaSet
) -> None:
    first, moved = tmp_path / "first", tmp_path / "moved"
    with Store(first, schemas, clock=clock) as store:
        write_events(store, clock, 3)
        Flusher(store).flush()
    shutil.move(first, moved)

    with Store(moved, schemas, clock=clock) as store:
        write_events(store, clock, 2)
        with pytest.raises(StorageError) as refused:
            Flusher(store).flush()
    assert_refused_as_elsewhere(refused, first)
    assert not first.exists()  # nothing was written where it was

    shutil.move(moved, first)
    with Store(first, schemas, clock=clock) as store:
        assert Flusher(store).flush().tenants == {TENANT: 2}
        assert_exactly_once(store)


def test_the_background_flush_of_a_copied_data_dir_logs_the_refusal_without_a_traceback(
    tmp_path: Path, store: Store, clock: Any, schemas: SchemaSet, caplog: pytest.LogCaptureFixture
) -> None:
    copy = tmp_path / "copy"
    original_lake = flushed_copy(store, clock, 2, copy)

    with Store(copy, schemas, clock=clock) as copied:
        write_events(copied, clock, 2)
        with caplog.at_level(logging.ERROR, logger=background.MODULE):
            flusher, left = background.flush_once(copied, None, "background flush")

    assert (flusher, left) == (None, None)  # the next round tries again
    [record] = [r for r in caplog.records if r.name == background.MODULE]
    assert "points at a table in" in record.getMessage() and "nothing was written" in record.getMessage()
    assert record.exc_info is None
    assert files_under(store.data_dir / "lakehouse") == original_lake


def test_a_flush_gives_a_table_made_before_the_write_properties_those_properties_with_its_first_commit(
    store: Store, clock: Any
) -> None:
    write_events(store, clock, 3)
    flusher = Flusher(store)
    flusher.flush()
    table = lake_table(store.data_dir)
    with table.transaction() as tx:  # as a table made by an older version: pyiceberg's defaults
        tx.remove_properties("write.target-file-size-bytes", "commit.manifest-merge.enabled")
    write_events(store, clock, 2)

    flusher.flush()

    assert cat.missing_write_properties(lake_table(store.data_dir)) == {}
    assert_exactly_once(store)


# ---- superseded snapshots and manifests -----------------------------------------------------------


def data_files(table: Any) -> set[str]:
    return set(table.inspect.data_files().column("file_path").to_pylist())


def test_a_flush_expires_the_snapshots_its_appends_superseded_once_enough_have_gathered(
    store: Store, clock: Any
) -> None:
    flusher = Flusher(store, expire_at=3, grace=timedelta(0))
    reports = []
    for _ in range(4):
        write_events(store, clock, 2)
        reports.append(flusher.flush())

    table = lake_table(store.data_dir)
    assert [r.snapshots_expired for r in reports] == [0, 0, 0, 3]  # three superseded by the fourth round
    assert len(table.metadata.snapshots) == 1
    assert len(data_files(table)) == 4  # each round's file, still in the table
    assert_exactly_once(store)


def test_a_flush_keeps_superseded_snapshots_that_were_current_less_than_the_grace_ago(store: Store, clock: Any) -> None:
    flusher = Flusher(store, expire_at=1)  # the default grace: a minute, longer than this test
    for _ in range(3):
        write_events(store, clock, 1)
        assert flusher.flush().snapshots_expired == 0

    assert snapshot_count(store.data_dir) == 3


def test_an_expiry_that_loses_a_race_keeps_the_flush_and_a_later_round_expires_what_is_left(
    store: Store, clock: Any
) -> None:
    for _ in range(2):
        write_events(store, clock, 1)
        Flusher(store).flush()
    raced: list[FlushReport] = []

    def rival_expires_first(stage: str) -> None:
        if stage == "before_expire" and not raced:  # another process flushes and expires the same snapshots
            write_events(store, clock, 1, "beta")
            raced.append(Flusher(store, expire_at=1, grace=timedelta(0)).flush(tenants=["beta"]))

    flusher = Flusher(store, fault=rival_expires_first, expire_at=1, grace=timedelta(0))
    write_events(store, clock, 2)
    lost = flusher.flush(tenants=[TENANT])
    write_events(store, clock, 2)
    later = flusher.flush(tenants=[TENANT])

    assert (raced[0].tenants, raced[0].snapshots_expired) == ({"beta": 1}, 3)
    assert (lost.tenants, lost.snapshots_expired) == ({TENANT: 2}, 0)
    assert (later.tenants, later.snapshots_expired) == ({TENANT: 2}, 1)  # the rival's snapshot
    assert snapshot_count(store.data_dir) == 1
    assert_exactly_once(store)
    assert_exactly_once(store, "beta")


def test_a_crash_before_an_expiry_loses_nothing_and_the_next_flush_expires(store: Store, clock: Any) -> None:
    for _ in range(2):
        write_events(store, clock, 1)
        Flusher(store).flush()
    write_events(store, clock, 1)

    with pytest.raises(Crash):
        Flusher(store, fault=CrashAt("before_expire"), expire_at=2, grace=timedelta(0)).flush()
    assert snapshot_count(store.data_dir) == 3
    write_events(store, clock, 1)
    report = Flusher(store, expire_at=2, grace=timedelta(0)).flush()

    assert report.snapshots_expired == 3 and snapshot_count(store.data_dir) == 1
    assert_exactly_once(store)


def test_an_expiry_that_fails_otherwise_keeps_the_flush_says_so_and_a_later_round_expires(
    store: Store, clock: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(2):
        write_events(store, clock, 1)
        Flusher(store).flush()
    expire = snapshots.expire

    def catalog_locked(table: Any, ids: list[int]) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(snapshots, "expire", catalog_locked)
    flusher = Flusher(store, expire_at=2, grace=timedelta(0))
    write_events(store, clock, 2)
    with caplog.at_level(logging.WARNING, logger="server.lake.flusher"):
        failed = flusher.flush()

    assert (failed.tenants, failed.snapshots_expired) == ({TENANT: 2}, 0)
    assert "expiring 2 superseded snapshots failed" in caplog.text
    assert snapshot_count(store.data_dir) == 3
    monkeypatch.setattr(snapshots, "expire", expire)
    write_events(store, clock, 1)
    assert flusher.flush().snapshots_expired == 3 and snapshot_count(store.data_dir) == 1
    assert_exactly_once(store)


def test_flush_commits_merge_small_manifests_so_a_read_opens_few_of_them(store: Store, clock: Any) -> None:
    write_events(store, clock, 1)
    Flusher(store).flush()
    with lake_table(store.data_dir).transaction() as tx:
        tx.set_properties({"commit.manifest.min-count-to-merge": "4"})  # pyiceberg's default: 100
    for _ in range(10):
        write_events(store, clock, 1)
        Flusher(store).flush()

    table = lake_table(store.data_dir)
    assert len(table.current_snapshot().manifests(table.io)) < 4  # a fast append would have left 11
    assert len(data_files(table)) == 11
    assert_exactly_once(store)
