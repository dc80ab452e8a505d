#!/usr/bin/env python
"""The lakehouse: flush throughput and lag, restore speed, and the flusher's cost to writes, with baselines
measured in the same run.

(1) flush    `Flusher(store).flush()` of `--tenants` x `--per-tenant` events (default 100 x 10,000 = 1,000,000)
             into an empty `headlessly.events` table (created before the clock starts, one fresh catalog per
             round: Flusher(store, data_dir=<fresh dir>)), events/s. Baselines on the SAME Arrow data, in the same
             round: `pyarrow.parquet.write_table` of each tenant's `arrow_batch(...)` table to one file (no
             catalog), with pyarrow's default codec (snappy) and with zstd (pyiceberg's default codec). The
             stages that feed both are timed too: `read_rows` (the flusher's SQLite read; and plain sqlite3
             `fetchall` of the same rows on a connection of its own) and `arrow_batch` (the Arrow conversion),
             so the rows add up: flush ~= log read + Arrow + Parquet + Iceberg (manifests, metadata, catalog
             commit). A commit holds up to flusher.BATCH rows of one or more tenants; its time is taken
             from the flusher's "after_commit" hook.
    lag      FlushReport.lag_seconds of the bulk flush (age of the oldest event flushed: for the bulk load this
             is mostly setup time), and a steady run: writes at `--lag-rate` events/s spread over
             `--lag-tenants` tenants while a thread mirrors BackgroundFlush (wait `--lag-interval` s, then
             `flusher.flush()` with one kept Flusher, repeat; one more flush after the writes stop); each run's
             Store has the default max_open_tenants (64). For every event: the time
             from its `timestamp` to the end of the commit that put it in the table (the progress callback,
             called right after that commit), p50 / p99 / max.
(2) restore  `restore_tenant(store, tenant)` of one `--events`-event tenant (default 1,000,000) into a fresh data
             dir whose pyiceberg configuration (PYICEBERG_CATALOG__HEADLESSLY__TYPE/URI/WAREHOUSE from
             catalog.catalog_properties(original dir)) names the original catalog, events/s. The restore is a
             bulk load (server/store/bulk.py): every event checked, inserted with the secondary indexes and
             triggers dropped, each entity written once from its last state, the indexes rebuilt at the end.
             Baseline: `store.verify(tenant)` of the original, which reads every event twice (run before and
             after the restore; the mean is the baseline). Context: the same tenant's flush, reading the
             table alone as the restore does (`TenantRows`: each file's seqs, then its batches in seq order), and row-by-row loading into the
             live schema: plain sqlite3 `executemany` of the same rows into the events table of our schema
             with every index and trigger in place, restore.CHUNK rows per transaction, no entities (SQLite's
             share of the replay that the bulk load replaced).
(3) writes   sequential single-entity updates (`store.do(... "update" ...)`, durability normal) for `--seconds`
             with no flusher, then with a thread running `flusher.flush()` every `--flush-every` s (one
             Flusher, its table cached; the backlog of the previous phase is flushed before the phase starts),
             alternating the order over `--rounds` rounds; the ratio is taken within each round. With
             `--experiments`, two more variants as evidence of the cause: the same thread with
             sys.setswitchinterval(0.0005), and the same loop in a child process (its own Store on the same
             data dir). The cyclic GC's pauses during the phases are reported too.

Every section ends with a line saying how much CPU other processes used meanwhile (/proc/stat minus this
process and its children) and which other bench/ processes were running: whether the machine was shared.

The events: per tenant, batches of 1000 operations (`store.do(tenant, actor, {"operations": [...]})`): every
tenth batch creates 1000 entities (Deals and Contacts, alternating), the nine after it update those (Deal
value + stage, Contact title + stage), so every entity has ~10 versions. Building is setup (not timed): it
runs in `--build-procs` processes, each tenant in one of them, progress on stderr.

pyiceberg is isolated from the machine: every PYICEBERG_* variable is removed, and HOME and the working
directory are set to the run's temp dir before pyiceberg is imported.

Run:  .venv/bin/python bench/lake.py             (defaults: ~10-15 minutes, most of it building 2M events)
      .venv/bin/python bench/lake.py --quick     (smoke run, well under a minute)
      .venv/bin/python bench/lake.py --only writes --experiments      (~3 minutes)
      .venv/bin/python bench/lake.py --only flush,restore --profile --events 200000 --flush-rounds 1
                                                 (cProfile of one flush and one restore, ~6 minutes)
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import multiprocessing
import os
import platform
import pstats
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import FINGERPRINT, log, warn_if_sources_changed  # noqa: E402

from server.lake import catalog as cat  # noqa: E402  (imports no pyiceberg at module level)
from server.lake.batches import arrow_batch, read_rows  # noqa: E402
from server.lake.flusher import BATCH, Flusher  # noqa: E402
from server.lake.restore import restore_tenant  # noqa: E402
from server.lake.scan import CHUNK as RESTORE_CHUNK  # noqa: E402
from server.lake.scan import TenantRows  # noqa: E402
from server.store import Store  # noqa: E402
from server.store.events import EVENT_ROW_COLUMNS  # noqa: E402
from server.store.sqlite import connect, migrate  # noqa: E402
from server.store.tenants import tenant_path  # noqa: E402
from server.timeutil import now_us, parse_time  # noqa: E402

ACTOR = "agent_bench"
OPS_PER_BATCH = 1000
VERSIONS = 10  # one create batch, then VERSIONS - 1 update batches of the same entities
DEAL_STAGES = ("Prospecting", "Qualification", "Proposal", "Negotiation", "Closed")
CONTACT_STAGES = ("Lead", "Qualified", "Customer", "Partner")

GOAL_FLUSH = 50_000  # events/s
GOAL_RESTORE = 20_000  # events/s
GOAL_WRITES = 0.8  # with flusher / without


def isolate_pyiceberg(home: Path) -> None:
    """No .pyiceberg.yaml ($PYICEBERG_HOME, ~, cwd) and no PYICEBERG_* variable may reach this run."""
    assert "pyiceberg" not in sys.modules, "pyiceberg was imported before it was isolated"
    for name in list(os.environ):
        if name.upper().startswith("PYICEBERG_"):
            del os.environ[name]
    os.environ["HOME"] = str(home)
    os.chdir(home)


@contextmanager
def lake_of(data_dir: Path) -> Iterator[None]:
    """pyiceberg's `headlessly` catalog configured (environment) as the one under `data_dir`, as an
    operator restoring on another machine would; removed again afterwards."""
    import pyiceberg.catalog
    from pyiceberg.utils.config import Config

    names = []
    for key, value in cat.catalog_properties(data_dir).items():
        name = f"PYICEBERG_CATALOG__{cat.CATALOG.upper()}__{key.upper()}"
        os.environ[name] = value
        names.append(name)
    pyiceberg.catalog._ENV_CONFIG = Config()  # pyiceberg reads its environment at import
    try:
        yield
    finally:
        for name in names:
            del os.environ[name]
        pyiceberg.catalog._ENV_CONFIG = Config()


# ---- machine and neighbours -------------------------------------------------------------------------


def machine() -> str:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((x.split(":", 1)[1].strip() for x in f if x.startswith("model name")), "?")
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cpus ({model}), {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def versions() -> str:
    from importlib.metadata import version

    libs = ", ".join(f"{n} {version(n)}" for n in ("pyiceberg", "pyarrow", "SQLAlchemy"))
    return f"python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, {libs}"


def neighbours() -> str:
    """Other processes running something under bench/ (not this one nor its children), and the load."""
    me, found = os.getpid(), []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if "bench/" in cmd and ppid != me:
            found.append(f"{pid}: {cmd[:90]}")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"load average {load}; other bench/ processes: " + ("; ".join(found) if found else "none")


def machine_busy() -> float:
    """CPU seconds all processes of the machine have used so far (/proc/stat: everything but idle and iowait)."""
    try:
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:9]]
    except OSError:
        return 0.0
    return (sum(vals) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system  # children: joined build/flush processes


@contextmanager
def sharing(label: str) -> Iterator[None]:
    """Print how much CPU other processes used while the block ran: was the machine shared?"""
    m0, o0, t0 = machine_busy(), own_cpu(), time.perf_counter()
    yield
    wall = time.perf_counter() - t0
    others = max(0.0, (machine_busy() - m0) - (own_cpu() - o0))
    print(f"    machine during {label}: other processes used {others:.0f} CPU s over {wall:.0f} s "
          f"({others / wall / (os.cpu_count() or 1):.0%} of the {os.cpu_count()} CPUs); {neighbours()}", flush=True)  # fmt: skip


# ---- building events (setup) ------------------------------------------------------------------------


def _create(g: int) -> dict[str, Any]:
    if g % 2 == 0:
        return {"action": "create", "type": "Deal", "data": {"name": f"Deal {g}", "value": g}}
    return {"action": "create", "type": "Contact", "data": {"name": f"Contact {g}", "email": f"c{g}@example.com"}}


def _update(entity: tuple[str, str], g: int, v: int) -> dict[str, Any]:
    kind, eid = entity
    if kind == "Deal":
        data: dict[str, Any] = {"value": g * 10 + v, "stage": DEAL_STAGES[v % len(DEAL_STAGES)]}
    else:
        data = {"title": f"Buyer {v}", "stage": CONTACT_STAGES[v % len(CONTACT_STAGES)]}
    return {"action": "update", "type": kind, "id": eid, "data": data}


def write_history(store: Store, tenant: str, n: int, say: Callable[[int], None] | None = None) -> None:
    """`n` events in batches of 1000 operations: a create batch, then VERSIONS - 1 update batches of it."""
    entities: list[tuple[str, str]] = []
    done, b, g = 0, 0, 0
    while done < n:
        k = min(OPS_PER_BATCH, n - done)
        if b % VERSIONS == 0:
            ops = [_create(g + j) for j in range(k)]
            g += k
            result = store.do(tenant, ACTOR, {"operations": ops})
            entities = [(r["entity"]["$type"], r["entity"]["$id"]) for r in result["results"]]
        else:
            ops = [_update(entities[j], g - k + j, b % VERSIONS) for j in range(min(k, len(entities)))]
            store.do(tenant, ACTOR, {"operations": ops})
            k = len(ops)
        done += k
        b += 1
        if say:
            say(done)


def build_worker(jobs: list[tuple[str, str, int]], worker: int) -> None:
    """Runs in a child process: write every (data_dir, tenant, events) job."""
    stores: dict[str, Store] = {}
    t0, total, written = time.perf_counter(), sum(j[2] for j in jobs), 0
    try:
        for data_dir, tenant, n in jobs:
            store = stores.get(data_dir) or stores.setdefault(data_dir, Store(data_dir))
            last = [0]

            def say(done: int, _n: int = n, _t: str = tenant, _last: list[int] = last) -> None:
                if done - _last[0] >= 100_000 or (done == _n and _n >= 100_000):
                    _last[0] = done
                    log(f"  build worker {worker}: {_t} {done:,}/{_n:,} ({time.perf_counter() - t0:.0f} s)")

            write_history(store, tenant, n, say)
            written += n
            if n < 100_000 and (written // 100_000) != ((written - n) // 100_000):
                log(f"  build worker {worker}: {written:,}/{total:,} events ({time.perf_counter() - t0:.0f} s)")
    finally:
        for s in stores.values():
            s.close()


def build(jobs: list[tuple[str, str, int]], procs: int) -> float:
    """Write all jobs, spread over `procs` processes (largest job first, to the least loaded); seconds."""
    t0 = time.perf_counter()
    total = sum(j[2] for j in jobs)
    log(f"building {total:,} events in {len(jobs)} tenant(s), {procs} process(es) (setup, not timed)")
    loads = [0] * max(1, procs)
    parts: list[list[tuple[str, str, int]]] = [[] for _ in loads]
    for job in sorted(jobs, key=lambda j: -j[2]):
        i = loads.index(min(loads))
        parts[i].append(job)
        loads[i] += job[2]
    if procs <= 1:
        build_worker(parts[0], 0)
    else:
        ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold pyarrow threads
        children = [ctx.Process(target=build_worker, args=(p, i)) for i, p in enumerate(parts) if p]
        for c in children:
            c.start()
        for c in children:
            c.join()
        if any(c.exitcode for c in children):
            raise SystemExit("a build worker failed (see stderr)")
    took = time.perf_counter() - t0
    log(f"built {total:,} events in {took:.0f} s ({total / took:,.0f} events/s)")
    return took


# ---- reporting --------------------------------------------------------------------------------------


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def spread(values: list[float], fmt: str) -> str:
    return f"{min(values):{fmt}}-{max(values):{fmt}}"


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def profile_summary(prof: cProfile.Profile, title: str, top: int, probes: list[tuple[str, str]]) -> None:
    """Top functions by own time, then the cumulative time of chosen functions (file part, function name)."""
    st = pstats.Stats(prof)
    total = st.total_tt  # type: ignore[attr-defined]
    rows = []
    for (file, line, func), (_cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        rows.append((tt, ct, nc, f"{Path(file).name}:{line}({func})"))
    print()
    print(f"cProfile: {title} — {total:.2f} s profiled; top {top} by own time")
    print(
        table(
            ["function", "calls", "own s", "own %", "cum s"],
            [[name[:80], f"{nc:,}", f"{tt:.2f}", f"{tt / total:.0%}", f"{ct:.2f}"]
             for tt, ct, nc, name in sorted(rows, reverse=True)[:top]],
        )
    )  # fmt: skip
    found = []
    for file_part, func in probes:
        for (file, line, f), (_cc, nc, _tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
            if f == func and file_part in file and nc:
                found.append([f"{file_part}:{line}({func})", f"{nc:,}", f"{ct:.2f}", f"{ct / total:.0%}"])
    if found:
        print("  where the time goes (cumulative, including callees; rows overlap):")
        print(table(["function", "calls", "cum s", "cum %"], found))


FLUSH_PROBES = [
    ("flusher", "flush"),
    ("batches", "read_rows"),
    ("batches", "arrow_batch"),
    ("timeutil", "parse_time"),
    ("table/__init__", "append"),
    ("io/pyarrow", "_dataframe_to_data_files"),
    ("io/pyarrow", "write_file"),
    ("update/snapshot", "_manifests"),
    ("update/snapshot", "_existing_manifests"),
    ("update/snapshot", "_summary"),
    ("pyiceberg/manifest", "write_manifest_list"),
    ("table/__init__", "table_metadata"),
    ("table/update/__init__", "update_table_metadata"),
    ("copy", "deepcopy"),
    ("table/__init__", "commit_transaction"),
    ("catalog/sql", "commit_table"),
    ("catalog/__init__", "_write_metadata"),
    ("catalog/sql", "load_table"),
    ("store/tenants", "lease"),
]
RESTORE_PROBES = [
    ("scan", "_plan"),
    ("scan", "_read"),
    ("restore", "_event_tuples"),
    ("store/bulk", "bulk_load"),
    ("store/bulk", "check"),
    ("events", "chain_hash"),
    ("store/bulk", "_write_entities"),
    ("json/__init__", "loads"),
]


# ---- (1) flush throughput -----------------------------------------------------------------------------


def arrow_tables(store: Store, tenants: list[str]) -> tuple[dict[str, Any], float, float]:
    """Each tenant's events as the Arrow table the flusher appends; seconds in read_rows and in arrow_batch."""
    out, t_log, t_arrow = {}, 0.0, 0.0
    for tenant in tenants:
        t0 = time.perf_counter()
        rows, seq = [], 0
        while chunk := read_rows(store, tenant, seq, store.head(tenant)[0], BATCH):
            rows.extend(chunk)
            seq = chunk[-1][0]
        t1 = time.perf_counter()
        out[tenant] = arrow_batch(tenant, rows)
        t_arrow += time.perf_counter() - t1
        t_log += t1 - t0
    return out, t_log, t_arrow


def raw_select(data_dir: Path, tenants: list[str]) -> float:
    """Seconds to read every tenant's events with plain sqlite3 on a connection of its own (`SELECT
    <EventRow columns> ... fetchall`): what `read_rows` does through the store's pool."""
    t = 0.0
    for tenant in tenants:
        conn = connect(tenant_path(data_dir, tenant), readonly=True)
        t0 = time.perf_counter()
        rows = conn.execute(f"SELECT {EVENT_ROW_COLUMNS} FROM events ORDER BY seq").fetchall()
        t += time.perf_counter() - t0
        conn.close()
        del rows
    return t


def raw_insert(src: Path, dst: Path, chunk: int) -> float:
    """Seconds to insert the events of the tenant file `src` into a fresh file with our schema
    (server.store.sqlite connect + migrate: every index and trigger), `executemany` of `chunk` rows per
    transaction; only the events table, no entities. Reading the rows is not timed."""
    source, target = connect(src, readonly=True), connect(dst)
    migrate(target)
    insert = f"INSERT INTO events ({EVENT_ROW_COLUMNS}) VALUES ({', '.join('?' * 16)})"
    t, seq = 0.0, 0
    while rows := source.execute(
        f"SELECT {EVENT_ROW_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, chunk)
    ).fetchall():
        seq = rows[-1][0]
        t0 = time.perf_counter()
        target.execute("BEGIN IMMEDIATE")
        target.executemany(insert, rows)
        target.execute("COMMIT")
        t += time.perf_counter() - t0
    source.close()
    target.close()
    return t


def parquet_write(tables: dict[str, Any], folder: Path, codec: str) -> float:
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    for tenant, tab in tables.items():
        pq.write_table(tab, folder / f"{tenant}.parquet", compression=codec)
    return time.perf_counter() - t0


def flush_timed(store: Store, lake: Path) -> tuple[float, Any, list[float], tuple[int, int]]:
    """Flush everything into a fresh table under `lake`; seconds, the report, seconds per commit, and
    the table's snapshot count and current metadata-file size afterwards."""
    marks: list[float] = []

    def committed(stage: str) -> None:  # the flusher's fault hook, reached right after each commit
        if stage == "after_commit":
            marks.append(time.perf_counter())
            log(f"    commit {len(marks)} ({marks[-1] - t0:.1f} s)")

    flusher = Flusher(store, data_dir=lake, fault=committed)
    flusher.table  # noqa: B018  (create the empty table before the clock starts)
    t0 = time.perf_counter()
    report = flusher.flush()
    took = time.perf_counter() - t0
    per_commit = [b - a for a, b in zip([t0, *marks], marks, strict=False)]
    meta = flusher.table.metadata
    size = Path(flusher.table.metadata_location.removeprefix("file://")).stat().st_size
    return took, report, per_commit, (len(meta.snapshots), size)


def bench_flush(base: Path, store_dir: Path, args: argparse.Namespace) -> None:
    store = Store(store_dir)
    tenants = store.tenants()
    n = sum(store.head(t)[0] for t in tenants)
    arrow_batch(tenants[0], read_rows(store, tenants[0], 0, 10, 10))  # imports pyiceberg's schema code before any clock
    rates: dict[str, list[float]] = {k: [] for k in ("flush", "log", "raw", "arrow", "snappy", "zstd")}
    ratio_snappy, ratio_zstd, ratio_pipeline, lags, commits, per_commit_all = [], [], [], [], [], []
    first_last: list[tuple[float, float]] = []  # median ms of the first and the last tenth of the commits
    meta_info: tuple[int, int] = (0, 0)
    sizes: dict[str, int] = {}
    for r in range(args.flush_rounds):
        log(f"(1) flush round {r + 1}/{args.flush_rounds}: {n:,} events in {len(tenants)} tenants")
        tables, t_log, t_arrow = arrow_tables(store, tenants)
        t_raw = raw_select(store_dir, tenants)
        steps = ["ours", "parquet"] if r % 2 == 0 else ["parquet", "ours"]
        for step in steps:
            if step == "ours":
                lake = base / f"lake-flush-{r}"
                took, report, per_commit, meta_info = flush_timed(store, lake)
                tenth = max(1, len(per_commit) // 10)
                first_last.append((statistics.median(per_commit[:tenth]) * 1000,
                                   statistics.median(per_commit[-tenth:]) * 1000))  # fmt: skip
                assert report.events == n, (report.events, n)
                lags.append(max(report.lag_seconds.values()))
                commits.append(report.commits)
                per_commit_all.extend(per_commit)
                sizes["ours"] = sum(f.stat().st_size for f in lake.rglob("*.parquet"))
                sizes["ours metadata"] = sum(
                    f.stat().st_size for f in lake.rglob("*") if f.is_file() and f.suffix in (".avro", ".json")
                )
                shutil.rmtree(lake)
            else:
                t_snappy = parquet_write(tables, base / f"pq-snappy-{r}", "snappy")
                t_zstd = parquet_write(tables, base / f"pq-zstd-{r}", "zstd")
                sizes["snappy"] = sum(f.stat().st_size for f in (base / f"pq-snappy-{r}").iterdir())
                sizes["zstd"] = sum(f.stat().st_size for f in (base / f"pq-zstd-{r}").iterdir())
                shutil.rmtree(base / f"pq-snappy-{r}")
                shutil.rmtree(base / f"pq-zstd-{r}")
        del tables
        for k, t in (("flush", took), ("log", t_log), ("raw", t_raw), ("arrow", t_arrow), ("snappy", t_snappy),
                     ("zstd", t_zstd)):  # fmt: skip
            rates[k].append(n / t)
        ratio_snappy.append(t_snappy / took)
        ratio_zstd.append(t_zstd / took)
        ratio_pipeline.append((t_log + t_arrow + t_zstd) / took)
        log(f"  round {r + 1}: flush {n / took:,.0f}/s ({took:.1f} s, {report.commits} commits); "
            f"log {t_log:.1f} s, arrow {t_arrow:.1f} s, parquet snappy {t_snappy:.1f} s, zstd {t_zstd:.1f} s")  # fmt: skip
    med = {k: statistics.median(v) for k, v in rates.items()}
    flush_s = n / med["flush"]
    print()
    print(f"(1) flush of {n:,} events in {len(tenants)} tenants into an empty table, {args.flush_rounds} round(s)")

    def row(name: str, key: str, ratio: list[float] | None, size: str) -> list[str]:
        return [name, f"{med[key]:,.0f}", spread(rates[key], ",.0f"), f"{n / med[key]:.1f}", f"{n / med[key] / flush_s:.0%}",
                f"{statistics.median(ratio):.2f}x" if ratio else "-", size]  # fmt: skip

    mib = lambda k: f"{sizes[k] / 2**20:.0f}" if k in sizes else "-"  # noqa: E731
    print(
        table(
            ["step", "events/s (median)", "min-max", "s", "share of flush", "ours / it", "MiB"],
            [
                row("Flusher.flush() (ours)", "flush", None, f"{mib('ours')} (+{mib('ours metadata')} metadata)"),
                row("  stage: read_rows (SQLite read)", "log", None, "-"),
                row("    plain sqlite3 fetchall, own connection", "raw", None, "-"),
                row("  stage: arrow_batch (to Arrow)", "arrow", None, "-"),
                row("baseline: pq.write_table snappy", "snappy", ratio_snappy, mib("snappy")),
                row("baseline: pq.write_table zstd", "zstd", ratio_zstd, mib("zstd")),
            ],
        )
    )
    pipeline = statistics.median(ratio_pipeline)
    print(f"    ours / (log + Arrow + zstd Parquet, no catalog): {pipeline:.2f}x "
          f"(what is left, ~{(1 - pipeline) * flush_s:.1f} s, is pyiceberg's own work: partition split, manifests, "
          f"metadata, catalog commits)")  # fmt: skip
    per_ms = [x * 1000 for x in per_commit_all]
    print(f"    commits per flush: {commits}; time per commit (up to {BATCH:,} events of one or more tenants: "
          f"read, convert, write, commit): median {statistics.median(per_ms):.0f} ms, p90 {pct(per_ms, 0.9):.0f} ms, "
          f"max {max(per_ms):.0f} ms")  # fmt: skip
    print("    does a commit slow down as the table grows? median of the first tenth vs the last tenth, per round: "
          + ", ".join(f"{a:.0f} -> {b:.0f} ms" for a, b in first_last)
          + f"; at the end {meta_info[0]} snapshots, current metadata file {meta_info[1] / 1024:.0f} KiB")  # fmt: skip
    print(f"    FlushReport.lag_seconds, max over tenants: {spread(lags, '.0f')} s (age of the oldest event flushed; "
          f"here the events were written during setup, so this is mostly setup time)")  # fmt: skip
    ratio = statistics.median(ratio_zstd)
    print(
        table(
            ["goal", "figure", "target", "verdict"],
            [["flush events/s", f"{med['flush']:,.0f}", f">= {GOAL_FLUSH:,}", verdict(med["flush"] >= GOAL_FLUSH)],
             ["ours / parquet zstd (same codec)", f"{ratio:.2f}x", "(context)", "-"],
             ["ours / parquet snappy (pyarrow default)", f"{statistics.median(ratio_snappy):.2f}x", "(context)", "-"]],
        ),
        flush=True,
    )  # fmt: skip
    if args.profile:
        sub = tenants[: args.profile_tenants or None]
        lake = base / "lake-profile"
        flusher = Flusher(store, data_dir=lake)
        flusher.table  # noqa: B018
        prof = cProfile.Profile()
        prof.enable()
        flusher.flush(tenants=sub)
        prof.disable()
        profile_summary(prof, f"Flusher.flush() of {len(sub)} tenants x {n // len(tenants):,} events", args.top,
                        FLUSH_PROBES)  # fmt: skip
        shutil.rmtree(lake)
    store.close()


# ---- (1b) steady lag ------------------------------------------------------------------------------------


def lag_run(base: Path, n_tenants: int, args: argparse.Namespace) -> list[str]:
    """One steady run over `n_tenants` tenants; its table row."""
    store = Store(base / f"lag-{n_tenants}")
    tenants = [f"lag-{i:03d}" for i in range(n_tenants)]
    create = {"action": "create", "type": "Deal", "data": {"name": "Lag", "value": 0}}
    deals = {t: store.do(t, ACTOR, create)["entity"]["$id"] for t in tenants}
    Flusher(store).flush()  # the table and the creates, before the clock starts
    ts: dict[str, dict[int, int]] = {t: {} for t in tenants}
    flushed = dict.fromkeys(tenants, 1)  # seq 1 (the create) is in the table already
    commits: list[tuple[str, int, int, int]] = []  # tenant, after seq, up to seq, commit end µs
    cycles: list[tuple[float, int, int]] = []  # seconds, events, commits
    lag_report: list[float] = []
    stop = threading.Event()

    def progress(tenant: str, k: int) -> None:
        end = now_us()
        commits.append((tenant, flushed[tenant], flushed[tenant] + k, end))
        flushed[tenant] += k

    flusher = Flusher(store)  # one Flusher kept across rounds, as BackgroundFlush keeps it

    def cycle() -> None:
        t0 = time.perf_counter()
        report = flusher.flush(progress=progress)
        cycles.append((time.perf_counter() - t0, report.events, report.commits))
        if report.lag_seconds:
            lag_report.append(max(report.lag_seconds.values()))

    def loop() -> None:
        while not stop.wait(args.lag_interval):
            cycle()

    log(f"(1b) steady lag: {args.lag_rate:,} events/s over {n_tenants} tenants for {args.lag_seconds} s, "
        f"flush every {args.lag_interval} s")  # fmt: skip
    thread = threading.Thread(target=loop, name="bench-flush")
    thread.start()
    written, late = 0, 0.0
    start = time.perf_counter()
    try:
        while True:
            now = time.perf_counter()
            if now - start >= args.lag_seconds:
                break
            due = start + written / args.lag_rate
            if due > now:
                time.sleep(due - now)
            else:
                late = max(late, now - due)
            t = tenants[written % n_tenants]
            r = store.do(t, ACTOR, {"action": "update", "type": "Deal", "id": deals[t], "data": {"value": written + 1}})
            e = r["events"][0]
            ts[t][e["seq"]] = parse_time(e["timestamp"])
            written += 1
    finally:
        wrote_for = time.perf_counter() - start
        stop.set()
        thread.join()
    cycle()  # the last flush, as BackgroundFlush.stop() does
    store.close()
    lat = [(end - ts[t][s]) / 1e6 for t, lo, hi, end in commits for s in range(lo + 1, hi + 1)]
    assert len(lat) == written, (len(lat), written)
    busy = [c for c in cycles if c[1]]
    dur = [c[0] for c in busy]
    log(f"  {n_tenants} tenants: wrote {written:,} ({late:.2f} s behind schedule at worst); {len(cycles)} flushes "
        f"(events, commits, s): {[(c[1], c[2], round(c[0], 1)) for c in cycles]}")  # fmt: skip
    return [
        f"{n_tenants} tenants", f"{written / wrote_for:,.0f}", f"{len(busy)}",
        f"{statistics.median(c[2] for c in busy):.0f}", f"{statistics.median(dur):.2f} / {max(dur):.2f}",
        f"{pct(lat, 0.5):.2f}", f"{pct(lat, 0.99):.2f}", f"{max(lat):.2f}", f"{max(lag_report):.2f}",
    ]  # fmt: skip


def bench_lag(base: Path, args: argparse.Namespace) -> None:
    rows = [lag_run(base, n_tenants, args) for n_tenants in args.lag_tenants]
    print()
    print(f"(1b) steady lag: single-op updates at {args.lag_rate:,} events/s (target) round-robin over the tenants for "
          f"{args.lag_seconds} s; a thread waits {args.lag_interval} s, then runs flusher.flush() (one Flusher), repeat")  # fmt: skip
    print(
        table(
            ["tenants", "written/s", "flushes", "commits/flush", "flush s med / max", "lag p50 s", "lag p99 s",
             "lag max s", "lag_seconds max"],
            rows,
        )
    )  # fmt: skip
    print("    lag: from the event's timestamp to the end of the commit that holds it (progress callback);")
    print(
        "    lag_seconds: FlushReport's own figure (age of the oldest event flushed, at the end of its commit)",
        flush=True,
    )


# ---- (2) restore -------------------------------------------------------------------------------------------


def bench_restore(base: Path, src_dir: Path, tenant: str, args: argparse.Namespace) -> None:
    src = Store(src_dir)
    n = src.head(tenant)[0]
    log(f"(2) flush of the {n:,}-event tenant (context)")
    flush_s, report, _, _ = flush_timed(src, src_dir)
    log(f"  {flush_s:.1f} s, {report.commits} commits")

    def verify() -> float:
        t0 = time.perf_counter()
        v = src.verify(tenant)
        took = time.perf_counter() - t0
        assert v["ok"] and v["events"] == n, v
        return took

    log("(2) verify (baseline)")
    verify_s = [verify()]
    log(f"  {n / verify_s[-1]:,.0f}/s")
    dst = Store(base / "restored")
    with lake_of(src_dir):
        log("(2) restore")
        shown = [0]

        def progress(done: int, total: int) -> None:
            if done - shown[0] >= 100_000 or done == total:
                shown[0] = done
                log(f"    restored {done:,}/{total:,} ({time.perf_counter() - t0:.1f} s)")

        t0 = time.perf_counter()
        restored = restore_tenant(dst, tenant, progress=progress)
        restore_s = time.perf_counter() - t0
        assert restored == n and dst.head(tenant) == src.head(tenant), (restored, n)
        log(f"  {n / restore_s:,.0f}/s; reading the table alone (context)")
        table_ = cat.open_table(dst.data_dir)
        t0 = time.perf_counter()
        read = sum(batch.num_rows for batch in TenantRows(table_, tenant).batches())
        read_s = time.perf_counter() - t0
        assert read == n
    log("(2) verify again (baseline)")
    verify_s.append(verify())
    log("(2) plain sqlite3 executemany of the events into our schema (context)")
    floor_s = raw_insert(tenant_path(src_dir, tenant), base / "raw-insert.db", RESTORE_CHUNK)
    verify_mean = statistics.fmean(verify_s)
    print()
    print(f"(2) restore of one {n:,}-event tenant into a fresh data dir (catalog by PYICEBERG_CATALOG__HEADLESSLY__*)")
    print(
        table(
            ["step", "events/s", "s", "restore / it"],
            [["restore_tenant (ours)", f"{n / restore_s:,.0f}", f"{restore_s:.1f}", "1.00x"],
             ["  stage: reading the table (TenantRows)", f"{n / read_s:,.0f}", f"{read_s:.1f}", f"{read_s / restore_s:.2f}x"],
             ["baseline: store.verify (mean of 2)", f"{n / verify_mean:,.0f}", f"{verify_mean:.1f} ({spread(verify_s, '.1f')})",
              f"{verify_mean / restore_s:.2f}x"],
             ["context: flush of this tenant", f"{n / flush_s:,.0f}", f"{flush_s:.1f}", f"{flush_s / restore_s:.2f}x"],
             [f"context: sqlite3 executemany into events, {RESTORE_CHUNK:,}/txn", f"{n / floor_s:,.0f}",
              f"{floor_s:.1f}", f"{floor_s / restore_s:.2f}x"]],
        )
    )  # fmt: skip
    print(
        f"    the restored tenant's head (seq, hash) equals the original's; flush: {report.commits} commits of <= {BATCH:,}"
    )
    print(
        table(
            ["goal", "figure", "target", "verdict"],
            [["restore events/s", f"{n / restore_s:,.0f}", f">= {GOAL_RESTORE:,}", verdict(n / restore_s >= GOAL_RESTORE)],
             ["restore / verify", f"{verify_mean / restore_s:.2f}x", "(context)", "-"]],
        ),
        flush=True,
    )  # fmt: skip
    if args.profile:
        dst2 = Store(base / "restored-profile")
        with lake_of(src_dir):
            prof = cProfile.Profile()
            prof.enable()
            restore_tenant(dst2, tenant)
            prof.disable()
        profile_summary(prof, f"restore_tenant of {n:,} events", args.top, RESTORE_PROBES)
        dst2.close()
    dst.close()
    src.close()


# ---- (3) writes with and without the flusher -------------------------------------------------------------


WRITE_VARIANTS = {
    "off": "without flusher",
    "thread": "with flusher thread",
    "thread-si": "  experiment: thread, sys.setswitchinterval(0.0005)",
    "process": "  experiment: flusher in a child process",
}


def flusher_process(data_dir: str, every: float, stop: Any, ready: Any, results: Any) -> None:
    """Runs in a child process: the same flush loop on the same data dir (its own Store and table)."""
    store = Store(data_dir)
    flusher = Flusher(store)
    flusher.table  # noqa: B018
    ready.set()
    stats = []
    while not stop.wait(every):
        c0, t0 = time.process_time(), time.perf_counter()
        rep = flusher.flush()
        stats.append((time.process_time() - c0, time.perf_counter() - t0, rep.events, rep.commits))
    results.put(stats)
    store.close()


def bench_writes(base: Path, args: argparse.Namespace) -> None:
    store = Store(base / "writes")
    tenant = "writes"
    create = {"action": "create", "type": "Deal", "data": {"name": "W", "value": 0}}
    did = store.do(tenant, ACTOR, create)["entity"]["$id"]
    flusher = Flusher(store)
    flusher.flush()
    counter = [0]
    modes = ["off", "thread"] + (["thread-si", "process"] if args.experiments else [])
    Stat = tuple[float, float, int, int]  # CPU s, wall s, events, commits of one flush

    def run(seconds: float) -> float:
        do, i = store.do, counter[0]
        t0 = time.perf_counter()
        end = t0 + seconds
        while time.perf_counter() < end:
            i += 1
            do(tenant, ACTOR, {"action": "update", "type": "Deal", "id": did, "data": {"value": i}})
        took = time.perf_counter() - t0
        done, counter[0] = i - counter[0], i
        return done / took

    def with_thread(seconds: float, switch: float | None) -> tuple[float, list[Stat]]:
        stop = threading.Event()
        stats: list[Stat] = []
        flusher.table  # noqa: B018

        def loop() -> None:
            while not stop.wait(args.flush_every):
                c0, t0 = time.thread_time(), time.perf_counter()
                rep = flusher.flush()
                stats.append((time.thread_time() - c0, time.perf_counter() - t0, rep.events, rep.commits))

        before = sys.getswitchinterval()
        if switch is not None:
            sys.setswitchinterval(switch)
        thread = threading.Thread(target=loop, name="bench-flush")
        thread.start()
        try:
            rate = run(seconds)
        finally:
            stop.set()
            thread.join()
            sys.setswitchinterval(before)
        return rate, stats

    def with_process(seconds: float) -> tuple[float, list[Stat]]:
        ctx = multiprocessing.get_context("spawn")
        stop, ready, results = ctx.Event(), ctx.Event(), ctx.Queue()
        child = ctx.Process(target=flusher_process, args=(str(store.data_dir), args.flush_every, stop, ready, results))
        child.start()
        if not ready.wait(60):
            raise SystemExit("the flusher process did not start")
        try:
            rate = run(seconds)
        finally:
            stop.set()
            stats = results.get(timeout=600)
            child.join()
        return rate, stats

    rates: dict[str, list[float]] = {m: [] for m in modes}
    ratios: dict[str, list[float]] = {m: [] for m in modes}
    fstats: dict[str, list[Stat]] = {m: [] for m in modes}
    # The cyclic GC, as evidence: objects it tracks now, and its pauses (every thread waits) per variant
    tracked = len(gc.get_objects())
    gc_spent: dict[str, list[float]] = {m: [0.0, 0, 0] for m in modes}  # seconds, collections, of them full
    gc_now: dict[str, Any] = {"mode": None, "t0": 0.0}

    def on_gc(phase: str, info: dict[str, int]) -> None:
        acc = gc_spent.get(gc_now["mode"])  # type: ignore[arg-type]
        if acc is None:
            return
        if phase == "start":
            gc_now["t0"] = time.perf_counter()
        else:
            acc[0] += time.perf_counter() - gc_now["t0"]
            acc[1] += 1
            acc[2] += info["generation"] == 2

    gc.callbacks.append(on_gc)
    for r in range(args.rounds):
        order = modes[r % len(modes) :] + modes[: r % len(modes)]
        rate = {}
        for mode in order:
            if mode == "off":
                gc_now["mode"] = mode
                rate[mode] = run(args.seconds)
                gc_now["mode"] = None
                continue
            flusher._table = None  # the child process's flusher may have moved the table on
            flusher.flush()  # the previous phase's backlog, before the clock starts
            gc_now["mode"] = mode
            if mode == "process":
                rate[mode], stats = with_process(args.seconds)
            else:
                rate[mode], stats = with_thread(args.seconds, 0.0005 if mode == "thread-si" else None)
            gc_now["mode"] = None
            fstats[mode].extend(stats)
        for m in modes:
            rates[m].append(rate[m])
            ratios[m].append(rate[m] / rate["off"])
        log(f"(3) round {r + 1}/{args.rounds}: " + ", ".join(f"{m} {rate[m]:,.0f}/s" for m in order))
    gc.callbacks.remove(on_gc)
    store.close()
    phase_s = args.seconds * args.rounds
    print()
    print(f"(3) sequential single-entity updates, {args.seconds} s per phase, {args.rounds} rounds (order rotating); "
          f"flusher: flush(), wait {args.flush_every} s, repeat (one Flusher; backlog flushed before each phase)")  # fmt: skip
    rows = []
    for m in modes:
        st = fstats[m]
        n_fl = len(st)
        flush_info = (
            "-" if m == "off" else
            f"{n_fl} / {sum(x[3] for x in st)} / {sum(x[2] for x in st) / max(n_fl, 1):,.0f} / "
            f"{sum(x[1] for x in st) / max(n_fl, 1):.2f} / "
            f"{sum(x[1] for x in st) / phase_s:.0%} / {sum(x[0] for x in st) / phase_s:.0%}"
        )  # fmt: skip
        rows.append([WRITE_VARIANTS[m], f"{statistics.median(rates[m]):,.0f}", spread(rates[m], ",.0f"),
                     f"{statistics.median(ratios[m]):.2f}x", spread(ratios[m], ".2f"), flush_info])  # fmt: skip
    print(
        table(
            ["variant", "events/s (median)", "min-max", "ratio to without", "min-max",
             "flushes / commits / events per flush / s per flush / busy / flusher CPU"],
            rows,
        )
    )  # fmt: skip
    print("    busy: share of the phases' wall time spent inside flush(); flusher CPU: the flushing thread's (or")
    print("    process's) CPU time over the phases' wall time (1 core = 100%)")
    print(f"    cyclic GC in this process: {tracked:,} objects tracked when (3) started; time in collections during "
          "the phases (all threads wait): "
          + ", ".join(f"{m} {v[0]:.2f} s ({v[1]:,} collections, {v[2]} full)" for m, v in gc_spent.items()))  # fmt: skip
    ratio = statistics.median(ratios["thread"])
    print(
        table(
            ["goal", "figure", "target", "verdict"],
            [["writes with flusher thread / without", f"{ratio:.2f}x", f">= {GOAL_WRITES}x",
              verdict(ratio >= GOAL_WRITES)]],
        ),
        flush=True,
    )  # fmt: skip


# ---- main -------------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--only", default="flush,lag,restore,writes", help="benchmarks to run (default all of flush,lag,restore,writes)"
    )
    p.add_argument("--tenants", type=int, default=100, help="(1) tenants (default 100)")
    p.add_argument("--per-tenant", type=int, default=10_000, help="(1) events per tenant (default 10000)")
    p.add_argument("--flush-rounds", type=int, default=2, help="(1) flushes, each into a fresh catalog (default 2)")
    p.add_argument("--lag-tenants", default="10,100", help="(1b) tenant counts, one steady run each (default 10,100)")
    p.add_argument("--lag-rate", type=int, default=500, help="(1b) events/s written (default 500)")
    p.add_argument("--lag-seconds", type=float, default=20, help="(1b) seconds of writing per run (default 20)")
    p.add_argument("--lag-interval", type=float, default=1.0, help="(1b) seconds between flushes (default 1)")
    p.add_argument("--events", type=int, default=1_000_000, help="(2) events of the restored tenant (default 1000000)")
    p.add_argument("--seconds", type=float, default=10, help="(3) seconds per phase (default 10)")
    p.add_argument("--flush-every", type=float, default=0.5, help="(3) seconds between flushes (default 0.5)")
    p.add_argument("--rounds", type=int, default=3, help="(3) rounds of without/with (default 3)")
    p.add_argument(
        "--experiments",
        action="store_true",
        help="(3) also: the flusher thread with sys.setswitchinterval(0.0005), and the flusher in a child process",
    )
    p.add_argument("--build-procs", type=int, default=2, help="processes building the events (default 2)")
    p.add_argument(
        "--profile", action="store_true", help="also cProfile one flush and one restore (after the timed runs)"
    )
    p.add_argument("--profile-tenants", type=int, default=0, help="tenants in the profiled flush (default 0: all)")
    p.add_argument("--top", type=int, default=20, help="functions listed per profile (default 20)")
    p.add_argument("--quick", action="store_true", help="smoke run (tiny sizes, short phases)")
    args = p.parse_args()
    if args.quick:
        args.tenants, args.per_tenant, args.flush_rounds, args.events = 10, 2_000, 1, 20_000
        args.lag_tenants, args.lag_seconds, args.lag_rate = "5", 4, 200
        args.seconds, args.rounds, args.profile_tenants = 2, 1, 3
    args.lag_tenants = [int(x) for x in str(args.lag_tenants).split(",") if x]
    only = set(args.only.split(","))
    unknown = only - {"flush", "lag", "restore", "writes"}
    if unknown:
        p.error(f"unknown benchmark(s) {sorted(unknown)}")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the temp dir is removed on `kill`
    with tempfile.TemporaryDirectory(prefix="bench-lake-") as tmp:
        base = Path(tmp)
        (base / "home").mkdir()
        isolate_pyiceberg(base / "home")
        print(f"lake: server sources {FINGERPRINT}, {versions()}, {machine()}; "
              f"(1) {args.tenants} x {args.per_tenant:,} events, {args.flush_rounds} round(s); "
              f"(1b) {args.lag_rate}/s over {args.lag_tenants} tenants, {args.lag_seconds} s, flush every "
              f"{args.lag_interval} s; (2) {args.events:,} events; (3) {args.rounds} x 2 x {args.seconds} s", flush=True)  # fmt: skip
        print(f"at start: {neighbours()}", flush=True)
        jobs = []
        if "flush" in only:
            jobs += [(str(base / "flush"), f"t{i:03d}", args.per_tenant) for i in range(args.tenants)]
        if "restore" in only:
            jobs.append((str(base / "restore"), "big", args.events))
        if jobs:
            build(jobs, args.build_procs)
            print(f"after building: {neighbours()}", flush=True)
        if "flush" in only:
            with sharing("(1)"):
                bench_flush(base, base / "flush", args)
            shutil.rmtree(base / "flush")
        if "lag" in only:
            with sharing("(1b)"):
                bench_lag(base, args)
        if "restore" in only:
            with sharing("(2)"):
                bench_restore(base, base / "restore", "big", args)
            shutil.rmtree(base / "restore")
        if "writes" in only:
            with sharing("(3)"):
                bench_writes(base, args)
        print(f"\nat end: {neighbours()}")
        os.chdir(ROOT)


if __name__ == "__main__":
    main()
    warn_if_sources_changed()
