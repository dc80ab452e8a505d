"""The writing side of tests/test_disk_full.py, run as a subprocess: `python disk_full_child.py SCENARIO DATA_DIR`.

A full disk is made with the file size limit (RLIMIT_FSIZE), which needs no root: a write past it fails with
EFBIG (CPython ignores SIGXFSZ), as one fails with ENOSPC on a full disk. Raising the soft limit back to the
hard one, in the same process, is space coming back. Each scenario prints one JSON object of what it saw."""

from __future__ import annotations

import json
import logging
import resource
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from server.errors import HeadlesslyError
from server.store import Store
from server.store.writer import Txn, Writer

TENANT = "acme"
AGENT = "agent_disk"
WAIT = 30.0


@contextmanager
def no_room(limit: int) -> Iterator[None]:
    """No file of this process may grow past `limit` bytes inside; room again after."""
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))


def largest_file(data_dir: Path) -> int:
    """The size of the largest file of the tenants: past it, none of them may grow (a disk just full)."""
    return max(p.stat().st_size for p in (data_dir / "tenants").iterdir())


def outcome(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """What a call answered: its result, or the error the agent would see."""
    try:
        return {"ok": fn()}
    except HeadlesslyError as exc:
        return {"error": exc.to_dict()}
    except Exception as exc:  # anything else is what the test is looking for
        return {"raw": repr(exc)}


def create(store: Store, name: str, **extra: Any) -> dict[str, Any]:
    return store.do(TENANT, AGENT, {"action": "create", "type": "Contact", "data": {"name": name}, **extra})


def contact_names(store: Store) -> list[str]:
    return sorted(c["name"] for c in store.find(TENANT, "Contact", limit=100)["results"])


def seqs(store: Store) -> list[int]:
    return [e["seq"] for e in store.events(TENANT, limit=100)["results"]]


def single_write(data_dir: Path) -> dict[str, Any]:
    with Store(data_dir) as store:
        create(store, "before")
        with no_room(largest_file(data_dir)):
            failed = outcome(lambda: create(store, "during " + "x" * 2000))
            names_while_full = contact_names(store)
        after = create(store, "after")
        return {"failed": failed, "names_while_full": names_while_full, "after_seq": after["events"][0]["seq"],
                "seqs": seqs(store), "verify": store.verify(TENANT)}  # fmt: skip


class HeldWriter:
    """Keeps the tenant's writer inside a job until released, so that the next writes queue into one group."""

    def __init__(self, writer: Writer) -> None:
        self.inside, self.release = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=writer.run, args=(self._hold,))

    def _hold(self, _txn: Txn) -> None:
        self.inside.set()
        self.release.wait(WAIT)

    def __enter__(self) -> HeldWriter:
        self.thread.start()
        self.inside.wait(WAIT)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.thread.join(WAIT)


def in_one_group(store: Store, requests: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Send `requests` from as many threads, queued behind a held writer so that they run as one group, with
    no file allowed past `limit` bytes while that group runs."""
    with store.pool.lease(TENANT) as tenant:
        writer = tenant.writer
    outcomes: list[dict[str, Any]] = [{} for _ in requests]

    def send(i: int) -> None:
        outcomes[i] = outcome(lambda: store.do(TENANT, AGENT, requests[i]))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    with no_room(limit):
        with HeldWriter(writer):
            for t in threads:
                t.start()
            if not writer.wait_queued(len(requests), WAIT):
                raise AssertionError("the writes never queued")
        for t in threads:
            t.join(WAIT)
    return outcomes


def update(entity: str, title: str) -> dict[str, Any]:
    return {"action": "update", "type": "Contact", "id": entity, "data": {"title": title}}


def group_failing_at_commit(data_dir: Path) -> dict[str, Any]:
    with Store(data_dir) as store:
        ids = [create(store, f"c{i}")["entity"]["$id"] for i in range(4)]
        failed = in_one_group(store, [update(i, "during") for i in ids], largest_file(data_dir))
        titles_after_failure = [store.get(TENANT, "Contact", i).get("title") for i in ids]
        later = [outcome(lambda i=i: store.do(TENANT, AGENT, update(i, "after"))) for i in ids]
        return {"failed": failed, "titles_after_failure": titles_after_failure, "later": later,
                "seqs": seqs(store), "verify": store.verify(TENANT)}  # fmt: skip


def group_undone_whole_mid_statement(data_dir: Path) -> dict[str, Any]:
    """A group whose second job changes so many pages that its savepoint journal spills to a temporary file,
    which cannot grow: SQLite then undoes the whole transaction, not only that job."""
    with Store(data_dir) as store:
        small = [create(store, f"small{i}")["entity"]["$id"] for i in range(2)]
        many = store.do(TENANT, AGENT, {"operations": [
            {"action": "create", "type": "Contact", "data": {"name": f"m{i} " + "x" * 200}} for i in range(300)
        ]})["results"]  # fmt: skip
        big = {"operations": [update(r["entity"]["$id"], "during") for r in many]}
        # Far below the log's size: no commit can append to it, and the spilled journal fails at this size.
        failed = in_one_group(store, [update(small[0], "during"), big, update(small[1], "during")], 90_000)
        titles = [store.get(TENANT, "Contact", i).get("title") for i in [small[0], many[0]["entity"]["$id"], small[1]]]
        later = outcome(lambda: store.do(TENANT, AGENT, update(small[0], "after")))
        return {"failed": failed, "titles_after_failure": titles, "later": later, "verify": store.verify(TENANT)}


def batch_and_idempotency_key(data_dir: Path) -> dict[str, Any]:
    """A batch, and a write with an idempotencyKey, that find the disk full: retried once there is room, each is
    written then (the key kept nothing of the failed try), and the keyed one replays after that."""
    batch = {"operations": [{"action": "create", "type": "Contact", "data": {"name": f"b{i}"}} for i in range(3)]}
    keyed = {"action": "create", "type": "Contact", "data": {"name": "keyed"}, "idempotencyKey": "k1"}
    with Store(data_dir) as store:
        create(store, "before")
        with no_room(largest_file(data_dir)):
            failed = [outcome(lambda: store.do(TENANT, AGENT, batch)), outcome(lambda: store.do(TENANT, AGENT, keyed))]
            names_while_full = contact_names(store)
        later = [outcome(lambda: store.do(TENANT, AGENT, batch)), outcome(lambda: store.do(TENANT, AGENT, keyed))]
        replayed = store.do(TENANT, AGENT, keyed)
        return {"failed": failed, "names_while_full": names_while_full, "later": later, "replayed": replayed,
                "names": contact_names(store), "seqs": seqs(store), "verify": store.verify(TENANT)}  # fmt: skip


def first_open(data_dir: Path) -> dict[str, Any]:
    """A new tenant's first write with no room for its file (0), or for only part of its tables."""
    seen: dict[str, Any] = {}
    for limit in (0, 20_000):
        with Store(data_dir / str(limit)) as store:
            with no_room(limit):
                failed = outcome(lambda: create(store, "first"))
            later = outcome(lambda: create(store, "second"))
            seen[str(limit)] = {"failed": failed, "later": later, "names": contact_names(store),
                                "verify": store.verify(TENANT)}  # fmt: skip
    return seen


class Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def checkpoint(data_dir: Path) -> dict[str, Any]:
    """The background checkpoint (copying the log's pages into the database file) with no room to grow that file."""
    warnings = Warnings()
    logging.getLogger("server").addHandler(warnings)
    with Store(data_dir) as store:
        create(store, "before")
        db_size = (data_dir / "tenants" / f"{TENANT}.db").stat().st_size
        with no_room(db_size):
            store.pool.checkpoints.request(TENANT)
            idle = store.pool.checkpoints.wait_idle(WAIT)
            names_while_full = contact_names(store)
        create(store, "after")
        store.pool.checkpoints.request(TENANT)
        store.pool.checkpoints.wait_idle(WAIT)
        grown = (data_dir / "tenants" / f"{TENANT}.db").stat().st_size > db_size
    with Store(data_dir) as store:  # (reopened: reads the database file, and the log's rest)
        return {"idle": idle, "warnings": warnings.lines, "names_while_full": names_while_full, "grown": grown,
                "names": contact_names(store), "verify": store.verify(TENANT)}  # fmt: skip


def lake_flush(data_dir: Path) -> dict[str, Any]:
    """Background flush rounds with no room for the catalog's file (0), for the Parquet and metadata files (the
    others), each followed by a round with room: every event must reach the table once."""
    from server.lake import catalog as cat
    from server.lake.background import flush_once

    warnings = Warnings()
    logging.getLogger("server").addHandler(warnings)
    failed: list[bool] = []
    with Store(data_dir) as store:
        for limit in (0, 1_000, 5_000, 8_000):
            create(store, f"c{limit}")
            with no_room(limit):
                failed.append(flush_once(store, None, "background flush")[0] is None)
            flush_once(store, None, "background flush")
        table = cat.open_table(data_dir)
        in_table = sorted(table.scan(selected_fields=("seq",)).to_arrow()["seq"].to_pylist())
        return {"failed": failed, "warnings": warnings.lines, "in_table": in_table, "head": store.head(TENANT)[0]}


SCENARIOS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "single_write": single_write,
    "group_failing_at_commit": group_failing_at_commit,
    "group_undone_whole_mid_statement": group_undone_whole_mid_statement,
    "batch_and_idempotency_key": batch_and_idempotency_key,
    "first_open": first_open,
    "checkpoint": checkpoint,
    "lake_flush": lake_flush,
}

if __name__ == "__main__":
    print(json.dumps(SCENARIOS[sys.argv[1]](Path(sys.argv[2]))))
