"""The tenant lock file: a tenant open holds it shared; a restore, a reindex or a rebuild for new schemas
holds it exclusive, and an open meanwhile waits for it (up to a limit) or is refused saying which."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import AGENT, TENANT, create, widgets

from server.errors import StorageError, TenantBusy
from server.store import Store, tenants
from server.store.filelock import TenantLock
from server.store.tenants import tenant_path

WAIT = 30.0


@pytest.fixture
def held(store: Store) -> Any:
    """The store's tenant, closed by the store and held exclusive by 'another process' for `reason`."""
    store.do(TENANT, AGENT, {"action": "create", "type": "Contact", "data": {"name": "Alice"}})
    store.pool.forget(TENANT)
    locks: list[TenantLock] = []

    def hold(reason: str) -> TenantLock:
        lock = TenantLock(tenant_path(store.data_dir, TENANT))
        assert lock.try_exclusive(reason)
        locks.append(lock)
        return lock

    yield hold
    for lock in locks:
        lock.release()


def test_an_open_waits_while_another_process_has_the_tenant_to_itself(
    store: Store, held: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = held("rebuild")
    waits: list[float] = []

    def it_finishes(seconds: float) -> None:
        waits.append(seconds)
        lock.release()

    monkeypatch.setattr(tenants, "sleep", it_finishes)
    found = store.find(TENANT, "Contact")

    assert len(waits) == 1
    assert [c["name"] for c in found["results"]] == ["Alice"]


@pytest.mark.parametrize(
    ("reason", "said"),
    [("restore", "being restored (`headlessly restore`)"), ("reindex", "being reindexed (`headlessly reindex`)"),
     ("rebuild", "having its lookup keys rebuilt for new schemas")],
)  # fmt: skip
def test_an_open_is_refused_saying_what_holds_the_tenant_when_it_does_not_let_go(
    store: Store, held: Any, monkeypatch: pytest.MonkeyPatch, reason: str, said: str
) -> None:
    held(reason)
    monkeypatch.setattr(tenants, "LOCK_WAIT_SECONDS", 0.0)

    with pytest.raises(TenantBusy) as refused:
        store.do(TENANT, AGENT, {"action": "create", "type": "Contact", "data": {"name": "Bob"}})

    assert refused.value.code == "storage_error"
    assert said in refused.value.message and refused.value.hint


def test_a_tenant_held_shared_by_a_store_cannot_be_taken_exclusive_until_the_store_closes_it(store: Store) -> None:
    store.do(TENANT, AGENT, {"action": "create", "type": "Contact", "data": {"name": "Alice"}})
    lock = TenantLock(tenant_path(store.data_dir, TENANT))
    try:
        while_open = lock.try_exclusive("restore")
        store.pool.forget(TENANT)
        after_close = lock.try_exclusive("restore")
    finally:
        lock.release()

    assert (while_open, after_close) == (False, True)


def test_a_tenant_whose_writer_fails_to_start_lets_go_of_its_lock(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_writer(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk I/O error")  # as a damaged file would fail reading the log's head

    monkeypatch.setattr(tenants, "Writer", broken_writer)
    for _ in range(2):
        with pytest.raises(StorageError) as failed:  # a write opens the tenant (a read of one with no file would not)
            store.do(TENANT, "agent_x", {"action": "create", "type": "Contact", "data": {"name": "Ada"}})
        assert "disk I/O error" in failed.value.message
    lock = TenantLock(tenant_path(store.data_dir, TENANT))
    try:
        assert lock.try_exclusive("restore")
    finally:
        lock.release()


def test_two_servers_opening_a_tenant_under_the_same_new_schemas_at_once_both_open_it_rebuilt_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Store(tmp_path / "data", widgets(tmp_path, '"color": "string"')) as s:
        create(s, "Widget", name="first", color="red")
    indexed = widgets(tmp_path, '"color": "string#"')
    start = threading.Barrier(2)
    found: list[list[str]] = []
    failed: list[BaseException] = []

    def serve() -> None:
        with Store(tmp_path / "data", indexed) as s:
            start.wait(WAIT)
            try:
                found.append([w["name"] for w in s.find(TENANT, "Widget", filter={"color": "red"})["results"]])
            except BaseException as exc:
                failed.append(exc)

    with caplog.at_level(logging.INFO, logger="server.store.tenants"):
        threads = [threading.Thread(target=serve) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)

    assert failed == []
    assert found == [["first"], ["first"]]
    assert len([r for r in caplog.records if "rebuilt what the schemas changed" in r.getMessage()]) == 1


def test_callers_waiting_on_a_tenant_being_restored_share_one_wait_and_its_refusal(
    store: Store, held: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    held("restore")
    monkeypatch.setattr(tenants, "LOCK_WAIT_SECONDS", 1.0)
    callers = 4
    arrived = threading.Barrier(callers)
    opens: list[str] = []
    real_tenant, real_sleep = tenants.Tenant, tenants.sleep

    def counted_tenant(name: str, *args: Any) -> Any:
        opens.append(name)
        return real_tenant(name, *args)

    def first_poll_waits_for_everyone(seconds: float) -> None:
        if len(opens) == 1 and arrived.n_waiting == callers - 1:
            arrived.wait(WAIT)  # the others are let in while this open still waits
        real_sleep(seconds)

    monkeypatch.setattr(tenants, "Tenant", counted_tenant)
    monkeypatch.setattr(tenants, "sleep", first_poll_waits_for_everyone)
    outcomes: list[str] = []

    def call(first: bool) -> None:
        if not first:
            arrived.wait(WAIT)
        try:
            store.find(TENANT, "Contact")
            outcomes.append("opened")
        except TenantBusy as exc:
            outcomes.append(exc.code + (": being restored" if "being restored" in exc.message else ""))

    threads = [threading.Thread(target=call, args=(i == 0,)) for i in range(callers)]
    threads[0].start()
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join(WAIT)

    assert outcomes == ["storage_error: being restored"] * callers
    assert opens == [TENANT]


def _first_write(data_dir: str, tenant: str, start: Any, results: Any) -> None:
    try:
        with Store(Path(data_dir)) as store:
            start.wait(WAIT)  # both ready: the tenant's file is made by whichever open comes first
            store.do(tenant, AGENT, {"action": "create", "type": "Contact", "data": {"name": "Ada"}})
        results.put("ok")
    except Exception as exc:  # reported to the test, which shows it
        results.put(f"{type(exc).__name__}: {exc}")


def test_two_processes_writing_the_first_events_of_a_new_tenant_at_once_both_succeed(tmp_path: Path) -> None:
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # no threads of pytest's process carried into the children
    outcomes: list[str] = []
    for trial in range(6):  # the race was lost in about half of the tries: six make a miss very unlikely
        start, results = context.Barrier(2), context.Queue()
        tenant = f"fresh-{trial}"
        workers = [
            context.Process(target=_first_write, args=(str(tmp_path / "data"), tenant, start, results))
            for _ in range(2)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(WAIT)
        outcomes += [results.get(timeout=WAIT) for _ in workers]
        with Store(tmp_path / "data") as store:
            assert store.events(tenant)["total"] == 2
            assert store.verify(tenant)["ok"] is True
    assert outcomes == ["ok"] * 12
