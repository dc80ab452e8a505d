"""The seed's time-travel story end to end: Alice is created, qualified, updated, read in the past and rolled back."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import advance_to

from server.errors import NotFound
from server.store import Store

TENANT = "acme"
AGENT = "agent_mR4nVkTw"
BOB = "user_bob"
OPS = "agent_ops"

RFC3339_US = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
EVENT_ID = re.compile(r"^evt_[A-Za-z0-9]{9,}$")
CONTACT_ID = re.compile(r"^contact_[A-Za-z0-9]{9,}$")


@dataclass
class Scenario:
    alice: str
    org: str
    created: dict[str, Any]
    qualified: dict[str, Any]
    updated: dict[str, Any]
    rolled_back: dict[str, Any]


def play(store: Store, clock: Any) -> Scenario:
    advance_to(clock, "2026-01-15T12:00:00Z")
    created = store.do(
        TENANT, AGENT, {"action": "create", "type": "Contact", "data": {"name": "Alice", "email": "alice@startup.io"}}
    )
    alice = created["entity"]["$id"]
    advance_to(clock, "2026-01-15T12:30:00Z")
    org = store.do(TENANT, BOB, {"action": "create", "type": "Organization", "data": {"name": "Startup Inc"}})
    advance_to(clock, "2026-01-16T09:30:00Z")
    qualified = store.do(
        TENANT,
        AGENT,
        {"action": "qualify", "type": "Contact", "id": alice, "reason": "replied to the pricing email"},
    )
    advance_to(clock, "2026-01-17T10:00:00Z")
    updated = store.do(
        TENANT,
        BOB,
        {"action": "update", "type": "Contact", "id": alice, "data": {"title": "CTO", "phone": "+1 555 0100"}},
    )
    advance_to(clock, "2026-01-17T14:00:00Z")
    rolled_back = store.do(
        TENANT,
        OPS,
        {"action": "rollback", "type": "Contact", "id": alice, "asOf": "2026-01-15T15:00:00.000000Z"},
    )
    return Scenario(alice, org["entity"]["$id"], created, qualified, updated, rolled_back)


@pytest.fixture
def scenario(store: Store, clock: Any) -> Scenario:
    return play(store, clock)


def only_event(result: dict[str, Any]) -> dict[str, Any]:
    assert len(result["events"]) == 1
    return result["events"][0]


def test_alice_is_created_with_the_defaults_and_meta_fields(scenario: Scenario) -> None:
    entity = scenario.created["entity"]
    assert CONTACT_ID.match(entity["$id"])
    assert entity == {
        "$id": scenario.alice,
        "$type": "Contact",
        "$version": 1,
        "$createdAt": "2026-01-15T12:00:00.000000Z",
        "$createdBy": AGENT,
        "$updatedAt": "2026-01-15T12:00:00.000000Z",
        "$updatedBy": AGENT,
        "name": "Alice",
        "email": "alice@startup.io",
        "stage": "Lead",
    }


def test_each_step_appends_one_event_with_the_exact_contract_shape(scenario: Scenario) -> None:
    created = only_event(scenario.created)
    qualified = only_event(scenario.qualified)
    updated = only_event(scenario.updated)
    rolled_back = only_event(scenario.rolled_back)

    assert created["type"] == "Contact.Created"
    assert created["version"] == 1
    assert created["actor"] == AGENT
    assert created["timestamp"] == "2026-01-15T12:00:00.000000Z"
    assert created["data"] == {"name": "Alice", "email": "alice@startup.io", "stage": "Lead"}
    assert created["changes"] == {
        "name": {"from": None, "to": "Alice"},
        "email": {"from": None, "to": "alice@startup.io"},
        "stage": {"from": None, "to": "Lead"},
    }

    assert qualified["type"] == "Contact.Qualified"
    assert qualified["version"] == 2
    assert qualified["actor"] == AGENT
    assert qualified["timestamp"] == "2026-01-16T09:30:00.000000Z"
    assert qualified["data"] == {"stage": "Lead -> Qualified"}
    assert qualified["changes"] == {"stage": {"from": "Lead", "to": "Qualified"}}
    assert qualified["reason"] == "replied to the pricing email"

    assert updated["type"] == "Contact.Updated"
    assert updated["version"] == 3
    assert updated["actor"] == BOB
    assert updated["timestamp"] == "2026-01-17T10:00:00.000000Z"
    assert updated["data"] == {"title": "null -> CTO", "phone": "null -> +1 555 0100"}
    assert updated["changes"] == {"title": {"from": None, "to": "CTO"}, "phone": {"from": None, "to": "+1 555 0100"}}

    assert rolled_back["type"] == "Contact.Updated"
    assert rolled_back["version"] == 4
    assert rolled_back["actor"] == OPS
    assert rolled_back["timestamp"] == "2026-01-17T14:00:00.000000Z"
    assert rolled_back["data"] == {
        "rollbackTo": "2026-01-15T15:00:00.000000Z",
        "stage": "Qualified -> Lead",
        "title": "CTO -> null",
        "phone": "+1 555 0100 -> null",
    }
    field_changes = {k: v for k, v in rolled_back["changes"].items() if k != "rollbackTo"}
    assert field_changes == {
        "stage": {"from": "Qualified", "to": "Lead"},
        "title": {"from": "CTO", "to": None},
        "phone": {"from": "+1 555 0100", "to": None},
    }

    for event in (created, qualified, updated, rolled_back):
        assert EVENT_ID.match(event["id"])
        assert event["target"] == scenario.alice
        assert RFC3339_US.match(event["timestamp"])
    for event in (created, updated, rolled_back):
        assert event.get("reason") is None
    assert len({e["id"] for e in (created, qualified, updated, rolled_back)}) == 4


def test_seq_is_the_tenant_wide_position_of_each_event(store: Store, scenario: Scenario) -> None:
    seqs = [
        only_event(r)["seq"] for r in (scenario.created, scenario.qualified, scenario.updated, scenario.rolled_back)
    ]
    assert seqs == [1, 3, 4, 5]  # seq 2 is the Organization created in between
    everything = store.events(TENANT)["results"]
    assert [e["seq"] for e in everything] == [1, 2, 3, 4, 5]
    assert everything[1]["target"] == scenario.org


def test_meta_fields_follow_the_actor_through_every_step(scenario: Scenario) -> None:
    steps = [
        (scenario.created, 1, AGENT, "2026-01-15T12:00:00.000000Z"),
        (scenario.qualified, 2, AGENT, "2026-01-16T09:30:00.000000Z"),
        (scenario.updated, 3, BOB, "2026-01-17T10:00:00.000000Z"),
        (scenario.rolled_back, 4, OPS, "2026-01-17T14:00:00.000000Z"),
    ]
    for result, version, actor, at in steps:
        entity = result["entity"]
        assert entity["$version"] == version
        assert entity["$createdBy"] == AGENT
        assert entity["$createdAt"] == "2026-01-15T12:00:00.000000Z"
        assert entity["$updatedBy"] == actor
        assert entity["$updatedAt"] == at
        assert "$deletedAt" not in entity


def test_the_rollback_brings_back_the_state_of_the_as_of_with_a_new_version(store: Store, scenario: Scenario) -> None:
    current = store.get(TENANT, "Contact", scenario.alice)
    assert current == scenario.rolled_back["entity"]
    assert current["$version"] == 4
    assert {k: v for k, v in current.items() if not k.startswith("$")} == {
        "name": "Alice",
        "email": "alice@startup.io",
        "stage": "Lead",
    }


def test_history_lists_every_event_of_alice_in_order(store: Store, scenario: Scenario) -> None:
    history = store.events(TENANT, filter={"target": scenario.alice})
    assert history["total"] == 4
    assert history["hasMore"] is False
    assert [(e["type"], e["version"]) for e in history["results"]] == [
        ("Contact.Created", 1),
        ("Contact.Qualified", 2),
        ("Contact.Updated", 3),
        ("Contact.Updated", 4),
    ]
    returned = [only_event(r) for r in (scenario.created, scenario.qualified, scenario.updated, scenario.rolled_back)]
    for stored, written in zip(history["results"], returned, strict=True):
        assert stored == written
        assert store.event(TENANT, written["id"]) == written


def test_events_can_be_found_by_type_time_and_actor(store: Store, scenario: Scenario) -> None:
    qualifications = store.events(
        TENANT,
        filter={
            "type": "Contact.Qualified",
            "timestamp": {"$gte": "2026-01-01T00:00:00Z", "$lt": "2026-02-01T00:00:00Z"},
        },
    )
    assert [e["id"] for e in qualifications["results"]] == [only_event(scenario.qualified)["id"]]
    by_bob = store.events(TENANT, filter={"actor": BOB})
    assert [e["type"] for e in by_bob["results"]] == ["Organization.Created", "Contact.Updated"]
    newest_first = store.events(TENANT, filter={"target": scenario.alice}, sort="-seq")
    assert [e["version"] for e in newest_first["results"]] == [4, 3, 2, 1]


@pytest.mark.parametrize(
    ("as_of", "version", "fields"),
    [
        ("2026-01-15T12:00:00.000000Z", 1, {"name": "Alice", "email": "alice@startup.io", "stage": "Lead"}),
        ("2026-01-16", 1, {"name": "Alice", "email": "alice@startup.io", "stage": "Lead"}),
        ("2026-01-16T09:29:59.999999Z", 1, {"name": "Alice", "email": "alice@startup.io", "stage": "Lead"}),
        ("2026-01-16T10:30:00+01:00", 2, {"name": "Alice", "email": "alice@startup.io", "stage": "Qualified"}),
        ("2026-01-16T09:30:00.000000Z", 2, {"name": "Alice", "email": "alice@startup.io", "stage": "Qualified"}),
        (
            "2026-01-17T10:00:00Z",
            3,
            {
                "name": "Alice",
                "email": "alice@startup.io",
                "stage": "Qualified",
                "title": "CTO",
                "phone": "+1 555 0100",
            },
        ),
        (
            "2026-01-17T13:59:59.999999Z",
            3,
            {
                "name": "Alice",
                "email": "alice@startup.io",
                "stage": "Qualified",
                "title": "CTO",
                "phone": "+1 555 0100",
            },
        ),
        ("2026-01-17T14:00:00Z", 4, {"name": "Alice", "email": "alice@startup.io", "stage": "Lead"}),
        ("2030-01-01T00:00:00Z", 4, {"name": "Alice", "email": "alice@startup.io", "stage": "Lead"}),
    ],
)
def test_as_of_reads_show_the_state_after_every_event_up_to_that_time(
    store: Store, scenario: Scenario, as_of: str, version: int, fields: dict[str, Any]
) -> None:
    past = store.get(TENANT, "Contact", scenario.alice, as_of=as_of)
    assert past["$version"] == version
    assert {k: v for k, v in past.items() if not k.startswith("$")} == fields


def test_as_of_before_alice_existed_is_not_found(store: Store, scenario: Scenario) -> None:
    for as_of in ("2026-01-15", "2026-01-15T11:59:59.999999Z"):
        with pytest.raises(NotFound) as exc:
            store.get(TENANT, "Contact", scenario.alice, as_of=as_of)
        assert exc.value.code == "not_found"


def test_version_reads_return_the_state_right_after_each_version(store: Store, scenario: Scenario) -> None:
    stages = {1: "Lead", 2: "Qualified", 3: "Qualified", 4: "Lead"}
    results = (scenario.created, scenario.qualified, scenario.updated, scenario.rolled_back)
    for version, stage in stages.items():
        state = store.get(TENANT, "Contact", scenario.alice, version=version)
        assert state["$version"] == version
        assert state["stage"] == stage
        assert state == results[version - 1]["entity"]


def test_an_event_timestamp_is_a_precise_as_of_point(store: Store, scenario: Scenario) -> None:
    for result in (scenario.created, scenario.qualified, scenario.updated, scenario.rolled_back):
        event = only_event(result)
        assert store.get(TENANT, "Contact", scenario.alice, as_of=event["timestamp"]) == result["entity"]


def test_searching_the_past_finds_alice_as_she_was(store: Store, scenario: Scenario) -> None:
    leads_then = store.find(TENANT, "Contact", {"stage": "Lead"}, as_of="2026-01-16T00:00:00Z")
    assert [c["$id"] for c in leads_then["results"]] == [scenario.alice]
    assert leads_then["results"][0]["$version"] == 1
    leads_after_qualify = store.find(TENANT, "Contact", {"stage": "Lead"}, as_of="2026-01-16T12:00:00Z")
    assert leads_after_qualify["total"] == 0
    qualified_then = store.find(TENANT, "Contact", {"stage": "Qualified"}, as_of="2026-01-16T12:00:00Z")
    assert [c["$id"] for c in qualified_then["results"]] == [scenario.alice]
    leads_now = store.find(TENANT, "Contact", {"stage": "Lead"})
    assert [c["$version"] for c in leads_now["results"]] == [4]


def test_the_rollback_keeps_the_past_readable_and_the_tenant_verifies(store: Store, scenario: Scenario) -> None:
    assert store.get(TENANT, "Contact", scenario.alice, as_of="2026-01-17T12:00:00Z")["title"] == "CTO"
    report = store.verify(TENANT)
    assert report["ok"] is True, report["problems"]
    assert report["events"] == 5
    assert report["entities"] == 2
