"""The pool of open tenants: a tenant's first open (migrations, a rebuild for new schemas) runs outside
the pool's lock, so it holds up only the callers of that tenant, and happens once however many ask."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import AGENT

from server.errors import StorageError
from server.store import Store, tenants
from server.store.hooks import BeforeContext, Hooks
from server.store.tenants import Tenant

WAIT = 30.0


class SlowOpen:
    """Replaces `migrate` in the pool's tenant open: opens of `name` wait until `release()`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.entered = threading.Event()
        self.released = threading.Event()
        self.calls = 0
        self.fail_next = False

    def __call__(self, conn: sqlite3.Connection) -> None:
        path = conn.execute("PRAGMA database_list").fetchone()[2]
        if Path(path).stem == self.name:
            self.calls += 1
            self.entered.set()
            assert self.released.wait(WAIT), "the test never released the slow open"
            if self.fail_next:
                self.fail_next = False
                raise sqlite3.OperationalError("disk I/O error")
        real_migrate(conn)


real_migrate = tenants.migrate


@contextmanager
def slow_open(monkeypatch: pytest.MonkeyPatch, name: str) -> Iterator[SlowOpen]:
    slow = SlowOpen(name)
    monkeypatch.setattr(tenants, "migrate", slow)
    try:
        yield slow
    finally:
        slow.released.set()


def lease_in_thread(store: Store, name: str, got: list[Tenant | BaseException]) -> threading.Thread:
    def run() -> None:
        try:
            with store.pool.lease(name) as tenant:
                got.append(tenant)
        except BaseException as exc:  # reported to the test through `got`
            got.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_tenant_slow_to_open_holds_up_only_its_own_callers(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    got: list[Tenant | BaseException] = []
    with slow_open(monkeypatch, "slow") as slow:
        opener = lease_in_thread(store, "slow", got)
        assert slow.entered.wait(WAIT)

        created = store.do("fast", AGENT, {"action": "create", "type": "Contact", "data": {"name": "Ada"}})
        still_opening = opener.is_alive()
        slow.released.set()
        opener.join(WAIT)

    assert still_opening and created["entity"]["name"] == "Ada"
    assert len(got) == 1 and isinstance(got[0], Tenant)


def test_callers_of_a_tenant_being_opened_wait_for_that_one_open(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    got: list[Tenant | BaseException] = []
    with slow_open(monkeypatch, "slow") as slow:
        first = lease_in_thread(store, "slow", got)
        assert slow.entered.wait(WAIT)
        second = lease_in_thread(store, "slow", got)
        slow.released.set()
        first.join(WAIT)
        second.join(WAIT)

    assert slow.calls == 1
    assert len(got) == 2 and got[0] is got[1] and isinstance(got[0], Tenant)


def test_a_failed_open_is_a_storage_error_and_leaves_the_tenant_to_be_opened_again(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    with slow_open(monkeypatch, "slow") as slow:
        slow.fail_next = True
        slow.released.set()
        with pytest.raises(StorageError, match=r"cannot open tenant 'slow' in .*: disk I/O error"):
            store.do("slow", AGENT, {"action": "create", "type": "Contact", "data": {"name": "Ada"}})
        created = store.do("slow", AGENT, {"action": "create", "type": "Contact", "data": {"name": "Ada"}})

    assert slow.calls == 2 and created["entity"]["$version"] == 1


def test_callers_that_waited_for_room_open_a_tenant_once_and_its_lock_is_let_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.store.filelock import TenantLock

    store = Store(tmp_path / "data", max_open_tenants=2)
    for name in ("a", "b", "x"):
        store.do(name, AGENT, {"action": "create", "type": "Contact", "data": {"name": "Ada"}})
    pool = store.pool
    tried = threading.Condition()
    full: list[bool] = []
    real_make_room = pool._make_room

    def counted_make_room() -> bool:  # each caller finds the pool full once before it waits for room
        room = real_make_room()
        with tried:
            full.append(not room)
            tried.notify_all()
        return room

    monkeypatch.setattr(pool, "_make_room", counted_make_room)
    got: list[Tenant | BaseException] = []
    with pool.lease("a"), pool.lease("b"):
        pool.close_idle()  # x too: only a and b are open, and both are held
        waiting = [lease_in_thread(store, "x", got) for _ in range(2)]
        with tried:
            assert tried.wait_for(lambda: full.count(True) >= 2, WAIT)
    for thread in waiting:  # both leases were let go at once: both callers wake to the room
        thread.join(WAIT)
    store.close()
    lock = TenantLock(tmp_path / "data" / "tenants" / "x.db")

    assert len(got) == 2 and got[0] is got[1] and isinstance(got[0], Tenant), got
    assert lock.try_exclusive("test"), "a second, orphaned open of x still holds its lock file"
    lock.release()


def test_tenants_opened_by_many_callers_at_once_are_each_opened_once_and_let_go_when_closed(tmp_path: Path) -> None:
    """Callers arriving just as an open of their tenant ends must find it open, not open it a second time (a
    second writer on the file, whose lock file would stay held for the life of the process)."""
    from server.store.filelock import TenantLock

    store = Store(tmp_path / "data", max_open_tenants=2)
    names = ("t0", "t1", "t2")
    failures: list[BaseException] = []
    for _ in range(30):  # before the fix, 30 rounds of this left a second open behind in most runs (9 of 10)
        store.pool.close_idle()
        start = threading.Barrier(16)

        def write(i: int, start: threading.Barrier = start) -> None:
            try:
                start.wait(WAIT)
                store.do(names[i % 3], AGENT, {"action": "create", "type": "Contact", "data": {"name": "Ada"}})
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=write, args=(i,)) for i in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        assert len(store.pool._open) <= 2
    totals = {name: store.events(name)["total"] for name in names}
    store.close()

    assert failures == []
    assert totals == {"t0": 30 * 6, "t1": 30 * 5, "t2": 30 * 5}  # 16 writers a round, taking t0, t1, t2 in turn
    for name in names:
        lock = TenantLock(tmp_path / "data" / "tenants" / f"{name}.db")
        assert lock.try_exclusive("test"), f"a second, orphaned open of {name} still holds its lock file"
        lock.release()


def test_a_read_under_way_when_its_tenant_closes_closes_its_connection_and_a_later_one_is_refused(
    store: Store,
) -> None:
    store.do("acme", AGENT, {"action": "create", "type": "Contact", "data": {"name": "A"}})
    with store.pool.lease("acme") as tenant:
        pass
    with tenant.reader() as conn:
        tenant.close()  # (the server shutting down while a read is under way)
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 1  # the read goes on
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")  # closed on its way back, not kept by the closed tenant
    with pytest.raises(StorageError) as refused, tenant.reader():
        pass
    assert "was closed while this read waited" in refused.value.message


def called(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> threading.Event:
    """An event set when `owner.name` is called (it then runs as before): how a test knows a thread got there."""
    seen, real = threading.Event(), getattr(owner, name)

    def calling(*args: Any, **kwargs: Any) -> Any:
        seen.set()
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, calling)
    return seen


def test_closing_the_store_waits_for_a_write_whose_before_hook_reads_its_own_tenant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hooks = Hooks()
    in_hook = threading.Event()
    seen: list[Any] = []
    store = Store(tmp_path / "data", hooks=hooks)
    ada = store.do("acme", AGENT, {"action": "create", "type": "Contact", "data": {"name": "Ada"}})["entity"]
    # the pool is closing this tenant: it waits for the write (and its hook)
    closing = called(monkeypatch, store.pool._open["acme"].writer, "close")

    @hooks.before("Contact.update")
    def look(ctx: BeforeContext) -> None:
        in_hook.set()
        assert closing.wait(WAIT), "the store never began to close"
        seen.append(store.get("acme", "Contact", str(ctx.id))["name"])

    update = {"action": "update", "type": "Contact", "id": ada["$id"], "data": {"title": "CTO"}}
    wrote: list[Any] = []
    writing = threading.Thread(target=lambda: wrote.append(store.do("acme", AGENT, update)), daemon=True)
    writing.start()
    assert in_hook.wait(WAIT)
    closer = threading.Thread(target=store.close, daemon=True)
    closer.start()
    closer.join(WAIT)
    writing.join(WAIT)

    assert not closer.is_alive() and not writing.is_alive()
    assert seen == ["Ada"] and wrote[0]["entity"]["title"] == "CTO"


def test_a_tenant_asked_for_after_the_store_closed_is_refused_and_not_opened(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    store.do("acme", AGENT, {"action": "create", "type": "Contact", "data": {"name": "Ada"}})
    store.close()

    with pytest.raises(StorageError, match="'fresh' cannot be opened: the server is shutting down"):
        store.do("fresh", AGENT, {"action": "create", "type": "Contact", "data": {"name": "Ada"}})
    with pytest.raises(StorageError, match="shutting down"):
        store.find("acme", "Contact")

    assert not store.pool.exists("fresh") and store.pool._open == {}


def test_a_second_close_while_the_first_waits_for_a_write_returns_only_once_the_tenants_are_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hooks = Hooks()
    in_hook, go = threading.Event(), threading.Event()
    store = Store(tmp_path / "data", hooks=hooks)
    ada = store.do("acme", AGENT, {"action": "create", "type": "Contact", "data": {"name": "Ada"}})["entity"]
    tenant = store.pool._open["acme"]
    first_closing = called(monkeypatch, tenant.writer, "close")  # the first close has its list, and waits
    second_waits = called(monkeypatch, store.pool._closed, "wait")  # the second close, waiting for the first

    @hooks.before("Contact.update")
    def hold(ctx: BeforeContext) -> None:
        in_hook.set()
        assert go.wait(WAIT), "the test never let the write go on"

    update = {"action": "update", "type": "Contact", "id": ada["$id"], "data": {"title": "CTO"}}
    writing = threading.Thread(target=lambda: store.do("acme", AGENT, update), daemon=True)
    writing.start()
    assert in_hook.wait(WAIT)
    first = threading.Thread(target=store.close, daemon=True)
    first.start()
    assert first_closing.wait(WAIT)
    returned: list[bool] = []
    second = threading.Thread(target=lambda: returned.append(store.close() is None), daemon=True)
    second.start()
    waited = second_waits.wait(WAIT)
    returned_before_the_write_ended = bool(returned)
    go.set()
    for thread in (writing, first, second):
        thread.join(WAIT)

    assert waited and not returned_before_the_write_ended
    assert returned == [True] and tenant._closed
