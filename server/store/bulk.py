"""Bulk load: a verified event log into a fresh tenant database, writing each entity once.

The normal writer maintains every index and trigger of `events` per row and materializes every
version of every entity. A restore knows the whole log up front, so it checks that each event
continues the chain, inserts the log with the secondary indexes and triggers dropped, writes
each entity (row, lookup keys, full text) once from its last state, and re-creates the indexes and
triggers from their saved SQL at the end: the same schema and the same rows as the normal path."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ..errors import StorageError, ValidationFailed
from ..schema import SchemaSet
from .events import GENESIS_HASH, EventRow, chain_hash, misnamed
from .mutations import INSERT_KEY, key_rows, search_body
from .reindex import record
from .sqlite import ENTITY_COUNTS, KEY_COUNTS, connect, migrate
from .writer import INSERT_EVENT

EVENT_COLUMNS = EventRow._fields
EventTuple = tuple[Any, ...]  # one event's stored values in EVENT_COLUMNS order: an EventRow, or a plain tuple

LOADED_TABLES = ("events", "entities", "entity_keys")


def bulk_load(
    path: Path,
    schemas: SchemaSet,
    chunks: Iterable[Sequence[EventTuple]],
    durability: str = "normal",
    progress: Callable[[int], None] | None = None,
    indexing: Callable[[], None] | None = None,
) -> int:
    """Create the tenant database `path` holding `chunks` (the whole log from seq 1, in order) and the
    entities it leads to, in one transaction; returns the number of events. `progress` hears the seq
    loaded so far; `indexing`, once the log is in, that the entities and indexes are being built.

    Raises ValidationFailed for a log that is not one unbroken, intact chain; the file is then left
    with its schema and no events."""
    if path.exists():
        raise StorageError(
            f"{path} already exists: a bulk load only creates a fresh tenant database",
            hint="Load into a new path and move it into place once it is complete.",
        )
    conn = connect(path, durability)
    try:
        migrate(conn)
        # Rolling back a fresh file needs no journal on disk, and only the finished file is put in WAL mode.
        conn.execute("PRAGMA journal_mode = MEMORY")
        conn.execute("BEGIN IMMEDIATE")
        try:
            count = _load(conn, schemas, chunks, progress, indexing)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode = WAL")
    finally:
        conn.close()
    return count


def _load(
    conn: sqlite3.Connection,
    schemas: SchemaSet,
    chunks: Iterable[Sequence[EventTuple]],
    progress: Callable[[int], None] | None,
    indexing: Callable[[], None] | None,
) -> int:
    marks = ",".join("?" * len(LOADED_TABLES))
    saved = conn.execute(
        f"SELECT type, name, sql FROM sqlite_master WHERE type IN ('index', 'trigger') AND sql IS NOT NULL "
        f"AND tbl_name IN ({marks})",
        LOADED_TABLES,
    ).fetchall()
    for kind, name, _sql in saved:
        conn.execute(f'DROP {kind.upper()} "{name}"')
    log = _Log()
    for chunk in chunks:
        log.check(chunk)
        try:
            conn.executemany(INSERT_EVENT, chunk)
        except sqlite3.IntegrityError as exc:
            raise ValidationFailed(
                f"the log has two events with the same id or the same (target, version): {exc}",
                hint="The source holds a duplicate event; nothing was restored.",
            ) from None
        if progress:
            progress(log.seq)
    if indexing:
        indexing()
    _write_entities(conn, schemas, log.last)
    for _kind, _name, sql in saved:
        try:
            conn.execute(sql)
        except sqlite3.IntegrityError as exc:
            raise _unique_clash(conn, exc) from None
    return log.seq


class _Log:
    """The continuity checks of a recorded log, chunk by chunk, and the last event of every target."""

    def __init__(self) -> None:
        self.seq, self.hash, self.ts = 0, GENESIS_HASH, ""
        self.last: dict[str, tuple[str, str]] = {}  # target -> (entity type, state), in order of first event

    def check(self, chunk: Sequence[EventTuple]) -> None:
        seq, prev, prev_ts, last = self.seq, self.hash, self.ts, self.last
        for event in chunk:
            (n, event_id, type_, entity_type, _action, target, actor, ts, version, data, changes, state,
             reason, caused_by, prev_hash, h) = event  # fmt: skip
            digest = chain_hash(
                prev_hash, n, event_id, type_, target, actor, ts, version, data, changes, state, reason, caused_by
            )
            if n != seq + 1 or prev_hash != prev or ts <= prev_ts or h != digest or misnamed(type_, entity_type):
                raise _refusal(event, seq, prev, prev_ts)
            last[target] = (entity_type, state)  # all an entity's row needs: not the whole event
            seq, prev, prev_ts = n, h, ts
        self.seq, self.hash, self.ts = seq, prev, prev_ts


def _refusal(event: EventTuple, seq: int, prev: str, prev_ts: str) -> ValidationFailed:
    n, event_id, type_, entity_type, ts, prev_hash = event[0], event[1], event[2], event[3], event[7], event[14]
    where = f"event {event_id} (seq {n})"
    if n != seq + 1:
        problem = f"{where} comes after seq {seq}: the log has a gap or a duplicate"
    elif prev_hash != prev:
        problem = f"{where} does not chain to the hash of seq {seq}"
    elif ts <= prev_ts:
        problem = f"{where} has timestamp {ts}, not after the previous event's {prev_ts}"
    elif wrong := misnamed(type_, entity_type):
        problem = f"{where} was altered: {wrong}"
    else:
        problem = f"{where} was altered: its hash does not match its content"
    return ValidationFailed(
        problem, hint="The source has a gap, a duplicate or an altered event; nothing was restored."
    )


def _write_entities(conn: sqlite3.Connection, schemas: SchemaSet, last: dict[str, tuple[str, str]]) -> None:
    """Each entity's row, lookup keys and full text, from its last state, as the writer leaves them. An
    entity of a noun these schemas lack is kept as it is, without keys or text, as in the live file (they
    are built if the noun comes back)."""
    entities: list[tuple[Any, ...]] = []
    keys: list[tuple[Any, ...]] = []
    texts: list[tuple[int, str]] = []
    for rowid, (entity_id, (entity_type, state_text)) in enumerate(last.items(), start=1):
        noun = schemas.nouns.get(entity_type)
        state = json.loads(state_text)
        deleted_at = state.get("$deletedAt")
        entities.append((rowid, entity_id, entity_type, state["$version"], state["$createdAt"], state["$updatedAt"], deleted_at, state_text))  # fmt: skip
        if noun is None:
            continue
        keys.extend(key_rows(noun, entity_id, state))
        if noun.text_fields:
            texts.append((rowid, search_body(noun, state)))
    conn.executemany(
        "INSERT INTO entities (rowid, id, type, version, created_at, updated_at, deleted_at, state) VALUES (?,?,?,?,?,?,?,?)",
        entities,
    )
    conn.executemany(INSERT_KEY, keys)
    # The triggers of entities and entity_keys are dropped during the load: count once, as they would have.
    conn.execute(f"INSERT INTO entity_counts {ENTITY_COUNTS}")
    conn.execute(f"INSERT INTO key_counts {KEY_COUNTS}")
    conn.executemany("INSERT INTO entities_fts (rowid, body) VALUES (?, ?)", texts)
    record(conn, list(schemas.nouns.values()))


def _unique_clash(conn: sqlite3.Connection, exc: sqlite3.IntegrityError) -> ValidationFailed:
    clash = conn.execute(
        "SELECT type, field, value, group_concat(id, ', ') FROM entity_keys WHERE uniq = 1 AND live = 1 "
        "GROUP BY type, field, value HAVING count(*) > 1 LIMIT 1"
    ).fetchone()
    what = f"{clash[0]}.{clash[1]} must be unique, but {clash[2]!r} is used by {clash[3]}" if clash else str(exc)
    return ValidationFailed(
        f"the log's latest states cannot be indexed: {what}",
        hint="The log was written under other schemas; start with the --schemas folders the data was written with.",
    )
