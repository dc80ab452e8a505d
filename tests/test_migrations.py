"""The tenant database file's migrations: recorded in `migrations`, applied once on open, also when two
processes (a server and its background flush) open an old file at the same moment."""

from __future__ import annotations

import sqlite3
import threading
from contextlib import closing
from pathlib import Path

import pytest
from conftest import AGENT, TENANT

from server.errors import ValidationFailed
from server.schema import SchemaSet
from server.store import Store
from server.store.sqlite import connect, migrate

AS_THE_SEVENTH_MIGRATION_LEFT_IT = """
    DELETE FROM meta WHERE key = 'cursor_secret';
    DELETE FROM migrations WHERE version = 8;
"""
AS_THE_SIXTH_MIGRATION_LEFT_IT = (
    AS_THE_SEVENTH_MIGRATION_LEFT_IT
    + """
    ALTER TABLE idempotency DROP COLUMN request;
    DELETE FROM migrations WHERE version = 7;
"""
)
AS_THE_FIFTH_MIGRATION_LEFT_IT = (
    AS_THE_SIXTH_MIGRATION_LEFT_IT
    + """
    DROP TRIGGER events_append_only;
    CREATE TRIGGER events_time_moves_forward BEFORE INSERT ON events WHEN NEW.ts <= (SELECT max(ts) FROM events)
    BEGIN SELECT RAISE(ABORT, 'event timestamps must strictly increase'); END;
    DELETE FROM migrations WHERE version = 6;
"""
)
AS_THE_FOURTH_MIGRATION_LEFT_IT = (
    AS_THE_FIFTH_MIGRATION_LEFT_IT
    + """
    DROP TRIGGER entity_counts_add; DROP TRIGGER entity_counts_remove; DROP TRIGGER entity_counts_move;
    DROP TABLE entity_counts;
    DELETE FROM migrations WHERE version = 5;
"""
)
AS_THE_THIRD_MIGRATION_LEFT_IT = (
    AS_THE_FOURTH_MIGRATION_LEFT_IT
    + """
    DROP TABLE key_counts;
    CREATE TABLE keys_v3 (type TEXT NOT NULL, field TEXT NOT NULL, value ANY NOT NULL, id TEXT NOT NULL,
                          uniq INTEGER NOT NULL, live INTEGER NOT NULL);
    INSERT INTO keys_v3 SELECT type, field, value, id, uniq, live FROM entity_keys;
    DROP TABLE entity_keys;
    ALTER TABLE keys_v3 RENAME TO entity_keys;
    CREATE INDEX entity_keys_lookup ON entity_keys (type, field, value, live);
    CREATE INDEX entity_keys_by_id ON entity_keys (id, field, value);
    CREATE UNIQUE INDEX entity_keys_unique ON entity_keys (type, field, value) WHERE uniq = 1 AND live = 1;
    DELETE FROM meta WHERE key LIKE 'derived:%';
    DELETE FROM migrations WHERE version = 4;
"""
)
AS_THE_SECOND_MIGRATION_LEFT_IT = (
    AS_THE_THIRD_MIGRATION_LEFT_IT
    + """
    DROP INDEX entities_by_type_live_updated;
    CREATE INDEX entities_by_type_live_updated ON entities (type, deleted_at, updated_at);
    DROP INDEX entity_keys_lookup; CREATE INDEX entity_keys_lookup ON entity_keys (type, field, value);
    DROP INDEX entity_keys_by_id; CREATE INDEX entity_keys_by_id ON entity_keys (id);
    DELETE FROM migrations WHERE version = 3;
"""
)


def old_tenant_file(tmp_path: Path, schemas: SchemaSet, as_left: str = AS_THE_SECOND_MIGRATION_LEFT_IT) -> Path:
    """A tenant file with Organizations (one updated later, one deleted), as an older version left it."""
    with Store(tmp_path / "data", schemas) as s:
        ids = [
            s.do(TENANT, AGENT, {"action": "create", "type": "Organization", "data": data})["entity"]["$id"]
            for data in (
                {"name": "Acme", "industry": "Software"},
                {"name": "Globex", "industry": "Software"},
                {"name": "Initech", "industry": "Software"},
            )
        ]
        s.do(TENANT, AGENT, {"action": "update", "type": "Organization", "id": ids[0], "data": {"name": "Acme Inc"}})
        s.do(TENANT, AGENT, {"action": "delete", "type": "Organization", "id": ids[1]})
    path = tmp_path / "data" / "tenants" / f"{TENANT}.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(as_left)
    return path


def migration_versions(path: Path) -> list[int]:
    with closing(sqlite3.connect(path)) as conn:
        return [r[0] for r in conn.execute("SELECT version FROM migrations ORDER BY version")]


def test_a_database_from_before_the_key_count_indexes_gets_them_on_open(tmp_path: Path, schemas: SchemaSet) -> None:
    path = old_tenant_file(tmp_path, schemas)

    with Store(tmp_path / "data", schemas) as s:
        page = s.find(TENANT, "Organization", filter={"industry": "Software"})
    with closing(sqlite3.connect(path)) as conn:
        columns = [r[0] for r in conn.execute("SELECT name FROM pragma_index_info('entity_keys_lookup')")]

    assert columns == ["type", "field", "value", "live", "updated_at", "id"]
    assert migration_versions(path) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [e["name"] for e in page["results"]] == ["Acme Inc", "Initech"] and page["total"] == 2


def test_a_database_from_before_key_counts_gets_its_keys_dated_and_counted_on_open(
    tmp_path: Path, schemas: SchemaSet
) -> None:
    path = old_tenant_file(tmp_path, schemas, AS_THE_THIRD_MIGRATION_LEFT_IT)

    with Store(tmp_path / "data", schemas) as s:
        live = s.find(TENANT, "Organization", filter={"industry": "Software"}, limit=1)
        rest = s.find(TENANT, "Organization", filter={"industry": "Software"}, cursor=live["cursor"])
        everyone = s.find(TENANT, "Organization", filter={"industry": "Software"}, include_deleted=True)
        report = s.verify(TENANT)
    with closing(sqlite3.connect(path)) as conn:
        counts = conn.execute("SELECT field, value, live, n FROM key_counts ORDER BY live").fetchall()

    assert migration_versions(path) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert counts == [("industry", "Software", 0, 1), ("industry", "Software", 1, 2)]
    assert [e["name"] for e in live["results"] + rest["results"]] == ["Acme Inc", "Initech"]
    assert (live["total"], everyone["total"]) == (2, 3)
    assert report["ok"], report["problems"]


def test_a_key_that_an_older_file_stored_as_a_number_is_read_again_as_written(
    tmp_path: Path, schemas: SchemaSet
) -> None:
    with Store(tmp_path / "data", schemas) as s:
        for name, industry in [("Zeros", "007"), ("Seven", "7")]:
            s.do(
                TENANT,
                AGENT,
                {"action": "create", "type": "Organization", "data": {"name": name, "industry": industry}},
            )
    path = tmp_path / "data" / "tenants" / f"{TENANT}.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(AS_THE_THIRD_MIGRATION_LEFT_IT)
        before = conn.execute(
            "SELECT value, typeof(value) FROM entity_keys WHERE field = 'industry' ORDER BY 1"
        ).fetchall()

    with Store(tmp_path / "data", schemas) as s:
        zeros = s.find(TENANT, "Organization", filter={"industry": "007"})
        seven = s.find(TENANT, "Organization", filter={"industry": "7"})
        report = s.verify(TENANT)
    with closing(sqlite3.connect(path)) as conn:
        after = conn.execute(
            "SELECT value, typeof(value) FROM entity_keys WHERE field = 'industry' ORDER BY 1"
        ).fetchall()

    assert before == [(7, "integer"), (7, "integer")]  # what the NUMERIC affinity of `value ANY` did
    assert after == [("007", "text"), ("7", "text")]
    assert [e["name"] for e in zeros["results"]] == ["Zeros"] and zeros["total"] == 1
    assert [e["name"] for e in seven["results"]] == ["Seven"] and seven["total"] == 1
    assert report["ok"], report["problems"]


def migrate_at_once(conns: list[sqlite3.Connection]) -> list[BaseException]:
    """`migrate` on every connection, each in its own thread, all released together; what they raised."""
    start = threading.Barrier(len(conns))
    errors: list[BaseException] = []

    def run(conn: sqlite3.Connection) -> None:
        start.wait()
        try:
            migrate(conn)
        except BaseException as exc:  # the test reports whatever a loser raised
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_two_connections_migrating_an_old_file_at_once_apply_each_migration_once(
    tmp_path: Path, schemas: SchemaSet
) -> None:
    path = old_tenant_file(tmp_path, schemas)
    for _ in range(10):
        conns = [connect(path), connect(path)]
        try:
            errors = migrate_at_once(conns)
        finally:
            for c in conns:
                c.close()

        assert errors == []
        assert migration_versions(path) == [1, 2, 3, 4, 5, 6, 7, 8]
        with closing(sqlite3.connect(path)) as conn:
            conn.executescript(AS_THE_SECOND_MIGRATION_LEFT_IT)


def test_a_database_from_before_entity_counts_gets_them_on_open(tmp_path: Path, schemas: SchemaSet) -> None:
    path = old_tenant_file(tmp_path, schemas, AS_THE_FOURTH_MIGRATION_LEFT_IT)

    with Store(tmp_path / "data", schemas) as s:
        live = s.find(TENANT, "Organization")
        everyone = s.find(TENANT, "Organization", include_deleted=True)
        report = s.verify(TENANT)
    with closing(sqlite3.connect(path)) as conn:
        counts = conn.execute("SELECT type, live, n FROM entity_counts ORDER BY live").fetchall()

    assert migration_versions(path) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert counts == [("Organization", 0, 1), ("Organization", 1, 2)]
    assert (live["total"], everyone["total"]) == (2, 3)
    assert report["ok"], report["problems"]


def test_a_database_from_before_the_append_only_trigger_refuses_insert_or_replace_after_open(
    tmp_path: Path, schemas: SchemaSet
) -> None:
    path = old_tenant_file(tmp_path, schemas, AS_THE_FIFTH_MIGRATION_LEFT_IT)
    replace = (  # seq 1 again, by another actor, at a time past the last event
        "REPLACE INTO events SELECT seq, id, type, entity_type, action, target, 'agent_evil', '2030-01-01T00:00:00.000000Z', "
        "version, data, changes, state, reason, caused_by, prev_hash, hash FROM events WHERE seq = 1"
    )
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("SAVEPOINT s")
        conn.execute(replace)  # the old trigger only guarded the time order
        conn.execute("ROLLBACK TO s")

    with Store(tmp_path / "data", schemas) as s:
        assert s.verify(TENANT)["ok"] is True
    with closing(sqlite3.connect(path)) as conn:
        try:
            conn.execute(replace)
        except sqlite3.DatabaseError as exc:
            refused = str(exc)
        else:
            refused = ""
    assert "append-only" in refused
    assert migration_versions(path) == [1, 2, 3, 4, 5, 6, 7, 8]


def test_idempotency_keys_kept_before_requests_were_still_replay_and_new_ones_remember_their_request(
    tmp_path: Path, schemas: SchemaSet
) -> None:
    request = {"action": "create", "type": "Contact", "data": {"name": "Ada"}, "idempotencyKey": "k-old"}
    with Store(tmp_path / "data", schemas) as s:
        first = s.do(TENANT, AGENT, request)
    path = tmp_path / "data" / "tenants" / f"{TENANT}.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(AS_THE_SIXTH_MIGRATION_LEFT_IT)

    with Store(tmp_path / "data", schemas) as s:
        again = s.do(TENANT, AGENT, {**request, "data": {"name": "Other"}})  # not known: replays as before
        s.do(TENANT, AGENT, {**request, "idempotencyKey": "k-new"})
        with pytest.raises(ValidationFailed):
            s.do(TENANT, AGENT, {**request, "idempotencyKey": "k-new", "data": {"name": "Other"}})
    assert again["replayed"] is True and again["entity"] == first["entity"]
    assert migration_versions(path) == [1, 2, 3, 4, 5, 6, 7, 8]
