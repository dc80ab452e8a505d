"""Lookup keys and full text follow the schemas.

Which fields a noun indexes (`#`, `##`) and which it searches as text is schema, not data: a tenant
file written under other schemas has key rows and full text for the old fields. Each noun's derived
shape is recorded in `meta` when its rows are built. A store that serves the tenant
(`follow_schemas=True`: `serve`, and the library's default) checks the shapes on open and rebuilds
the nouns that differ from their entities' current states, in one transaction, and only while no
other process has the file open: a running server would go on answering from the keys it knows.
Other openers (the CLI's other commands, the background flush) leave the shapes alone."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..errors import Conflict, NotFound, StorageError
from ..schema import Noun, SchemaSet
from ..schema.validation import normalized_email
from .filelock import TenantLock
from .mutations import INSERT_KEY, key_rows, search_body
from .sqlite import in_tx

log = logging.getLogger(__name__)

_PREFIX = "derived:"


def shape(noun: Noun) -> str:
    """What a noun's key rows and full text are made of (independent of the order of its fields)."""
    # A json field's keys no longer hold true/false (as 1/0, which matched the numbers): the mark makes
    # nouns with an indexed json field rebuild their keys once.
    # A list field keys each element and a scalar field no list (mutations.field_values): the "list" mark makes a
    # field changed from one to the other rebuild its keys.
    # An email field keys its values as a write stores them (mutations.field_values), one written while it was a
    # string too: the "email" mark makes a field changed to an email, or from one, rebuild its keys.
    keys = sorted(
        [
            f.name,
            f.unique,
            *(["no-flags"] if f.type == "json" else []),
            *(["list"] if f.array else []),
            *(["email"] if f.type == "email" else []),
        ]
        for f in noun.indexed_fields
    )
    return json.dumps({"keys": keys, "text": sorted(noun.text_fields)}, separators=(",", ":"))


def record(conn: sqlite3.Connection, nouns: list[Noun]) -> None:
    """Note that the key rows and full text of `nouns` are built to their current shape."""
    conn.executemany(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [(_PREFIX + noun.name, shape(noun)) for noun in nouns],
    )


def stale(conn: sqlite3.Connection, schemas: SchemaSet) -> list[Noun]:
    """The nouns whose key rows and full text were built for other schemas (to rebuild alone).

    Called outside a transaction; decided under the write lock, so two processes opening the tenant
    at once with different schemas cannot both take the file as built for theirs. A new noun (no
    shape recorded: no server that opened the tenant knew it, so none can write it the old way) is
    recorded at once. A changed noun is rebuilt alone even when it has no entities yet: a server
    still running with the old schemas could write some, with the old keys, after the new shape was
    recorded. A file from before shapes were recorded is taken as built for the schemas it is first
    opened with (they are recorded then), rather than rebuilt whole on upgrade."""
    if _any_shape(conn) and not changed(conn, schemas):
        return []  # the common case, answered without taking the write lock
    rebuild: list[Noun] = []

    def decide() -> None:
        if not _any_shape(conn):
            record(conn, list(schemas.nouns.values()))
            return
        differ = changed(conn, schemas)
        rebuild.extend(noun for noun in differ if _recorded(conn, noun) or _has_entities(conn, noun))
        record(conn, [noun for noun in differ if noun not in rebuild])

    in_tx(conn, decide)
    return rebuild


def changed(conn: sqlite3.Connection, schemas: SchemaSet) -> list[Noun]:
    """The nouns whose recorded shape differs from the schemas' (or was never recorded)."""
    built = dict(conn.execute("SELECT key, value FROM meta WHERE key LIKE 'derived:%'").fetchall())
    return [noun for noun in schemas.nouns.values() if built.get(_PREFIX + noun.name) != shape(noun)]


def _recorded(conn: sqlite3.Connection, noun: Noun) -> bool:
    """Whether the noun's shape was recorded by an earlier open (now a different one: it changed)."""
    return conn.execute("SELECT 1 FROM meta WHERE key = ?", (_PREFIX + noun.name,)).fetchone() is not None


def _has_entities(conn: sqlite3.Connection, noun: Noun) -> bool:
    return conn.execute("SELECT 1 FROM entities WHERE type = ? LIMIT 1", (noun.name,)).fetchone() is not None


class OpenElsewhere(StorageError):
    """A rebuild refused because another process has the tenant open."""


def open_elsewhere(name: str, why: str = "") -> StorageError:
    """The refusal of a rebuild for new schemas while another process has the tenant open."""
    return OpenElsewhere(
        f"tenant {name!r} {why}is open in another process, so its lookup keys cannot be rebuilt now",
        hint="Stop the other server or command using this --data-dir (or start it with the same "
        "--schemas); the keys are rebuilt when the tenant is next opened alone.",
    )


def rebuild_alone(path: Path, schemas: SchemaSet, every: bool = False) -> list[str]:
    """Rebuild the stale nouns (with `every`, all nouns, and drop keys and text of no entity) of the
    tenant file `path` through a connection that holds it alone: of each, its keys or its full text, or both,
    as far as they differ from what the schemas make (`_differ`); the names of those rebuilt. Raises StorageError
    when another process has the file open, or when a unique field holds the same value on two live
    entities (then nothing is changed)."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=0)
    conn.create_function("email_value", 1, normalized_email, deterministic=True)
    try:
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        try:
            conn.execute("BEGIN EXCLUSIVE")
        except sqlite3.OperationalError:
            raise open_elsewhere(path.stem) from None
        try:
            nouns = list(schemas.nouns.values()) if every else changed(conn, schemas)
            rebuilt = []
            for noun in nouns:
                keys, text = (True, True) if every else _differ(conn, noun)
                if keys or text:
                    _rebuild(conn, noun, keys, text)
                    rebuilt.append(noun.name)
            if every:
                conn.execute("DELETE FROM entity_keys WHERE id NOT IN (SELECT id FROM entities)")
                conn.execute("DELETE FROM entities_fts WHERE rowid NOT IN (SELECT rowid FROM entities)")
            record(conn, nouns)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return rebuilt
    finally:
        conn.close()


def reindex_tenant(path: Path, schemas: SchemaSet) -> list[str]:
    """`headlessly reindex`: rebuild every noun's lookup keys and full text from the current states,
    holding the tenant alone (its lock file exclusive, then the file itself); the nouns rebuilt."""
    if not path.exists():
        raise NotFound(
            f"tenant {path.stem!r} does not exist in {path.parent.parent}", hint="Check --data-dir and --tenant."
        )
    refusal = Conflict(
        f"tenant {path.stem!r} is open in another process, so its lookup keys cannot be rebuilt now",
        hint="Stop every server and command using this --data-dir, then run reindex again.",
    )
    lock = TenantLock(path)
    try:
        if not lock.try_exclusive("reindex"):
            raise refusal
        try:
            return rebuild_alone(path, schemas, every=True)
        except OpenElsewhere:  # (a process that does not take the lock file: an older server, the sqlite3 shell)
            raise refusal from None
    finally:
        lock.release()


def checkable(conn: sqlite3.Connection, schemas: SchemaSet) -> tuple[list[Noun], list[str]]:
    """The nouns whose key rows and full text were built for these schemas (or for no recorded ones:
    a file from before shapes were recorded, which `serve` takes as built for its schemas), so verify
    can re-derive them; and the names of those built for other schemas (`serve` rebuilds them)."""
    if not _any_shape(conn):
        return list(schemas.nouns.values()), []
    differ = {noun.name: noun for noun in changed(conn, schemas)}
    other = sorted(name for name, noun in differ.items() if _has_entities(conn, noun))  # (new nouns: nothing built)
    return [n for n in schemas.nouns.values() if n.name not in differ], other


def _differ(conn: sqlite3.Connection, noun: Noun) -> tuple[bool, bool]:
    """Whether the key rows, and the full text, of a noun whose shape changed differ from what its states make now.
    The keys of a field that only became an email need no rebuild when they hold no text a write to an email
    stores otherwise: a tenant whose keys were built before shapes marked emails (their values were written as
    emails) is not rebuilt for the mark alone."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (_PREFIX + noun.name,)).fetchone()
    if row is None:
        return True, True
    try:
        was, now = json.loads(row[0]), json.loads(shape(noun))
        text = was["text"] != now["text"]
        same = _unmarked(was["keys"]) == _unmarked(now["keys"])
        marked = {key[0] for key in was["keys"] if "email" in key[2:]}
    except (ValueError, TypeError, KeyError, IndexError):  # (a shape recorded otherwise than this version does)
        return True, True
    emails = {key[0] for key in now["keys"] if "email" in key[2:]}
    if not same or marked - emails:  # (a field no longer an email keys its values as they were written)
        return True, text
    keys = any(
        conn.execute(
            "SELECT 1 FROM entity_keys WHERE type = ? AND field = ? AND typeof(value) = 'text' "
            "AND email_value(value) != value LIMIT 1",
            (noun.name, field),
        ).fetchone()
        for field in sorted(emails - marked)
    )
    return keys, text


def _unmarked(keys: list[list[Any]]) -> list[list[Any]]:
    """A shape's keys ([name, unique, marks...]) without their "email" marks."""
    return sorted([*key[:2], *(mark for mark in key[2:] if mark != "email")] for key in keys)


def _any_shape(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM meta WHERE key LIKE 'derived:%' LIMIT 1").fetchone() is not None


def _built(
    conn: sqlite3.Connection, noun: Noun, text: bool = True
) -> tuple[list[tuple[Any, ...]], list[tuple[int, str]], list[Clash]]:
    """The noun's key rows and (with `text`) full text as its entities' states make them, and the values that
    two live entities hold in a field that is unique in `noun` (then the keys cannot be written)."""
    keys: list[tuple[Any, ...]] = []
    texts: list[tuple[int, str]] = []
    holders: dict[tuple[str, Any], list[str]] = defaultdict(list)
    for rowid, entity_id, state_text in conn.execute(
        "SELECT rowid, id, state FROM entities WHERE type = ?", (noun.name,)
    ):
        state = json.loads(state_text)
        rows = key_rows(noun, entity_id, state)
        keys += rows
        for _type, field, value, _id, unique, live, _at in rows:
            if unique and live:
                holders[(field, value)].append(entity_id)  # keys compare as Python does: 7 == 7.0, '7' != 7
        if text and noun.text_fields:
            texts.append((rowid, search_body(noun, state)))
    clashes = [(field, value, sorted(ids)) for (field, value), ids in holders.items() if len(ids) > 1]
    return keys, texts, clashes


Clash = tuple[str, Any, list[str]]  # a unique field, a value, the live entities holding it


def unique_clashes(conn: sqlite3.Connection, noun: Noun) -> list[Clash]:
    """The values two live entities hold in a field that `noun` makes unique: what refuses a rebuild for it."""
    return _built(conn, noun, text=False)[2]


def _rebuild(conn: sqlite3.Connection, noun: Noun, keys_too: bool = True, text_too: bool = True) -> None:
    """Rewrite the noun's key rows (`keys_too`) and full text (`text_too`) from its entities' states."""
    keys, texts, clashes = _built(conn, noun, text=text_too)
    for field, value, ids in clashes[:1] if keys_too else []:
        # The operator's schemas, not the request, are at fault: storage_error, and said in the log too.
        refusal = StorageError(
            f"this tenant cannot be opened with the server's schemas: {noun.name}.{field} is unique in them, "
            f"but {value!r} is used by {', '.join(ids)}",
            hint=f"For the operator: open the tenant with the schemas it was written with and make {field} "
            f"distinct, or drop '##' from {noun.name}.{field}. Nothing was changed.",
            field=field,
        )
        log.error("%s", refusal.message)
        raise refusal
    if keys_too:
        conn.execute("DELETE FROM entity_keys WHERE type = ?", (noun.name,))
        conn.executemany(INSERT_KEY, keys)
    if text_too:
        conn.execute(
            "DELETE FROM entities_fts WHERE rowid IN (SELECT rowid FROM entities WHERE type = ?)", (noun.name,)
        )
        conn.executemany("INSERT INTO entities_fts (rowid, body) VALUES (?, ?)", texts)
