"""The audit trail read from the table (`events --from-lake`) is the log's, whatever files hold it: read a
file and a batch at a time, oldest or newest first, with every filter, it lists what the live log lists."""

from __future__ import annotations

import fnmatch
from typing import Any

import pytest

from server.lake import catalog as cat
from server.lake import scan
from server.lake.flusher import Flusher
from server.lake.history import lake_events
from server.lake.scan import TenantRows
from server.store import Store

TENANT = "acme"
ALICE, BOB = "agent_alice", "agent_bob"

pytestmark = pytest.mark.usefixtures("no_pyiceberg_config")


def history_in_three_files(store: Store, clock: Any) -> None:
    """Creates and updates of Contacts and Deals by two actors, flushed after each of three rounds."""
    flusher = Flusher(store)
    for round_ in range(3):
        for i in range(4):
            actor = ALICE if i % 2 else BOB
            clock.advance(3600)  # (the rounds span a day boundary: more than one partition too)
            contact = store.do(
                TENANT, actor, {"action": "create", "type": "Contact", "data": {"name": f"C{round_}{i}"}}
            )
            deal = store.do(TENANT, actor, {"action": "create", "type": "Deal", "data": {"name": f"D{round_}{i}", "value": i}})  # fmt: skip
            store.do(TENANT, BOB, {"action": "update", "type": "Contact", "id": contact["entity"]["$id"], "data": {"title": "T"}})  # fmt: skip
            store.do(TENANT, ALICE, {"action": "win", "type": "Deal", "id": deal["entity"]["$id"]})
        flusher.flush()


@pytest.mark.parametrize("batch_rows", [scan.CHUNK, 2])
def test_the_tables_events_are_the_logs_for_every_filter_limit_and_order(
    store: Store, clock: Any, batch_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scan, "CHUNK", batch_rows)  # 2: many batches to a file
    history_in_three_files(store, clock)
    table = cat.events_table(cat.load(store.data_dir))
    rows = TenantRows(table, TENANT)
    assert len(list(rows.runs())) >= 3 and rows.streamed and rows.total == 48
    log = store.events(TENANT, limit=100)["results"]
    assert len(log) == 48
    middle = log[20]["timestamp"]
    filters: list[dict[str, Any]] = [
        {},
        {"type": "Contact.Updated"},
        {"type": "Deal.*"},
        {"type": "*.Created"},
        {"actor": ALICE},
        {"target": log[5]["target"]},
        {"since": middle},
        {"until": middle, "type": "*d"},
    ]

    for where in filters:
        matching = [
            e for e in log
            if fnmatch.fnmatchcase(e["type"], where.get("type", "*"))
            and e["actor"] == where.get("actor", e["actor"])
            and e["target"] == where.get("target", e["target"])
            and e["timestamp"] >= where.get("since", "") and e["timestamp"] <= where.get("until", "~")
        ]  # fmt: skip
        assert matching, where
        for limit in (1, 3, 7, 100):
            for newest_first in (False, True):
                expected = (matching[::-1] if newest_first else matching)[:limit]
                found = lake_events(table, TENANT, limit=limit, newest_first=newest_first, **where)
                assert found == expected, (where, limit, newest_first)


@pytest.mark.parametrize("glob", ["Contact.[^C]*", "Deal.[!W]*", "*.[CW]*", "Deal.[^]W]*"])
def test_a_type_glob_with_a_class_matches_the_tables_events_as_it_matches_the_logs(
    store: Store, clock: Any, glob: str
) -> None:
    history_in_three_files(store, clock)
    table = cat.events_table(cat.load(store.data_dir))
    log = store.events(TENANT, filter={"type": glob}, limit=100)["results"]
    assert lake_events(table, TENANT, type=glob, limit=100) == log
