"""Verify a tenant: recompute the hash chain and re-derive every entity from the log."""

from __future__ import annotations

import functools
import json
import sqlite3
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from typing import Any

from ..schema import Noun, SchemaSet
from .events import EVENT_ROW_COLUMNS, GENESIS_HASH, EventRow, dumps, row_hash
from .mutations import key_rows, search_body
from .queries import iter_events
from .reindex import checkable, unique_clashes
from .sqlite import ENTITY_COUNTS, KEY_COUNTS, migrate
from .undefined import undefined_types

MAX_PROBLEMS = 100
PROGRESS_EVERY = 10_000  # events between progress calls
# The triggers by which the database itself refuses to change or remove events.
GUARDS = {
    "events_refuse_update": "UPDATE on events",
    "events_refuse_delete": "DELETE on events",
    "events_append_only": "INSERT OR REPLACE over an event, and events out of order",
}
_GUARDS_SQL = f"SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND name IN ({', '.join('?' * len(GUARDS))})"


@functools.cache
def expected_guards() -> dict[str, str]:
    """The guards' SQL as the migrations create them (in a database of their own, in memory)."""
    with closing(sqlite3.connect(":memory:", isolation_level=None)) as conn:
        migrate(conn)
        return dict(conn.execute(_GUARDS_SQL, tuple(GUARDS)).fetchall())


def guard_problems(conn: sqlite3.Connection) -> list[str]:
    found = dict(conn.execute(_GUARDS_SQL, tuple(GUARDS)).fetchall())
    return [
        f"the database no longer refuses {what}: its trigger {name} is "
        + ("missing" if name not in found else "not the one the store created")
        for name, what in GUARDS.items()
        if found.get(name) != expected_guards()[name]
    ]


def file_problems(conn: sqlite3.Connection) -> list[str]:
    """What SQLite's integrity check finds wrong with the file's structure (pages, b-trees, indexes): at most 10."""
    try:
        found = [line for (text,) in conn.execute("PRAGMA integrity_check(10)") for line in text.splitlines()]
    except sqlite3.DatabaseError as exc:  # too damaged to be checked at all
        found = [str(exc)]
    if found == ["ok"]:
        return []
    return [f"the database file is damaged: {line}" for line in found if not line.startswith("*** in database")][:10]


def replay(prev: dict[str, Any], event: EventRow, changes: dict[str, Any]) -> dict[str, Any]:
    """The entity state after `event`, from the state before it and the event's typed changes."""
    fields = {k: v for k, v in prev.items() if not k.startswith("$")}
    deleted_at, deleted_by = prev.get("$deletedAt"), prev.get("$deletedBy")
    for key, change in changes.items():
        to = change.get("to") if isinstance(change, dict) else None
        if key == "$deletedAt":
            deleted_at = to
        elif key == "$deletedBy":
            deleted_by = to
        elif to is None:
            fields.pop(key, None)
        else:
            fields[key] = to
    state: dict[str, Any] = {
        "$id": event.target,
        "$type": event.entity_type,
        "$version": event.version,
        "$createdAt": prev.get("$createdAt", event.ts),
        "$createdBy": prev.get("$createdBy", event.actor),
        "$updatedAt": event.ts,
        "$updatedBy": event.actor,
    }
    if deleted_at is not None:
        state["$deletedAt"], state["$deletedBy"] = deleted_at, deleted_by
    state.update(fields)
    return state


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def verify_tenant(
    conn: sqlite3.Connection, progress: Callable[[int, str], None] | None = None, schemas: SchemaSet | None = None
) -> dict[str, Any]:
    """A report: counts, the head hash, and every problem found (at most 100 listed). With `schemas`,
    also the lookup keys and full text of every noun built for them, re-derived from the states, and the
    types of entities they do not define (`undefinedTypes`, with counts: kept, but no tool reaches them).

    Two passes over the log, each holding one event or one entity at a time (memory stays flat however
    large the tenant): the chain in seq order, then each entity's events in version order.
    `progress(n, "chained" | "replayed")` every PROGRESS_EVERY events of each pass (and `progress(0, what)`
    before the file's own check).

    A file whose structure SQLite's own check finds damaged is reported as such (`damaged`, no counts) and not
    read further: what the passes would read cannot be trusted, and the remedy is a restore, not a repair."""
    if progress:
        progress(0, "checking the file's structure")
    if damage := file_problems(conn):
        return {"ok": False, "events": None, "entities": None, "headHash": None, "damaged": True, "problems": damage}
    problems: list[str] = guard_problems(conn)

    def problem(text: str) -> None:
        if len(problems) < MAX_PROBLEMS:
            problems.append(text)

    prev_hash, prev_ts, expected_seq, count = GENESIS_HASH, "", 1, 0
    for event in iter_events(conn):
        count += 1
        if progress and count % PROGRESS_EVERY == 0:
            progress(count, "chained")
        if event.seq != expected_seq:
            problem(f"seq {expected_seq} is missing: the next event has seq {event.seq}")
        expected_seq = event.seq + 1
        if event.prev_hash != prev_hash:
            problem(f"event {event.id} (seq {event.seq}) does not chain to the previous event's hash")
        if row_hash(event) != event.hash:
            problem(f"event {event.id} (seq {event.seq}) was altered: its hash does not match its content")
        if event.ts <= prev_ts:
            problem(f"event {event.id} (seq {event.seq}) has a timestamp not after the previous event")
        if event.type != f"{event.entity_type}.{event.action}":
            problem(f"event {event.id}: type {event.type} does not match {event.entity_type}.{event.action}")
        prev_hash, prev_ts = event.hash, event.ts
    _replay_entities(conn, problem, progress)
    for (entity_id,) in conn.execute(
        "SELECT id FROM entities e WHERE NOT EXISTS (SELECT 1 FROM events WHERE target = e.id) LIMIT 10"
    ):
        problem(f"entity {entity_id} has no events")
    (entity_count,) = conn.execute("SELECT count(*) FROM entities").fetchone()
    for text in _derived_problems(conn):
        problem(text)
    report: dict[str, Any] = {"events": count, "entities": entity_count, "headHash": prev_hash}
    if schemas is not None:
        nouns, other = checkable(conn, schemas)
        for text in _keys_and_text_problems(conn, nouns):
            problem(text)
        for name in other:  # built for other schemas: a server with these rebuilds them, unless it cannot
            for field, value, ids in unique_clashes(conn, schemas.nouns[name]):
                problem(
                    f"{name}.{field} is unique in these schemas, but {value!r} is used by {', '.join(ids)}: a server "
                    "with them refuses to open this tenant until the values are distinct"
                )
        if other:
            report["builtForOtherSchemas"] = other
        # Not a problem (the log and the states are intact), but no tool reaches them: said, as a warning.
        if undefined := undefined_types(conn, schemas, ENTITY_COUNTS):
            report["undefinedTypes"] = undefined
    return {"ok": not problems, **report, "problems": problems}


def _replay_entities(
    conn: sqlite3.Connection, problem: Callable[[str], None], progress: Callable[[int, str], None] | None
) -> None:
    """Re-derive each entity from its events, read in (target, version) order from their unique index, check
    each stored state against the replay, and the entities row against the last one."""
    missing_rows = 0

    def finish(target: str, derived: dict[str, Any], last_text: str) -> None:
        nonlocal missing_rows
        if not derived:  # its events' JSON was unreadable: said already
            return
        row = conn.execute("SELECT state, version FROM entities WHERE id = ?", (target,)).fetchone()
        if row is None:
            missing_rows += 1
            if missing_rows <= 10:
                problem(f"entity {target} has events but no materialized row")
        elif row[1] != derived["$version"] or (
            row[0] != last_text  # the same text as the last event's state, already checked against the replay
            and _canon(json.loads(row[0])) != _canon(derived)
        ):
            problem(f"entity {target}: the materialized state differs from the replay of its events")

    target: str | None = None
    prev: dict[str, Any] = {}
    last_text = ""  # the stored state of the target's last event, when it agreed with the replay
    prev_seq = count = 0
    for r in conn.execute(f"SELECT {EVENT_ROW_COLUMNS} FROM events ORDER BY target, version"):
        event = EventRow(*r)
        count += 1
        if progress and count % PROGRESS_EVERY == 0:
            progress(count, "replayed")
        if event.target != target:
            if target is not None:
                finish(target, prev, last_text)
            target, prev, prev_seq, last_text = event.target, {}, 0, ""
        if event.version != prev.get("$version", 0) + 1:
            problem(f"event {event.id}: {event.target} jumps from version {prev.get('$version', 0)} to {event.version}")
        if event.seq < prev_seq:  # versions must follow the log's order, not only each other
            problem(
                f"event {event.id}: {event.target} v{event.version} (seq {event.seq}) comes before its previous version in the log"
            )
        prev_seq = event.seq
        try:
            changes = json.loads(event.changes)
            stored = json.loads(event.state)
        except json.JSONDecodeError:
            problem(f"event {event.id}: changes or state is not valid JSON")
            continue
        derived = replay(prev, event, changes)
        if _canon(derived) != _canon(stored):
            problem(
                f"event {event.id}: the stored state of {event.target} v{event.version} differs from the replay of its changes"
            )
            last_text = ""  # (so the entities row is compared with the replay, not with this text)
        else:
            last_text = event.state
        prev = derived
    if target is not None:
        finish(target, prev, last_text)


def _keys_and_text_problems(conn: sqlite3.Connection, nouns: list[Noun]) -> list[str]:
    """Lookup keys and full text of `nouns`' entities that are not what their states give, entity by entity
    (memory stays flat). Full text compares as FTS5 reads it: the same fields' text, in any order. The live flag
    and update time of keys, and keys of no entity, are `_derived_problems`' part."""
    by_name = {noun.name: noun for noun in nouns}
    out: list[str] = []
    entities = conn.execute(
        "SELECT e.id, e.type, e.state, f.body FROM entities e LEFT JOIN entities_fts f ON f.rowid = e.rowid"
    )
    for entity_id, type_, state_text, body in entities:
        noun = by_name.get(type_)
        if noun is None:
            continue
        state = json.loads(state_text)
        expected = Counter(row[:5] for row in key_rows(noun, entity_id, state))
        found = Counter(
            tuple(row)
            for row in conn.execute("SELECT type, field, value, id, uniq FROM entity_keys WHERE id = ?", (entity_id,))
        )
        out += [
            f"entity {entity_id}: its lookup key {key[0]}.{key[1]} = {key[2]!r} is missing"
            for key in sorted(expected - found, key=repr)
        ]
        out += [
            f"entity {entity_id}: lookup key {key[0]}.{key[1]} = {key[2]!r} does not follow from its state"
            for key in sorted(found - expected, key=repr)
        ]
        want = search_body(noun, state) if noun.text_fields else None
        if body != want and (body is None or want is None or sorted(body.split("\n")) != sorted(want.split("\n"))):
            out.append(f"entity {entity_id}: its full text differs from its state")
        if len(out) >= MAX_PROBLEMS:
            break
    out += [
        f"full text row {rowid} has no entity"
        for (rowid,) in conn.execute(
            "SELECT rowid FROM entities_fts WHERE rowid NOT IN (SELECT rowid FROM entities) LIMIT 10"
        )
    ]
    return out


def _derived_problems(conn: sqlite3.Connection) -> list[str]:
    """What is kept beside the entities (lookup keys, key counts, entity counts) and is out of step with them."""
    out = [
        f"entity {entity_id}: its row's type, update time or deletion differs from its state"
        for (entity_id,) in conn.execute(
            """SELECT id FROM entities WHERE type IS NOT json_extract(state, '$."$type"')
               OR updated_at IS NOT json_extract(state, '$."$updatedAt"')
               OR deleted_at IS NOT json_extract(state, '$."$deletedAt"') LIMIT 10"""
        )
    ]
    out += [
        f"entity {entity_id}: its lookup keys say it was updated at {keyed}, the entity says {actual}"
        for entity_id, keyed, actual in conn.execute(
            "SELECT DISTINCT k.id, k.updated_at, e.updated_at FROM entity_keys k JOIN entities e ON e.id = k.id "
            "WHERE k.updated_at != e.updated_at LIMIT 10"
        )
    ]
    out += [
        f"entity {entity_id}: its lookup keys say it is {'live' if live else 'deleted'}, the entity says otherwise"
        for entity_id, live in conn.execute(
            "SELECT DISTINCT k.id, k.live FROM entity_keys k JOIN entities e ON e.id = k.id "
            "WHERE k.live != (e.deleted_at IS NULL) LIMIT 10"
        )
    ]
    out += [
        f"lookup keys of {entity_id} have no entity"
        for (entity_id,) in conn.execute(
            "SELECT DISTINCT id FROM entity_keys WHERE id NOT IN (SELECT id FROM entities) LIMIT 10"
        )
    ]
    out += [
        f"key count of {noun}.{field} = {value!r} (live={live}) is wrong or missing"
        for noun, field, value, live, _n in conn.execute(_differ(KEY_COUNTS, "SELECT * FROM key_counts"))
    ]
    out += [
        f"the count of {'live' if live else 'deleted'} {noun} entities is wrong or missing"
        for noun, live, _n in conn.execute(_differ(ENTITY_COUNTS, "SELECT * FROM entity_counts WHERE n != 0"))
    ]
    return out


def _differ(expected: str, kept: str) -> str:
    """SQL for the rows (at most 10) that one of two queries gives and the other does not."""
    return f"SELECT * FROM ({expected} EXCEPT {kept}) UNION SELECT * FROM ({kept} EXCEPT {expected}) LIMIT 10"


__all__ = ["dumps", "replay", "verify_tenant"]
