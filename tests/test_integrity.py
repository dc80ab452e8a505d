"""The log's integrity: immutable in SQL, tamper-evident, equal to its replay, ordered in time, safe under threads."""

from __future__ import annotations

import itertools
import json
import logging
import random
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import damage_the_actor_index

from server.errors import (
    Conflict,
    DamagedFile,
    HeadlesslyError,
    NotFound,
    StorageError,
    ValidationFailed,
    VersionConflict,
)
from server.schema import SchemaSet, load_schemas
from server.store import Store, verify
from server.store.events import EVENT_ROW_COLUMNS, GENESIS_HASH, EventRow, row_hash
from server.store.reindex import reindex_tenant
from server.timeutil import MAX_US

TENANT = "acme"
AGENT = "agent_mR4nVkTw"
OTHER = "user_bob"


def create(store: Store, type_: str, data: dict[str, Any], actor: str = AGENT) -> dict[str, Any]:
    entity: dict[str, Any] = store.do(TENANT, actor, {"action": "create", "type": type_, "data": data})["entity"]
    return entity


def tenant_file(store: Store) -> Path:
    with store.pool.lease(TENANT) as t:
        return Path(t.path)


@contextmanager
def raw_sql(store: Store) -> Iterator[sqlite3.Connection]:
    """Our own connection to the tenant file, as someone with shell access would open it."""
    conn = sqlite3.connect(tenant_file(store), isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def without_event_triggers(conn: sqlite3.Connection) -> Iterator[None]:
    """Tampering as a careful intruder does it: the events' triggers dropped, and put back afterwards."""
    saved = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'events'"
    ).fetchall()
    assert saved, "the events table should be guarded by triggers"
    for name, _ in saved:
        conn.execute(f'DROP TRIGGER "{name}"')
    yield
    for _, sql in saved:
        conn.execute(sql)


def small_history(store: Store, clock: Any) -> dict[str, Any]:
    org = create(store, "Organization", {"name": "Acme", "domain": "acme.com"})
    clock.advance(1)
    alice = create(store, "Contact", {"name": "Alice", "email": "alice@acme.com", "organization": org["$id"]})
    clock.advance(1)
    store.do(TENANT, AGENT, {"action": "qualify", "type": "Contact", "id": alice["$id"], "reason": "hot"})
    clock.advance(1)
    store.do(TENANT, OTHER, {"action": "update", "type": "Contact", "id": alice["$id"], "data": {"title": "CTO"}})
    return {"org": org, "alice": alice}


def all_events(store: Store, tenant: str = TENANT) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = store.events(tenant, limit=100, cursor=cursor)
        events.extend(page["results"])
        if not page["hasMore"]:
            return events
        cursor = page["cursor"]


# ---- immutability in SQL --------------------------------------------------------------------------


def test_a_direct_sql_update_of_an_event_is_refused_by_the_database(store: Store, clock: Any) -> None:
    small_history(store, clock)
    before = store.events(TENANT)["results"]
    with raw_sql(store) as conn:
        with pytest.raises(sqlite3.DatabaseError):
            conn.execute("UPDATE events SET data = '{}' WHERE seq = 2")
        with pytest.raises(sqlite3.DatabaseError):
            conn.execute("UPDATE events SET actor = 'agent_evil'")
    assert store.events(TENANT)["results"] == before
    assert store.verify(TENANT)["ok"] is True


def test_a_direct_sql_delete_of_an_event_is_refused_by_the_database(store: Store, clock: Any) -> None:
    small_history(store, clock)
    with raw_sql(store) as conn:
        with pytest.raises(sqlite3.DatabaseError):
            conn.execute("DELETE FROM events WHERE seq = 4")
        with pytest.raises(sqlite3.DatabaseError):
            conn.execute("DELETE FROM events")
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 4
    assert store.events(TENANT)["total"] == 4


COLUMNS = "seq, id, type, entity_type, action, target, actor, ts, version, data, changes, state, reason, caused_by, prev_hash, hash"


@pytest.mark.parametrize(
    "replacing",
    [
        # the same row with another actor and a later time: would rewrite seq 2 in place
        f"REPLACE INTO events ({COLUMNS}) SELECT seq, id, type, entity_type, action, target, 'agent_evil', "
        "'2030-01-01T00:00:00.000000Z', version, data, changes, state, reason, caused_by, prev_hash, hash FROM events WHERE seq = 2",
        # a new seq and time but seq 3's id: would remove seq 3
        f"INSERT OR REPLACE INTO events ({COLUMNS}) SELECT 99, id, type, entity_type, action, target, actor, "
        "'2030-01-01T00:00:00.000000Z', version, data, changes, state, reason, caused_by, prev_hash, hash FROM events WHERE seq = 3",
        # a new seq, id and time but seq 3's (target, version): would remove seq 3
        f"INSERT OR REPLACE INTO events ({COLUMNS}) SELECT 99, 'evt_forged000', type, entity_type, action, target, actor, "
        "'2030-01-01T00:00:00.000000Z', version, data, changes, state, reason, caused_by, prev_hash, hash FROM events WHERE seq = 3",
        # an older time under a new seq: would break the order of time
        f"INSERT INTO events ({COLUMNS}) SELECT 99, 'evt_forged000', type, entity_type, action, target, actor, "
        "ts, 99, data, changes, state, reason, caused_by, prev_hash, hash FROM events WHERE seq = 3",
    ],
)  # fmt: skip
def test_insert_or_replace_cannot_rewrite_or_remove_an_event(store: Store, clock: Any, replacing: str) -> None:
    small_history(store, clock)
    before = store.events(TENANT)["results"]
    with raw_sql(store) as conn, pytest.raises(sqlite3.DatabaseError):
        conn.execute(replacing)
    assert store.events(TENANT)["results"] == before
    assert store.verify(TENANT)["ok"] is True


def test_verify_fails_when_a_guard_of_the_events_is_dropped_or_replaced(store: Store, clock: Any) -> None:
    small_history(store, clock)
    with raw_sql(store) as conn:
        conn.execute("DROP TRIGGER events_refuse_delete")
        conn.execute("DROP TRIGGER events_refuse_update")
        conn.execute("CREATE TRIGGER events_refuse_update BEFORE UPDATE ON events BEGIN SELECT 1; END")
    report = store.verify(TENANT)
    assert report["ok"] is False
    assert report["problems"] == [
        "the database no longer refuses UPDATE on events: its trigger events_refuse_update is not the one the store created",
        "the database no longer refuses DELETE on events: its trigger events_refuse_delete is missing",
    ]


# ---- tamper evidence ------------------------------------------------------------------------------


def test_altering_an_event_in_the_file_makes_verify_fail_naming_the_event(store: Store, clock: Any) -> None:
    small_history(store, clock)
    victim = store.events(TENANT)["results"][2]
    assert store.verify(TENANT)["ok"] is True
    with raw_sql(store) as conn, without_event_triggers(conn):
        conn.execute(
            "UPDATE events SET data = ? WHERE id = ?", (json.dumps({"stage": "Lead -> Customer"}), victim["id"])
        )
    report = store.verify(TENANT)
    assert report["ok"] is False
    assert any(victim["id"] in p for p in report["problems"]), report["problems"]


def test_altering_an_event_actor_and_rehashing_nothing_is_detected(store: Store, clock: Any) -> None:
    small_history(store, clock)
    victim = store.events(TENANT)["results"][3]
    with raw_sql(store) as conn, without_event_triggers(conn):
        conn.execute("UPDATE events SET actor = 'agent_scapegoat' WHERE id = ?", (victim["id"],))
    report = store.verify(TENANT)
    assert report["ok"] is False
    assert any(victim["id"] in p for p in report["problems"]), report["problems"]


def test_an_entitys_versions_reordered_in_the_log_make_verify_fail_even_with_every_hash_recomputed(
    store: Store, clock: Any
) -> None:
    alice = create(store, "Contact", {"name": "Alice"})["$id"]  # seq 1, v1
    for title, seq in (("CEO", 2), ("CTO", 4)):  # v2 at seq 2, v3 at seq 4
        clock.advance(1)
        if seq == 4:
            create(store, "Contact", {"name": "Bob"})  # seq 3
            clock.advance(1)
        store.do(TENANT, AGENT, {"action": "update", "type": "Contact", "id": alice, "data": {"title": title}})
    assert store.verify(TENANT)["ok"] is True
    with raw_sql(store) as conn, without_event_triggers(conn):
        # Swap v2 and v3 between seq 2 and seq 4, each state keeping its own row's time, and make every
        # derived row and every hash agree: only the order of versions in the log is wrong now.
        a = conn.execute("SELECT version, data, changes, state FROM events WHERE seq = 2").fetchone()
        b = conn.execute("SELECT version, data, changes, state FROM events WHERE seq = 4").fetchone()
        conn.execute("UPDATE events SET version = 999 WHERE seq = 2")  # out of the way of (target, version)
        for seq, (version, data, changes, state) in ((4, a), (2, b)):
            conn.execute(
                "UPDATE events SET version = ?, data = ?, changes = ?, state = json_set(?, '$.\"$updatedAt\"', ts) WHERE seq = ?",
                (version, data, changes, state, seq),
            )
        (last,) = conn.execute("SELECT state FROM events WHERE target = ? AND version = 3", (alice,)).fetchone()
        updated_at = json.loads(last)["$updatedAt"]
        conn.execute("UPDATE entities SET state = ?, updated_at = ? WHERE id = ?", (last, updated_at, alice))
        conn.execute("UPDATE entity_keys SET updated_at = ? WHERE id = ?", (updated_at, alice))
        prev = GENESIS_HASH
        for row in conn.execute(f"SELECT {EVENT_ROW_COLUMNS} FROM events ORDER BY seq").fetchall():
            event = EventRow(*row)._replace(prev_hash=prev)
            prev = row_hash(event)
            conn.execute("UPDATE events SET prev_hash = ?, hash = ? WHERE seq = ?", (event.prev_hash, prev, event.seq))
    problems = store.verify(TENANT)["problems"]

    assert len(problems) == 1, problems  # everything else agrees: this is the one thing that tells
    assert alice in problems[0] and "v3 (seq 2) comes before its previous version" in problems[0]


def test_removing_an_event_from_the_file_makes_verify_fail(store: Store, clock: Any) -> None:
    small_history(store, clock)
    with raw_sql(store) as conn, without_event_triggers(conn):
        conn.execute("DELETE FROM events WHERE seq = 3")
    report = store.verify(TENANT)
    assert report["ok"] is False
    assert report["problems"]


def test_altering_an_entities_row_makes_verify_fail(store: Store, clock: Any) -> None:
    e = small_history(store, clock)
    with raw_sql(store) as conn:
        conn.execute(
            "UPDATE entities SET state = json_set(state, '$.name', 'Mallory') WHERE id = ?", (e["alice"]["$id"],)
        )
    report = store.verify(TENANT)
    assert report["ok"] is False
    assert any(e["alice"]["$id"] in p for p in report["problems"]), report["problems"]


def test_a_stale_entity_version_makes_verify_fail(store: Store, clock: Any) -> None:
    e = small_history(store, clock)
    with raw_sql(store) as conn:
        conn.execute("UPDATE entities SET version = 1 WHERE id = ?", (e["alice"]["$id"],))
    report = store.verify(TENANT)
    assert report["ok"] is False
    assert any(e["alice"]["$id"] in p for p in report["problems"]), report["problems"]


def test_a_deleted_entities_row_makes_verify_fail(store: Store, clock: Any) -> None:
    e = small_history(store, clock)
    with raw_sql(store) as conn:
        conn.execute("DELETE FROM entities WHERE id = ?", (e["org"]["$id"],))
    report = store.verify(TENANT)
    assert report["ok"] is False
    assert any(e["org"]["$id"] in p for p in report["problems"]), report["problems"]


def test_a_key_count_or_key_time_out_of_step_with_the_entities_makes_verify_fail(store: Store, clock: Any) -> None:
    org = store.do(TENANT, AGENT, {"action": "create", "type": "Organization", "data": {"name": "Acme", "industry": "Software"}})  # fmt: skip
    assert store.verify(TENANT)["ok"] is True
    with raw_sql(store) as conn:
        conn.execute("UPDATE key_counts SET n = 5 WHERE value = 'Software'")
        conn.execute("UPDATE entity_keys SET updated_at = '2000-01-01T00:00:00.000000Z'")
    problems = store.verify(TENANT)["problems"]

    assert any("Organization.industry = 'Software'" in p for p in problems), problems
    assert any(org["entity"]["$id"] in p and "2000-01-01" in p for p in problems), problems


def test_an_entities_row_whose_deletion_differs_from_its_state_makes_verify_fail(store: Store, clock: Any) -> None:
    org = store.do(TENANT, AGENT, {"action": "create", "type": "Organization", "data": {"name": "Acme"}})
    with raw_sql(store) as conn:
        conn.execute("UPDATE entities SET deleted_at = '2026-01-01T00:00:00.000000Z'")
    problems = store.verify(TENANT)["problems"]

    assert any(org["entity"]["$id"] in p and "differs from its state" in p for p in problems), problems


def test_an_entity_count_out_of_step_with_the_entities_makes_verify_fail(store: Store, clock: Any) -> None:
    store.do(TENANT, AGENT, {"action": "create", "type": "Organization", "data": {"name": "Acme"}})
    with raw_sql(store) as conn:
        conn.execute("UPDATE entity_counts SET n = 7 WHERE type = 'Organization'")
    problems = store.verify(TENANT)["problems"]

    assert any("count of live Organization entities" in p for p in problems), problems


def test_a_key_row_out_of_step_with_its_entitys_deletion_or_without_an_entity_makes_verify_fail(
    store: Store, clock: Any
) -> None:
    org = store.do(TENANT, AGENT, {"action": "create", "type": "Organization", "data": {"name": "Acme", "industry": "Software"}})  # fmt: skip
    org_id = org["entity"]["$id"]
    with raw_sql(store) as conn:
        conn.execute("UPDATE entity_keys SET live = 0 WHERE id = ?", (org_id,))
        conn.execute(
            "INSERT INTO entity_keys (type, field, value, id, uniq, live, updated_at) "
            "VALUES ('Organization', 'industry', 'Retail', 'organization_gone12345', 0, 1, '2026-01-01T00:00:00.000000Z')"
        )
    problems = store.verify(TENANT)["problems"]

    assert any(org_id in p and "deleted" in p for p in problems), problems
    assert any("organization_gone12345" in p and "no entity" in p for p in problems), problems


def test_a_lookup_key_that_does_not_follow_from_its_entitys_state_makes_verify_fail(store: Store, clock: Any) -> None:
    acme = create(store, "Organization", {"name": "Acme", "industry": "Software"})
    globex = create(store, "Organization", {"name": "Globex", "domain": "globex.com"})
    with raw_sql(store) as conn:
        conn.execute("UPDATE entity_keys SET value = 'Retail' WHERE id = ?", (acme["$id"],))
        conn.execute("DELETE FROM entity_keys WHERE id = ?", (globex["$id"],))
    problems = store.verify(TENANT)["problems"]

    assert any(acme["$id"] in p and "'Software' is missing" in p for p in problems), problems
    assert any(acme["$id"] in p and "'Retail' does not follow from its state" in p for p in problems), problems
    assert any(globex["$id"] in p and "'globex.com' is missing" in p for p in problems), problems


def test_full_text_that_differs_from_its_entitys_state_or_has_no_entity_makes_verify_fail(
    store: Store, clock: Any
) -> None:
    alice = create(store, "Contact", {"name": "Alice Smith"})
    with raw_sql(store) as conn:
        conn.execute("UPDATE entities_fts SET body = 'Mallory' WHERE body = 'Alice Smith'")
        conn.execute("INSERT INTO entities_fts (rowid, body) VALUES (999, 'Nobody')")
    problems = store.verify(TENANT)["problems"]

    assert any(alice["$id"] in p and "full text differs" in p for p in problems), problems
    assert any("full text row 999 has no entity" in p for p in problems), problems


def test_verify_leaves_keys_built_for_other_schemas_to_serve_and_names_their_nouns(
    tmp_path: Path, schemas: SchemaSet, clock: Any
) -> None:
    with Store(tmp_path / "data", schemas, clock=clock) as s:
        create(s, "Organization", {"name": "Acme", "industry": "Software"})
    folder = tmp_path / "other-schemas"
    folder.mkdir()
    (folder / "crm.json").write_text('{"$domain": "CRM", "Organization": {"name": "string!", "industry": "string"}}')
    other = load_schemas([folder])

    with Store(tmp_path / "data", other, clock=clock, follow_schemas=False) as s:
        report = s.verify(TENANT)

    assert report["ok"] is True, report["problems"]
    assert report["builtForOtherSchemas"] == ["Organization"]


def test_reindex_rebuilds_lookup_keys_and_full_text_from_the_states(store: Store, clock: Any) -> None:
    acme = create(store, "Organization", {"name": "Acme", "industry": "Software"})
    path = tenant_file(store)
    with raw_sql(store) as conn:
        conn.execute("UPDATE entity_keys SET value = 'Retail'")
        conn.execute("DELETE FROM entities_fts")
        conn.execute("INSERT INTO entity_keys (type, field, value, id, uniq, live, updated_at) VALUES ('Organization', 'industry', 'Mining', 'organization_gone12345', 0, 1, '2026-01-01T00:00:00.000000Z')")  # fmt: skip
    assert not store.verify(TENANT)["ok"]
    store.pool.forget(TENANT)

    rebuilt = reindex_tenant(path, store.schemas)

    report = store.verify(TENANT)
    assert "Organization" in rebuilt and "Contact" in rebuilt
    assert report["ok"] is True, report["problems"]
    assert [o["$id"] for o in store.find(TENANT, "Organization", filter={"industry": "Software"})["results"]] == [
        acme["$id"]
    ]
    assert [o["$id"] for o in store.find(TENANT, "Organization", query="acme")["results"]] == [acme["$id"]]
    assert store.find(TENANT, "Organization", filter={"industry": "Mining"})["results"] == []


def test_reindex_of_a_tenant_that_does_not_exist_is_not_found_and_creates_nothing(store: Store) -> None:
    path = store.data_dir / "tenants" / "ghost.db"

    with pytest.raises(NotFound):
        reindex_tenant(path, store.schemas)

    assert not path.exists() and store.tenants() == []


def test_reindex_is_refused_while_a_store_has_the_tenant_open_and_changes_nothing(store: Store, clock: Any) -> None:
    create(store, "Organization", {"name": "Acme", "industry": "Software"})
    with raw_sql(store) as conn:
        conn.execute("DELETE FROM entity_keys")

    with pytest.raises(Conflict) as refused:
        reindex_tenant(tenant_file(store), store.schemas)  # the store still has it open

    assert refused.value.code == "conflict"
    assert "open in another process" in refused.value.message and refused.value.hint
    assert any("'Software' is missing" in p for p in store.verify(TENANT)["problems"])


def test_reindex_is_refused_as_a_conflict_while_a_process_without_the_lock_file_has_the_tenant_open(
    store: Store, clock: Any
) -> None:
    create(store, "Organization", {"name": "Acme", "industry": "Software"})
    path = tenant_file(store)
    store.close()
    shell = sqlite3.connect(path)  # as the sqlite3 shell would: no lock file taken
    try:
        shell.execute("SELECT count(*) FROM events").fetchone()
        with pytest.raises(Conflict) as refused:
            reindex_tenant(path, store.schemas)
    finally:
        shell.close()

    assert "open in another process" in refused.value.message and refused.value.hint


def test_verify_is_ok_on_a_healthy_tenant_with_many_kinds_of_operation(store: Store, clock: Any) -> None:
    e = small_history(store, clock)
    alice = e["alice"]["$id"]
    deal = create(store, "Deal", {"name": "Pilot", "value": 100, "contact": alice})["$id"]
    for i in range(20):
        clock.advance(0.5)
        store.do(TENANT, AGENT, {"action": "update", "type": "Deal", "id": deal, "data": {"value": 100 + i}})
    store.do(TENANT, AGENT, {"action": "win", "type": "Deal", "id": deal})
    store.do(TENANT, AGENT, {"action": "rollback", "type": "Deal", "id": deal, "toVersion": 3})
    store.do(TENANT, OTHER, {"action": "delete", "type": "Contact", "id": alice})
    store.do(TENANT, AGENT, {"action": "rollback", "type": "Contact", "id": alice, "toVersion": 2})
    store.do(
        TENANT,
        AGENT,
        {"operations": [{"action": "create", "type": "Contact", "data": {"name": f"C{i}"}} for i in range(10)]},
    )
    store.do(TENANT, "user_admin", {"action": "revert", "actor": OTHER, "since": "2026-01-15", "force": True})
    with pytest.raises(HeadlesslyError):
        store.do(TENANT, AGENT, {"action": "create", "type": "Deal", "data": {"name": "broken"}})
    total = store.events(TENANT)["total"]
    report = store.verify(TENANT)
    assert report["ok"] is True, report["problems"]
    assert report["problems"] == []
    assert report["events"] == total
    assert report["entities"] == 3 + 10
    assert report["headHash"] == store.events(TENANT, sort="-seq", limit=1)["results"][0]["hash"]


def test_verify_reports_progress_through_each_pass(store: Store, clock: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    small_history(store, clock)  # 4 events
    monkeypatch.setattr(verify, "PROGRESS_EVERY", 2)
    seen: list[tuple[int, str]] = []

    store.verify(TENANT, progress=lambda n, what: seen.append((n, what)))

    assert seen == [
        (0, "checking the file's structure"),
        (2, "chained"),
        (4, "chained"),
        (2, "replayed"),
        (4, "replayed"),
    ]


@pytest.fixture
def damaged(tmp_path: Path, schemas: SchemaSet, clock: Any) -> Iterator[Store]:
    """A store over a tenant whose file was damaged while no store had it open."""
    with Store(tmp_path / "data", schemas, clock=clock) as store:
        small_history(store, clock)
        path = tenant_file(store)
    damage_the_actor_index(path)
    with Store(tmp_path / "data", schemas, clock=clock) as store:
        yield store


def test_verify_reports_a_damaged_file_as_such_and_reads_it_no_further(damaged: Store) -> None:
    report = damaged.verify(TENANT)

    assert report["ok"] is False and report["damaged"] is True
    assert report["events"] is None and report["entities"] is None
    assert report["problems"] and all(p.startswith("the database file is damaged: ") for p in report["problems"])


def test_a_read_or_write_of_a_damaged_file_is_a_storage_error_naming_the_tenant_and_the_remedy(
    damaged: Store,
) -> None:
    with pytest.raises(DamagedFile) as read:
        damaged.events(TENANT, {"actor": AGENT})
    with pytest.raises(DamagedFile) as write:
        damaged.do(TENANT, AGENT, {"action": "create", "type": "Organization", "data": {"name": "Initech"}})

    for refusal in (read.value, write.value):
        assert refusal.code == "storage_error"
        assert refusal.message.startswith(f"the database file of tenant {TENANT!r} is damaged: ")
        assert f"headlessly restore --tenant {TENANT} --overwrite" in (refusal.hint or "")
    assert (write.value.hint or "").startswith("Nothing was written.")
    assert not (read.value.hint or "").startswith("Nothing was written.")


def test_verify_of_a_tenant_that_does_not_exist_is_not_found(tmp_path: Path, store: Store) -> None:
    with pytest.raises(NotFound):
        store.verify("nobody")
    assert not (tmp_path / "data" / "tenants" / "nobody.db").exists()


# ---- state equals replay --------------------------------------------------------------------------


WRITE_KINDS = ("create", "update", "verb", "delete", "rollback", "batch")
# (kind, error code) of every refusal random_operations provokes on purpose
REFUSED_ON_PURPOSE = {
    ("create", "validation_error"),  # a duplicate email; a deal linked to a deleted contact
    ("update", "not_found"),  # of a deleted entity, as are the next three
    ("verb", "not_found"),
    ("delete", "not_found"),
    ("batch", "not_found"),
    ("batch", "validation_error"),  # a Deal without value
    ("rollback", "validation_error"),  # bringing back a duplicate email or a link to a deleted contact
}


def random_operations(store: Store, clock: Any, rng: random.Random, steps: int) -> Counter[tuple[str, str]]:
    """Create, update, verb, delete, rollback and batch at random, some of them refused on purpose.

    The helper keeps what it needs to foresee each outcome: which entities are deleted, each
    entity's versions (deleted or not), the email of each contact and the contact of each deal.
    A write it foresees refused (a duplicate email, a deal linked to a deleted contact, a write to a
    deleted entity, a rollback that would bring back a duplicate email or a dangling link, a batch
    with a Deal without value) must be refused with that error; any other write must succeed, so an
    unforeseen refusal fails the test. Returns how often each (kind, "ok" or error code) happened."""
    ids: dict[str, list[str]] = {"Contact": [], "Organization": [], "Deal": []}
    versions: dict[str, list[bool]] = {}  # each entity's versions: deleted after it or not
    deleted: set[str] = set()
    email_of: dict[str, str] = {}
    contact_of: dict[str, str] = {}
    outcomes: Counter[tuple[str, str]] = Counter()
    actors = [AGENT, OTHER, "system_sync"]

    def email_taken(email: str | None, me: str | None) -> bool:
        return email is not None and any(c != me and c not in deleted and e == email for c, e in email_of.items())

    def record(entity: dict[str, Any]) -> None:
        history = versions.setdefault(entity["$id"], [])
        if entity["$version"] == len(history) + 1:  # not an update that changed nothing
            history.append("$deletedAt" in entity)
        assert entity["$version"] == len(history), entity
        (deleted.add if "$deletedAt" in entity else deleted.discard)(entity["$id"])

    def attempt(kind: str, actor: str, op: dict[str, Any], refusal: type[HeadlesslyError] | None) -> Any:
        if refusal is not None:
            with pytest.raises(refusal) as refused:
                store.do(TENANT, actor, op)
            outcomes[kind, refused.value.code] += 1
            return None
        result = store.do(TENANT, actor, op)  # an unforeseen refusal propagates and fails the test
        for one in result.get("results", [result]):
            record(one["entity"])
        outcomes[kind, "ok"] += 1
        return result

    for step in range(steps):
        clock.advance(rng.choice([0, 0, 0.000001, 0.5, 3, -2]))
        actor = rng.choice(actors)
        kind = rng.random()
        if kind < 0.25 or not any(ids.values()):
            noun = rng.choice(list(ids))
            data: dict[str, Any] = {"name": f"{noun} {step}"}
            if noun == "Deal":
                data["value"] = rng.randint(0, 10_000)
                if ids["Contact"] and rng.random() < 0.5:
                    data["contact"] = rng.choice(ids["Contact"])
            if noun == "Contact" and rng.random() < 0.5:
                data["email"] = f"person{rng.randint(0, 30)}@example.com"
            clash = email_taken(data.get("email"), None) or data.get("contact") in deleted
            op: dict[str, Any] = {"action": "create", "type": noun, "data": data}
            made = attempt("create", actor, op, ValidationFailed if clash else None)
            if made is not None:
                new_id = made["entity"]["$id"]
                ids[noun].append(new_id)
                if "email" in data:
                    email_of[new_id] = data["email"]
                if "contact" in data:
                    contact_of[new_id] = data["contact"]
            continue
        noun = rng.choice([n for n in ids if ids[n]])
        target = rng.choice(ids[noun])
        gone = NotFound if target in deleted else None  # only a rollback may touch a deleted entity
        if kind < 0.55:
            patch: dict[str, Any] = {
                "Contact": {"title": rng.choice(["CEO", "CTO", None]), "phone": rng.choice(["+1", None])},
                "Organization": {"industry": rng.choice(["SaaS", "Retail", None]), "employeeCount": rng.randint(1, 9)},
                "Deal": {"value": rng.choice([1, 2.5, 1000]), "closedAt": rng.choice(["2026-02-01T00:00:00Z", None])},
            }[noun]
            attempt("update", actor, {"action": "update", "type": noun, "id": target, "data": patch}, gone)
        elif kind < 0.7:
            verb = {"Contact": ["qualify", "capture", "enrich"], "Organization": ["enrich", "churn"], "Deal": ["win", "lose", "advance", "reopen"]}[noun]  # fmt: skip
            attempt("verb", actor, {"action": rng.choice(verb), "type": noun, "id": target}, gone)
        elif kind < 0.8:
            attempt("delete", actor, {"action": "delete", "type": noun, "id": target}, gone)
        elif kind < 0.92:
            version = rng.randint(1, len(versions[target]))
            brought_back = target in deleted and not versions[target][version - 1]
            clash = email_taken(email_of.get(target), target) or contact_of.get(target) in deleted
            op = {"action": "rollback", "type": noun, "id": target, "toVersion": version}
            attempt("rollback", actor, op, ValidationFailed if brought_back and clash else None)
        else:
            ops = [
                {"action": "create", "type": "Organization", "data": {"name": f"Batch {step}"}},
                {"action": "update", "type": noun, "id": target, "data": {"name": f"Renamed {step}"}},
            ]
            if rng.random() < 0.4:
                ops.append({"action": "create", "type": "Deal", "data": {"name": "no value"}})
            refusal = gone or (ValidationFailed if len(ops) == 3 else None)  # operations[1] fails before [2]
            result = attempt("batch", actor, {"operations": ops}, refusal)
            if result is not None:
                ids["Organization"].append(result["results"][0]["entity"]["$id"])
    return outcomes


def fold(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each entity's fields and meta rebuilt from its events alone (our own replay, not the store's)."""
    out: dict[str, dict[str, Any]] = {}
    for event in events:
        target = event["target"]
        entity = out.setdefault(target, {"fields": {}, "createdAt": event["timestamp"], "createdBy": event["actor"]})
        for key, change in event["changes"].items():
            if key.startswith("$"):
                continue
            if change["to"] is None:
                entity["fields"].pop(key, None)
            else:
                entity["fields"][key] = change["to"]
        entity.update(version=event["version"], updatedAt=event["timestamp"], updatedBy=event["actor"])
        entity["type"] = event["type"].split(".")[0]
        entity["deleted"] = event["type"].endswith(".Deleted")
        entity.setdefault("history", []).append((event["version"], dict(entity["fields"])))
    return out


def test_state_always_equals_the_replay_of_the_log(store: Store, clock: Any) -> None:
    outcomes = random_operations(store, clock, random.Random(112), 250)  # a seed that provokes every refusal
    # every kind of write succeeded, and the refusals foreseen on purpose did happen (and left no trace)
    assert {kind for kind, outcome in outcomes if outcome == "ok"} == set(WRITE_KINDS), outcomes
    assert {(kind, outcome) for kind, outcome in outcomes if outcome != "ok"} == REFUSED_ON_PURPOSE, outcomes
    events = all_events(store)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    replayed = fold(events)
    for noun in ("Contact", "Organization", "Deal"):
        found: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = store.find(TENANT, noun, include_deleted=True, limit=100, cursor=cursor)
            found.extend(page["results"])
            if not page["hasMore"]:
                break
            cursor = page["cursor"]
        assert {e["$id"] for e in found} == {i for i, r in replayed.items() if r["type"] == noun}
        for entity in found:
            r = replayed[entity["$id"]]
            assert {k: v for k, v in entity.items() if not k.startswith("$")} == r["fields"]
            assert entity["$version"] == r["version"]
            assert entity["$createdAt"] == r["createdAt"]
            assert entity["$createdBy"] == r["createdBy"]
            assert entity["$updatedAt"] == r["updatedAt"]
            assert entity["$updatedBy"] == r["updatedBy"]
            if r["deleted"]:
                assert entity["$deletedAt"] == r["updatedAt"]
            for version, fields in r["history"]:
                past = store.get(TENANT, noun, entity["$id"], version=version)
                assert {k: v for k, v in past.items() if not k.startswith("$")} == fields
    report = store.verify(TENANT)
    assert report["ok"] is True, report["problems"]
    assert report["events"] == len(events)
    assert report["entities"] == len(replayed)


# ---- time -----------------------------------------------------------------------------------------


def test_timestamps_strictly_increase_when_the_clock_stands_still(store: Store, clock: Any) -> None:
    alice = create(store, "Contact", {"name": "Alice"})
    for i in range(5):
        store.do(TENANT, AGENT, {"action": "update", "type": "Contact", "id": alice["$id"], "data": {"title": f"T{i}"}})
    stamps = [e["timestamp"] for e in all_events(store)]
    assert len(stamps) == 6
    assert all(a < b for a, b in itertools.pairwise(stamps))
    assert stamps[0] == "2026-01-15T10:00:00.000000Z"


def test_timestamps_strictly_increase_when_the_clock_goes_backwards(store: Store, clock: Any) -> None:
    alice = create(store, "Contact", {"name": "Alice"})
    clock.advance(-3600)
    store.do(TENANT, AGENT, {"action": "qualify", "type": "Contact", "id": alice["$id"]})
    clock.advance(-86400)
    create(store, "Organization", {"name": "Acme"})
    stamps = [e["timestamp"] for e in all_events(store)]
    assert all(a < b for a, b in itertools.pairwise(stamps))
    assert stamps[0] == "2026-01-15T10:00:00.000000Z"
    # every event's own timestamp is still a precise asOf point
    assert store.get(TENANT, "Contact", alice["$id"], as_of=stamps[0])["stage"] == "Lead"
    assert store.get(TENANT, "Contact", alice["$id"], as_of=stamps[1])["stage"] == "Qualified"
    assert store.verify(TENANT)["ok"] is True


def test_events_stamped_ahead_of_a_clock_that_stepped_back_are_logged(
    store: Store, clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    create(store, "Contact", {"name": "Alice"})
    with caplog.at_level(logging.WARNING, logger="server.store.writer"):
        clock.advance(-0.5)  # within a second: two writes in one microsecond do this all the time
        create(store, "Contact", {"name": "Bob"})
        assert "behind" not in caplog.text
        clock.advance(-30)
        create(store, "Contact", {"name": "Carol"})
    assert "tenant acme: the clock is 30.500 s behind the last event's time" in caplog.text


def test_a_write_that_would_be_stamped_after_year_9999_is_a_storage_error_and_writes_nothing(
    store: Store, clock: Any
) -> None:
    clock.now = MAX_US  # 9999-12-31T23:59:59.999999Z: the last time the log can hold
    last = create(store, "Contact", {"name": "Alice"})
    assert last["$createdAt"] == "9999-12-31T23:59:59.999999Z"
    with pytest.raises(StorageError) as refused:
        create(store, "Contact", {"name": "Bob"})
    assert "after 9999-12-31T23:59:59.999999Z" in refused.value.message and "clock" in refused.value.hint
    assert len(all_events(store)) == 1
    assert store.verify(TENANT)["ok"] is True


def test_timestamps_keep_increasing_across_a_restart_with_a_clock_behind(
    tmp_path: Path, store: Store, schemas: SchemaSet, clock: Any
) -> None:
    create(store, "Contact", {"name": "Alice"})
    clock.advance(60)
    create(store, "Contact", {"name": "Bob"})
    last = all_events(store)[-1]["timestamp"]
    store.close()
    behind = clock.now - 3_600_000_000
    with Store(tmp_path / "data", schemas, clock=lambda: behind) as reopened:
        carol = create(reopened, "Contact", {"name": "Carol"})
        assert carol["$createdAt"] > last
        assert reopened.verify(TENANT)["ok"] is True


# ---- concurrency ----------------------------------------------------------------------------------


def run_threads(n: int, work: Callable[[int], None]) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def run(k: int) -> None:
        try:
            barrier.wait(timeout=10)
            work(k)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a writer thread hung"
    assert errors == []


def test_concurrent_read_modify_write_increments_with_if_version_lose_no_update(store: Store) -> None:
    deal = create(store, "Deal", {"name": "Counter", "value": 0})["$id"]
    threads, per_thread = 8, 15
    conflicts: list[int] = []

    def work(k: int) -> None:
        actor = f"agent_worker{k}"
        for _ in range(per_thread):
            for _attempt in range(10_000):
                current = store.get(TENANT, "Deal", deal)
                try:
                    store.do(
                        TENANT,
                        actor,
                        {
                            "action": "update",
                            "type": "Deal",
                            "id": deal,
                            "data": {"value": current["value"] + 1},
                            "ifVersion": current["$version"],
                        },
                    )
                    break
                except VersionConflict as exc:
                    assert exc.details["currentVersion"] > current["$version"]
                    conflicts.append(k)
            else:
                raise AssertionError("no progress after 10000 attempts")

    run_threads(threads, work)
    total = threads * per_thread
    final = store.get(TENANT, "Deal", deal)
    assert final["value"] == total
    assert final["$version"] == total + 1
    history = [e for e in all_events(store) if e["target"] == deal]
    assert [e["version"] for e in history] == list(range(1, total + 2))
    assert [e["changes"]["value"]["to"] for e in history[1:]] == list(range(1, total + 1))
    assert store.verify(TENANT)["ok"] is True


def test_concurrent_writers_on_distinct_entities_all_succeed(store: Store) -> None:
    threads, updates = 8, 10
    made: dict[int, str] = {}

    def work(k: int) -> None:
        actor = f"agent_worker{k}"
        entity = store.do(TENANT, actor, {"action": "create", "type": "Contact", "data": {"name": f"W{k}"}})["entity"]
        made[k] = entity["$id"]
        for i in range(updates):
            store.do(
                TENANT,
                actor,
                {
                    "action": "update",
                    "type": "Contact",
                    "id": entity["$id"],
                    "data": {"title": f"v{i}"},
                    "ifVersion": i + 1,
                },
            )

    run_threads(threads, work)
    assert len(made) == threads
    for k, entity_id in made.items():
        entity = store.get(TENANT, "Contact", entity_id)
        assert entity["$version"] == updates + 1
        assert entity["title"] == f"v{updates - 1}"
        assert entity["$updatedBy"] == f"agent_worker{k}"
    events = all_events(store)
    assert [e["seq"] for e in events] == list(range(1, threads * (updates + 1) + 1))
    stamps = [e["timestamp"] for e in events]
    assert all(a < b for a, b in itertools.pairwise(stamps))
    assert store.verify(TENANT)["ok"] is True


def test_concurrent_writers_to_different_tenants_all_succeed(store: Store) -> None:
    def work(k: int) -> None:
        for i in range(5):
            store.do(f"tenant-{k}", AGENT, {"action": "create", "type": "Contact", "data": {"name": f"C{i}"}})

    run_threads(8, work)
    assert store.tenants() == sorted(f"tenant-{k}" for k in range(8))
    for k in range(8):
        assert store.events(f"tenant-{k}")["total"] == 5
        assert store.verify(f"tenant-{k}")["ok"] is True


# ---- durability -----------------------------------------------------------------------------------


def test_durability_full_writes_and_survives_a_reopen(tmp_path: Path, schemas: SchemaSet, clock: Any) -> None:
    with Store(tmp_path / "full", schemas, durability="full", clock=clock) as store:
        alice = create(store, "Contact", {"name": "Alice"})
        store.do(TENANT, AGENT, {"action": "qualify", "type": "Contact", "id": alice["$id"]})
        with store.pool.lease(TENANT) as t, t.reader() as conn:
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with Store(tmp_path / "full", schemas, durability="full", clock=clock) as reopened:
        again = reopened.get(TENANT, "Contact", alice["$id"])
        assert again["stage"] == "Qualified"
        assert again["$version"] == 2
        assert reopened.verify(TENANT)["ok"] is True


def test_an_unknown_durability_is_refused(tmp_path: Path, schemas: SchemaSet) -> None:
    with pytest.raises(ValueError):
        Store(tmp_path / "x", schemas, durability="sometimes")


def test_everything_survives_closing_and_reopening_the_store(
    tmp_path: Path, store: Store, schemas: SchemaSet, clock: Any
) -> None:
    e = small_history(store, clock)
    before = all_events(store)
    alice = store.get(TENANT, "Contact", e["alice"]["$id"])
    store.close()
    with Store(tmp_path / "data", schemas, clock=clock) as reopened:
        assert all_events(reopened) == before
        assert reopened.get(TENANT, "Contact", alice["$id"]) == alice
        clock.advance(1)
        more = reopened.do(
            TENANT, AGENT, {"action": "update", "type": "Contact", "id": alice["$id"], "data": {"phone": "1"}}
        )
        assert more["events"][0]["seq"] == len(before) + 1
        assert reopened.verify(TENANT)["ok"] is True


def test_two_stores_on_one_tenant_file_both_keep_writing(tmp_path: Path, schemas: SchemaSet, clock: Any) -> None:
    """Two servers on one data dir (two agent sessions): each sees the other's commits before writing."""
    with Store(tmp_path / "shared", schemas, clock=clock) as a, Store(tmp_path / "shared", schemas, clock=clock) as b:
        deal = a.do(TENANT, AGENT, {"action": "create", "type": "Deal", "data": {"name": "D", "value": 1}})["entity"]
        for value in range(2, 8):
            writer = a if value % 2 else b
            clock.advance(1)
            writer.do(TENANT, AGENT, {"action": "update", "type": "Deal", "id": deal["$id"], "data": {"value": value}})
        final = a.get(TENANT, "Deal", deal["$id"])
        assert (final["value"], final["$version"]) == (7, 7)
        seqs = [e["seq"] for e in b.events(TENANT, limit=100)["results"]]
        assert seqs == list(range(1, 8))
        assert a.verify(TENANT)["ok"] is True
