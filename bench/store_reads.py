#!/usr/bin/env python
"""Read latency of the headlessly event store at two sizes, each figure with its ratio to the other size.

(a) store.get(tenant, "Deal", id, as_of=t) with t random inside the entity's history:
      an entity with --versions (10,000) versions against one with --small-versions (10):
        shared tenant   both entities in ONE tenant, the small one's updates spread evenly through the big
                        one's history (the log around both is the same; only the history length differs)
        own tenant      each entity alone in its own tenant (the log is as long as the history)
      median and p95 in ms over --calls calls each (big and small calls alternate); goals: median < 1 ms,
      ratio big/small <= 2x.

(b) first pages (default limit 25, default sort) at a large and a small size (large/100):
      find    Organization {"industry": X} (indexed field, 20 values), Contact {"email": X} (unique field),
              and, for context, Organization with no filter, among --entities (100,000) entities (half
              Organization, half Contact) against --entities/100
      events  {"actor": X} (10 actors), {"type": "Deal.*"}, {"timestamp": {"$gte": a, "$lt": b}} (a random
              window of 1% of the log's time span), among --events (1,000,000) events (half Deal, half
              Contact; Deal value updates and Contact title updates) against --events/100; and, for
              context, store.get(as_of=random) on an entity of that log
      median ms at each size and the ratio large/small; goal <= 3x.

Setup data goes through store.do, in (a) one update per request, in (b) with batches of up to 1000
operations (the supported bulk path); it is not timed, and progress goes to stderr. Setup of 1M events takes several minutes on a 2-core machine.
Every query runs once untimed at each size first (warm caches), then the calls alternate large/small.
With --explain, the SQL that the store runs for each large-size query is traced (sqlite3 trace callback,
expanded parameters), timed statement by statement, and shown with its EXPLAIN QUERY PLAN.

Run:  .venv/bin/python bench/store_reads.py                 (defaults: ~6-10 minutes, mostly setup)
      .venv/bin/python bench/store_reads.py --quick         (smoke run, seconds)
      .venv/bin/python bench/store_reads.py --events 200000 --entities 20000 --explain
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import FINGERPRINT, log, warn_if_sources_changed  # noqa: E402

from server.store import Store  # noqa: E402
from server.timeutil import format_us, parse_time  # noqa: E402

ACTORS = [f"agent_{k}" for k in range(10)]
INDUSTRIES = [f"Industry {k:02d}" for k in range(20)]
MAX_BATCH = 1000

GOAL_ASOF_MEDIAN_MS = 1.0
GOAL_ASOF_RATIO = 2.0
GOAL_SCALE_RATIO = 3.0


class Progress:
    def __init__(self, what: str, total: int) -> None:
        self.what, self.total, self.done = what, total, 0
        self.t0 = self.last = time.perf_counter()

    def add(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= 5 or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            left = (self.total - self.done) / max(rate, 1e-9)
            log(f"  {self.what}: {self.done:,}/{self.total:,} ({rate:,.0f}/s, ~{left:,.0f}s left)")


def batches(ops: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [ops[i : i + size] for i in range(0, len(ops), size)]


def do_batches(store: Store, tenant: str, actor: str, ops: list[dict[str, Any]], size: int,
               progress: Progress | None = None) -> list[dict[str, Any]]:  # fmt: skip
    results: list[dict[str, Any]] = []
    for chunk in batches(ops, size):
        results.extend(store.do(tenant, actor, {"operations": chunk})["results"])
        if progress:
            progress.add(len(chunk))
    return results


# ---- stats & tables ------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def timed_pair(fa: Callable[[random.Random], Any], fb: Callable[[random.Random], Any], calls: int,
               seed: int) -> tuple[list[float], list[float]]:  # fmt: skip
    """Alternate calls of fa and fb (each given its own seeded rng), ms per call."""
    ra, rb = random.Random(seed), random.Random(seed + 1)
    fa(random.Random(0))
    fb(random.Random(0))  # warm
    ta: list[float] = []
    tb: list[float] = []
    clock = time.perf_counter
    for i in range(calls):
        for f, rng, out in ((fa, ra, ta), (fb, rb, tb)) if i % 2 == 0 else ((fb, rb, tb), (fa, ra, ta)):
            t = clock()
            f(rng)
            out.append((clock() - t) * 1000)
    return ta, tb


# ---- (a) get as_of --------------------------------------------------------------------------------------


def deal_history(store: Store, tenant: str, did: str, n_updates: int, start: int) -> None:
    # One request per version, as an agent makes them (a batch's versions take consecutive microseconds).
    for i in range(n_updates):
        store.do(tenant, ACTORS[0], {"action": "update", "type": "Deal", "id": did, "data": {"value": start + i}})


def create_deal(store: Store, tenant: str, name: str) -> str:
    r = store.do(tenant, ACTORS[0], {"action": "create", "type": "Deal", "data": {"name": name, "value": 0}})
    return r["entity"]["$id"]


def setup_asof(store: Store, versions: int, small_versions: int) -> dict[str, tuple[str, str]]:
    """Tenants and entities: {"shared-big", "shared-small", "own-big", "own-small"} -> (tenant, id)."""
    log(f"setup (a): a {versions}-version Deal and a {small_versions}-version Deal, shared and own tenants")
    big = create_deal(store, "asof-shared", "Big")
    small = create_deal(store, "asof-shared", "Small")
    done = 1
    for j in range(1, small_versions):  # the small entity's updates spread through the big one's history
        upto = 1 + round(j * (versions - 1) / (small_versions - 1))
        deal_history(store, "asof-shared", big, upto - done, done)
        done = upto
        store.do("asof-shared", ACTORS[0], {"action": "update", "type": "Deal", "id": small, "data": {"value": j}})
    deal_history(store, "asof-shared", big, versions - done, done)
    own_big = create_deal(store, "asof-big", "Big")
    deal_history(store, "asof-big", own_big, versions - 1, 1)
    own_small = create_deal(store, "asof-small", "Small")
    deal_history(store, "asof-small", own_small, small_versions - 1, 1)
    out = {
        "shared-big": ("asof-shared", big),
        "shared-small": ("asof-shared", small),
        "own-big": ("asof-big", own_big),
        "own-small": ("asof-small", own_small),
    }
    for key, want in (("shared-big", versions), ("shared-small", small_versions), ("own-big", versions),
                      ("own-small", small_versions)):  # fmt: skip
        tenant, eid = out[key]
        got = store.get(tenant, "Deal", eid)["$version"]
        assert got == want, (key, got, want)
    return out


def asof_getter(store: Store, tenant: str, eid: str) -> Callable[[random.Random], Any]:
    state = store.get(tenant, "Deal", eid)
    lo, hi = parse_time(state["$createdAt"]), parse_time(state["$updatedAt"])

    def call(rng: random.Random) -> Any:
        return store.get(tenant, "Deal", eid, as_of=format_us(rng.randint(lo, hi)))

    # correctness spot check (untimed): the state shown is the one in force at asOf
    rng = random.Random(7)
    for _ in range(5):
        at = rng.randint(lo, hi)
        got = store.get(tenant, "Deal", eid, as_of=format_us(at))
        assert parse_time(got["$updatedAt"]) <= at, (got, at)
    return call


def bench_asof(store: Store, ents: dict[str, tuple[str, str]], calls: int, versions: int, small: int) -> None:
    rows, goals = [], []
    for variant in ("shared", "own"):
        fb = asof_getter(store, *ents[f"{variant}-big"])
        fs = asof_getter(store, *ents[f"{variant}-small"])
        tb, ts = timed_pair(fb, fs, calls, seed=11)
        mb, ms_ = statistics.median(tb), statistics.median(ts)
        pb, ps = pct(tb, 0.95), pct(ts, 0.95)
        label = "shared tenant" if variant == "shared" else "own tenant"
        rows.append([f"{label}: {versions:,} versions", f"{mb:.3f}", f"{pb:.3f}", f"{mb / ms_:.2f}x"])
        rows.append([f"{label}: {small:,} versions", f"{ms_:.3f}", f"{ps:.3f}", "1.00x"])
        goals.append([f"{label}: median, {versions:,} versions", f"{mb:.3f} ms", f"< {GOAL_ASOF_MEDIAN_MS} ms",
                      verdict(mb < GOAL_ASOF_MEDIAN_MS)])  # fmt: skip
        goals.append([f"{label}: median, {small:,} versions", f"{ms_:.3f} ms", f"< {GOAL_ASOF_MEDIAN_MS} ms",
                      verdict(ms_ < GOAL_ASOF_MEDIAN_MS)])  # fmt: skip
        goals.append([f"{label}: ratio big/small (median)", f"{mb / ms_:.2f}x", f"<= {GOAL_ASOF_RATIO}x",
                      verdict(mb / ms_ <= GOAL_ASOF_RATIO)])  # fmt: skip
    print()
    print(f"(a) store.get(as_of=random point in the entity's history), {calls} calls per entity")
    print(table(["entity", "median ms", "p95 ms", "ratio to small"], rows))
    print(table(["goal", "figure", "target", "verdict"], goals))


# ---- (b) find and events at two sizes --------------------------------------------------------------------


def setup_entities(store: Store, tenant: str, n: int, batch: int, seed: int) -> dict[str, list[str]]:
    rng = random.Random(seed)
    n_org = n // 2
    n_contact = n - n_org
    log(f"setup (b): {tenant}: {n_org:,} Organizations + {n_contact:,} Contacts")
    prog = Progress(tenant, n)
    per_actor = max(1, batch)
    ops: list[dict[str, Any]] = []
    for i in range(n_org):
        ops.append({"action": "create", "type": "Organization", "data": {
            "name": f"Org {i}", "domain": f"org{i}.example.com", "industry": rng.choice(INDUSTRIES),
            "employeeCount": rng.randint(1, 5000)}})  # fmt: skip
    emails = []
    for i in range(n_contact):
        email = f"person{i}@mail{i % 97}.example.com"
        emails.append(email)
        ops.append({"action": "create", "type": "Contact", "data": {
            "name": f"Person {i}", "email": email, "title": rng.choice(["CEO", "CTO", "VP Sales", "Engineer"])}})  # fmt: skip
    rng.shuffle(ops)  # the two nouns interleave in the log
    for k, chunk in enumerate(batches(ops, per_actor)):
        store.do(tenant, ACTORS[k % len(ACTORS)], {"operations": chunk})
        prog.add(len(chunk))
    return {"emails": emails}


def setup_log(store: Store, tenant: str, n_events: int, batch: int, seed: int) -> dict[str, Any]:
    """A log of about n_events: half Deal, half Contact, written by 10 actors in batches of `batch`."""
    rng = random.Random(seed)
    n_each = max(5, n_events // 1000)  # Deals and Contacts; each gets ~500 versions
    log(f"setup (b): {tenant}: {n_events:,} events over {n_each:,} Deals + {n_each:,} Contacts, 10 actors")
    prog = Progress(tenant, n_events)
    create: list[dict[str, Any]] = []
    for i in range(n_each):
        create.append({"action": "create", "type": "Deal", "data": {"name": f"Deal {i}", "value": 0}})
        create.append({"action": "create", "type": "Contact", "data": {"name": f"C {i}", "email": f"c{i}@log.example"}})
    results = do_batches(store, tenant, ACTORS[0], create, MAX_BATCH, prog)
    deals = [r["entity"]["$id"] for r in results if r["entity"]["$type"] == "Deal"]
    contacts = [r["entity"]["$id"] for r in results if r["entity"]["$type"] == "Contact"]
    left = n_events - len(create)
    counter = 0
    k = 0
    while left > 0:
        size = min(batch, left)
        ops = []
        for _ in range(size):
            counter += 1
            if counter % 2:
                ops.append({"action": "update", "type": "Deal", "id": rng.choice(deals), "data": {"value": counter}})
            else:
                ops.append({"action": "update", "type": "Contact", "id": rng.choice(contacts),
                            "data": {"title": f"Title {counter}"}})  # fmt: skip
        store.do(tenant, ACTORS[k % len(ACTORS)], {"operations": ops})
        k += 1
        left -= size
        prog.add(size)
    with store.pool.lease(tenant) as t, t.reader() as conn:
        first, last, count = conn.execute("SELECT min(ts), max(ts), count(*) FROM events").fetchone()
    return {"deals": deals, "contacts": contacts, "t0": parse_time(first), "t1": parse_time(last), "count": count}


def find_queries(store: Store, tenant: str, info: dict[str, list[str]]) -> dict[str, Callable[[random.Random], Any]]:
    emails = info["emails"]
    return {
        'find Organization {"industry": X}': lambda rng: store.find(
            tenant, "Organization", filter={"industry": rng.choice(INDUSTRIES)}
        ),
        'find Contact {"email": X}': lambda rng: store.find(tenant, "Contact", filter={"email": rng.choice(emails)}),
        "find Organization, no filter (context)": lambda rng: store.find(tenant, "Organization"),
    }


def event_queries(store: Store, tenant: str, info: dict[str, Any]) -> dict[str, Callable[[random.Random], Any]]:
    t0, t1 = info["t0"], info["t1"]
    width = max(1, (t1 - t0) // 100)
    deals = info["deals"]

    def window(rng: random.Random) -> Any:
        a = rng.randint(t0, t1 - width)
        return store.events(tenant, filter={"timestamp": {"$gte": format_us(a), "$lt": format_us(a + width)}})

    def asof(rng: random.Random) -> Any:
        return store.get(tenant, "Deal", rng.choice(deals), as_of=format_us(rng.randint(t0 + (t1 - t0) // 10, t1)))

    return {
        'events {"actor": X}': lambda rng: store.events(tenant, filter={"actor": rng.choice(ACTORS)}),
        'events {"type": "Deal.*"}': lambda rng: store.events(tenant, filter={"type": "Deal.*"}),
        "events timestamp window (1% of span)": window,
        "get Deal as_of (context)": asof,
    }


def bench_scale(title: str, large: dict[str, Callable], small: dict[str, Callable], n_large: int, n_small: int,
                calls: int, context: set[str]) -> list[list[str]]:  # fmt: skip
    rows, goals = [], []
    for name in large:
        tl, ts = timed_pair(large[name], small[name], calls, seed=23)
        ml, ms_ = statistics.median(tl), statistics.median(ts)
        ratio = ml / ms_
        rows.append([name, f"{ml:.3f}", f"{pct(tl, 0.95):.3f}", f"{ms_:.3f}", f"{ratio:.1f}x"])
        is_goal = name not in context
        goals.append([name, f"{ratio:.1f}x", f"<= {GOAL_SCALE_RATIO}x" if is_goal else "(context)",
                      verdict(ratio <= GOAL_SCALE_RATIO) if is_goal else "-"])  # fmt: skip
        log(f"  {name}: {ml:.3f} ms vs {ms_:.3f} ms")
    print()
    print(f"{title}: first page (limit 25), {calls} calls per size")
    print(table(["query", f"median ms @{n_large:,}", "p95 ms", f"median ms @{n_small:,}", "large/small"], rows))
    print(table(["goal", "figure", "target", "verdict"], goals))
    return goals


# ---- --explain ----------------------------------------------------------------------------------------------


def explain(store: Store, tenant: str, label: str, fn: Callable[[random.Random], Any]) -> None:
    """Trace the SQL one call runs, time each statement, and print its query plan."""
    statements: list[str] = []
    with store.pool.lease(tenant) as t:
        # readers are pooled last-in first-out: the call below (same thread) gets this same connection
        with t.reader() as conn:
            conn.set_trace_callback(statements.append)
        fn(random.Random(5))
        with t.reader() as conn:
            conn.set_trace_callback(None)
            print(f"\n--explain {label} [{tenant}]")
            for sql in statements:
                if not sql.lstrip().upper().startswith("SELECT"):
                    continue
                start = time.perf_counter()
                conn.execute(sql).fetchall()
                ms = (time.perf_counter() - start) * 1000
                print(f"  {ms:8.3f} ms  {sql}")
                for row in conn.execute("EXPLAIN QUERY PLAN " + sql):
                    print(f"               plan: {row[3]}")


# ---- main ---------------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--versions", type=int, default=10_000, help="versions of the big entity in (a) (default 10000)")
    p.add_argument("--small-versions", type=int, default=10, help="versions of the small entity in (a) (default 10)")
    p.add_argument("--calls", type=int, default=2_000, help="get(as_of) calls per entity in (a) (default 2000)")
    p.add_argument("--entities", type=int, default=100_000, help="entities at the large size in (b) (default 100000)")
    p.add_argument("--events", type=int, default=1_000_000, help="events at the large size in (b) (default 1000000)")
    p.add_argument("--queries", type=int, default=100, help="calls per query and size in (b) (default 100)")
    p.add_argument("--batch", type=int, default=200, help="operations per setup batch in (b), <= 1000 (default 200)")
    p.add_argument("--only", choices=["asof", "find", "events"], action="append", help="run only these parts")
    p.add_argument("--explain", action="store_true", help="trace, time and EXPLAIN the SQL of large-size queries")
    p.add_argument("--quick", action="store_true", help="smoke run in seconds (tiny sizes)")
    args = p.parse_args()
    if args.quick:
        args.versions, args.calls, args.entities, args.events, args.queries = 300, 50, 2_000, 20_000, 10
    args.batch = max(1, min(args.batch, MAX_BATCH))
    parts = set(args.only or ["asof", "find", "events"])
    print(
        f"store_reads: server sources {FINGERPRINT}, python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}, {os.cpu_count()} cpus; "
        f"versions {args.versions:,}/{args.small_versions:,}, entities {args.entities:,}/{args.entities // 100:,}, "
        f"events {args.events:,}/{args.events // 100:,}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as d, Store(d, durability="normal") as store:
        if "asof" in parts:
            t = time.perf_counter()
            ents = setup_asof(store, args.versions, args.small_versions)
            log(f"  setup (a) took {time.perf_counter() - t:.1f}s")
            bench_asof(store, ents, args.calls, args.versions, args.small_versions)
        if "find" in parts:
            t = time.perf_counter()
            big = setup_entities(store, "ents-large", args.entities, args.batch, seed=1)
            small = setup_entities(store, "ents-small", max(2, args.entities // 100), args.batch, seed=2)
            log(f"  setup find took {time.perf_counter() - t:.1f}s")
            fl, fs = find_queries(store, "ents-large", big), find_queries(store, "ents-small", small)
            bench_scale("(b) find", fl, fs, args.entities, args.entities // 100, args.queries,
                        {"find Organization, no filter (context)"})  # fmt: skip
            if args.explain:
                for name, fn in fl.items():
                    explain(store, "ents-large", name, fn)
        if "events" in parts:
            t = time.perf_counter()
            big_log = setup_log(store, "log-large", args.events, args.batch, seed=3)
            small_log = setup_log(store, "log-small", max(20, args.events // 100), args.batch, seed=4)
            log(f"  setup events took {time.perf_counter() - t:.1f}s")
            el, es = event_queries(store, "log-large", big_log), event_queries(store, "log-small", small_log)
            bench_scale("(b) events", el, es, big_log["count"], small_log["count"], args.queries,
                        {"get Deal as_of (context)"})  # fmt: skip
            if args.explain:
                for name, fn in el.items():
                    explain(store, "log-large", name, fn)
        if args.explain and "asof" in parts:
            explain(store, "asof-shared", "get as_of (a), shared tenant",
                    asof_getter(store, *ents["shared-big"]))  # fmt: skip


if __name__ == "__main__":
    main()
    warn_if_sources_changed()
