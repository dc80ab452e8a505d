"""Lookup keys and full text follow the schemas.

Which fields a noun indexes (`#`, `##`) and which it searches as text is schema, not data: a tenant
file written under other schemas has key rows and full text for the old fields. Each noun's derived
shape is recorded in `meta` when its rows are built; on open, a noun whose shape differs gets its key
rows and full text rebuilt from its entities' current states, in one transaction."""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from typing import Any

from ..errors import ValidationFailed
from ..schema import Noun, SchemaSet
from .mutations import index_keys, search_body
from .sqlite import in_tx

_PREFIX = "derived:"


def shape(noun: Noun) -> str:
    """What a noun's key rows and full text are made of."""
    keys = [[f.name, f.unique] for f in noun.indexed_fields]
    return json.dumps({"keys": keys, "text": list(noun.text_fields)}, separators=(",", ":"))


def record(conn: sqlite3.Connection, nouns: list[Noun]) -> None:
    """Note that the key rows and full text of `nouns` are built to their current shape."""
    conn.executemany(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [(_PREFIX + noun.name, shape(noun)) for noun in nouns],
    )


def reindex(conn: sqlite3.Connection, schemas: SchemaSet) -> list[str]:
    """Rebuild the key rows and full text of every noun whose shape changed since they were built;
    the names of the nouns rebuilt. Raises ValidationFailed (and changes nothing) when a field made
    unique holds the same value on two live entities."""
    if not _stale(conn, schemas):
        return []
    rebuilt: list[str] = []

    def run() -> None:
        stale = _stale(conn, schemas)  # again under the write lock: another process may have done it
        if conn.execute("SELECT 1 FROM entities LIMIT 1").fetchone() is not None:  # else nothing to rebuild
            for noun in stale:
                _rebuild(conn, noun)
        record(conn, stale)
        rebuilt.extend(noun.name for noun in stale)

    in_tx(conn, run)
    return rebuilt


def _stale(conn: sqlite3.Connection, schemas: SchemaSet) -> list[Noun]:
    built = dict(conn.execute("SELECT key, value FROM meta WHERE key LIKE 'derived:%'").fetchall())
    return [noun for noun in schemas.nouns.values() if built.get(_PREFIX + noun.name) != shape(noun)]


def _rebuild(conn: sqlite3.Connection, noun: Noun) -> None:
    keys: list[tuple[Any, ...]] = []
    texts: list[tuple[int, str]] = []
    holders: dict[tuple[str, Any], list[str]] = defaultdict(list)
    rows = conn.execute("SELECT rowid, id, updated_at, deleted_at, state FROM entities WHERE type = ?", (noun.name,))
    for rowid, entity_id, updated_at, deleted_at, state_text in rows:
        state = json.loads(state_text)
        live = int(deleted_at is None)
        for field, value in index_keys(noun, state):
            unique = noun.fields[field].unique
            keys.append((noun.name, field, value, entity_id, int(unique), live, updated_at))
            if unique and live:
                holders[(field, value)].append(entity_id)
        if noun.text_fields:
            texts.append((rowid, search_body(noun, state)))
    for (field, value), ids in holders.items():
        if len(ids) > 1:
            raise ValidationFailed(
                f"{noun.name}.{field} is unique in the schemas, but {value!r} is used by {', '.join(sorted(ids))}",
                hint=f"Open the tenant with the schemas it was written with and make {field} distinct, "
                f"or drop '##' from {noun.name}.{field}. Nothing was changed.",
                field=field,
            )
    conn.execute("DELETE FROM entity_keys WHERE type = ?", (noun.name,))
    conn.executemany(
        "INSERT INTO entity_keys (type, field, value, id, uniq, live, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)", keys
    )
    conn.execute("DELETE FROM entities_fts WHERE rowid IN (SELECT rowid FROM entities WHERE type = ?)", (noun.name,))
    conn.executemany("INSERT INTO entities_fts (rowid, body) VALUES (?, ?)", texts)
