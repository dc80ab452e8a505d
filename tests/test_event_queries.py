"""Searching the event log: by target, type (exact or glob), actor, time, version and seq; order and cursors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import advance_to
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.errors import InvalidCursor, InvalidFilter, InvalidSort, LimitExceeded, NotFound
from server.store import Store, queries

TENANT = "acme"
ALICE = "agent_alice"
BOB = "agent_bob"
CAROL = "user_carol"


@dataclass
class Log:
    contact: str
    deal: str
    lead: str
    events: list[dict[str, Any]]  # in the order written


def do(store: Store, actor: str, **op: Any) -> dict[str, Any]:
    return store.do(TENANT, actor, op)


@pytest.fixture
def log(store: Store, clock: Any) -> Log:
    """Nine events, one a minute from 10:00Z on 2026-01-15, by three actors on three entities."""
    events: list[dict[str, Any]] = []

    def step(minute: int, actor: str, **op: Any) -> dict[str, Any]:
        advance_to(clock, f"2026-01-15T10:{minute:02d}:00Z")
        result = do(store, actor, **op)
        events.extend(result["events"])
        return result

    contact = step(0, ALICE, action="create", type="Contact", data={"name": "Alice"})["entity"]["$id"]
    deal = step(1, BOB, action="create", type="Deal", data={"name": "Big", "value": 100, "contact": contact})
    deal_id = deal["entity"]["$id"]
    step(2, ALICE, action="qualify", type="Contact", id=contact)
    lead = step(3, CAROL, action="create", type="Lead", data={"name": "Lee"})["entity"]["$id"]
    step(4, BOB, action="advance", type="Deal", id=deal_id)
    step(5, CAROL, action="qualify", type="Lead", id=lead)
    step(6, ALICE, action="win", type="Deal", id=deal_id)
    step(7, CAROL, action="update", type="Contact", id=contact, data={"title": "CEO"})
    step(8, BOB, action="delete", type="Deal", id=deal_id)
    return Log(contact, deal_id, lead, events)


def types(page: dict[str, Any]) -> list[str]:
    return [e["type"] for e in page["results"]]


def seqs(page: dict[str, Any]) -> list[int]:
    return [e["seq"] for e in page["results"]]


def test_events_come_in_seq_order_by_default(store: Store, log: Log) -> None:
    page = store.events(TENANT)

    assert page["results"] == log.events
    assert seqs(page) == list(range(1, 10))
    assert page["total"] == 9
    assert page["hasMore"] is False and page["cursor"] is None


def test_sort_minus_seq_lists_newest_first(store: Store, log: Log) -> None:
    page = store.events(TENANT, sort="-seq")

    assert seqs(page) == list(range(9, 0, -1))
    assert page["results"] == list(reversed(log.events))


def test_events_by_target_list_that_entitys_history(store: Store, log: Log) -> None:
    page = store.events(TENANT, filter={"target": log.deal})

    assert types(page) == ["Deal.Created", "Deal.Advanced", "Deal.Won", "Deal.Deleted"]
    assert [e["version"] for e in page["results"]] == [1, 2, 3, 4]


def test_an_entitys_events_all_remain_listed_after_it_is_deleted(store: Store, log: Log) -> None:
    with pytest.raises(NotFound):  # the entity itself is gone...
        store.get(TENANT, "Deal", log.deal)

    page = store.events(TENANT, filter={"target": log.deal})  # ...its events are not
    assert [e["id"] for e in page["results"]] == [e["id"] for e in log.events if e["target"] == log.deal]
    assert page["total"] == 4


def test_events_by_exact_type(store: Store, log: Log) -> None:
    page = store.events(TENANT, filter={"type": "Contact.Qualified"})

    assert types(page) == ["Contact.Qualified"]
    assert page["results"][0]["target"] == log.contact
    assert store.events(TENANT, filter={"type": "Contact"})["results"] == []
    assert store.events(TENANT, filter={"type": "contact.qualified"})["results"] == []


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("Deal.*", ["Deal.Created", "Deal.Advanced", "Deal.Won", "Deal.Deleted"]),
        ("*.Qualified", ["Contact.Qualified", "Lead.Qualified"]),
        ("Contact.Q*", ["Contact.Qualified"]),
        ("*.Created", ["Contact.Created", "Deal.Created", "Lead.Created"]),
        ("Lead.*", ["Lead.Created", "Lead.Qualified"]),
        ("*.Q*", ["Contact.Qualified", "Lead.Qualified"]),
        ("Contact.*ed", ["Contact.Created", "Contact.Qualified", "Contact.Updated"]),
        ("Invoice.*", []),
    ],
)
def test_events_by_glob_type(store: Store, log: Log, pattern: str, expected: list[str]) -> None:
    assert types(store.events(TENANT, filter={"type": pattern})) == expected


def test_a_glob_type_can_be_negated(store: Store, log: Log) -> None:
    page = store.events(TENANT, filter={"type": {"$ne": "Deal.*"}})

    assert types(page) == ["Contact.Created", "Contact.Qualified", "Lead.Created", "Lead.Qualified", "Contact.Updated"]


def test_type_globs_work_inside_in_and_nin(store: Store, log: Log) -> None:
    either = store.events(TENANT, filter={"type": {"$in": ["Deal.*", "*.Qualified"]}})
    neither = store.events(TENANT, filter={"type": {"$nin": ["Deal.*", "Contact.Updated"]}})

    assert types(either) == types(store.events(TENANT, filter={"$or": [{"type": "Deal.*"}, {"type": "*.Qualified"}]}))
    assert set(types(either)) == {
        "Deal.Created",
        "Deal.Advanced",
        "Deal.Won",
        "Deal.Deleted",
        "Contact.Qualified",
        "Lead.Qualified",
    }
    assert types(neither) == ["Contact.Created", "Contact.Qualified", "Lead.Created", "Lead.Qualified"]


def test_events_by_actor(store: Store, log: Log) -> None:
    page = store.events(TENANT, filter={"actor": CAROL})

    assert types(page) == ["Lead.Created", "Lead.Qualified", "Contact.Updated"]
    assert all(e["actor"] == CAROL for e in page["results"])
    assert store.events(TENANT, filter={"actor": {"$in": [ALICE, BOB]}})["total"] == 6


def test_events_by_timestamp_range(store: Store, log: Log) -> None:
    page = store.events(TENANT, filter={"timestamp": {"$gte": "2026-01-15T10:02:00Z", "$lt": "2026-01-15T10:05:00Z"}})

    assert [e["timestamp"] for e in page["results"]] == [
        "2026-01-15T10:02:00.000000Z",
        "2026-01-15T10:03:00.000000Z",
        "2026-01-15T10:04:00.000000Z",
    ]


def test_event_timestamp_filters_read_offsets_and_bounds_exactly(store: Store, log: Log) -> None:
    def minutes(flt: dict[str, Any]) -> list[int]:
        return [int(e["timestamp"][14:16]) for e in store.events(TENANT, filter={"timestamp": flt})["results"]]

    assert minutes({"$gt": "2026-01-15T11:06:00+01:00"}) == [7, 8]
    assert minutes({"$gte": "2026-01-15T05:06:00-05:00"}) == [6, 7, 8]
    assert minutes({"$lte": "2026-01-15T10:01:00Z"}) == [0, 1]
    assert minutes({"$lt": "2026-01-15T10:01:00.000001Z"}) == [0, 1]
    assert minutes({"$gt": "2026-01-15T10:00:30Z", "$lte": "2026-01-15T10:02:30Z"}) == [1, 2]
    assert minutes({"$gt": "2026-01-16"}) == []
    assert minutes({"$lt": "2026-01-15"}) == []
    assert minutes({"$gte": "2026-01-15"}) == list(range(9))
    # past the microsecond: every stored time is a whole microsecond, so 10:01:00.0000005 lies between two
    half = "2026-01-15T10:01:00.0000005Z"
    assert minutes({"$lt": half}) == minutes({"$lte": half}) == [0, 1]
    assert minutes({"$gte": half}) == minutes({"$gt": half}) == list(range(2, 9))
    assert minutes({"$eq": half}) == []
    assert minutes({"$gte": "2026-01-15T10:01:00.0000000Z"}) == list(range(1, 9))  # zeros are not past it
    assert [e["seq"] for e in store.events(TENANT, filter={"timestamp": "2026-01-15T11:04:00+01:00"})["results"]] == [5]


def test_events_by_version(store: Store, log: Log) -> None:
    created = store.events(TENANT, filter={"version": 1})
    later = store.events(TENANT, filter={"version": {"$gte": 3}})

    assert types(created) == ["Contact.Created", "Deal.Created", "Lead.Created"]
    assert types(later) == ["Deal.Won", "Contact.Updated", "Deal.Deleted"]


def test_events_by_seq(store: Store, log: Log) -> None:
    assert seqs(store.events(TENANT, filter={"seq": {"$gt": 6}})) == [7, 8, 9]
    assert seqs(store.events(TENANT, filter={"seq": {"$in": [2, 4, 42]}})) == [2, 4]
    assert seqs(store.events(TENANT, filter={"seq": 5})) == [5]


def test_event_filters_combine(store: Store, log: Log) -> None:
    page = store.events(
        TENANT, filter={"target": log.contact, "actor": ALICE, "timestamp": {"$gte": "2026-01-15T10:01:00Z"}}
    )

    assert types(page) == ["Contact.Qualified"]
    page = store.events(TENANT, filter={"$or": [{"type": "Lead.*"}, {"actor": BOB, "version": 1}]})
    assert types(page) == ["Deal.Created", "Lead.Created", "Lead.Qualified"]


@pytest.mark.parametrize("sort", ["-seq", "seq"])
def test_cursor_pages_through_every_event_once(store: Store, log: Log, sort: str) -> None:
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        page = store.events(TENANT, sort=sort, limit=2, cursor=cursor)
        pages += 1
        assert page["total"] == 9
        seen.extend(seqs(page))
        cursor = page["cursor"]
        if cursor is None:
            assert page["hasMore"] is False
            break
        assert page["hasMore"] is True

    assert pages == 5
    assert seen == sorted(seen, reverse=sort == "-seq")
    assert sorted(seen) == list(range(1, 10))


def test_cursor_over_filtered_events_keeps_the_filter(store: Store, log: Log) -> None:
    first = store.events(TENANT, filter={"type": "Deal.*"}, limit=3)
    second = store.events(TENANT, filter={"type": "Deal.*"}, limit=3, cursor=first["cursor"])

    assert types(first) + types(second) == ["Deal.Created", "Deal.Advanced", "Deal.Won", "Deal.Deleted"]
    assert second["cursor"] is None


def test_an_event_cursor_is_stable_while_others_write(store: Store, clock: Any, log: Log) -> None:
    first = store.events(TENANT, limit=4)
    advance_to(clock, "2026-01-15T11:00:00Z")
    do(store, ALICE, action="update", type="Contact", id=log.contact, data={"title": "CFO"})
    do(store, BOB, action="create", type="Contact", data={"name": "New"})

    rest: list[dict[str, Any]] = []
    cursor = first["cursor"]
    while cursor:
        page = store.events(TENANT, limit=4, cursor=cursor)
        rest.extend(page["results"])
        cursor = page["cursor"]

    assert first["results"] + rest == log.events
    assert store.events(TENANT)["total"] == 11


def test_an_event_cursor_belongs_to_its_search(store: Store, log: Log) -> None:
    cursor = store.events(TENANT, limit=2)["cursor"]

    with pytest.raises(InvalidCursor):
        store.events(TENANT, sort="-seq", limit=2, cursor=cursor)
    with pytest.raises(InvalidCursor):
        store.events(TENANT, filter={"actor": ALICE}, limit=2, cursor=cursor)
    with pytest.raises(InvalidCursor):
        store.events(TENANT, limit=2, cursor="bm90LWEtY3Vyc29y")
    with pytest.raises(InvalidCursor):
        store.find(TENANT, "Contact", cursor=cursor)


@pytest.mark.parametrize("sort", ["name", "-nope", "seq,nope", "", 3])
def test_an_unsupported_event_sort_is_invalid_sort(store: Store, log: Log, sort: Any) -> None:
    with pytest.raises(InvalidSort) as err:
        store.events(TENANT, sort=sort)

    assert "seq" in err.value.hint


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "x"},
        {"data": "x"},
        {"version": "one"},
        {"timestamp": {"$gt": "soon"}},
        {"seq": {"$regex": "1"}},
        {"type": {"$foo": "x"}},
    ],
)
def test_an_unknown_event_field_or_bad_value_is_invalid_filter(store: Store, log: Log, bad: Any) -> None:
    with pytest.raises(InvalidFilter) as err:
        store.events(TENANT, filter=bad)

    assert "actor" in err.value.hint and "timestamp" in err.value.hint
    example = err.value.hint.split("Example: ")[1].rstrip(".")
    store.events(TENANT, filter=json.loads(example))  # the hint's example is a valid event filter: no InvalidFilter


def test_event_limits_are_those_of_search(store: Store, log: Log) -> None:
    assert len(store.events(TENANT, limit=100)["results"]) == 9
    with pytest.raises(LimitExceeded):
        store.events(TENANT, limit=101)


def test_each_listed_event_carries_the_documented_fields(store: Store, log: Log) -> None:
    qualified = store.events(TENANT, filter={"type": "Contact.Qualified"})["results"][0]

    assert set(qualified) >= {"id", "seq", "type", "target", "actor", "timestamp", "version", "data", "changes", "hash"}
    assert qualified["data"] == {"stage": "Lead -> Qualified"}
    assert qualified["changes"] == {"stage": {"from": "Lead", "to": "Qualified"}}
    assert qualified == store.event(TENANT, qualified["id"])


RANGE_OPS = st.sampled_from(["$eq", "$gt", "$gte", "$lt", "$lte"])
ranges = st.dictionaries(
    st.sampled_from(["seq", "timestamp"]),
    st.dictionaries(RANGE_OPS, st.integers(min_value=-1, max_value=11), min_size=1, max_size=2),
    max_size=2,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=ranges)
def test_the_total_of_a_seq_or_timestamp_range_is_the_number_of_events_it_lists(
    store: Store, log: Log, doc: dict[str, dict[str, int]]
) -> None:
    def minute(i: int) -> str:  # the log's events are one minute apart from 10:00
        return (datetime(2026, 1, 15, 10, tzinfo=UTC) + timedelta(minutes=i)).isoformat()

    flt = {f: {op: (minute(v) if f == "timestamp" else v) for op, v in conds.items()} for f, conds in doc.items()}
    page = store.events(TENANT, filter=flt, limit=100)

    assert page["total"] == len(page["results"])
    assert "totalIsLowerBound" not in page


def test_a_range_total_stays_exact_above_the_count_cap_while_other_filters_give_a_lower_bound(
    store: Store, log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queries, "COUNT_CAP", 5)

    everything = store.events(TENANT, limit=2)
    window = store.events(TENANT, filter={"timestamp": {"$gte": "2026-01-15T10:01:00Z"}}, limit=2)
    by_actor = store.events(TENANT, filter={"actor": {"$in": [ALICE, BOB]}}, limit=2)

    assert (everything["total"], "totalIsLowerBound" in everything) == (9, False)
    assert (window["total"], "totalIsLowerBound" in window) == (8, False)
    assert (by_actor["total"], by_actor.get("totalIsLowerBound")) == (5, True)
