"""The tenant writer: group commit under concurrency, one job's failure undoing only itself, and
checkpoints that run in the background instead of inside a writer's commit."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from server.errors import VersionConflict
from server.store import Store
from server.store.checkpoints import EVERY_COMMITS
from server.store.writer import Txn, Writer

TENANT = "acme"
AGENT = "agent_writer"


def create_deal(store: Store, name: str) -> str:
    result = store.do(TENANT, AGENT, {"action": "create", "type": "Deal", "data": {"name": name, "value": 0}})
    return str(result["entity"]["$id"])


def writer_of(store: Store) -> Writer:
    with store.pool.lease(TENANT) as tenant:
        return tenant.writer


def update(deal: str, value: int, if_version: int | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"action": "update", "type": "Deal", "id": deal, "data": {"value": value}}
    if if_version is not None:
        op["ifVersion"] = if_version
    return op


class HeldWriter:
    """Keeps the writer busy inside a job until released, so that other writes queue up behind it."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.inside = threading.Event()
        self.release = threading.Event()
        self.thread = threading.Thread(target=self.writer.run, args=(self._hold,))

    def _hold(self, _txn: Txn) -> None:
        self.inside.set()
        assert self.release.wait(30), "the test never released the writer"

    def __enter__(self) -> HeldWriter:
        self.thread.start()
        assert self.inside.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.thread.join(30)


async def wait_until_queued(writer: Writer, n: int) -> None:
    with anyio.fail_after(30):
        assert await anyio.to_thread.run_sync(writer.wait_queued, n, 30.0), f"{n} writes never queued"


def start_writes(store: Store, ops: list[dict[str, Any]]) -> tuple[list[threading.Thread], dict[int, Any]]:
    outcomes: dict[int, Any] = {}

    def write(i: int, op: dict[str, Any]) -> None:
        try:
            outcomes[i] = store.do(TENANT, AGENT, op)
        except Exception as exc:  # recorded for the test to check
            outcomes[i] = exc

    threads = [threading.Thread(target=write, args=(i, op)) for i, op in enumerate(ops)]
    for t in threads:
        t.start()
    return threads, outcomes


async def in_one_group(store: Store, ops: list[dict[str, Any]]) -> dict[int, Any]:
    """Write `ops` from threads queued behind a held writer, so that they commit as one group: their outcomes."""
    writer = writer_of(store)
    with HeldWriter(writer):
        threads, outcomes = start_writes(store, ops)
        await wait_until_queued(writer, len(ops))
    for t in threads:
        t.join(30)
    return outcomes


@contextmanager
def sqlite_refusing(store: Store, refused: Callable[[int, str | None], bool]) -> Iterator[None]:
    """SQLite's authorizer on the tenant's writer connection denies the statements `refused(action, arg1)` names,
    until the block ends: SQLite itself refusing (as a failing disk might), not a mock of the writer."""
    conn: sqlite3.Connection = writer_of(store).run(lambda txn: txn.conn, dry_run=True)
    conn.set_authorizer(lambda action, arg1, *_: sqlite3.SQLITE_DENY if refused(action, arg1) else sqlite3.SQLITE_OK)
    try:
        yield
    finally:
        conn.set_authorizer(None)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_writes_queued_behind_a_busy_writer_commit_together_in_one_transaction(store: Store) -> None:
    deals = [create_deal(store, f"D{i}") for i in range(4)]
    writer = writer_of(store)
    with HeldWriter(writer):
        commits_before = writer.commits
        threads, outcomes = start_writes(store, [update(d, 10) for d in deals])
        await wait_until_queued(writer, 4)
    for t in threads:
        t.join(30)
    assert writer.commits == commits_before + 2, "the held job commits, then the four queued writes share one commit"
    seqs = sorted(outcomes[i]["events"][0]["seq"] for i in range(4))
    assert seqs == list(range(seqs[0], seqs[0] + 4))
    assert all(store.get(TENANT, "Deal", d)["value"] == 10 for d in deals)
    assert store.verify(TENANT)["ok"] is True


@pytest.mark.anyio
async def test_a_failing_write_in_a_group_is_undone_alone_and_the_others_commit(store: Store) -> None:
    deals = [create_deal(store, f"D{i}") for i in range(3)]
    outcomes = await in_one_group(store, [update(deals[0], 1), update(deals[1], 2, if_version=7), update(deals[2], 3)])
    assert isinstance(outcomes[1], VersionConflict)
    assert outcomes[0]["entity"]["value"] == 1 and outcomes[2]["entity"]["value"] == 3
    assert store.get(TENANT, "Deal", deals[1])["$version"] == 1
    assert outcomes[2]["events"][0]["seq"] == outcomes[0]["events"][0]["seq"] + 1, "no seq was used by the failure"
    assert store.verify(TENANT)["ok"] is True


def test_every_queued_writer_gets_its_own_result_when_many_threads_write(store: Store) -> None:
    deals = [create_deal(store, f"D{i}") for i in range(16)]
    results: dict[str, list[int]] = {d: [] for d in deals}

    def work(deal: str) -> None:
        for i in range(1, 21):
            results[deal].append(store.do(TENANT, AGENT, update(deal, i))["entity"]["value"])

    threads = [threading.Thread(target=work, args=(d,)) for d in deals]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert all(values == list(range(1, 21)) for values in results.values())
    assert writer_of(store).commits < 16 + 16 * 20, "some writes shared a commit"
    assert store.verify(TENANT)["ok"] is True


def test_committed_pages_reach_the_database_file_in_the_background(store: Store) -> None:
    deal = create_deal(store, "Checkpointed")
    with store.pool.lease(TENANT) as tenant:
        path = Path(tenant.path)
    size_before = os.path.getsize(path)
    for i in range(EVERY_COMMITS):
        store.do(TENANT, AGENT, update(deal, i + 1))
    assert store.pool.checkpoints.wait_idle(30)
    assert os.path.getsize(path) > size_before, "a checkpoint copied the WAL's pages into the database file"
    assert store.get(TENANT, "Deal", deal)["$version"] == EVERY_COMMITS + 1
    assert store.verify(TENANT)["ok"] is True


def test_a_writer_opened_while_another_process_commits_writes_after_that_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.store import writer as writer_module

    other = Store(tmp_path / "data")  # a second server on the same data dir
    create_deal(other, "first")
    real_read_head = writer_module.read_head
    committed: list[str] = []

    def read_head_then_the_other_commits(conn: Any) -> Any:
        head = real_read_head(conn)
        if not committed:  # the other server commits right after our new writer read the log's end
            committed.append(create_deal(other, "between"))
        return head

    monkeypatch.setattr(writer_module, "read_head", read_head_then_the_other_commits)
    with Store(tmp_path / "data") as mine:
        written = [create_deal(mine, f"mine {i}") for i in range(3)]
        report = mine.verify(TENANT)
        total = mine.events(TENANT)["total"]
    other.close()

    assert committed and len(written) == 3
    assert report["ok"] is True and total == 5


def test_writes_through_a_tenant_closed_under_them_fail_as_storage_errors_and_none_hangs(tmp_path: Path) -> None:
    from server.errors import StorageError

    store = Store(tmp_path / "data")
    create_deal(store, "first")
    with store.pool.lease(TENANT) as tenant:  # a request in flight when the server shuts down
        store.close()
        outcomes: list[BaseException | None] = []

        def write() -> None:
            try:
                tenant.writer.run(lambda txn: None)
                outcomes.append(None)
            except BaseException as exc:  # reported to the test
                outcomes.append(exc)

        for _ in range(2):  # the second one would wait for ever behind a writer left busy
            thread = threading.Thread(target=write, daemon=True)
            thread.start()
            thread.join(30)
            assert not thread.is_alive(), "a write hung after the tenant was closed"

    assert [type(o) for o in outcomes] == [StorageError, StorageError]
    assert all("the server is shutting down" in str(o) for o in outcomes), outcomes


def test_a_write_whose_commit_and_then_rollback_fail_is_a_storage_error_and_the_next_write_goes_on(
    store: Store,
) -> None:
    from server.errors import StorageError

    deal = create_deal(store, "d")
    refused = {"COMMIT", "ROLLBACK"}  # SQLite refuses these until the test lets it

    with sqlite_refusing(store, lambda action, arg1: action == sqlite3.SQLITE_TRANSACTION and arg1 in refused):
        with pytest.raises(StorageError, match="refused the write") as failed:
            store.do(TENANT, AGENT, update(deal, 1))
        refused.clear()
        assert failed.value.code == "storage_error"
        assert store.do(TENANT, AGENT, update(deal, 2))["entity"]["$version"] == 2
    assert [e["version"] for e in store.events(TENANT, {"target": deal})["results"]] == [1, 2]
    assert store.verify(TENANT)["ok"] is True


@pytest.mark.anyio
async def test_when_sqlite_refuses_to_undo_a_failed_write_in_a_group_the_whole_group_fails_as_storage_errors(
    store: Store,
) -> None:
    from server.errors import StorageError

    deals = [create_deal(store, f"D{i}") for i in range(3)]
    # the middle write is a batch whose second operation fails after its first one has written
    batch = {"operations": [update(deals[1], 5), update(deals[2], 6, if_version=7)]}

    # (ROLLBACK TO <savepoint> is refused)
    with sqlite_refusing(store, lambda action, arg1: action == sqlite3.SQLITE_SAVEPOINT and arg1 == "ROLLBACK"):
        outcomes = await in_one_group(store, [update(deals[0], 1), batch, update(deals[2], 3)])

    assert isinstance(outcomes[1], VersionConflict)
    for i in (0, 2):
        assert isinstance(outcomes[i], StorageError) and "not authorized" in str(outcomes[i]), outcomes[i]
    assert [store.get(TENANT, "Deal", d)["$version"] for d in deals] == [1, 1, 1]
    assert store.do(TENANT, AGENT, update(deals[1], 9))["entity"]["$version"] == 2
    assert store.verify(TENANT)["ok"] is True


@pytest.mark.anyio
async def test_a_write_in_a_group_whose_savepoint_sqlite_refuses_fails_alone_and_the_others_commit(
    store: Store,
) -> None:
    from server.errors import StorageError

    deals = [create_deal(store, f"D{i}") for i in range(3)]
    refusals = [1]  # SQLite refuses the next SAVEPOINT once

    def refused(action: int, arg1: str | None) -> bool:
        if action == sqlite3.SQLITE_SAVEPOINT and arg1 == "BEGIN" and refusals[0]:
            refusals[0] -= 1
            return True
        return False

    with sqlite_refusing(store, refused):
        outcomes = await in_one_group(store, [update(d, 5) for d in deals])

    failed = [i for i in range(3) if isinstance(outcomes[i], StorageError)]
    assert len(failed) == 1 and "not authorized" in str(outcomes[failed[0]]), outcomes
    assert [store.get(TENANT, "Deal", d)["$version"] for d in deals] == [1 if i in failed else 2 for i in range(3)]
    assert store.verify(TENANT)["ok"] is True


def test_a_write_queued_past_the_wait_limit_gives_up_unstarted_and_later_writes_go_on(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.errors import TenantBusy
    from server.store import writer as writer_module

    deal = create_deal(store, "d")
    monkeypatch.setattr(writer_module, "WRITE_WAIT_SECONDS", 0.2)
    with HeldWriter(writer_of(store)):
        threads, outcomes = start_writes(store, [update(deal, 1)])
        for thread in threads:
            thread.join(30)

    assert isinstance(outcomes[0], TenantBusy) and "was not started; nothing was written" in str(outcomes[0])
    assert outcomes[0].code == "storage_error"
    assert store.get(TENANT, "Deal", deal)["$version"] == 1
    assert store.do(TENANT, AGENT, update(deal, 2))["entity"]["$version"] == 2


def test_a_before_hook_waiting_for_a_write_it_started_in_another_thread_ends_instead_of_holding_the_tenant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.errors import TenantBusy
    from server.store import writer as writer_module
    from server.store.hooks import BeforeContext, Hooks

    hooks = Hooks()
    store = Store(tmp_path / "data", hooks=hooks)
    deal = create_deal(store, "d")
    monkeypatch.setattr(writer_module, "WRITE_WAIT_SECONDS", 0.2)
    side: list[Any] = []

    @hooks.before("Deal.update")
    def note_elsewhere(ctx: BeforeContext) -> None:  # waits for a write that waits for this hook's group
        def write() -> None:
            try:
                side.append(store.do(TENANT, AGENT, {"action": "create", "type": "Contact", "data": {"name": "x"}}))
            except TenantBusy as exc:
                side.append(exc)

        thread = threading.Thread(target=write, daemon=True)
        thread.start()
        thread.join(30)

    try:
        updated = store.do(TENANT, AGENT, update(deal, 1))
        assert updated["entity"]["value"] == 1
        assert len(side) == 1 and isinstance(side[0], TenantBusy)
        assert store.find(TENANT, "Contact")["total"] == 0
    finally:
        store.close()


def test_writers_giving_up_while_groups_run_and_hand_on_the_lead_lose_no_write_and_leave_none_waiting(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.errors import TenantBusy
    from server.store import writer as writer_module

    deals = [create_deal(store, f"D{i}") for i in range(16)]
    monkeypatch.setattr(writer_module, "WRITE_WAIT_SECONDS", 0.0001)  # most followers give up: races with hand-offs
    written: dict[str, list[int]] = {d: [] for d in deals}
    refused: list[TenantBusy] = []

    def work(deal: str) -> None:
        for i in range(1, 41):
            try:
                written[deal].append(store.do(TENANT, AGENT, update(deal, i))["entity"]["value"])
            except TenantBusy as exc:
                refused.append(exc)

    threads = [threading.Thread(target=work, args=(d,), daemon=True) for d in deals]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))

    assert not any(t.is_alive() for t in threads), "a writer was left waiting"
    assert refused, "no writer gave up: the race was not exercised"
    assert sum(map(len, written.values())) + len(refused) == 16 * 40
    for deal, values in written.items():
        entity = store.get(TENANT, "Deal", deal)
        assert values == sorted(values) and entity["$version"] == 1 + len(values)
        assert entity["value"] == (values[-1] if values else 0)
    assert store.events(TENANT)["total"] == 16 + sum(map(len, written.values()))
    assert store.verify(TENANT)["ok"] is True
