#!/usr/bin/env python
"""How far the write path could go in Python: one tenant, one Deal, sequential updates (synchronous=NORMAL),
three ways on the SAME connection and file, in alternating turns:

  ours      store.do(tenant, actor, {"action": "update", "type": "Deal", "id": ..., "data": {"value": i}})
  inlined   the same work written as one flat loop body with no layers: check the tenant and actor, parse the
            request (pydantic), BEGIN IMMEDIATE, PRAGMA data_version, read the state, validate the changed
            field (the noun's pydantic validator), merge and diff, render data/changes, three JSON dumps, the
            sha256 chain hash, INSERT the event, UPDATE the entity, COMMIT, and build the same result dict.
            No hooks, idempotency, batches or savepoints: a lower bound for any restructuring of our code.
  sql-only  the same six statements with every value prepared beforehand: what SQLite alone costs (its
            rows carry placeholder hashes and changes, so the log no longer verifies after it).
  sql-lean  sql-only on a second file whose schema lacks the four read-only event indexes and the append-only
            trigger (LEAN_DROPS): what "fewer derived structures" could save at most, giving up event queries.

It answers whether issue 2's goal 1 (10,000 events/s, >= 0.25x raw sqlite3, >= 1.5x eventsourcing) can be
reached by trimming Python: if `inlined` cannot reach it, no refactoring of the layers can.

Run:  .venv/bin/python bench/write_ceiling.py [--rounds 8] [--chunk 2000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
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
from server.store.events import EVENT_ROW_COLUMNS, dumps, new_id, render_change  # noqa: E402
from server.store.operations import ACTOR, Operation  # noqa: E402
from server.store.sqlite import connect, migrate  # noqa: E402
from server.store.tenants import TENANT_NAME  # noqa: E402
from server.store.writer import INSERT_EVENT, read_head  # noqa: E402
from server.timeutil import format_us, now_us  # noqa: E402

TENANT = "bench"
WHO = "agent_bench"
UPDATE = "UPDATE entities SET version = ?, updated_at = ?, state = ? WHERE rowid = ?"
# What "fewer derived structures" could save: the event indexes that only reads use, and the timestamp trigger.
# (ts UNIQUE, id UNIQUE and (target, version) UNIQUE stay: they are what keeps the log sound.)
LEAN_DROPS = (
    "DROP INDEX events_by_target",
    "DROP INDEX events_by_actor",
    "DROP INDEX events_by_entity_type",
    "DROP INDEX events_by_action",
    "DROP TRIGGER events_append_only",
)


def lean_copy(path: Path, source: sqlite3.Connection, did: str) -> sqlite3.Connection:
    """A new tenant file with our schema minus LEAN_DROPS, holding the log's first event and the entity."""
    db = connect(path, "normal")
    migrate(db)
    for statement in LEAN_DROPS:
        db.execute(statement)
    event = source.execute(f"SELECT {EVENT_ROW_COLUMNS} FROM events ORDER BY seq LIMIT 1").fetchone()
    entity = source.execute(
        "SELECT id, type, version, created_at, updated_at, deleted_at, state FROM entities WHERE id = ?", (did,)
    ).fetchone()
    db.execute("BEGIN IMMEDIATE")
    db.execute(INSERT_EVENT, event)
    db.execute(
        "INSERT INTO entities (id, type, version, created_at, updated_at, deleted_at, state) VALUES (?,?,?,?,?,?,?)",
        entity,
    )
    db.execute("COMMIT")
    return db


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=2000)
    args = parser.parse_args()
    log(f"write_ceiling: sources {FINGERPRINT}, {args.rounds} rounds of {args.chunk} updates per variant")

    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp), durability="normal") as store:
        deal = store.do(TENANT, WHO, {"action": "create", "type": "Deal", "data": {"name": "Bench deal", "value": 0}})
        did = deal["entity"]["$id"]
        with store.pool.lease(TENANT) as tenant:
            writer = tenant.writer
        conn = writer._conn  # the writer's own connection: the same file, cache and WAL for all three
        validator = store.env.validators["Deal"]
        counter = iter(range(1, 10**9))

        def ours(n: int) -> None:
            for _ in range(n):
                store.do(TENANT, WHO, {"action": "update", "type": "Deal", "id": did, "data": {"value": next(counter)}})

        def inlined(n: int) -> None:
            head = writer.head
            seq, prev, last_us = head.seq, head.hash, head.ts_us
            for _ in range(n):
                request = {"action": "update", "type": "Deal", "id": did, "data": {"value": next(counter)}}
                if not TENANT_NAME.fullmatch(TENANT) or not ACTOR.fullmatch(WHO):
                    raise ValueError
                op = Operation.model_validate(request)
                assert op.data is not None and op.id is not None
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("PRAGMA data_version").fetchone()
                rowid, text = conn.execute("SELECT rowid, state FROM entities WHERE id = ?", (op.id,)).fetchone()
                state = json.loads(text)
                fields = {k: v for k, v in state.items() if k[0] != "$"}
                merged = validator.validate_changed({**fields, **op.data}, list(op.data))
                changes = {k: {"from": fields.get(k), "to": v} for k, v in merged.items() if fields.get(k) != v}
                last_us = max(now_us(), last_us + 1)
                ts = format_us(last_us)
                version = state["$version"] + 1
                new = {**state, "$version": version, "$updatedAt": ts, "$updatedBy": WHO, **merged}
                data = {k: render_change(c["from"], c["to"]) for k, c in changes.items()}
                state_text, data_text, changes_text = dumps(new), dumps(data), dumps(changes)
                seq += 1
                event_id = new_id("evt_")
                parts = (prev, str(seq), event_id, "Deal.Updated", did, WHO, ts, str(version),
                         data_text, changes_text, state_text, "\x00", "\x00")  # fmt: skip
                h = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
                conn.execute(INSERT_EVENT, (seq, event_id, "Deal.Updated", "Deal", "Updated", did, WHO, ts, version,
                                            data_text, changes_text, state_text, None, None, prev, h))  # fmt: skip
                conn.execute(UPDATE, (version, ts, state_text, rowid))
                conn.execute("COMMIT")
                prev = h
                result = {"entity": new, "events": [{"id": event_id, "seq": seq, "type": "Deal.Updated", "target": did,
                          "actor": WHO, "timestamp": ts, "version": version, "data": data, "changes": changes, "hash": h}]}  # fmt: skip
                assert result
            writer._head = read_head(conn)  # hand the log's end back to the store

        def sql_only_on(db: sqlite3.Connection, hand_back: Callable[[], None]) -> Callable[[int], None]:
            def run(n: int) -> None:
                head = read_head(db)
                seq, prev, last_us = head.seq, head.hash, head.ts_us
                (text,) = db.execute("SELECT state FROM entities WHERE id = ?", (did,)).fetchone()
                state = json.loads(text)
                version = state["$version"]
                rows = []
                for _ in range(n):
                    seq, version, last_us = seq + 1, version + 1, max(now_us(), last_us + 1)
                    ts, h = format_us(last_us), hashlib.sha256(f"{prev}{seq}".encode()).hexdigest()
                    state_text = dumps({**state, "$version": version, "$updatedAt": ts})
                    event = (seq, new_id("evt_"), "Deal.Updated", "Deal", "Updated", did, WHO, ts, version,
                             '{"value":"1 -> 2"}', '{"value":{"from":1,"to":2}}', state_text, None, None, prev, h)  # fmt: skip
                    rows.append((event, (version, ts, state_text)))
                    prev = h
                (rowid,) = db.execute("SELECT rowid FROM entities WHERE id = ?", (did,)).fetchone()
                start = time.perf_counter()
                for event, (v, ts, st) in rows:
                    db.execute("BEGIN IMMEDIATE")
                    db.execute("PRAGMA data_version").fetchone()
                    db.execute("SELECT rowid, state FROM entities WHERE id = ?", (did,)).fetchone()
                    db.execute(INSERT_EVENT, event)
                    db.execute(UPDATE, (v, ts, st, rowid))
                    db.execute("COMMIT")
                timings.append(time.perf_counter() - start)
                hand_back()

            return run

        def hand_back() -> None:
            writer._head = read_head(conn)  # hand the log's end back to the store

        lean = lean_copy(Path(tmp) / "lean.db", conn, did)

        timings: list[float] = []
        variants: dict[str, Callable[[int], Any]] = {
            "ours": ours,
            "inlined": inlined,
            "sql-only": sql_only_on(conn, hand_back),
            "sql-lean": sql_only_on(lean, lambda: None),
        }
        per: dict[str, list[float]] = {name: [] for name in variants}
        for fn in variants.values():
            fn(200)  # warm up
            if fn is inlined:  # it writes what ours writes: the log still verifies (sql-only's rows will not)
                assert store.verify(TENANT)["ok"], "the inlined update wrote something verify refuses"
        for r in range(args.rounds):
            order = list(variants)[r % len(variants) :] + list(variants)[: r % len(variants)]
            for name in order:
                start = time.perf_counter()
                variants[name](args.chunk)
                elapsed = timings.pop() if name.startswith("sql-") else time.perf_counter() - start
                per[name].append(elapsed / args.chunk * 1e6)

    med = {name: statistics.median(v) for name, v in per.items()}
    print(f"sources {FINGERPRINT}; {args.rounds} rounds x {args.chunk} updates per variant")
    print(f"{'variant':10} {'us/update':>10} {'min-max':>15} {'events/s':>10} {'vs ours':>8}")
    for name, values in per.items():
        print(
            f"{name:10} {med[name]:10.1f} {min(values):7.1f}-{max(values):<7.1f} {1e6 / med[name]:10,.0f} "
            f"{med['ours'] / med[name]:7.2f}x"
        )
    python_ours, python_inlined = med["ours"] - med["sql-only"], med["inlined"] - med["sql-only"]
    print(
        f"Python per update: ours {python_ours:.1f} us, inlined {python_inlined:.1f} us "
        f"(the layers cost {python_ours - python_inlined:.1f} us; SQLite {med['sql-only']:.1f} us)"
    )
    warn_if_sources_changed()


if __name__ == "__main__":
    main()
