#!/usr/bin/env python
"""Write throughput of the headlessly event store, against baselines measured in the same run.

(a) Sequential single-entity updates, one event per transaction, durability "normal":
      ours          store.do(tenant, actor, {"action": "update", "type": "Deal", "id": ..., "data": {"value": i}})
      raw-similar   sqlite3: BEGIN IMMEDIATE; INSERT one row; COMMIT into an events table with our columns
                    (seq INTEGER PRIMARY KEY, id UNIQUE, UNIQUE(target, version)), WAL, synchronous=NORMAL,
                    page_size = server.store.sqlite.PAGE_SIZE
      raw-full      sqlite3 on our full schema (server.store.sqlite.connect + migrate: every index and trigger),
                    per event: BEGIN IMMEDIATE; INSERT the event; UPDATE the entities row; COMMIT
      es-normal     eventsourcing 9.5 (eventsourcing.sqlite): one Aggregate, one event per method call,
                    app.save() after each call; synchronous forced to NORMAL (see below)
      es-default    the same with the library's own settings (it never sets synchronous: SQLite's compiled
                    default applies, FULL (2) in this Python's SQLite build)
    Raw rows are prepared before the clock starts (realistic sizes: a ~250-byte state, 64-hex hashes), so the
    raw figures are the SQLite-only cost of the same transactions.

(b) 16 concurrent writer threads on distinct Deals, durability "full", against one sequential writer with
    "full" in the same run (same total number of events). Prints the writer's `commits` counter and the
    group sizes of the group commits.

eventsourcing and synchronous (read from .venv/lib/python3.11/site-packages/eventsourcing/sqlite.py, 9.5.x):
SQLiteConnectionPool._create_connection() opens sqlite3.connect(uri=True, isolation_level=None,
cached_statements=True, timeout=lock_timeout or 5) and only switches `PRAGMA journal_mode=WAL`; no PRAGMA
synchronous is ever issued and SQLiteFactory reads only SQLITE_DBNAME, SQLITE_LOCK_TIMEOUT and
SINGLE_ROW_TRACKING from the environment, so synchronous is NOT configurable. The compiled default here is
DEFAULT_WAL_SYNCHRONOUS=2 (FULL). For a like-for-like comparison this script wraps
SQLiteConnectionPool._create_connection (in this process only) to issue `PRAGMA synchronous=NORMAL` on each new
connection, and checks the setting through the application's own connection.

Machines are noisy, so the variants share the noise: in each of `--rounds` rounds every variant gets a fresh
database in a tempfile.TemporaryDirectory, and they take turns every `--chunk` events (order rotating) until
each has written `--events`. (b) likewise alternates sequential and concurrent runs in `--segments` segments.
Each ratio is computed within a round, and the table shows the median over rounds and the min-max spread.

Run:  .venv/bin/python bench/store_writes.py            (defaults: ~1-2 minutes)
      .venv/bin/python bench/store_writes.py --quick    (smoke run, seconds)
"""

from __future__ import annotations

import argparse
import collections
import functools
import hashlib
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import FINGERPRINT, log, warn_if_sources_changed  # noqa: E402

from server.store import Store  # noqa: E402
from server.store.sqlite import PAGE_SIZE, connect, migrate  # noqa: E402
from server.timeutil import format_us, now_us  # noqa: E402

TENANT = "bench"
ACTOR = "agent_bench"

GOAL_EVENTS_PER_S = 10_000
GOAL_VS_RAW_SIMILAR = 0.25
GOAL_VS_EVENTSOURCING = 1.5
GOAL_CONCURRENT = 3.0

SIMILAR_DDL = """
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    type        TEXT NOT NULL,
    entity_type TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    actor       TEXT NOT NULL,
    ts          TEXT NOT NULL,
    version     INTEGER NOT NULL,
    data        TEXT NOT NULL,
    changes     TEXT NOT NULL,
    state       TEXT NOT NULL,
    reason      TEXT,
    caused_by   TEXT,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL,
    UNIQUE (target, version)
)
"""

INSERT_EVENT = (
    "INSERT INTO events (seq, id, type, entity_type, action, target, actor, ts, version, data, changes, state, "
    "reason, caused_by, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)


# ---- rows that look like ours ------------------------------------------------------------------


def _dumps(v: object) -> str:
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False)


def make_rows(n: int, target: str, t0_us: int) -> tuple[list[tuple], list[tuple]]:
    """`n` Deal.Updated event rows (versions 2..n+1) and the matching entities-row updates."""
    events, updates = [], []
    prev = "0" * 64
    created = format_us(t0_us)
    for i in range(n):
        version = i + 2
        ts = format_us(t0_us + i + 1)
        state = _dumps({
            "$id": target, "$type": "Deal", "$version": version, "$createdAt": created, "$createdBy": ACTOR,
            "$updatedAt": ts, "$updatedBy": ACTOR, "name": "Bench deal", "value": i + 1, "stage": "Prospecting",
        })  # fmt: skip
        data = _dumps({"value": f"{i} -> {i + 1}"})
        changes = _dumps({"value": {"from": i, "to": i + 1}})
        eid = f"evt_{i:012d}"
        h = hashlib.sha256(f"{prev}{i}{eid}{state}".encode()).hexdigest()
        events.append((
            i + 2, eid, "Deal.Updated", "Deal", "Updated", target, ACTOR, ts, version, data, changes, state,
            None, None, prev, h,
        ))  # fmt: skip
        updates.append((version, ts, None, state, 1))
        prev = h
    return events, updates


def first_row(target: str, t0_us: int) -> tuple:
    ts = format_us(t0_us)
    state = _dumps({
        "$id": target, "$type": "Deal", "$version": 1, "$createdAt": ts, "$createdBy": ACTOR,
        "$updatedAt": ts, "$updatedBy": ACTOR, "name": "Bench deal", "value": 0, "stage": "Prospecting",
    })  # fmt: skip
    return (
        1, "evt_created0000", "Deal.Created", "Deal", "Created", target, ACTOR, ts, 1,
        _dumps({"name": "Bench deal", "value": 0}), "{}", state, None, None, "0" * 64, "1" * 64,
    )  # fmt: skip


# ---- (a) the variants: open fresh, then run `step(k)` in chunks, alternating with the others -----------


class Variant:
    """One way of writing events: `step(k)` writes the next k events (one per transaction) and returns
    the seconds it took; `close()` removes its database."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory()
        self.path = Path(self._dir.name)
        self.done = 0

    def step(self, k: int) -> float:
        raise NotImplementedError

    def close(self) -> None:
        self._dir.cleanup()


class Ours(Variant):
    def __init__(self, n: int, durability: str) -> None:
        super().__init__()
        self.store = Store(self.path, durability=durability)
        deal = self.store.do(
            TENANT, ACTOR, {"action": "create", "type": "Deal", "data": {"name": "Bench deal", "value": 0}}
        )
        self.did = deal["entity"]["$id"]

    def step(self, k: int) -> float:
        do, did, start = self.store.do, self.did, self.done
        t = time.perf_counter()
        for i in range(start + 1, start + k + 1):
            do(TENANT, ACTOR, {"action": "update", "type": "Deal", "id": did, "data": {"value": i}})
        elapsed = time.perf_counter() - t
        self.done += k
        return elapsed

    def close(self) -> None:
        self.store.close()
        super().close()


class RawSimilar(Variant):
    def __init__(self, n: int) -> None:
        super().__init__()
        conn = self.conn = sqlite3.connect(self.path / "raw.db", isolation_level=None)
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(SIMILAR_DDL)
        target = "deal_RawSimilar01"
        t0 = now_us()
        conn.execute(INSERT_EVENT, first_row(target, t0))
        self.rows, _ = make_rows(n, target, t0)

    def step(self, k: int) -> float:
        execute, rows = self.conn.execute, self.rows[self.done : self.done + k]
        t = time.perf_counter()
        for row in rows:
            execute("BEGIN IMMEDIATE")
            execute(INSERT_EVENT, row)
            execute("COMMIT")
        elapsed = time.perf_counter() - t
        self.done += k
        return elapsed

    def close(self) -> None:
        self.conn.close()
        super().close()


class RawFull(Variant):
    UPDATE = "UPDATE entities SET version = ?, updated_at = ?, deleted_at = ?, state = ? WHERE rowid = ?"

    def __init__(self, n: int) -> None:
        super().__init__()
        conn = self.conn = connect(self.path / "full.db", "normal")  # our pragmas: page_size, WAL, NORMAL, cache
        migrate(conn)  # our DDL: every index and trigger, entities, entity_keys, fts, idempotency, meta
        target = "deal_RawFullSchema1"
        t0 = now_us()
        first = first_row(target, t0)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(INSERT_EVENT, first)
        conn.execute(
            "INSERT INTO entities (rowid, id, type, version, created_at, updated_at, deleted_at, state) "
            "VALUES (1, ?, 'Deal', 1, ?, ?, NULL, ?)",
            (target, first[7], first[7], first[11]),
        )
        conn.execute("COMMIT")
        self.rows, self.updates = make_rows(n, target, t0)

    def step(self, k: int) -> float:
        execute, upd = self.conn.execute, self.UPDATE
        pairs = list(zip(self.rows[self.done : self.done + k], self.updates[self.done : self.done + k], strict=True))
        t = time.perf_counter()
        for row, u in pairs:
            execute("BEGIN IMMEDIATE")
            execute(INSERT_EVENT, row)
            execute(upd, u)
            execute("COMMIT")
        elapsed = time.perf_counter() - t
        self.done += k
        return elapsed

    def close(self) -> None:
        self.conn.close()
        super().close()


_ES_SYNC: dict[str, str] = {}  # database file -> PRAGMA synchronous level to force on its connections
_ES_OBSERVED: dict[str, int] = {}


def _install_es_sync_hook() -> None:
    """Make eventsourcing's SQLite connections to the files in _ES_SYNC use that synchronous level."""
    from eventsourcing.sqlite import SQLiteConnectionPool

    if getattr(SQLiteConnectionPool, "_bench_wrapped", False):
        return
    original = SQLiteConnectionPool._create_connection

    def create_connection(self: SQLiteConnectionPool):  # type: ignore[no-untyped-def]
        conn = original(self)
        mode = _ES_SYNC.get(self.db_name)
        if mode is not None:
            conn._sqlite_conn.execute(f"PRAGMA synchronous = {mode}")
        return conn

    SQLiteConnectionPool._create_connection = create_connection  # type: ignore[method-assign]
    SQLiteConnectionPool._bench_wrapped = True  # type: ignore[attr-defined]


@functools.cache
def _es_classes():  # type: ignore[no-untyped-def]
    from eventsourcing.application import Application
    from eventsourcing.domain import Aggregate, event

    class BenchDeal(Aggregate):
        def __init__(self) -> None:
            self.value = 0

        @event("Updated")
        def update(self, value: int) -> None:
            self.value = value

    class BenchApp(Application):
        pass

    return BenchApp, BenchDeal


class EventSourcing(Variant):
    def __init__(self, n: int, sync: str | None) -> None:
        super().__init__()
        _install_es_sync_hook()
        db = str(self.path / "es.db")
        if sync is not None:
            _ES_SYNC[db] = sync
        app_cls, deal_cls = _es_classes()
        self.app = app_cls(env={"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": db})
        with self.app.recorder.datastore.transaction(commit=False) as c:  # type: ignore[attr-defined]
            c.execute("PRAGMA synchronous")
            _ES_OBSERVED[sync or "library default"] = c.fetchone()[0]
        self.deal = deal_cls()
        self.app.save(self.deal)

    def step(self, k: int) -> float:
        deal, save, start = self.deal, self.app.save, self.done
        t = time.perf_counter()
        for i in range(start + 1, start + k + 1):
            deal.update(i)
            save(deal)
        elapsed = time.perf_counter() - t
        self.done += k
        return elapsed

    def close(self) -> None:
        self.app.close()
        super().close()


def io_written() -> int:
    """Bytes this process has passed to write() so far (Linux /proc/self/io `wchar`; 0 elsewhere)."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Measured:
    rates: list[float] = field(default_factory=list)  # events/s per round
    wall: float = 0.0
    cpu: float = 0.0  # process CPU seconds (all threads) while this variant ran
    written: int = 0  # bytes passed to write() while this variant ran
    events: int = 0

    def measure(self, variant: Variant, events: int) -> float:
        """Run variant.step(events) and account for it."""
        c0, w0 = time.process_time(), io_written()
        elapsed = variant.step(events)
        self.cpu += time.process_time() - c0
        self.written += io_written() - w0
        self.wall += elapsed
        self.events += events
        return elapsed

    @property
    def cpu_share(self) -> float:
        return self.cpu / self.wall if self.wall else 0.0

    @property
    def kb_per_event(self) -> float:
        return self.written / 1024 / self.events if self.events else 0.0


def interleaved(makers: dict[str, Callable[[], Variant]], n: int, chunk: int, n_rounds: int) -> dict[str, Measured]:
    """events/s of every variant in every round; within a round the variants take turns every `chunk`
    events (the order rotating), so a slow spell of the machine hits all of them alike."""
    out = {k: Measured() for k in makers}
    for r in range(n_rounds):
        variants = {name: make() for name, make in makers.items()}
        spent = dict.fromkeys(variants, 0.0)
        names = list(variants)
        try:
            done, turn = 0, 0
            while done < n:
                k = min(chunk, n - done)
                for name in names[turn % len(names) :] + names[: turn % len(names)]:
                    spent[name] += out[name].measure(variants[name], k)
                done += k
                turn += 1
        finally:
            for v in variants.values():
                v.close()
        for name in names:
            out[name].rates.append(n / spent[name])
        log(f"  round {r + 1}/{n_rounds}: " + ", ".join(f"{k} {out[k].rates[-1]:,.0f}/s" for k in names))
    return out


# ---- (b) concurrency -------------------------------------------------------------------------------


def _instrument(writer) -> list[int]:  # type: ignore[no-untyped-def]
    """Record the size of each group the writer commits (one list append per group)."""
    sizes: list[int] = []
    original = writer._run_group

    def run_group(group, *rest):  # type: ignore[no-untyped-def]
        sizes.append(len(group))
        return original(group, *rest)

    writer._run_group = run_group
    return sizes


class Concurrent(Variant):
    """`threads` writer threads, each updating its own Deal, durability full."""

    def __init__(self, threads: int) -> None:
        super().__init__()
        self.store = Store(self.path, durability="full")
        self.ids = []
        for k in range(threads):
            r = self.store.do(
                TENANT, ACTOR, {"action": "create", "type": "Deal", "data": {"name": f"D{k}", "value": 0}}
            )
            self.ids.append(r["entity"]["$id"])
        with self.store.pool.lease(TENANT) as t:
            self.writer = t.writer
        self.commits_before = self.writer.commits
        self.sizes = _instrument(self.writer)

    @property
    def commits(self) -> int:
        return self.writer.commits - self.commits_before

    def step(self, k: int) -> float:
        """k events in total, k / threads per thread."""
        per_thread = k // len(self.ids)
        barrier = threading.Barrier(len(self.ids) + 1)
        errors: list[BaseException] = []
        store, start = self.store, self.done

        def work(did: str) -> None:
            try:
                barrier.wait()
                for i in range(start + 1, start + per_thread + 1):
                    store.do(TENANT, ACTOR, {"action": "update", "type": "Deal", "id": did, "data": {"value": i}})
            except BaseException as exc:  # reported below
                errors.append(exc)

        workers = [threading.Thread(target=work, args=(did,)) for did in self.ids]
        for w in workers:
            w.start()
        barrier.wait()
        t0 = time.perf_counter()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - t0
        if errors:
            raise errors[0]
        self.done += per_thread
        return elapsed

    def close(self) -> None:
        self.store.close()
        super().close()


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=20_000, help="events per variant per round in (a) (default 20000)")
    p.add_argument("--chunk", type=int, default=500, help="events per turn when variants alternate (default 500)")
    p.add_argument("--threads", type=int, default=16, help="concurrent writer threads in (b) (default 16)")
    p.add_argument("--per-thread", type=int, default=1_000, help="events per thread per round in (b) (default 1000)")
    p.add_argument(
        "--segments",
        type=int,
        default=10,
        help="(b) alternates sequential and concurrent runs in this many segments per round (default 10)",
    )
    p.add_argument("--rounds", type=int, default=3, help="repetitions, each on fresh databases (default 3)")
    p.add_argument("--no-eventsourcing", action="store_true", help="skip the eventsourcing baselines")
    p.add_argument("--quick", action="store_true", help="smoke run in seconds (tiny sizes, one round)")
    args = p.parse_args()
    if args.quick:
        args.events, args.chunk, args.per_thread, args.segments, args.rounds = 1_000, 250, 40, 2, 1

    print(
        f"store_writes: server sources {FINGERPRINT}, python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"{os.cpu_count()} cpus, page_size {PAGE_SIZE}; (a) {args.events:,} events/variant/round in turns of "
        f"{args.chunk}; (b) {args.threads} threads x {args.per_thread:,} events in {args.segments} segments; "
        f"{args.rounds} rounds",
        flush=True,
    )

    # ---- (a)
    n = args.events
    makers: dict[str, Callable[[], Variant]] = {
        "ours (normal)": lambda: Ours(n, "normal"),
        "raw-similar": lambda: RawSimilar(n),
        "raw-full": lambda: RawFull(n),
    }
    es_available = not args.no_eventsourcing
    if es_available:
        try:
            import eventsourcing  # noqa: F401
        except ImportError:
            es_available = False
            log("eventsourcing is not installed (pip install '.[bench]'): skipping its baselines")
    if es_available:
        makers["es-normal"] = lambda: EventSourcing(n, "NORMAL")
        makers["es-default"] = lambda: EventSourcing(n, None)
    log("(a) sequential writes, one event per transaction")
    measured = interleaved(makers, n, args.chunk, args.rounds)
    rates = {k: m.rates for k, m in measured.items()}
    med = {k: statistics.median(v) for k, v in rates.items()}
    ours_rates = rates["ours (normal)"]
    ours = med["ours (normal)"]
    # ratios: per round (the variants shared that round's conditions), then the median over rounds
    ratio = {k: [o / b for o, b in zip(ours_rates, v, strict=True)] for k, v in rates.items()}
    rmed = {k: statistics.median(v) for k, v in ratio.items()}
    rows = [[name, f"{med[name]:,.0f}", spread(rates[name], ",.0f"), f"{rmed[name]:.2f}x", spread(ratio[name], ".2f"),
             f"{measured[name].cpu_share:.0%}", f"{measured[name].kb_per_event:.1f}"]
            for name in rates]  # fmt: skip
    print()
    print(f"(a) sequential single-entity updates, 1 event/transaction, synchronous=NORMAL unless noted, n={n:,}")
    print(
        table(
            ["variant", "events/s (median)", "min-max", "ours / variant", "min-max", "cpu/wall", "KiB written/event"],
            rows,
        )
    )
    print("    cpu/wall: process CPU time over wall time while the variant ran (below 100%: waiting on the disk);")
    print("    KiB written/event: bytes passed to write() (/proc/self/io wchar): WAL frames plus checkpoints")
    if es_available:
        names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
        seen = ", ".join(f"{k}: {names.get(v, v)}" for k, v in _ES_OBSERVED.items())
        print(f"    eventsourcing PRAGMA synchronous as observed on its own connection: {seen}")
    goals = [
        ["ours events/s", f"{ours:,.0f}", f">= {GOAL_EVENTS_PER_S:,}", verdict(ours >= GOAL_EVENTS_PER_S)],
        ["ours / raw-similar", f"{rmed['raw-similar']:.2f}x", f">= {GOAL_VS_RAW_SIMILAR}x",
         verdict(rmed["raw-similar"] >= GOAL_VS_RAW_SIMILAR)],
        ["ours / raw-full", f"{rmed['raw-full']:.2f}x", "(context)", "-"],
    ]  # fmt: skip
    if es_available:
        goals.append(["ours / es-normal", f"{rmed['es-normal']:.2f}x", f">= {GOAL_VS_EVENTSOURCING}x",
                      verdict(rmed["es-normal"] >= GOAL_VS_EVENTSOURCING)])  # fmt: skip
        goals.append(["ours / es-default (FULL)", f"{rmed['es-default']:.2f}x", "(context)", "-"])
    print(table(["goal", "figure", "target", "verdict"], goals), flush=True)

    # ---- (b)
    log("(b) concurrent writers, durability full")
    threads, segs = args.threads, max(1, args.segments)
    per_seg = max(1, args.per_thread // segs) * threads  # events per segment, for both variants
    total = per_seg * segs
    seq_rates, conc_rates, speedups, commit_counts, all_sizes = [], [], [], [], []
    m_seq, m_conc = Measured(), Measured()
    for r in range(args.rounds):
        seq, conc = Ours(total, "full"), Concurrent(threads)
        t_seq = t_conc = 0.0
        try:
            for s in range(segs):
                if s % 2 == 0:
                    t_seq += m_seq.measure(seq, per_seg)
                    t_conc += m_conc.measure(conc, per_seg)
                else:
                    t_conc += m_conc.measure(conc, per_seg)
                    t_seq += m_seq.measure(seq, per_seg)
            commit_counts.append(conc.commits)
            all_sizes.append(conc.sizes)
        finally:
            seq.close()
            conc.close()
        seq_rates.append(total / t_seq)
        conc_rates.append(total / t_conc)
        speedups.append(conc_rates[-1] / seq_rates[-1])
        log(f"  round {r + 1}/{args.rounds}: sequential {seq_rates[-1]:,.0f}/s, {threads} threads "
            f"{conc_rates[-1]:,.0f}/s, {commit_counts[-1]} commits")  # fmt: skip
    seq_med, conc_med, speedup = (statistics.median(x) for x in (seq_rates, conc_rates, speedups))
    mid = sorted(range(args.rounds), key=lambda i: speedups[i])[args.rounds // 2]
    sizes = sorted(all_sizes[mid])
    print()
    print(f"(b) durability full, {total:,} events per variant per round, each thread on its own Deal")
    print(
        table(
            ["variant", "events/s (median)", "min-max", "commits", "events/commit", "cpu/wall", "KiB written/event"],
            [
                ["sequential (1 thread)", f"{seq_med:,.0f}", spread(seq_rates, ",.0f"), f"{total}", "1.00",
                 f"{m_seq.cpu_share:.0%}", f"{m_seq.kb_per_event:.1f}"],
                [f"{threads} threads", f"{conc_med:,.0f}", spread(conc_rates, ",.0f"), f"{commit_counts[mid]}",
                 f"{total / max(commit_counts[mid], 1):.2f}", f"{m_conc.cpu_share:.0%}", f"{m_conc.kb_per_event:.1f}"],
            ],
        )
    )  # fmt: skip
    if sizes:
        q = lambda f: sizes[min(len(sizes) - 1, int(f * len(sizes)))]  # noqa: E731
        print(
            f"    group sizes (median round): min {sizes[0]}, median {q(0.5)}, p90 {q(0.9)}, max {sizes[-1]}; "
            f"writer.commits per round: {commit_counts}"
        )
        common = collections.Counter(all_sizes[mid]).most_common(6)
        print("    most frequent group sizes (size x groups): " + ", ".join(f"{s} x {c}" for s, c in common))
    print(
        table(
            ["goal", "figure", "target", "verdict"],
            [[f"{threads} threads / sequential (full)", f"{speedup:.2f}x (rounds {spread(speedups, '.2f')})",
              f">= {GOAL_CONCURRENT}x", verdict(speedup >= GOAL_CONCURRENT)]],
        )
    )  # fmt: skip


if __name__ == "__main__":
    main()
    warn_if_sources_changed()
