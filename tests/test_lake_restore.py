"""Restoring a tenant from the Iceberg table `headlessly.events` (CONTRACT §11): the rebuilt database has
every event, hash and entity of the original, continues its chain, and guards the tenant it would replace.

The restored store lives in a fresh data dir whose pyiceberg configuration (PYICEBERG_CATALOG__HEADLESSLY__*)
names the original's catalog, as an operator restoring on another machine would configure it."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pyiceberg.catalog
import pytest
from conftest import held_open
from pyiceberg.utils.config import Config

from server.config import private_dir
from server.errors import HeadlesslyError, ValidationFailed
from server.lake import catalog as cat
from server.lake import restore as restore_module
from server.lake.flusher import Flusher
from server.lake.restore import check_tenant, read_tenant, restore_tenant
from server.lake.scan import CHUNK, TenantRows
from server.schema import SchemaSet
from server.store import Store
from server.store.events import GENESIS_HASH, chain_hash
from server.store.filelock import TenantLock
from server.store.tenants import tenant_path

TENANT = "acme"
ACTOR = "agent_lake"
HUMAN = "user_dana"
NOUNS = ("Organization", "Contact", "Deal")


pytestmark = pytest.mark.usefixtures("no_pyiceberg_config")


def use_the_lake_of(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Configure pyiceberg's `headlessly` catalog (environment variables) as the one under `data_dir`."""
    for key, value in cat.catalog_properties(data_dir).items():
        monkeypatch.setenv(f"PYICEBERG_CATALOG__HEADLESSLY__{key.upper()}", value)
    monkeypatch.setattr(pyiceberg.catalog, "_ENV_CONFIG", Config())  # pyiceberg reads its environment at import


# ---- a history worth restoring --------------------------------------------------------------------


class History:
    """Writes into one tenant of a store, a little later every time (odd microseconds)."""

    def __init__(self, store: Store, clock: Any, tenant: str = TENANT) -> None:
        self.store, self.clock, self.tenant = store, clock, tenant

    def do(self, request: dict[str, Any], actor: str = ACTOR, caused_by: str | None = None) -> dict[str, Any]:
        self.clock.advance(61.000007)
        result: dict[str, Any] = self.store.do(self.tenant, actor, request, caused_by=caused_by)
        return result

    def create(self, type_: str, data: dict[str, Any], **extra: Any) -> str:
        entity_id: str = self.do({"action": "create", "type": type_, "data": data, **extra})["entity"]["$id"]
        return entity_id


def write_history(store: Store, clock: Any) -> dict[str, str]:
    """Creates, updates with reasons, verbs, a caused event, a rollback and a delete across three nouns."""
    h = History(store, clock)
    org = h.create("Organization", {"name": "Acme Corp", "domain": "acme.com", "industry": "Software"})
    alice = h.create(
        "Contact", {"name": "Alice Smith", "email": "alice@acme.com", "title": "Head of Sales", "organization": org}
    )
    bob = h.create("Contact", {"name": "Bob Stone", "email": "bob@globex.com", "title": "Sales Engineer"})
    carol = h.create("Contact", {"name": "Carol Jones", "email": "carol@initech.com"}, reason="met at the fair")
    h.do({"action": "update", "type": "Contact", "id": alice, "data": {"title": "Chief Revenue Officer"}, "reason": "promoted"})  # fmt: skip
    qualified = h.do({"action": "qualify", "type": "Contact", "id": alice}, actor=HUMAN)["events"][0]["id"]
    deal = h.create("Deal", {"name": "Acme renewal", "value": 12000.5, "contact": alice, "organization": org})
    h.do({"action": "update", "type": "Deal", "id": deal, "data": {"stage": "Negotiation"}}, caused_by=qualified)
    h.do({"action": "win", "type": "Deal", "id": deal}, actor=HUMAN)
    h.do({"action": "update", "type": "Contact", "id": bob, "data": {"email": "bob@stone.dev", "phone": "+1 555 0100"}})
    h.do({"action": "update", "type": "Organization", "id": org, "data": {"industry": "Retail", "employeeCount": 120}})
    h.do({"action": "rollback", "type": "Organization", "id": org, "toVersion": 1})
    h.do({"action": "delete", "type": "Contact", "id": carol}, actor=HUMAN)
    return {"org": org, "alice": alice, "bob": bob, "carol": carol, "deal": deal}


def entity_ids(store: Store, tenant: str = TENANT) -> dict[str, list[str]]:
    found = {n: store.find(tenant, n, include_deleted=True, limit=100)["results"] for n in NOUNS}
    return {n: sorted(e["$id"] for e in results) for n, results in found.items()}


def get_or_error(store: Store, noun: str, entity_id: str) -> Any:
    """A read's entity, or its error's code and message: restored reads must fail the way originals do."""
    try:
        return store.get(TENANT, noun, entity_id)
    except HeadlesslyError as exc:
        return {"error": exc.code, "message": exc.message}


@pytest.fixture
def original(store: Store, clock: Any) -> dict[str, str]:
    """The store fixture with a history in `acme` (and a little in `beta`), flushed to the lake."""
    ids = write_history(store, clock)
    History(store, clock, "beta").create("Contact", {"name": "Someone Else"})
    assert Flusher(store).flush().tenants == {TENANT: store.head(TENANT)[0], "beta": 1}
    return ids


@pytest.fixture
def fresh(
    tmp_path: Path,
    store: Store,
    original: dict[str, str],
    schemas: SchemaSet,
    clock: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Store]:
    """An empty store in another data dir, configured to use the original's lake."""
    use_the_lake_of(store.data_dir, monkeypatch)
    with Store(tmp_path / "restored", schemas, clock=clock) as s:
        yield s


def log_of(store: Store, tenant: str = TENANT) -> list[Any]:
    return store.log(tenant, 0, 1_000_000)


# ---- restoring ------------------------------------------------------------------------------------


def test_a_restored_tenant_has_every_event_and_hash_of_the_original(store: Store, fresh: Store) -> None:
    seen: list[tuple[int, int]] = []

    restored = restore_tenant(fresh, TENANT, progress=lambda done, total: seen.append((done, total)))

    n = store.head(TENANT)[0]
    assert restored == n == 13
    assert seen[-1] == (n, n)
    assert log_of(fresh) == log_of(store)  # every column of every event, hashes included, as recorded
    assert fresh.head(TENANT) == store.head(TENANT)
    assert fresh.events(TENANT, limit=100)["results"] == store.events(TENANT, limit=100)["results"]
    report = fresh.verify(TENANT)
    assert report["ok"] is True and report["problems"] == []
    assert report["headHash"] == store.verify(TENANT)["headHash"] == store.head(TENANT)[1]
    assert (report["events"], report["entities"]) == (13, 5)
    assert fresh.tenants() == [TENANT]  # only the tenant asked for
    assert not (fresh.data_dir / "lakehouse").exists()  # read from the configured catalog, not a local one


def test_a_restored_tenant_has_every_entity_of_the_original_live_deleted_and_past(
    store: Store, fresh: Store, original: dict[str, str]
) -> None:
    restore_tenant(fresh, TENANT)

    ids = entity_ids(store)
    assert entity_ids(fresh) == ids
    assert sum(len(v) for v in ids.values()) == 5
    for noun in NOUNS:
        assert fresh.find(TENANT, noun, include_deleted=True, limit=100) == store.find(
            TENANT, noun, include_deleted=True, limit=100
        )
        assert fresh.find(TENANT, noun, limit=100) == store.find(TENANT, noun, limit=100)
        for entity_id in ids[noun]:
            assert get_or_error(fresh, noun, entity_id) == get_or_error(store, noun, entity_id)
            assert fresh.get(TENANT, noun, entity_id, version=1) == store.get(TENANT, noun, entity_id, version=1)
    carol = get_or_error(fresh, "Contact", original["carol"])
    assert carol["error"] == "not_found"
    alice = fresh.get(TENANT, "Contact", original["alice"], include=["organization"])
    assert alice == store.get(TENANT, "Contact", original["alice"], include=["organization"])
    assert alice["stage"] == "Qualified" and alice["organization"]["$id"] == original["org"]
    created = next(e for e in log_of(store) if e.target == original["alice"]).ts
    assert fresh.get(TENANT, "Contact", original["alice"], as_of=created)["title"] == "Head of Sales"


def test_writing_after_a_restore_continues_the_hash_chain_and_the_lake(
    store: Store, fresh: Store, original: dict[str, str], clock: Any
) -> None:
    restore_tenant(fresh, TENANT)
    head_seq, head_hash = store.head(TENANT)

    clock.advance(5)
    result = fresh.do(TENANT, ACTOR, {"action": "update", "type": "Contact", "id": original["bob"], "data": {"title": "CTO"}})  # fmt: skip
    fresh.do(TENANT, ACTOR, {"action": "create", "type": "Contact", "data": {"name": "Dan New"}})

    event = result["events"][0]
    assert event["seq"] == head_seq + 1
    assert event["version"] == store.get(TENANT, "Contact", original["bob"])["$version"] + 1
    nxt = log_of(fresh)[head_seq]
    assert (nxt.seq, nxt.prev_hash) == (head_seq + 1, head_hash)
    assert fresh.head(TENANT)[0] == head_seq + 2
    assert fresh.verify(TENANT)["ok"] is True

    report = Flusher(fresh).flush(tenants=[TENANT])  # the restored tenant carries on in the same table

    table = cat.events_table(cat.load(fresh.data_dir))
    assert report.tenants == {TENANT: 2}
    assert cat.watermark(table, TENANT) == fresh.head(TENANT)
    assert check_tenant(fresh, table, TENANT) == []


def test_restore_refuses_a_tenant_that_already_has_events(store: Store, original: dict[str, str]) -> None:
    head = store.head(TENANT)

    with pytest.raises(HeadlesslyError) as exc:
        restore_tenant(store, TENANT)

    assert exc.value.code == "conflict"
    assert exc.value.hint
    assert store.head(TENANT) == head
    assert sorted(p.name for p in (store.data_dir / "tenants").iterdir() if ".replaced-" in p.name) == []
    assert store.verify(TENANT)["ok"] is True


def test_restore_with_overwrite_replaces_the_tenant_and_keeps_the_old_file_aside(
    store: Store, fresh: Store, clock: Any
) -> None:
    other = History(fresh, clock)
    for i in range(3):  # another history under the same tenant name
        other.create("Contact", {"name": f"Stranger {i}"})
    stranger_head = fresh.head(TENANT)
    with pytest.raises(HeadlesslyError) as exc:
        restore_tenant(fresh, TENANT)
    assert exc.value.code == "conflict"

    restored = restore_tenant(fresh, TENANT, overwrite=True)

    assert restored == store.head(TENANT)[0]
    assert log_of(fresh) == log_of(store)
    assert fresh.verify(TENANT)["ok"] is True
    assert fresh.tenants() == [TENANT]
    kept = [
        p for p in (fresh.data_dir / "tenants").glob(f"{TENANT}.db.replaced-*") if not p.name.endswith(("-wal", "-shm"))
    ]
    assert len(kept) == 1
    with closing(sqlite3.connect(kept[0])) as old:
        names = [row[0] for row in old.execute("SELECT json_extract(state, '$.name') FROM events ORDER BY seq")]
        last = old.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
    assert names == ["Stranger 0", "Stranger 1", "Stranger 2"]
    assert tuple(last) == stranger_head


def test_two_restores_in_one_second_keep_both_replaced_files(
    store: Store, fresh: Store, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(restore_module.time, "strftime", lambda *_: "20260101T000000")  # one second for both
    History(fresh, clock).create("Contact", {"name": "Only here"})  # not in the lake: kept only aside
    restore_tenant(fresh, TENANT, overwrite=True)
    restore_tenant(fresh, TENANT, overwrite=True)

    aside = sorted(p.name for p in (fresh.data_dir / "tenants").glob(f"{TENANT}.db.replaced-*"))
    assert aside == [f"{TENANT}.db.replaced-20260101T000000", f"{TENANT}.db.replaced-20260101T000000-2"]
    with closing(sqlite3.connect(fresh.data_dir / "tenants" / aside[0])) as first:
        names = [r[0] for r in first.execute("SELECT json_extract(state, '$.name') FROM events")]
    assert names == ["Only here"]


def test_a_restore_while_another_restores_the_tenant_says_so(store: Store, fresh: Store, clock: Any) -> None:
    path = tenant_path(fresh.data_dir, TENANT)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = TenantLock(path)  # as another process's restore holds it
    try:
        assert lock.try_exclusive("restore")
        with pytest.raises(HeadlesslyError) as exc:
            restore_tenant(fresh, TENANT, overwrite=True)
    finally:
        lock.release()
    assert exc.value.code == "conflict"
    assert "is being restored (`headlessly restore`), so it cannot be restored now" in exc.value.message
    assert [p.name for p in path.parent.iterdir()] == [f"{TENANT}.db-lock"]  # the lock file it found stays


def test_an_overwrite_restore_is_refused_while_another_process_has_the_tenant_open(
    store: Store, fresh: Store, clock: Any
) -> None:
    other = History(fresh, clock)
    other.create("Contact", {"name": "Stranger"})
    head = fresh.head(TENANT)
    path = tenant_path(fresh.data_dir, TENANT)
    with held_open(path), pytest.raises(HeadlesslyError) as exc:
        restore_tenant(fresh, TENANT, overwrite=True)

    assert exc.value.code == "conflict"
    assert "another process" in exc.value.message and exc.value.hint
    assert fresh.head(TENANT) == head
    assert [p.name for p in path.parent.iterdir() if ".replaced-" in p.name or ".restoring-" in p.name] == []
    assert restore_tenant(fresh, TENANT, overwrite=True) == store.head(TENANT)[0]  # once it has let go


def a_tenant_file_of_strangers(fresh: Store, clock: Any) -> Path:
    """`fresh`'s tenant with a history of its own (not the lake's), closed: a file of ~40 KB to damage."""
    other = History(fresh, clock)
    for i in range(3):
        other.create("Contact", {"name": f"Stranger {i}"})
    fresh.pool.forget(TENANT)  # (the last connection folds the WAL into the file and deletes it)
    path = tenant_path(fresh.data_dir, TENANT)
    assert path.stat().st_size > 20_000
    return path


def set_aside(fresh: Store) -> list[Path]:
    return [
        p for p in (fresh.data_dir / "tenants").glob(f"{TENANT}.db.replaced-*") if not p.name.endswith(("-wal", "-shm"))
    ]


@pytest.mark.parametrize("size", [100, 1024, 2048, 20_000])
def test_an_overwrite_restore_sets_a_truncated_file_aside_and_rebuilds_the_tenant(
    store: Store, fresh: Store, clock: Any, size: int
) -> None:
    path = a_tenant_file_of_strangers(fresh, clock)
    os.truncate(path, size)
    cut = path.read_bytes()

    restored = restore_tenant(fresh, TENANT, overwrite=True)

    assert restored == store.head(TENANT)[0]
    assert log_of(fresh) == log_of(store)
    assert fresh.verify(TENANT)["ok"] is True
    kept = set_aside(fresh)
    assert len(kept) == 1 and kept[0].read_bytes() == cut  # the damaged file, as it was


def test_a_restore_without_overwrite_refuses_a_truncated_file_as_damaged_and_leaves_it_as_it_was(
    store: Store, fresh: Store, clock: Any
) -> None:
    path = a_tenant_file_of_strangers(fresh, clock)
    os.truncate(path, 20_000)

    with pytest.raises(HeadlesslyError) as exc:
        restore_tenant(fresh, TENANT)

    assert "the database file of tenant 'acme' is damaged" in exc.value.message
    assert "--overwrite" in exc.value.hint and "set aside" in exc.value.hint
    assert path.stat().st_size == 20_000
    assert set_aside(fresh) == []


def test_a_restore_refused_for_a_tenant_that_has_events_leaves_its_folder_as_it_was(
    store: Store, fresh: Store, clock: Any
) -> None:
    path = a_tenant_file_of_strangers(fresh, clock)
    before = sorted(p.name for p in path.parent.iterdir())

    with pytest.raises(HeadlesslyError) as exc:
        restore_tenant(fresh, TENANT)

    assert "already has events" in exc.value.message
    assert sorted(p.name for p in path.parent.iterdir()) == before  # (no -wal or -shm left by its look inside)


def test_an_overwrite_restore_refuses_a_file_damaged_while_another_process_has_it_open(
    store: Store, fresh: Store, clock: Any
) -> None:
    """SQLite says "not a database" for an overwritten header before it tries its locks: the locks are looked
    at without it, and the file is not moved from under the process that has it open."""
    path = a_tenant_file_of_strangers(fresh, clock)
    with held_open(path):
        with path.open("r+b") as file:
            file.write(b"x" * 100)  # the header
        with pytest.raises(HeadlesslyError) as exc:
            restore_tenant(fresh, TENANT, overwrite=True)
        assert exc.value.code == "conflict" and "another process" in exc.value.message
        assert set_aside(fresh) == []

    assert restore_tenant(fresh, TENANT, overwrite=True) == store.head(TENANT)[0]  # once it has let go
    assert len(set_aside(fresh)) == 1


def test_a_restore_refuses_an_empty_tenant_file_without_overwrite_and_sets_it_aside_with_it(
    store: Store, fresh: Store, clock: Any
) -> None:
    path = a_tenant_file_of_strangers(fresh, clock)
    os.truncate(path, 0)

    with pytest.raises(HeadlesslyError) as exc:
        restore_tenant(fresh, TENANT)
    assert "is empty: it holds no database" in exc.value.message and "--overwrite" in exc.value.hint
    assert path.stat().st_size == 0  # read, not written
    assert sorted(p.name for p in path.parent.iterdir()) == [f"{TENANT}.db", f"{TENANT}.db-lock"]

    assert restore_tenant(fresh, TENANT, overwrite=True) == store.head(TENANT)[0]
    assert [p.stat().st_size for p in set_aside(fresh)] == [0]


def test_no_store_can_open_a_tenant_while_it_is_being_restored_and_all_see_the_restored_one_after(
    store: Store, fresh: Store, schemas: SchemaSet, clock: Any
) -> None:
    History(fresh, clock).create("Contact", {"name": "Stranger"})  # the file the restore will set aside
    refusals: list[HeadlesslyError] = []

    with Store(fresh.data_dir, schemas, clock=clock) as server:  # like a second process on the data dir

        def meanwhile(done: int, total: int) -> None:
            if refusals:
                return
            with pytest.raises(HeadlesslyError) as refused:
                server.do(TENANT, ACTOR, {"action": "create", "type": "Contact", "data": {"name": "Lost?"}})
            refusals.append(refused.value)

        restored = restore_tenant(fresh, TENANT, overwrite=True, progress=meanwhile)
        after = server.head(TENANT)
        names = [c["name"] for c in server.find(TENANT, "Contact", include_deleted=True, limit=100)["results"]]

    assert [(e.code, "being restored" in e.message, bool(e.hint)) for e in refusals] == [("storage_error", True, True)]
    assert after == store.head(TENANT) and restored == after[0]
    assert sorted(names) == ["Alice Smith", "Bob Stone", "Carol Jones"]


def test_another_process_can_neither_open_nor_create_a_tenant_while_it_is_being_restored(
    store: Store, fresh: Store
) -> None:
    outcome: list[str] = []

    def meanwhile(done: int, total: int) -> None:
        if outcome:
            return
        probe = (
            "import sys\nfrom server.store import Store\nfrom server.errors import HeadlesslyError\n"
            'try:\n    with Store(sys.argv[1]) as s: print(s.find(sys.argv[2], "Contact"))\n'
            "except HeadlesslyError as e: print(e.code, e.message)\n"
        )
        run = subprocess.run(
            [sys.executable, "-c", probe, str(fresh.data_dir), TENANT], capture_output=True, text=True, timeout=60
        )
        outcome.append(run.stdout.strip() or run.stderr)

    restore_tenant(fresh, TENANT, progress=meanwhile)

    assert len(outcome) == 1 and outcome[0].startswith("storage_error") and "being restored" in outcome[0]
    assert fresh.head(TENANT) == store.head(TENANT)


def test_an_overwrite_restore_that_cannot_restore_leaves_the_live_tenant_in_place(fresh: Store, clock: Any) -> None:
    live = History(fresh, clock, "gamma")  # a tenant the table has never seen
    live.create("Contact", {"name": "Still Here"})
    head = fresh.head("gamma")

    with pytest.raises(ValidationFailed):
        restore_tenant(fresh, "gamma", overwrite=True)

    assert fresh.tenants() == ["gamma"]
    assert fresh.head("gamma") == head
    assert [e["name"] for e in fresh.find("gamma", "Contact")["results"]] == ["Still Here"]


def test_restore_into_a_tenant_file_with_no_events_needs_no_overwrite(store: Store, fresh: Store) -> None:
    with fresh.pool.lease(TENANT):  # the tenant's database exists but has no events
        pass
    assert fresh.pool.exists(TENANT)

    assert restore_tenant(fresh, TENANT) == store.head(TENANT)[0]
    assert log_of(fresh) == log_of(store)


def test_restored_full_text_search_finds_the_latest_state_only(store: Store, fresh: Store) -> None:
    restore_tenant(fresh, TENANT)

    def names(s: Store, query: str, include_deleted: bool = False) -> set[str]:
        found = s.find(TENANT, "Contact", query=query, include_deleted=include_deleted, limit=100)["results"]
        return {e["name"] for e in found}

    assert names(fresh, "revenue") == {"Alice Smith"}  # her title after the update
    assert names(fresh, "sales") == {"Bob Stone"}  # not Alice: "Head of Sales" was replaced
    assert names(fresh, "stone.dev") == {"Bob Stone"}
    assert names(fresh, "globex") == set()
    assert names(fresh, "carol") == set()  # deleted
    assert names(fresh, "acme") == {"Alice Smith"}
    for query in ("revenue", "sales", "globex", "carol", "acme", "smith"):
        assert names(fresh, query) == names(store, query), query
        assert names(fresh, query, True) == names(store, query, True), query
    orgs = fresh.find(TENANT, "Organization", query="software", limit=100)["results"]
    assert [o["name"] for o in orgs] == ["Acme Corp"]  # the rollback brought "Software" back


def test_restored_unique_fields_are_enforced_and_freed_values_are_free(
    fresh: Store, original: dict[str, str], clock: Any
) -> None:
    restore_tenant(fresh, TENANT)
    h = History(fresh, clock)

    with pytest.raises(ValidationFailed) as taken:
        h.create("Contact", {"name": "Alice Again", "email": "alice@acme.com"})
    assert original["alice"] in taken.value.message
    with pytest.raises(ValidationFailed) as moved:
        h.create("Contact", {"name": "Bob Again", "email": "bob@stone.dev"})
    assert original["bob"] in moved.value.message
    with pytest.raises(ValidationFailed) as domain:
        h.create("Organization", {"name": "Acme Again", "domain": "acme.com"})
    assert original["org"] in domain.value.message

    assert h.create("Contact", {"name": "New Bob", "email": "bob@globex.com"})  # freed by Bob's update
    assert h.create("Contact", {"name": "New Carol", "email": "carol@initech.com"})  # freed by Carol's delete
    assert fresh.verify(TENANT)["ok"] is True


def test_restoring_a_tenant_the_table_does_not_have_is_refused_and_creates_nothing(
    fresh: Store,
) -> None:
    with pytest.raises(ValidationFailed) as exc:
        restore_tenant(fresh, "nobody")

    assert "nobody" in exc.value.message
    assert fresh.tenants() == []
    assert not fresh.pool.exists("nobody")


def test_restoring_from_a_catalog_without_the_events_table_is_refused_and_creates_none(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyiceberg.catalog.sql import SqlCatalog

    empty = tmp_path / "empty"
    (empty / "lakehouse" / "warehouse").mkdir(parents=True)
    catalog = SqlCatalog(cat.CATALOG, **cat.catalog_properties(empty))  # its own tables, no namespace or table
    use_the_lake_of(empty, monkeypatch)

    with pytest.raises(ValidationFailed) as exc:
        restore_tenant(store, TENANT)

    assert catalog.list_namespaces() == []
    assert "no events table" in exc.value.message


def lose_the_last_event(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return []


def replace_the_last_event(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    last = dict(rows[-1], actor="agent_mallory")
    last["hash"] = digest(last)  # intact in itself and chained to seq 12: only the watermark tells
    return [last]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lose_the_last_event, "holds 12 events of tenant 'acme' (up to seq 12), but its watermark records 13"),
        (replace_the_last_event, "event at seq 13 of tenant 'acme' has another hash than the watermark records"),
    ],
)
def test_restore_refuses_a_table_that_lost_the_tenants_last_events_and_creates_nothing(
    store: Store, fresh: Store, change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]], problem: str
) -> None:
    import pyiceberg.expressions as ex

    table = cat.events_table(cat.load(store.data_dir))
    head = store.head(TENANT)
    assert head[0] == 13 and cat.watermark(table, TENANT) == head
    arrow = read_tenant(table, TENANT)
    table.delete(ex.And(ex.EqualTo("tenant", TENANT), ex.EqualTo("seq", 13)))
    if put_back := change(arrow.to_pylist()):
        table.append(pa.Table.from_pylist(put_back, schema=arrow.schema))
    assert read_tenant(table, TENANT).num_rows == 13 - (not put_back)
    assert cat.watermark(table, TENANT) == head  # the watermark still says 13 were flushed

    with pytest.raises(ValidationFailed) as exc:
        restore_tenant(fresh, TENANT)

    assert problem in exc.value.message
    assert exc.value.hint and "Nothing was restored" in exc.value.hint
    assert fresh.tenants() == [] and not fresh.pool.exists(TENANT)
    tenants = fresh.data_dir / "tenants"
    assert not tenants.exists() or list(tenants.iterdir()) == []
    assert restore_tenant(fresh, "beta") == 1  # the other tenant's events are whole: it is restored


def test_a_restore_larger_than_one_chunk_is_complete(
    tmp_path: Path, store: Store, schemas: SchemaSet, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for b in range(26):  # 5,200 events: more than one restore chunk (5,000)
        ops = [
            {"action": "create", "type": "Contact", "data": {"name": f"P{b}-{i}", "email": f"p{b}-{i}@x.io"}}
            for i in range(200)
        ]
        clock.advance(1)
        store.do(TENANT, ACTOR, {"operations": ops})
    Flusher(store).flush()
    use_the_lake_of(store.data_dir, monkeypatch)
    seen: list[tuple[Any, ...]] = []

    with Store(tmp_path / "restored", schemas, clock=clock) as fresh:
        restored = restore_tenant(
            fresh,
            TENANT,
            progress=lambda done, total: seen.append((done, total)),
            indexing=lambda: seen.append(("indexing",)),
        )

        assert restored == 5200
        assert CHUNK < 5200 and len(seen) >= 3 and seen[-2:] == [(5200, 5200), ("indexing",)]
        assert fresh.head(TENANT) == store.head(TENANT)
        assert log_of(fresh) == log_of(store)
        assert fresh.verify(TENANT)["ok"] is True
        with pytest.raises(ValidationFailed):
            fresh.do(TENANT, ACTOR, {"action": "create", "type": "Contact", "data": {"name": "X", "email": "p25-199@x.io"}})  # fmt: skip


_KILLED_WRITER = """
import os, sys
from server.store import Store
store = Store(sys.argv[1])
store.do("acme", "agent_lake", {"action": "create", "type": "Contact", "data": {"name": "Written, then killed"}})
os.kill(os.getpid(), 9)
"""


def a_database_with_its_last_write_only_in_its_wal(path: Path) -> None:
    """`path` and its -wal as a process killed after a commit leaves them (the row is in the -wal alone)."""
    scratch = path.with_name("scratch.db")
    with closing(sqlite3.connect(scratch)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE kept (note TEXT)")
        conn.execute("INSERT INTO kept VALUES ('only in the wal')")
        conn.commit()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").write_bytes(Path(f"{scratch}{suffix}").read_bytes())
    scratch.unlink()


def test_a_restore_removes_what_killed_restores_left_and_sets_the_old_file_aside_without_its_wal_or_shm(
    store: Store, fresh: Store, clock: Any
) -> None:
    History(fresh, clock).create("Contact", {"name": "Stranger"})
    fresh.pool.forget(TENANT)
    subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(fresh.data_dir)], timeout=60)
    tenants = fresh.data_dir / "tenants"
    assert Path(f"{tenant_path(fresh.data_dir, TENANT)}-wal").exists()  # the killed writer's, with its event
    killed = tenants / f"{TENANT}.db.restoring-20260101T000000-4242"  # a restore killed while building
    killed.write_bytes(b"\0" * 65536)
    Path(f"{killed}-journal").write_bytes(b"\0" * 512)
    not_ours = tenants / "beta.db.restoring-20260101T000000-4242"  # another tenant's: not this restore's business
    not_ours.write_bytes(b"\0" * 512)
    earlier = tenants / f"{TENANT}.db.replaced-20260101T000000"  # set aside with its -wal by an older release
    a_database_with_its_last_write_only_in_its_wal(earlier)

    assert restore_tenant(fresh, TENANT, overwrite=True) == store.head(TENANT)[0]

    left = sorted(p.name for p in tenants.iterdir())
    replaced = [name for name in left if name.startswith(f"{TENANT}.db.replaced-") and name != earlier.name]
    assert len(replaced) == 1
    assert left == sorted([f"{TENANT}.db", f"{TENANT}.db-lock", earlier.name, *replaced, not_ours.name])
    with closing(sqlite3.connect(tenants / replaced[0])) as old:
        names = [row[0] for row in old.execute("SELECT json_extract(state, '$.name') FROM events ORDER BY seq")]
    assert names == ["Stranger", "Written, then killed"]  # its WAL was in it when it was set aside
    with closing(sqlite3.connect(f"file:{earlier}?mode=ro", uri=True)) as old:
        assert old.execute("SELECT note FROM kept").fetchall() == [("only in the wal",)]
    assert log_of(fresh) == log_of(store) and fresh.verify(TENANT)["ok"] is True


# ---- the bulk load: the same database as the writer's, and a refusal of any broken log ------------


def rows_of(data_dir: Path, sql: str, tenant: str = TENANT) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(tenant_path(data_dir, tenant))) as conn:
        return [tuple(row) for row in conn.execute(sql)]


CONTENT = {  # every row the writer leaves behind, in an order independent of how it got there
    "events": "SELECT * FROM events ORDER BY seq",
    "entities": "SELECT rowid, * FROM entities ORDER BY rowid",
    "entity_keys": "SELECT type, field, value, typeof(value), id, uniq, live, updated_at FROM entity_keys ORDER BY 1, 2, 3, 5",
    "key counts": "SELECT type, field, value, typeof(value), live, n FROM key_counts ORDER BY 1, 2, 3, 5",
    "entity counts": "SELECT type, live, n FROM entity_counts WHERE n != 0 ORDER BY 1, 2",
    "full text": "SELECT rowid, body FROM entities_fts ORDER BY rowid",
    "schema": "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name",
    "migrations": "SELECT version, name FROM migrations ORDER BY version",
    "derived shapes": "SELECT key, value FROM meta WHERE key != 'cursor_secret' ORDER BY key",  # the secret is new
}


def test_a_restored_tenant_has_the_same_rows_as_the_writer_left_in_the_original(
    store: Store, original: dict[str, str], schemas: SchemaSet, tmp_path: Path, clock: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    h = History(store, clock)
    h.do({"action": "delete", "type": "Contact", "id": original["bob"]})
    h.do({"action": "rollback", "type": "Contact", "id": original["bob"], "toVersion": 2})  # undeleted
    h.do({"action": "update", "type": "Contact", "id": original["alice"], "data": {"email": "alice@acme.io", "title": None}})  # fmt: skip
    h.create("Organization", {"name": "Initech", "domain": "initech.com", "industry": "Software"})
    Flusher(store).flush()
    use_the_lake_of(store.data_dir, monkeypatch)

    with Store(tmp_path / "restored", schemas, clock=clock) as fresh:
        restore_tenant(fresh, TENANT)

        for name, sql in CONTENT.items():
            assert rows_of(fresh.data_dir, sql) == rows_of(store.data_dir, sql), name
        unique = "SELECT field, value, live FROM entity_keys WHERE uniq = 1 ORDER BY value"
        assert rows_of(fresh.data_dir, unique) == [
            ("domain", "acme.com", 1), ("email", "alice@acme.io", 1), ("email", "bob@stone.dev", 1),
            ("email", "carol@initech.com", 0), ("domain", "initech.com", 1),
        ]  # fmt: skip
        assert sorted(p.name for p in (fresh.data_dir / "tenants").iterdir()) == [f"{TENANT}.db", f"{TENANT}.db-lock"]
        assert fresh.verify(TENANT)["ok"] is True
        found = fresh.find(TENANT, "Organization", filter={"industry": "Software"}, query="acme")["results"]
        assert [o["$id"] for o in found] == [original["org"]]
        assert fresh.find(TENANT, "Contact", query="stone")["results"][0]["$id"] == original["bob"]
        later = History(fresh, clock)
        assert later.create("Contact", {"name": "Al", "email": "alice@acme.com"})  # freed by Alice's update
        with pytest.raises(ValidationFailed):
            later.create("Contact", {"name": "Al", "email": "alice@acme.io"})
        assert fresh.verify(TENANT)["ok"] is True
        conn = sqlite3.connect(tenant_path(fresh.data_dir, TENANT))
        with closing(conn), pytest.raises(sqlite3.IntegrityError, match="immutable"):
            conn.execute("UPDATE events SET actor = 'agent_x' WHERE seq = 1")


FORGED = "forged"


def ts_text(row: dict[str, Any]) -> str:
    return str(row["timestamp"].strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


def digest(row: dict[str, Any]) -> str:
    return chain_hash(
        row["prev_hash"], row["seq"], row["id"], row["type"], row["target"], row["actor"], ts_text(row),
        row["version"], row["data"], row["changes"], row["state"], row["reason"], row["caused_by"],
    )  # fmt: skip


def rehash(rows: list[dict[str, Any]], start: int) -> None:
    """Re-chain rows[start:] so that each event is intact and chained: only the forgery itself is wrong."""
    for i in range(start, len(rows)):
        rows[i]["prev_hash"] = rows[i - 1]["hash"] if i else GENESIS_HASH
        rows[i]["hash"] = digest(rows[i])


def forge(store: Store, change: Callable[[list[dict[str, Any]]], None], files: int = 1) -> None:
    """Append to the table a copy of the original tenant's rows, as tenant `forged`, after `change`;
    with several files, row i goes to file i % files."""
    table = cat.events_table(cat.load(store.data_dir))
    arrow = read_tenant(table, TENANT)
    rows = arrow.to_pylist()
    for row in rows:
        row["tenant"] = FORGED
    change(rows)
    for i in reversed(range(files)):
        table.append(pa.Table.from_pylist(rows[i::files], schema=arrow.schema))


def a_gap(rows: list[dict[str, Any]]) -> None:
    del rows[6]


def a_broken_chain(rows: list[dict[str, Any]]) -> None:
    rows[6]["prev_hash"] = rows[4]["hash"]
    rows[6]["hash"] = digest(rows[6])  # seq 7 intact in itself, and the rest chained to it
    rehash(rows, 7)


def an_altered_event(rows: list[dict[str, Any]]) -> None:
    rows[6]["actor"] = "agent_mallory"


def another_entity_type(rows: list[dict[str, Any]]) -> None:
    rows[6]["entity_type"] = "Invoice"  # (not hashed: derived from the type, which is)


def a_timestamp_that_does_not_move_forward(rows: list[dict[str, Any]]) -> None:
    rows[6]["timestamp"] = rows[5]["timestamp"]
    rehash(rows, 6)


def a_duplicate_event_id(rows: list[dict[str, Any]]) -> None:
    rows[6]["id"] = rows[5]["id"]
    rehash(rows, 6)


@pytest.mark.parametrize(
    ("forgery", "problem"),
    [
        (a_gap, "(seq 8) comes after seq 6: the log has a gap"),
        (a_broken_chain, "(seq 7) does not chain to the hash of seq 6"),
        (an_altered_event, "(seq 7) was altered"),
        (another_entity_type, "(seq 7) was altered: its entity_type 'Invoice' is not the noun of its type"),
        (a_timestamp_that_does_not_move_forward, "(seq 7) has timestamp"),
        (a_duplicate_event_id, "two events with the same id"),
    ],
)
def test_restore_refuses_a_broken_log_and_leaves_the_live_tenant_in_place(
    store: Store, fresh: Store, clock: Any, forgery: Callable[[list[dict[str, Any]]], None], problem: str
) -> None:
    forge(store, forgery)
    History(fresh, clock, FORGED).create("Contact", {"name": "Still Here", "email": "here@x.io"})
    head = fresh.head(FORGED)

    with pytest.raises(ValidationFailed) as exc:
        restore_tenant(fresh, FORGED, overwrite=True)

    assert problem in exc.value.message
    assert exc.value.hint
    files = {p.name for p in (fresh.data_dir / "tenants").iterdir()}
    assert f"{FORGED}.db" in files and files <= {
        f"{FORGED}.db",
        f"{FORGED}.db-wal",
        f"{FORGED}.db-shm",
        f"{FORGED}.db-lock",
    }
    assert fresh.head(FORGED) == head
    assert [e["name"] for e in fresh.find(FORGED, "Contact")["results"]] == ["Still Here"]
    assert fresh.verify(FORGED)["ok"] is True


def test_a_tenant_whose_files_interleave_is_restored_in_seq_order(store: Store, fresh: Store) -> None:
    forge(store, lambda rows: None, files=2)  # odd seqs in one file, even seqs in the other
    table = cat.events_table(cat.load(store.data_dir))

    assert read_tenant(table, FORGED).column("seq").to_pylist() == list(range(1, 14))
    assert restore_tenant(fresh, FORGED) == 13
    assert log_of(fresh, FORGED) == log_of(store)
    assert fresh.verify(FORGED)["ok"] is True


def test_restore_refuses_a_log_whose_latest_states_share_a_unique_value(
    store: Store, fresh: Store, original: dict[str, str]
) -> None:
    def bob_takes_alices_email(rows: list[dict[str, Any]]) -> None:
        last = max(i for i, r in enumerate(rows) if r["target"] == original["bob"])
        rows[last]["state"] = rows[last]["state"].replace("bob@stone.dev", "alice@acme.com")
        rehash(rows, last)

    forge(store, bob_takes_alices_email)

    with pytest.raises(ValidationFailed) as exc:
        restore_tenant(fresh, FORGED)

    assert "Contact.email must be unique" in exc.value.message
    assert original["alice"] in exc.value.message and original["bob"] in exc.value.message
    assert fresh.tenants() == []
    assert not fresh.data_dir.exists()  # it made the data dir, its tenants/ and the lock file: all gone


def test_a_restore_refused_for_a_broken_chain_leaves_no_data_dir_tenants_folder_or_lock_file_behind(
    store: Store, fresh: Store
) -> None:
    forge(store, a_broken_chain)
    assert not fresh.data_dir.exists()

    with pytest.raises(ValidationFailed) as exc:
        restore_tenant(fresh, FORGED)

    assert "(seq 7) does not chain to the hash of seq 6" in exc.value.message
    assert not fresh.data_dir.exists()


def test_a_restore_refused_in_an_existing_data_dir_removes_the_lock_file_it_made_and_nothing_it_found(
    store: Store, original: dict[str, str]
) -> None:
    forge(store, a_broken_chain)
    tenants = store.data_dir / "tenants"
    before = sorted(p.name for p in tenants.iterdir())

    with pytest.raises(ValidationFailed):
        restore_tenant(store, FORGED)

    assert sorted(p.name for p in tenants.iterdir()) == before
    assert f"{FORGED}.db-lock" not in before and f"{TENANT}.db-lock" in before


def test_a_refused_restore_keeps_the_folders_another_process_wrote_into_meanwhile(
    store: Store, fresh: Store, original: dict[str, str]
) -> None:
    def bob_takes_alices_email(rows: list[dict[str, Any]]) -> None:  # refused once the log is in: at indexing
        last = max(i for i, r in enumerate(rows) if r["target"] == original["bob"])
        rows[last]["state"] = rows[last]["state"].replace("bob@stone.dev", "alice@acme.com")
        rehash(rows, last)

    forge(store, bob_takes_alices_email)
    note = fresh.data_dir / "tenants" / "note.txt"

    with pytest.raises(ValidationFailed):
        restore_tenant(fresh, FORGED, indexing=lambda: note.write_text("another process's"))

    assert [p.name for p in note.parent.iterdir()] == ["note.txt"]  # the lock file it made is gone
    assert note.read_text() == "another process's"


def test_a_lock_file_opened_before_a_refused_restore_deleted_it_still_keeps_out_the_next_restore(
    tmp_path: Path,
) -> None:
    path = tmp_path / f"{TENANT}.db"
    restoring = TenantLock(path)
    assert restoring.made and restoring.try_exclusive("restore")
    opening = TenantLock(path)  # a server opening the tenant meanwhile: it waits for the restore
    restoring.discard()
    assert not Path(f"{path}-lock").exists()

    assert opening.try_share()  # the server goes on, holding the lock file the path names now
    later = TenantLock(path)
    try:
        assert not later.try_exclusive("restore")
        assert Path(f"{path}-lock").exists()
    finally:
        opening.release()
        later.release()


_LOOK_AT_THE_LOCK = (
    "import sys\nfrom pathlib import Path\nfrom server.store.filelock import TenantLock\n"
    "lock = TenantLock(Path(sys.argv[1]))\nprint('taken' if lock.try_share() else lock.activity())\n"
)


def test_another_process_opening_the_lock_file_a_restore_just_made_finds_the_restore_already_holding_it(
    store: Store, fresh: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []

    def made_then_looked_at(db_path: Path, *args: Any, **kwargs: Any) -> TenantLock:
        lock = TenantLock(db_path, *args, **kwargs)  # the lock file is there; the restore has not taken it yet
        look = [sys.executable, "-c", _LOOK_AT_THE_LOCK, str(db_path)]  # a server opening the tenant just now
        run = subprocess.run(look, capture_output=True, text=True, timeout=60)
        seen.append(run.stdout.strip() or run.stderr)
        return lock

    monkeypatch.setattr(restore_module, "TenantLock", made_then_looked_at)
    restored = restore_tenant(fresh, TENANT)

    assert seen == ["being restored (`headlessly restore`)"]  # not 'taken': it cannot get in first
    assert restored == store.head(TENANT)[0]


def test_a_restore_refused_at_the_lock_removes_a_lock_file_and_folders_it_made_as_the_holder_let_go(
    store: Store, fresh: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tenant_path(fresh.data_dir, TENANT)
    theirs = private_dir(path.parent)  # another restore into this missing data dir, holding the lock file it made
    other = TenantLock(path)
    assert other.made and other.try_exclusive("restore")
    share = TenantLock.try_share
    let_go: list[bool] = []

    def the_holder_is_refused_first(lock: TenantLock) -> bool:  # as the restore looks who holds the tenant
        if not let_go:  # the other restore is refused (a broken chain): it removes what it made
            let_go.append(True)
            other.discard()
            for folder in reversed(theirs):
                folder.rmdir()
        return share(lock)  # (it finds its lock file deleted, and makes the folders and the file again)

    monkeypatch.setattr(TenantLock, "try_share", the_holder_is_refused_first)
    with pytest.raises(HeadlesslyError) as refused:
        restore_tenant(fresh, TENANT)

    assert let_go and refused.value.code == "conflict"
    assert not fresh.data_dir.exists()


def test_discarding_a_lock_file_another_process_took_first_leaves_it_to_them(tmp_path: Path) -> None:
    path = tmp_path / f"{TENANT}.db"
    mine = TenantLock(path)  # made, not yet taken (as where there are no hard links to make it held)
    theirs = TenantLock(path)  # a server opening the tenant in between
    assert mine.made and theirs.try_share()

    mine.discard()

    later = TenantLock(path)
    try:
        assert Path(f"{path}-lock").exists()
        assert not later.try_exclusive("restore"), "the server's lock file still keeps out a restore"
    finally:
        theirs.release()
        later.release()


def test_a_restore_deletes_the_lock_file_half_made_by_a_restore_killed_while_making_it(
    store: Store, fresh: Store
) -> None:
    tenants = fresh.data_dir / "tenants"
    tenants.mkdir(parents=True)
    half_made = tenants / f"{TENANT}.db-lock.making-4242-0badf00d"
    half_made.write_text("restore")

    restore_tenant(fresh, TENANT)

    assert sorted(p.name for p in tenants.iterdir() if ".db-lock" in p.name) == [f"{TENANT}.db-lock"]


def test_a_restore_makes_its_lock_file_where_the_file_system_has_no_hard_links(
    store: Store, fresh: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_hard_links(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")  # as a FAT file system says

    monkeypatch.setattr(os, "link", no_hard_links)
    restored = restore_tenant(fresh, TENANT)

    assert restored == store.head(TENANT)[0]
    assert sorted(p.name for p in (fresh.data_dir / "tenants").iterdir() if ".db-lock" in p.name) == [
        f"{TENANT}.db-lock"
    ]


def test_restore_keeps_entities_of_a_noun_its_schemas_no_longer_define_as_the_live_file_does(
    store: Store, original: dict[str, str], schemas: SchemaSet, tmp_path: Path, clock: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    use_the_lake_of(store.data_dir, monkeypatch)
    without_deals = SchemaSet({name: noun for name, noun in schemas.nouns.items() if name != "Deal"})
    deals = store.find(TENANT, "Deal", include_deleted=True)["results"]
    assert deals

    with Store(tmp_path / "restored", without_deals, clock=clock) as fresh:
        restore_tenant(fresh, TENANT)
        assert log_of(fresh) == log_of(store)
        report = fresh.verify(TENANT)
        assert report["ok"], report["problems"]
    # with the noun back, its entities are there and found by their words (their text is built then)
    with Store(tmp_path / "restored", schemas, clock=clock) as back:
        assert back.find(TENANT, "Deal", include_deleted=True)["results"] == deals
        word = deals[0]["name"].split()[0]
        assert deals[0]["$id"] in [
            d["$id"] for d in back.find(TENANT, "Deal", query=word, include_deleted=True)["results"]
        ]
        assert back.verify(TENANT)["ok"] is True


# ---- the table against the log --------------------------------------------------------------------


def test_check_tenant_reports_a_log_that_is_not_the_one_in_the_table(store: Store, fresh: Store, clock: Any) -> None:
    table = cat.events_table(cat.load(store.data_dir))
    assert check_tenant(store, table, TENANT) == []

    other = History(fresh, clock)
    for i in range(20):  # a different history under the same name, longer than the table's
        other.create("Contact", {"name": f"Stranger {i}"})
    differs = check_tenant(fresh, table, TENANT)
    assert differs and any("hash" in p for p in differs)

    with Store(fresh.data_dir.parent / "short", fresh.schemas, clock=clock) as short:
        History(short, clock).create("Contact", {"name": "Only One"})
        problems = check_tenant(short, table, TENANT)
    assert problems and any("log ends at" in p or "hash" in p for p in problems)


def rewrite(store: Store, change: Callable[[list[dict[str, Any]]], None]) -> Any:
    """Replace the original tenant's rows in the table (one new file, its watermark kept) by `change`d ones."""
    table = cat.events_table(cat.load(store.data_dir))
    arrow = read_tenant(table, TENANT)
    rows = arrow.to_pylist()
    change(rows)
    table.delete(f"tenant == '{TENANT}'")
    table.append(pa.Table.from_pylist(rows, schema=arrow.schema))
    return table


def a_duplicate_row_in_a_file_out_of_order(rows: list[dict[str, Any]]) -> None:
    rows.append(dict(rows[4]))
    rows.reverse()


def a_missing_row(rows: list[dict[str, Any]]) -> None:
    del rows[6]


def an_edited_row(rows: list[dict[str, Any]]) -> None:
    rows[6]["actor"] = "agent_mallory"  # its hash column still matches the log's


def an_edited_entity_type(rows: list[dict[str, Any]]) -> None:
    rows[6]["entity_type"] = "Invoice"


def an_edited_copy_of_a_row_after_it(rows: list[dict[str, Any]]) -> None:
    rows.append(dict(rows[6], actor="agent_mallory"))


def a_forged_copy_of_a_row_after_it(rows: list[dict[str, Any]]) -> None:
    forged = dict(rows[6], actor="agent_mallory")
    forged["hash"] = digest(forged)  # intact in itself: only the log tells
    rows.append(forged)


@pytest.mark.parametrize(
    ("change", "problems"),
    [
        (a_duplicate_row_in_a_file_out_of_order, ["lake: tenant acme has duplicate rows (1 extra)"]),
        (
            a_missing_row,
            [
                "lake: tenant acme has gaps (missing seq [7]...)",
                "lake: tenant acme seq 7: the table's hash differs from the log's",
            ],
        ),
        (
            an_edited_row,
            [
                "lake: tenant acme seq 7: the table's row was altered (its content does not give its hash, or its entity_type is not its type's noun)"
            ],
        ),
        (
            an_edited_entity_type,
            [
                "lake: tenant acme seq 7: the table's row was altered (its content does not give its hash, or its "
                "entity_type is not its type's noun)"
            ],
        ),
        (
            an_edited_copy_of_a_row_after_it,
            [
                "lake: tenant acme has duplicate rows (1 extra)",
                "lake: tenant acme seq 7: the table's row was altered (its content does not give its hash, or its entity_type is not its type's noun)",
            ],
        ),
        (
            a_forged_copy_of_a_row_after_it,
            [
                "lake: tenant acme has duplicate rows (1 extra)",
                "lake: tenant acme seq 7: the table's hash differs from the log's",
            ],
        ),
    ],
)
def test_check_tenant_names_each_row_the_table_lost_doubled_or_altered(
    store: Store, original: dict[str, str], change: Callable[[list[dict[str, Any]]], None], problems: list[str]
) -> None:
    table = rewrite(store, change)

    assert check_tenant(store, table, TENANT) == problems


def the_last_row_lost(rows: list[dict[str, Any]]) -> None:
    del rows[-1]


def test_check_tenant_reports_a_table_that_ends_before_its_watermark(store: Store, original: dict[str, str]) -> None:
    table = rewrite(store, the_last_row_lost)

    assert check_tenant(store, table, TENANT) == [
        "lake: tenant acme watermark is seq 13 but the table holds up to 12",
        "lake: tenant acme seq 13: the table's hash differs from the log's",
    ]


# ---- reading the table a file at a time ---------------------------------------------------------------


def forge_in_runs(store: Store, runs: list[slice]) -> list[str]:
    """The original tenant's rows appended as tenant `forged`, one file per run of seqs, in the order given;
    returns the files' paths in that order."""
    table = cat.events_table(cat.load(store.data_dir))
    arrow = read_tenant(table, TENANT)
    rows = [dict(row, tenant=FORGED) for row in arrow.to_pylist()]
    paths: list[str] = []
    for run in runs:
        table.append(pa.Table.from_pylist(rows[run], schema=arrow.schema))
        (added,) = {f.file.file_path for f in table.scan(row_filter=f"tenant == '{FORGED}'").plan_files()} - set(paths)
        paths.append(added)
    return paths


def test_a_tenant_in_several_files_is_restored_in_seq_order_a_file_at_a_time(store: Store, fresh: Store) -> None:
    forge_in_runs(store, [slice(8, None), slice(4, 8), slice(0, 4)])
    rows = TenantRows(cat.events_table(cat.load(store.data_dir)), FORGED)

    assert (rows.streamed, rows.total, rows.last_seq) == (True, 13, 13)
    assert [seq for batch in rows.batches(("seq",)) for seq in batch.column("seq").to_pylist()] == list(range(1, 14))
    assert restore_tenant(fresh, FORGED) == 13
    assert log_of(fresh, FORGED) == log_of(store)
    assert fresh.verify(FORGED)["ok"] is True


def test_reading_a_tenants_rows_opens_a_file_only_when_its_turn_comes(store: Store, original: dict[str, str]) -> None:
    later, _ = forge_in_runs(store, [slice(6, None), slice(0, 6)])
    rows = TenantRows(cat.events_table(cat.load(store.data_dir)), FORGED)
    Path(cat.local_path(later)).unlink()  # after planning: the file of seqs 7-13 is gone

    batches = rows.batches(("seq",))
    assert next(batches).column("seq").to_pylist() == [1, 2, 3, 4, 5, 6]
    with pytest.raises(FileNotFoundError):
        next(batches)


def test_a_file_whose_rows_are_out_of_order_is_restored_in_seq_order(store: Store, fresh: Store) -> None:
    forge(store, lambda rows: rows.reverse())
    table = cat.events_table(cat.load(store.data_dir))
    (task,) = list(table.scan(row_filter=f"tenant == '{FORGED}'").plan_files())
    assert pq.read_table(cat.local_path(task.file.file_path), columns=["seq"]).column("seq").to_pylist()[:2] == [13, 12]

    assert restore_tenant(fresh, FORGED) == 13
    assert log_of(fresh, FORGED) == log_of(store)


def delete_rows_as_other_engines_do(table: Any, tenant: str, positions: list[int]) -> Any:
    """Commit a position-delete file (what Trino's or Spark's merge-on-read DELETE writes on a v2 table) for
    `positions` of the tenant's one data file. pyiceberg writes deletes only by rewriting files, so its
    manifest writer is told, for this commit, that the manifest it adds holds deletes."""
    from pyiceberg.manifest import DataFile, DataFileContent, FileFormat, ManifestContent, ManifestWriterV2

    (task,) = table.scan(row_filter=f"tenant == '{tenant}'").plan_files()
    data = task.file.file_path
    path = str(Path(cat.local_path(data)).parent / "deletes-of-another-engine.parquet")
    schema = pa.schema([
        pa.field("file_path", pa.string(), nullable=False, metadata={b"PARQUET:field_id": b"2147483546"}),
        pa.field("pos", pa.int64(), nullable=False, metadata={b"PARQUET:field_id": b"2147483545"}),
    ])  # fmt: skip
    pq.write_table(pa.table({"file_path": [data] * len(positions), "pos": positions}, schema=schema), path)
    deletes = DataFile.from_args(
        content=DataFileContent.POSITION_DELETES, file_path=path, file_format=FileFormat.PARQUET,
        partition=task.file.partition, record_count=len(positions), file_size_in_bytes=Path(path).stat().st_size,
        spec_id=task.file.spec_id,
    )  # fmt: skip
    content = ManifestWriterV2.content
    ManifestWriterV2.content = lambda self: ManifestContent.DELETES  # type: ignore[method-assign]
    try:
        with table.transaction() as tx, tx.update_snapshot().fast_append() as append:
            append.append_data_file(deletes)
    finally:
        ManifestWriterV2.content = content  # type: ignore[method-assign]
    table = table.refresh()
    assert len(read_tenant(table, tenant)) == 13 - len(positions)  # pyiceberg's own read leaves them out
    return table


def the_last_event_deleted(store: Store, table: Any) -> Any:
    return delete_rows_as_other_engines_do(table, TENANT, [12])


def every_event_deleted(store: Store, table: Any) -> Any:
    return delete_rows_as_other_engines_do(table, TENANT, list(range(13)))


def a_forged_last_event(store: Store, table: Any) -> Any:
    """Seq 13 deleted row by row, and a forged seq 13 (intact in itself, chained to seq 12) appended."""
    rows = read_tenant(table, TENANT)
    forged = dict(rows.to_pylist()[-1], actor="agent_mallory")
    forged["hash"] = digest(forged)
    table = delete_rows_as_other_engines_do(table, TENANT, [12])
    table.append(pa.Table.from_pylist([forged], schema=rows.schema))
    return table.refresh()


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (the_last_event_deleted, "holds 12 events of tenant 'acme' (up to seq 12), but its watermark records 13"),
        (every_event_deleted, "holds 0 events of tenant 'acme' (up to seq 0), but its watermark records 13"),
        (a_forged_last_event, "event at seq 13 of tenant 'acme' has another hash than the watermark records"),
    ],
)
def test_restore_refuses_a_table_whose_last_events_another_engine_deleted_row_by_row(
    store: Store, fresh: Store, change: Callable[[Store, Any], Any], problem: str
) -> None:
    table = change(store, cat.events_table(cat.load(store.data_dir)))
    assert any(task.delete_files for task in table.scan(row_filter=f"tenant == '{TENANT}'").plan_files())

    with pytest.raises(ValidationFailed) as exc:
        restore_tenant(fresh, TENANT)

    assert problem in exc.value.message
    assert fresh.tenants() == [] and not fresh.pool.exists(TENANT)


def test_a_tenant_lock_whose_folder_a_refused_restore_removed_makes_it_again_and_locks(tmp_path: Path) -> None:
    from server.store.filelock import TenantLock

    db = tmp_path / "data" / "tenants" / "acme.db"
    db.parent.mkdir(parents=True)
    restoring = TenantLock(db)  # made the file, as a restore into a data dir it made does
    opening = TenantLock(db)  # a server opening the tenant meanwhile: its file is the same one
    assert restoring.try_exclusive("restore")
    restoring.discard()
    db.parent.rmdir()
    (tmp_path / "data").rmdir()

    try:
        assert opening.try_share()
        assert db.parent.is_dir() and (tmp_path / "data" / "tenants" / "acme.db-lock").exists()
        again = TenantLock(db)
        assert not again.try_exclusive("restore"), "the reopened lock file keeps out a restore"
        again.release()
    finally:
        opening.release()
