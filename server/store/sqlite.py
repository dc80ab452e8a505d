"""The tenant database file: connections, pragmas, migrations, triggers and per-noun indexes."""

from __future__ import annotations

import functools
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import DamagedFile, LimitExceeded, StorageError
from ..schema.validation import normalized_email
from .patterns import regexp
from .words import words_match

DURABILITY = {"normal": "NORMAL", "full": "FULL"}
PAGE_SIZE = 1024
# Pages in the WAL before a COMMIT checkpoints by itself. Checkpoints normally run in the
# background (checkpoints.py); this bound only finishes what they left and restarts the WAL.
WAL_AUTOCHECKPOINT = 16_000

# What key_counts and entity_counts hold, as their triggers keep them (the backfills, bulk load and verify use these).
KEY_COUNTS = "SELECT type, field, value, live, count(*) FROM entity_keys GROUP BY 1, 2, 3, 4"
ENTITY_COUNTS = "SELECT type, deleted_at IS NULL, count(*) FROM entities GROUP BY 1, 2"
# The JSON types whose values an indexed field keys (mutations.index_keys: strings, numbers, booleans).
_KEYED_JSON_TYPES = "('text', 'integer', 'real', 'true', 'false')"
_KEY_OLD = "type = OLD.type AND field = OLD.field AND value = OLD.value AND live = OLD.live"
_COUNT_NEW = (
    "INSERT INTO key_counts (type, field, value, live, n) VALUES (NEW.type, NEW.field, NEW.value, NEW.live, 1) "
    "ON CONFLICT (type, field, value, live) DO UPDATE SET n = n + 1;"
)
_UNCOUNT_OLD = f"UPDATE key_counts SET n = n - 1 WHERE {_KEY_OLD}; DELETE FROM key_counts WHERE {_KEY_OLD} AND n = 0;"

_ENTITY_COUNT_NEW = (
    "INSERT INTO entity_counts (type, live, n) VALUES (NEW.type, NEW.deleted_at IS NULL, 1) "
    "ON CONFLICT (type, live) DO UPDATE SET n = n + 1;"
)
_ENTITY_UNCOUNT_OLD = "UPDATE entity_counts SET n = n - 1 WHERE type = OLD.type AND live = (OLD.deleted_at IS NULL);"

# What SQLite answers when the file itself is damaged (pages overwritten, truncated, not a database at all).
_DAMAGE = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


def damaged(exc: BaseException, tenant: str | None, writing: bool = False) -> DamagedFile | None:
    """The error to give when `exc` is SQLite saying the tenant's file is damaged (else None): retrying cannot
    help, and what can (verify, restore from the lakehouse) is the operator's to run."""
    code = getattr(exc, "sqlite_errorcode", None)  # (None on errors of the sqlite3 module itself)
    if not isinstance(exc, sqlite3.DatabaseError) or code is None or (code & 0xFF) not in _DAMAGE:
        return None
    flag = f" --tenant {tenant}" if tenant else ""
    return DamagedFile(
        f"the database file of {f'tenant {tenant!r}' if tenant else 'the tenant'} is damaged: {exc}",
        hint=("Nothing was written. " if writing else "")
        + f"Retrying will not help: the server's operator can check the file with `headlessly verify{flag}` and "
        f"rebuild the tenant from the lakehouse with `headlessly restore{flag} --overwrite`.",
    )


# What SQLite answers when a file cannot grow: SQLITE_FULL for a full disk (ENOSPC), and an I/O error writing,
# extending or mapping a file for a file size limit (EFBIG), a quota (EDQUOT) or a disk full under the -shm.
_NO_ROOM = frozenset(
    {sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR_WRITE, sqlite3.SQLITE_IOERR_TRUNCATE, sqlite3.SQLITE_IOERR_SHMSIZE}
)


def out_of_space(exc: BaseException, tenant: str | None, opening: bool = False) -> StorageError | None:
    """The error to give when `exc` is SQLite failing to write a tenant's file for lack of room (else None): a write
    is undone whole and reads go on; an open (which makes the -wal and -shm files, and a new tenant's tables) fails.
    Either way the next try succeeds once there is room again."""
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(exc, sqlite3.Error) or code not in _NO_ROOM:
        return None
    which = f"tenant {tenant!r}" if tenant else "the tenant"
    what = f"{which} cannot be opened" if opening else f"the write to {which} found no room"
    return StorageError(
        f"{what}: the disk is full, or a file reached its size limit or quota (or the disk failed a write: SQLite "
        f"said {getattr(exc, 'sqlite_errorname', 'SQLITE_FULL')}); nothing was written",
        hint=("" if opening else "Reads still work. ")
        + "The server's operator must free disk space in the data dir (or raise the limit); then send the request "
        "again, with no restart needed (with an idempotencyKey, a retry never writes twice).",
    )


@contextmanager
def damage_said(tenant: str) -> Iterator[None]:
    """Say a damaged file as such (a StorageError naming the tenant and the remedy) for what runs inside."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        err = damaged(exc, tenant)
        if err is None:
            raise
        raise err from exc


SEARCH_SECONDS = 10.0  # what one search may take before it is stopped
_STEPS = 10_000  # SQLite instructions between looks at the clock (a few microseconds of work each)


@contextmanager
def time_limit(conn: sqlite3.Connection, what: str, hint: str) -> Iterator[None]:
    """Stop what runs on `conn` inside after SEARCH_SECONDS, as `limit_exceeded`: a search whose words or
    filters make SQLite read most of a large tenant is refused rather than holding a worker (or, over stdio,
    the whole session) for as long as it takes."""
    deadline = time.monotonic() + SEARCH_SECONDS
    stopped = False

    def look() -> int:
        nonlocal stopped
        stopped = time.monotonic() > deadline
        return stopped

    conn.set_progress_handler(look, _STEPS)
    try:
        yield
    except sqlite3.OperationalError:
        if not stopped:
            raise
        raise LimitExceeded(f"{what} took longer than {SEARCH_SECONDS:g} s and was stopped", hint=hint) from None
    finally:
        conn.set_progress_handler(None, 0)


_MIGRATIONS: list[tuple[str, str]] = [
    (
        "events, entities, full text, idempotency",
        """
        CREATE TABLE events (
            seq         INTEGER PRIMARY KEY,
            id          TEXT NOT NULL UNIQUE,
            type        TEXT NOT NULL,
            entity_type TEXT NOT NULL,
            action      TEXT NOT NULL,
            target      TEXT NOT NULL,
            actor       TEXT NOT NULL,
            ts          TEXT NOT NULL UNIQUE,
            version     INTEGER NOT NULL CHECK (version >= 1),
            data        TEXT NOT NULL,
            changes     TEXT NOT NULL,
            state       TEXT NOT NULL,
            reason      TEXT,
            caused_by   TEXT,
            prev_hash   TEXT NOT NULL,
            hash        TEXT NOT NULL,
            UNIQUE (target, version)
        );
        CREATE INDEX events_by_target ON events (target, seq);
        CREATE INDEX events_by_actor ON events (actor, seq);
        CREATE INDEX events_by_entity_type ON events (entity_type, seq);
        CREATE INDEX events_by_action ON events (action, seq);

        CREATE TRIGGER events_refuse_update BEFORE UPDATE ON events
        BEGIN SELECT RAISE(ABORT, 'events are immutable: UPDATE on events is refused'); END;
        CREATE TRIGGER events_refuse_delete BEFORE DELETE ON events
        BEGIN SELECT RAISE(ABORT, 'events are immutable: DELETE on events is refused'); END;
        CREATE TRIGGER events_time_moves_forward BEFORE INSERT ON events
        WHEN NEW.ts <= (SELECT max(ts) FROM events)
        BEGIN SELECT RAISE(ABORT, 'event timestamps must strictly increase'); END;

        CREATE TABLE entities (
            rowid       INTEGER PRIMARY KEY,
            id          TEXT NOT NULL UNIQUE,
            type        TEXT NOT NULL,
            version     INTEGER NOT NULL,
            created_at  TEXT NOT NULL,
            updated_at  TEXT NOT NULL,
            deleted_at  TEXT,
            state       TEXT NOT NULL
        );
        CREATE INDEX entities_by_type_updated ON entities (type, updated_at);

        CREATE VIRTUAL TABLE entities_fts USING fts5 (body, tokenize = 'unicode61 remove_diacritics 2');

        CREATE TABLE entity_keys (
            type    TEXT NOT NULL,
            field   TEXT NOT NULL,
            value   ANY NOT NULL,
            id      TEXT NOT NULL,
            uniq    INTEGER NOT NULL,
            live    INTEGER NOT NULL
        );
        CREATE INDEX entity_keys_lookup ON entity_keys (type, field, value);
        CREATE INDEX entity_keys_by_id ON entity_keys (id);
        CREATE UNIQUE INDEX entity_keys_unique ON entity_keys (type, field, value) WHERE uniq = 1 AND live = 1;

        CREATE TABLE idempotency (
            actor   TEXT NOT NULL,
            key     TEXT NOT NULL,
            result  TEXT NOT NULL,
            seq     INTEGER,
            PRIMARY KEY (actor, key)
        ) WITHOUT ROWID;

        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
        """,
    ),
    (
        "live entities by type and update time: the default order and count without table lookups",
        """
        DROP INDEX entities_by_type_updated;
        CREATE INDEX entities_by_type_live_updated ON entities (type, deleted_at, updated_at);
        """,
    ),
    (
        "count live key matches from the index alone; walk the default order probing keys without the table",
        """
        DROP INDEX entities_by_type_live_updated;
        CREATE INDEX entities_by_type_live_updated ON entities (type, deleted_at, updated_at DESC, id);
        DROP INDEX entity_keys_lookup;
        CREATE INDEX entity_keys_lookup ON entity_keys (type, field, value, live);
        DROP INDEX entity_keys_by_id;
        CREATE INDEX entity_keys_by_id ON entity_keys (id, field, value);
        """,
    ),
    (
        "keys keep the values as written ('007' is not 7), carry updated_at for the default order, and are counted",
        # Each statement on one line: migrations are split at ';' + newline. The old `value ANY` column had
        # NUMERIC affinity, which stored '007' and '7.0' as the integer 7: the values are read again from the
        # states into a column without affinity, for the fields and entities the old keys listed. The
        # triggers keep key_counts equal to KEY_COUNTS.
        f"""
        CREATE TABLE keys_v4 (type TEXT NOT NULL, field TEXT NOT NULL, value NOT NULL, id TEXT NOT NULL, uniq INTEGER NOT NULL, live INTEGER NOT NULL, updated_at TEXT NOT NULL);
        CREATE TEMP VIEW keyed_fields AS SELECT DISTINCT k.type, k.field, k.id, k.uniq, k.live, e.updated_at, e.state, '$."' || k.field || '"' AS path FROM entity_keys k JOIN entities e ON e.id = k.id;
        INSERT INTO keys_v4 SELECT type, field, json_extract(state, path), id, uniq, live, updated_at FROM keyed_fields WHERE json_type(state, path) IN {_KEYED_JSON_TYPES};
        INSERT INTO keys_v4 SELECT DISTINCT f.type, f.field, j.value, f.id, f.uniq, f.live, f.updated_at FROM keyed_fields f, json_each(f.state, f.path) j WHERE json_type(f.state, f.path) = 'array' AND j.type IN {_KEYED_JSON_TYPES};
        DROP VIEW keyed_fields;
        DROP TABLE entity_keys;
        ALTER TABLE keys_v4 RENAME TO entity_keys;
        CREATE INDEX entity_keys_lookup ON entity_keys (type, field, value, live, updated_at DESC, id);
        CREATE INDEX entity_keys_by_id ON entity_keys (id, field, value);
        CREATE UNIQUE INDEX entity_keys_unique ON entity_keys (type, field, value) WHERE uniq = 1 AND live = 1;
        CREATE TABLE key_counts (type TEXT NOT NULL, field TEXT NOT NULL, value NOT NULL, live INTEGER NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (type, field, value, live)) WITHOUT ROWID;
        INSERT INTO key_counts {KEY_COUNTS};
        CREATE TRIGGER key_counts_add AFTER INSERT ON entity_keys BEGIN {_COUNT_NEW} END;
        CREATE TRIGGER key_counts_remove AFTER DELETE ON entity_keys BEGIN {_UNCOUNT_OLD} END;
        CREATE TRIGGER key_counts_move AFTER UPDATE OF type, field, value, live ON entity_keys BEGIN {_UNCOUNT_OLD} {_COUNT_NEW} END
        """,
    ),
    (
        "live and deleted entities counted per noun: a search without a filter counts in one step",
        # Kept equal to ENTITY_COUNTS by the triggers
        # (an update runs only the WHEN test unless it deletes or undeletes).
        f"""
        CREATE TABLE entity_counts (type TEXT NOT NULL, live INTEGER NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (type, live)) WITHOUT ROWID;
        INSERT INTO entity_counts {ENTITY_COUNTS};
        CREATE TRIGGER entity_counts_add AFTER INSERT ON entities BEGIN {_ENTITY_COUNT_NEW} END;
        CREATE TRIGGER entity_counts_remove AFTER DELETE ON entities BEGIN {_ENTITY_UNCOUNT_OLD} END;
        CREATE TRIGGER entity_counts_move AFTER UPDATE OF type, deleted_at ON entities WHEN OLD.type IS NOT NEW.type OR (OLD.deleted_at IS NULL) IS NOT (NEW.deleted_at IS NULL) BEGIN {_ENTITY_UNCOUNT_OLD} {_ENTITY_COUNT_NEW} END
        """,
    ),
    (
        "events are append-only against INSERT OR REPLACE too",
        # REPLACE deletes the rows a new one collides with, and SQLite fires no DELETE trigger for
        # that (unless a connection turns recursive_triggers on): so an insert may take no seq, id,
        # (target, version) or time that an event already has. One line: see the migration above.
        """
        DROP TRIGGER IF EXISTS events_time_moves_forward;
        CREATE TRIGGER events_append_only BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'event timestamps must strictly increase') WHERE NEW.ts <= (SELECT max(ts) FROM events); SELECT RAISE(ABORT, 'events are append-only: that seq is taken') WHERE NEW.seq <= (SELECT max(seq) FROM events); SELECT RAISE(ABORT, 'events are append-only: that event id is taken') WHERE EXISTS (SELECT 1 FROM events WHERE id = NEW.id); SELECT RAISE(ABORT, 'events are append-only: that target already has that version') WHERE EXISTS (SELECT 1 FROM events WHERE target = NEW.target AND version = NEW.version); END
        """,
    ),
    (
        "idempotency keys remember the request they stood for",
        # A key sent again with another request is refused rather than answered with the first result.
        # NULL for keys kept before: those replay as they did.
        """
        ALTER TABLE idempotency ADD COLUMN request TEXT
        """,
    ),
    (
        "a secret of the tenant's own that seals its cursors",
        # A cursor is bound to its search by a hash; with this secret in it, also to the tenant, and it
        # cannot be made outside the server. A restored file gets a new one (older cursors are refused).
        """
        INSERT OR IGNORE INTO meta (key, value) VALUES ('cursor_secret', lower(hex(randomblob(16))))
        """,
    ),
]

BUSY_TIMEOUT_MS = 10_000  # how long a statement waits for another connection's lock
_SAFE_IDENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def connect(path: Path, durability: str = "normal", readonly: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, foreign-free, with `regexp` (and the
    other functions filters call: `words_match`, `email_value`)."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    if not readonly:
        # Small pages: a commit writes whole pages to the WAL, and a write touches ~10 of them
        # (the event, its indexes, the entity row); 1 KiB pages made commits ~40% faster than
        # 4 KiB here. Only takes effect on a new file.
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        _wal(conn)
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT}")
    conn.execute(f"PRAGMA synchronous = {DURABILITY[durability]}")
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("PRAGMA cache_size = -16000")
    conn.create_function("regexp", 2, regexp, deterministic=True)
    conn.create_function("words_match", 2, words_match, deterministic=True)
    conn.create_function("email_value", 1, normalized_email, deterministic=True)
    return conn


def _wal(conn: sqlite3.Connection) -> None:
    """Switch a file to WAL. On a new file two processes may do so at the same moment (two servers taking
    their first write for a new tenant), and SQLite answers the loser "database is locked" at once rather
    than through the busy timeout: wait for the winner here, within the same limit."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    pause = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def migrate(conn: sqlite3.Connection) -> None:
    """Apply every migration not yet recorded in `migrations`, each in its own transaction."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')))"
    )
    done = {row[0] for row in conn.execute("SELECT version FROM migrations")}
    for version, (name, ddl) in enumerate(_MIGRATIONS, start=1):
        if version in done:
            continue
        in_tx(conn, functools.partial(_apply, conn, version, name, ddl))


def _apply(conn: sqlite3.Connection, version: int, name: str, ddl: str) -> None:
    if conn.execute("SELECT 1 FROM migrations WHERE version = ?", (version,)).fetchone():
        return  # another process (a server and its flush child opening an old file) applied it first
    for statement in ddl.split(";\n"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("INSERT INTO migrations (version, name) VALUES (?, ?)", (version, name))


def in_tx(conn: sqlite3.Connection, fn: Callable[[], None]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        fn()
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def json_path(field: str) -> str:
    """The SQL text `json_extract(state, '$."field"')` for a schema field name (never caller text)."""
    if not _SAFE_IDENT.fullmatch(field.lstrip("$")):
        raise ValueError(f"unsafe field name {field!r}")
    return f"json_extract(state, '$.\"{field}\"')"


def text_of(field: str, array: bool) -> str:
    """SQL for the text a text field of `state` holds, '' when none: an array's strings joined by
    newlines, as `mutations.search_body` builds the full-text body."""
    path = json_path(field)
    if not array:
        return f"coalesce({path}, '')"
    each = path.replace("json_extract(", "json_each(", 1)
    return f"coalesce((SELECT group_concat(value, char(10)) FROM {each} WHERE type = 'text'), '')"


def noun_literal(name: str) -> str:
    if not _SAFE_IDENT.fullmatch(name):
        raise ValueError(f"unsafe noun name {name!r}")
    return f"'{name}'"
