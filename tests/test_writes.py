"""Single writes through `Store.do`: create, update, verbs, delete, guards and refusals."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import widgets

from server.errors import (
    HeadlesslyError,
    InvalidActor,
    InvalidId,
    InvalidTenant,
    InvalidType,
    LimitExceeded,
    NotFound,
    UnknownVerb,
    ValidationFailed,
    VersionConflict,
)
from server.store import Store
from server.store.mutations import request_digest
from server.store.operations import Operation
from server.store.tenants import tenant_path

TENANT = "acme"
AGENT = "agent_mR4nVkTw"
OTHER = "user_bob"
RFC3339_US = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


def create(store: Store, type_: str, data: dict[str, Any], actor: str = AGENT, **extra: Any) -> dict[str, Any]:
    return store.do(TENANT, actor, {"action": "create", "type": type_, "data": data, **extra})


def contact(store: Store, **data: Any) -> dict[str, Any]:
    entity: dict[str, Any] = create(store, "Contact", {"name": "Alice", **data})["entity"]
    return entity


def event_count(store: Store) -> int:
    total: int = store.events(TENANT)["total"]
    return total


def fields(entity: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entity.items() if not k.startswith("$")}


# ---- create ---------------------------------------------------------------------------------------


def test_create_applies_defaults_and_sets_every_meta_field(store: Store, clock: Any) -> None:
    result = create(store, "Contact", {"name": "Alice", "email": "alice@startup.io"})
    entity = result["entity"]
    assert re.fullmatch(r"contact_[A-Za-z0-9]{9,}", entity["$id"])
    assert entity["$type"] == "Contact"
    assert entity["$version"] == 1
    assert entity["$createdAt"] == entity["$updatedAt"] == "2026-01-15T10:00:00.000000Z"
    assert entity["$createdBy"] == entity["$updatedBy"] == AGENT
    assert "$deletedAt" not in entity and "$deletedBy" not in entity
    assert fields(entity) == {"name": "Alice", "email": "alice@startup.io", "stage": "Lead"}
    (event,) = result["events"]
    assert event["type"] == "Contact.Created"
    assert event["version"] == 1
    assert event["target"] == entity["$id"]
    assert store.get(TENANT, "Contact", entity["$id"]) == entity

    deal = create(store, "Deal", {"name": "Big one", "value": 1000})["entity"]
    assert deal["stage"] == "Prospecting"


def test_a_given_value_wins_over_the_default(store: Store) -> None:
    entity = contact(store, stage="Customer")
    assert entity["stage"] == "Customer"


def test_a_field_given_as_null_on_create_gets_its_default(store: Store) -> None:
    result = create(store, "Contact", {"name": "Alice", "stage": None, "title": None})

    assert fields(result["entity"]) == {"name": "Alice", "stage": "Lead"}
    assert result["events"][0]["data"] == {"name": "Alice", "stage": "Lead"}
    assert [e["name"] for e in store.find(TENANT, "Contact", filter={"stage": "Lead"})["results"]] == ["Alice"]


def test_ids_are_the_noun_lowercased_and_base62_and_never_repeat(store: Store) -> None:
    ids = [contact(store)["$id"] for _ in range(20)]
    assert len(set(ids)) == 20
    assert all(re.fullmatch(r"contact_[A-Za-z0-9]{9,}", i) for i in ids)
    org = create(store, "Organization", {"name": "Acme"})["entity"]["$id"]
    assert re.fullmatch(r"organization_[A-Za-z0-9]{9,}", org)


def test_create_refuses_an_id(store: Store) -> None:
    with pytest.raises(HeadlesslyError):
        store.do(
            TENANT, AGENT, {"action": "create", "type": "Contact", "id": "contact_aaaaaaaaaaaa", "data": {"name": "A"}}
        )
    assert event_count(store) == 0


def test_create_without_a_required_field_is_refused_naming_it(store: Store) -> None:
    with pytest.raises(ValidationFailed) as exc:
        create(store, "Deal", {"name": "No value"})
    assert exc.value.code == "validation_error"
    assert "value" in exc.value.message
    assert event_count(store) == 0


def test_values_of_the_wrong_type_or_outside_the_enum_are_refused(store: Store) -> None:
    with pytest.raises(ValidationFailed) as exc:
        create(store, "Deal", {"name": "D", "value": "lots"})
    assert "value" in exc.value.message
    with pytest.raises(ValidationFailed) as exc:
        contact(store, stage="Prospect")
    assert "stage" in exc.value.message
    with pytest.raises(ValidationFailed) as exc:
        contact(store, email="not an email")
    assert "email" in exc.value.message
    with pytest.raises(ValidationFailed) as exc:
        contact(store, nickname="Al")
    assert "nickname" in exc.value.message
    assert event_count(store) == 0


@pytest.mark.parametrize(
    ("noun", "data", "said"),
    [
        ("Contact", {"title": True}, "'title' must be a string (got true;"),
        ("Contact", {"title": ["A"]}, "'title' must be a string (got [\"A\"];"),
        ("Contact", {"title": {"a": 1}}, "'title' must be a string (got {\"a\": 1};"),
        ("Pipeline", {"stages": ["A", None]}, "'stages' Input should be a valid string (got null;"),
        ("Pipeline", {"isDefault": None, "stages": "A"}, "'stages' must be a string array (got 'A';"),
    ],
    ids=["true", "list", "object", "null-in-a-list", "a-string-stays-quoted"],
)
def test_a_value_of_the_wrong_type_in_data_is_shown_in_the_message_as_the_json_it_came_as(
    store: Store, noun: str, data: dict[str, Any], said: str
) -> None:
    with pytest.raises(ValidationFailed) as exc:
        create(store, noun, {"name": "A", **data})
    assert said in exc.value.message
    assert event_count(store) == 0


# ---- update ---------------------------------------------------------------------------------------


def test_update_merges_data_into_the_entity(store: Store, clock: Any) -> None:
    alice = contact(store, email="alice@startup.io", phone="+1 555 0100")
    clock.advance(60)
    result = store.do(
        TENANT, OTHER, {"action": "update", "type": "Contact", "id": alice["$id"], "data": {"title": "CTO"}}
    )
    entity = result["entity"]
    assert fields(entity) == {
        "name": "Alice",
        "email": "alice@startup.io",
        "phone": "+1 555 0100",
        "stage": "Lead",
        "title": "CTO",
    }
    assert entity["$version"] == 2
    assert entity["$createdBy"] == AGENT
    assert entity["$updatedBy"] == OTHER
    assert entity["$createdAt"] == "2026-01-15T10:00:00.000000Z"
    assert entity["$updatedAt"] == "2026-01-15T10:01:00.000000Z"
    (event,) = result["events"]
    assert event["type"] == "Contact.Updated"
    assert event["actor"] == OTHER
    assert event["version"] == 2
    assert event["data"] == {"title": "null -> CTO"}
    assert event["changes"] == {"title": {"from": None, "to": "CTO"}}
    assert store.get(TENANT, "Contact", alice["$id"]) == entity


def test_update_renders_non_string_values_as_json_in_data(store: Store) -> None:
    deal = create(store, "Deal", {"name": "D", "value": 1000})["entity"]
    result = store.do(TENANT, AGENT, {"action": "update", "type": "Deal", "id": deal["$id"], "data": {"value": 2500.5}})
    (event,) = result["events"]
    assert event["data"] == {"value": "1000 -> 2500.5"}
    assert event["changes"] == {"value": {"from": 1000, "to": 2500.5}}


def test_update_with_null_removes_the_field(store: Store) -> None:
    alice = contact(store, phone="+1 555 0100")
    result = store.do(
        TENANT, AGENT, {"action": "update", "type": "Contact", "id": alice["$id"], "data": {"phone": None}}
    )
    assert "phone" not in result["entity"]
    assert "phone" not in store.get(TENANT, "Contact", alice["$id"])
    (event,) = result["events"]
    assert event["data"] == {"phone": "+1 555 0100 -> null"}
    assert event["changes"] == {"phone": {"from": "+1 555 0100", "to": None}}


def test_an_update_that_changes_nothing_appends_nothing_and_says_unchanged(store: Store) -> None:
    alice = contact(store, title="CTO")
    before = event_count(store)
    for data in ({"title": "CTO"}, {"name": "Alice", "stage": "Lead"}, {"phone": None}, {}):
        result = store.do(TENANT, AGENT, {"action": "update", "type": "Contact", "id": alice["$id"], "data": data})
        assert result["unchanged"] is True
        assert result["events"] == []
        assert result["entity"]["$version"] == 1
    assert event_count(store) == before
    assert store.get(TENANT, "Contact", alice["$id"]) == alice


def test_an_update_of_a_json_field_with_its_keys_in_another_order_appends_nothing(store: Store) -> None:
    plan = create(store, "Plan", {"name": "Pro", "limits": {"seats": 5, "projects": [1, {"a": 1, "b": 2}]}})["entity"]
    same = {"projects": [1, {"b": 2, "a": 1}], "seats": 5}
    result = store.do(TENANT, AGENT, {"action": "update", "type": "Plan", "id": plan["$id"], "data": {"limits": same}})
    assert result["unchanged"] is True
    assert event_count(store) == 1
    # inside a json field a number that JSON writes differently (5 and 5.0, 1 and true) is kept as sent
    for changed in (
        {"seats": 5.0, "projects": [1, {"a": 1, "b": 2}]},
        {"seats": 5, "projects": [True, {"a": 1, "b": 2}]},
    ):
        op = {"action": "update", "type": "Plan", "id": plan["$id"], "data": {"limits": changed}}
        assert store.do(TENANT, AGENT, op)["events"], changed
    assert store.verify(TENANT)["ok"] is True


def test_an_unknown_field_is_refused_even_when_its_value_is_null(store: Store) -> None:
    alice = contact(store, email="al@x.io")
    with pytest.raises(ValidationFailed) as exc:
        create(store, "Contact", {"name": "Bob", "emial": None})
    assert "unknown field 'emial'" in exc.value.message
    assert "email" in exc.value.message  # the known fields are listed
    with pytest.raises(ValidationFailed) as exc:
        store.do(TENANT, AGENT, {"action": "update", "type": "Contact", "id": alice["$id"], "data": {"emial": None}})
    assert "unknown field 'emial'" in exc.value.message
    assert store.get(TENANT, "Contact", alice["$id"]) == alice
    assert event_count(store) == 1


def test_a_number_field_refuses_an_integer_past_64_bits_instead_of_rounding_it(store: Store) -> None:
    with pytest.raises(ValidationFailed) as exc:
        create(store, "Deal", {"name": "Huge", "value": 12345678901234567890123})
    assert "64 bits" in exc.value.message
    assert "value" in exc.value.message
    deal = create(store, "Deal", {"name": "Big", "value": 2**63 - 1})["entity"]
    assert store.get(TENANT, "Deal", deal["$id"])["value"] == 2**63 - 1
    assert create(store, "Deal", {"name": "Float", "value": 1.2e22})["entity"]["value"] == 1.2e22
    assert event_count(store) == 2


def test_a_whole_float_in_a_number_or_int_field_is_stored_as_an_integer_so_resending_it_changes_nothing(
    store: Store,
) -> None:
    deal = create(store, "Deal", {"name": "Round", "value": 100.0})["entity"]
    assert deal["value"] == 100 and type(deal["value"]) is int
    for same_number in (100, 100.0):
        op = {"action": "update", "type": "Deal", "id": deal["$id"], "data": {"value": same_number}}
        assert store.do(TENANT, AGENT, op)["events"] == []
    zero = store.do(TENANT, AGENT, {"action": "update", "type": "Deal", "id": deal["$id"], "data": {"value": -0.0}})
    assert zero["entity"]["value"] == 0 and type(zero["entity"]["value"]) is int
    assert store.do(TENANT, AGENT, {"action": "update", "type": "Deal", "id": deal["$id"], "data": {"value": 0.0}})[
        "unchanged"
    ]
    # a fraction stays a float, and so does a float too large to be an exact integer
    half = store.do(TENANT, AGENT, {"action": "update", "type": "Deal", "id": deal["$id"], "data": {"value": 0.5}})
    assert half["entity"]["value"] == 0.5
    assert create(store, "Deal", {"name": "Vast", "value": 1e300})["entity"]["value"] == 1e300
    org = create(store, "Organization", {"name": "Acme", "employeeCount": 12.0})["entity"]
    assert org["employeeCount"] == 12 and type(org["employeeCount"]) is int
    # and a filter takes 12.0 for an int field as writes do
    for found in (
        store.find(TENANT, "Organization", {"employeeCount": 12.0}),
        store.find(TENANT, "Organization", {"employeeCount": {"$gte": 12.0}}),
        store.find(TENANT, "Organization", {"$version": 1.0}),
    ):
        assert [o["$id"] for o in found["results"]] == [org["$id"]]
    with pytest.raises(ValidationFailed) as exc:
        create(store, "Organization", {"name": "Half", "employeeCount": 12.5})
    assert "employeeCount" in exc.value.message
    assert store.verify(TENANT)["ok"] is True


def test_text_that_is_not_valid_unicode_is_a_validation_error_and_writes_nothing(store: Store) -> None:
    with pytest.raises(ValidationFailed) as exc:
        create(store, "Contact", {"name": "Al\ud800ice"})
    assert "not valid Unicode" in exc.value.message
    assert event_count(store) == 0
    assert create(store, "Contact", {"name": "Alice 🦊"})["entity"]["name"] == "Alice 🦊"


def test_the_size_limit_counts_the_bytes_of_the_entity_in_utf8(store: Store) -> None:
    from server.store.mutations import MAX_STATE_BYTES

    fits_in_characters = "🦊" * (MAX_STATE_BYTES // 2)  # half the limit in characters, twice it in bytes
    with pytest.raises(LimitExceeded) as exc:
        create(store, "Contact", {"name": "Alice", "title": fits_in_characters})
    assert "bytes" in exc.value.message
    assert event_count(store) == 0
    assert create(store, "Contact", {"name": "Alice", "title": "🦊" * (MAX_STATE_BYTES // 5)})["events"]


def test_dates_are_only_yyyy_mm_dd_and_urls_may_not_hold_spaces_or_control_characters(store: Store) -> None:
    for bad in ("20260115", "2026-W03-4", "\u30002026-01-15"):
        with pytest.raises(ValidationFailed):
            create(store, "Goal", {"name": "G", "target": 1, "dueDate": bad})
    for good in ("2026-01-15", " 2026-01-15\n"):  # ASCII spaces around it, as a time and a filter take them
        assert create(store, "Goal", {"name": "G", "target": 1, "dueDate": good})["entity"]["dueDate"] == "2026-01-15"
    for url in ("https://exa\nmple.com", " https://example.com", "https://example.com\t"):
        with pytest.raises(ValidationFailed) as exc:
            create(store, "Organization", {"name": "Acme", "website": url})
        assert "spaces or control characters" in exc.value.message
    assert create(store, "Organization", {"name": "Acme", "website": "https://example.com/a?b=1"})["events"]
    assert event_count(store) == 3


def test_text_and_a_reason_holding_a_nul_character_are_refused_naming_it(store: Store) -> None:
    """SQLite's JSON functions end a string at a NUL: stored, such text could not be searched as it is."""
    for noun, data, reason in [
        ("Contact", {"name": "Ann\x00Marie"}, None),
        ("Contact", {"name": "Ann", "title": "CTO\x00"}, None),
        ("Funnel", {"name": "F", "steps": ["visit", "sign\x00up"]}, None),
        ("Contact", {"name": "Ann"}, "because\x00"),
        ("Workflow", {"name": "W", "steps": "a\x00b"}, None),  # json: a string, in a list, a key, a value
        ("Workflow", {"name": "W", "steps": [{"run": ["x", "y\x00"]}]}, None),
        ("Workflow", {"name": "W", "steps": {"a\x00b": 1}}, None),
        ("Workflow", {"name": "W", "steps": {"a": {"b": "\x00"}}}, None),
    ]:
        with pytest.raises(ValidationFailed) as exc:
            store.do(TENANT, AGENT, {"action": "create", "type": noun, "data": data, "reason": reason})
        assert "cannot hold a NUL character" in exc.value.message
    assert event_count(store) == 0
    assert create(store, "Contact", {"name": "Ann\tMarie \u2028 \x01"})["events"]  # other control characters are text


def test_a_verb_refuses_data_that_sets_its_own_field_to_another_value(store: Store) -> None:
    deal = create(store, "Deal", {"name": "D", "value": 1})["entity"]
    with pytest.raises(ValidationFailed) as exc:
        store.do(TENANT, AGENT, {"action": "win", "type": "Deal", "id": deal["$id"], "data": {"stage": "Lost"}})
    won = store.do(TENANT, AGENT, {"action": "win", "type": "Deal", "id": deal["$id"], "data": {"stage": "Won"}})

    assert "win sets Deal.stage to 'Won'" in exc.value.message
    assert won["entity"]["stage"] == "Won" and won["entity"]["$version"] == 2


@pytest.mark.parametrize(("value", "said"), [(None, "null"), (True, "true"), (["Archived"], '["Archived"]')])
def test_a_verb_refusing_data_for_the_field_it_sets_shows_that_data_as_json(
    store: Store, value: Any, said: str
) -> None:
    pipeline = create(store, "Pipeline", {"name": "Sales"})["entity"]
    with pytest.raises(ValidationFailed) as exc:
        store.do(
            TENANT, AGENT, {"action": "archive", "type": "Pipeline", "id": pipeline["$id"], "data": {"status": value}}
        )
    assert exc.value.message == f"archive sets Pipeline.status to 'Archived'; data may not set it to {said}"


def test_removing_a_required_field_is_refused(store: Store) -> None:
    alice = contact(store)
    with pytest.raises(ValidationFailed) as exc:
        store.do(TENANT, AGENT, {"action": "update", "type": "Contact", "id": alice["$id"], "data": {"name": None}})
    assert "name" in exc.value.message
    assert store.get(TENANT, "Contact", alice["$id"]) == alice
    assert event_count(store) == 1


def test_dollar_keys_in_data_are_refused_naming_the_key(store: Store) -> None:
    alice = contact(store)
    for key in ("$version", "$createdBy", "$id", "$deletedAt"):
        with pytest.raises(ValidationFailed) as exc:
            create(store, "Contact", {"name": "Alice", key: "x"})
        assert key in exc.value.message
        with pytest.raises(ValidationFailed) as exc:
            store.do(TENANT, AGENT, {"action": "update", "type": "Contact", "id": alice["$id"], "data": {key: "x"}})
        assert key in exc.value.message
    assert store.get(TENANT, "Contact", alice["$id"]) == alice
    assert event_count(store) == 1


# ---- verbs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("verb", "past"), [("close", "Closed"), ("win", "Won"), ("lose", "Lost")])
def test_a_deal_verb_sets_the_stage_to_its_past_tense(store: Store, verb: str, past: str) -> None:
    deal = create(store, "Deal", {"name": "D", "value": 10})["entity"]
    result = store.do(TENANT, AGENT, {"action": verb, "type": "Deal", "id": deal["$id"]})
    assert result["entity"]["stage"] == past
    assert result["entity"]["$version"] == 2
    (event,) = result["events"]
    assert event["type"] == f"Deal.{past}"
    assert event["data"] == {"stage": f"Prospecting -> {past}"}
    assert event["changes"] == {"stage": {"from": "Prospecting", "to": past}}


def test_qualify_sets_the_contact_stage(store: Store) -> None:
    alice = contact(store)
    result = store.do(TENANT, AGENT, {"action": "qualify", "type": "Contact", "id": alice["$id"]})
    assert result["entity"]["stage"] == "Qualified"
    assert store.get(TENANT, "Contact", alice["$id"])["stage"] == "Qualified"
    assert [e["type"] for e in result["events"]] == ["Contact.Qualified"]


def test_a_verb_always_appends_its_event_even_when_nothing_changes(store: Store) -> None:
    alice = contact(store, stage="Qualified")
    result = store.do(TENANT, AGENT, {"action": "qualify", "type": "Contact", "id": alice["$id"]})
    assert "unchanged" not in result
    (event,) = result["events"]
    assert event["type"] == "Contact.Qualified"
    assert event["version"] == 2
    assert event["data"] == {}
    assert result["entity"]["$version"] == 2
    again = store.do(TENANT, AGENT, {"action": "qualify", "type": "Contact", "id": alice["$id"]})
    assert again["events"][0]["version"] == 3
    assert event_count(store) == 3


def test_a_verb_with_data_applies_it_in_the_same_event(store: Store) -> None:
    alice = contact(store)
    result = store.do(
        TENANT, AGENT, {"action": "qualify", "type": "Contact", "id": alice["$id"], "data": {"title": "CTO"}}
    )
    assert result["entity"]["stage"] == "Qualified"
    assert result["entity"]["title"] == "CTO"
    assert result["entity"]["$version"] == 2
    (event,) = result["events"]
    assert event["type"] == "Contact.Qualified"
    assert event["data"] == {"stage": "Lead -> Qualified", "title": "null -> CTO"}
    assert event_count(store) == 2


def test_a_verb_whose_past_tense_is_in_no_enum_appends_its_own_event_type(store: Store) -> None:
    alice = contact(store)
    result = store.do(TENANT, AGENT, {"action": "capture", "type": "Contact", "id": alice["$id"]})
    (event,) = result["events"]
    assert event["type"] == "Contact.Captured"
    assert event["version"] == 2
    assert fields(result["entity"]) == fields(alice)
    deal = create(store, "Deal", {"name": "D", "value": 1})["entity"]
    advanced = store.do(TENANT, AGENT, {"action": "advance", "type": "Deal", "id": deal["$id"]})
    assert advanced["events"][0]["type"] == "Deal.Advanced"
    assert advanced["entity"]["stage"] == "Prospecting"


def test_a_verb_with_invalid_data_is_refused_and_writes_nothing(store: Store) -> None:
    alice = contact(store)
    with pytest.raises(ValidationFailed):
        store.do(TENANT, AGENT, {"action": "qualify", "type": "Contact", "id": alice["$id"], "data": {"email": "nope"}})
    assert store.get(TENANT, "Contact", alice["$id"]) == alice


# ---- delete ---------------------------------------------------------------------------------------


def test_delete_is_soft_it_appends_an_event_and_marks_the_entity(store: Store, clock: Any) -> None:
    alice = contact(store)
    clock.advance(30)
    result = store.do(TENANT, OTHER, {"action": "delete", "type": "Contact", "id": alice["$id"]})
    (event,) = result["events"]
    assert event["type"] == "Contact.Deleted"
    assert event["actor"] == OTHER
    assert event["version"] == 2
    entity = result["entity"]
    assert entity["$deletedAt"] == "2026-01-15T10:00:30.000000Z"
    assert entity["$deletedBy"] == OTHER
    assert entity["$version"] == 2
    assert fields(entity) == fields(alice)

    with pytest.raises(NotFound) as exc:
        store.get(TENANT, "Contact", alice["$id"])
    assert "2026-01-15T10:00:30.000000Z" in exc.value.message
    assert OTHER in exc.value.message

    history = store.events(TENANT, filter={"target": alice["$id"]})
    assert [e["type"] for e in history["results"]] == ["Contact.Created", "Contact.Deleted"]
    assert store.find(TENANT, "Contact")["total"] == 0
    with_deleted = store.find(TENANT, "Contact", include_deleted=True)
    assert [e["$id"] for e in with_deleted["results"]] == [alice["$id"]]
    assert store.get(TENANT, "Contact", alice["$id"], as_of="2026-01-15T10:00:10Z") == alice


@pytest.mark.parametrize("action", ["update", "delete", "qualify"])
def test_writes_to_a_deleted_entity_are_not_found(store: Store, action: str) -> None:
    alice = contact(store)
    store.do(TENANT, AGENT, {"action": "delete", "type": "Contact", "id": alice["$id"]})
    request: dict[str, Any] = {"action": action, "type": "Contact", "id": alice["$id"]}
    if action == "update":
        request["data"] = {"title": "CTO"}
    with pytest.raises(NotFound) as exc:
        store.do(TENANT, AGENT, request)
    assert exc.value.code == "not_found"
    assert event_count(store) == 2


def test_writes_to_an_entity_that_never_existed_are_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        store.do(TENANT, AGENT, {"action": "update", "type": "Contact", "id": "contact_aaaaaaaaaaaa", "data": {"x": 1}})
    with pytest.raises(NotFound):
        store.get(TENANT, "Contact", "contact_aaaaaaaaaaaa")


# ---- ifVersion ------------------------------------------------------------------------------------


def test_if_version_mismatch_is_a_version_conflict_giving_the_current_version(store: Store) -> None:
    alice = contact(store)
    store.do(TENANT, AGENT, {"action": "update", "type": "Contact", "id": alice["$id"], "data": {"title": "CTO"}})
    with pytest.raises(VersionConflict) as exc:
        store.do(
            TENANT,
            AGENT,
            {"action": "update", "type": "Contact", "id": alice["$id"], "data": {"title": "CEO"}, "ifVersion": 1},
        )
    assert exc.value.code == "version_conflict"
    assert exc.value.details["currentVersion"] == 2
    assert store.get(TENANT, "Contact", alice["$id"])["title"] == "CTO"

    for action in ("qualify", "delete"):
        with pytest.raises(VersionConflict):
            store.do(TENANT, AGENT, {"action": action, "type": "Contact", "id": alice["$id"], "ifVersion": 3})
    assert event_count(store) == 2


def test_a_matching_if_version_lets_the_write_through(store: Store) -> None:
    alice = contact(store)
    result = store.do(
        TENANT,
        AGENT,
        {"action": "update", "type": "Contact", "id": alice["$id"], "data": {"title": "CEO"}, "ifVersion": 1},
    )
    assert result["entity"]["$version"] == 2
    assert result["entity"]["title"] == "CEO"


# ---- idempotency ----------------------------------------------------------------------------------


def test_the_same_idempotency_key_from_the_same_actor_returns_the_first_result_and_writes_nothing(
    store: Store,
) -> None:
    request = {"action": "create", "type": "Contact", "data": {"name": "Alice"}, "idempotencyKey": "k-1"}
    first = store.do(TENANT, AGENT, request)
    second = store.do(TENANT, AGENT, request)
    assert second.get("replayed") is True
    assert second["entity"] == first["entity"]
    assert second["events"] == first["events"]
    assert event_count(store) == 1
    assert store.find(TENANT, "Contact")["total"] == 1


def test_an_idempotent_update_is_not_applied_twice(store: Store) -> None:
    deal = create(store, "Deal", {"name": "D", "value": 1})["entity"]
    request = {"action": "update", "type": "Deal", "id": deal["$id"], "data": {"value": 2}, "idempotencyKey": "bump"}
    store.do(TENANT, AGENT, request)
    store.do(TENANT, AGENT, {"action": "update", "type": "Deal", "id": deal["$id"], "data": {"value": 3}})
    replay = store.do(TENANT, AGENT, request)
    assert replay["replayed"] is True
    assert replay["entity"]["value"] == 2
    assert store.get(TENANT, "Deal", deal["$id"])["value"] == 3
    assert event_count(store) == 3


def test_the_same_idempotency_key_from_another_actor_writes(store: Store) -> None:
    request = {"action": "create", "type": "Contact", "data": {"name": "Alice"}, "idempotencyKey": "k-1"}
    first = store.do(TENANT, AGENT, request)
    second = store.do(TENANT, OTHER, request)
    assert "replayed" not in second
    assert second["entity"]["$id"] != first["entity"]["$id"]
    assert second["entity"]["$createdBy"] == OTHER
    assert event_count(store) == 2


def test_an_idempotency_key_sent_again_with_another_request_is_refused_and_writes_nothing(store: Store) -> None:
    request = {"action": "create", "type": "Contact", "data": {"name": "Alice", "title": "CTO"}, "idempotencyKey": "k"}
    first = store.do(TENANT, AGENT, request)
    reworded = store.do(TENANT, AGENT, {**request, "data": {"title": "CTO", "name": "Alice"}, "reason": "retry"})
    with pytest.raises(ValidationFailed) as exc:
        store.do(TENANT, AGENT, {**request, "type": "Organization", "data": {"name": "Acme"}})
    with pytest.raises(ValidationFailed):  # two operations of one batch with one key
        store.do(
            TENANT,
            AGENT,
            {"operations": [
                {"action": "create", "type": "Contact", "data": {"name": "Bo"}, "idempotencyKey": "b"},
                {"action": "create", "type": "Deal", "data": {"name": "D", "value": 1}, "idempotencyKey": "b"},
            ]},
        )  # fmt: skip

    assert reworded["replayed"] is True and reworded["entity"] == first["entity"]  # key order and reason do not count
    assert "'k' was already used" in exc.value.message
    assert event_count(store) == 1


@pytest.mark.parametrize(
    ("first", "again"),
    [
        ({"name": "D", "value": 100}, {"name": "D", "value": 100.0}),
        (
            {"name": "D", "value": 1, "closedAt": "2026-03-01T00:00:00Z"},
            {"name": "D", "value": 1, "closedAt": "2026-03-01T01:00:00+01:00"},
        ),
    ],
    ids=["a-whole-float", "another-offset"],
)
def test_an_idempotency_key_sent_again_with_values_spelt_another_way_but_stored_alike_replays(
    store: Store, first: dict[str, Any], again: dict[str, Any]
) -> None:
    request = {"action": "create", "type": "Deal", "idempotencyKey": "k"}
    written = store.do(TENANT, AGENT, {**request, "data": first})
    replay = store.do(TENANT, AGENT, {**request, "data": again})

    assert replay["replayed"] is True and replay["entity"] == written["entity"]
    assert event_count(store) == 1
    with pytest.raises(ValidationFailed):  # a value that is stored otherwise is another request
        store.do(TENANT, AGENT, {**request, "data": {**first, "value": 100.5}})


def test_an_idempotency_key_of_a_contact_sent_again_with_the_email_domain_in_capitals_replays(store: Store) -> None:
    request = {"action": "create", "type": "Contact", "idempotencyKey": "k"}
    written = store.do(TENANT, AGENT, {**request, "data": {"name": "A", "email": "ann@example.com"}})
    replay = store.do(TENANT, AGENT, {**request, "data": {"name": "A", "email": "ann@EXAMPLE.com"}})

    assert replay["replayed"] is True and replay["entity"] == written["entity"]
    with pytest.raises(ValidationFailed):  # the part before @ is kept as written: another address
        store.do(TENANT, AGENT, {**request, "data": {"name": "A", "email": "ANN@example.com"}})


def test_an_idempotent_rollback_sent_again_with_its_time_at_another_offset_replays(store: Store, clock: Any) -> None:
    deal = create(store, "Deal", {"name": "D", "value": 1})["entity"]
    clock.advance(60)
    store.do(TENANT, AGENT, {"action": "update", "type": "Deal", "id": deal["$id"], "data": {"value": 2}})
    request = {"action": "rollback", "type": "Deal", "id": deal["$id"], "idempotencyKey": "undo"}
    written = store.do(TENANT, AGENT, {**request, "asOf": "2026-01-15T10:00:30Z"})
    replay = store.do(TENANT, AGENT, {**request, "asOf": "2026-01-15T05:00:30-05:00"})

    assert replay["replayed"] is True and replay["events"] == written["events"]
    assert event_count(store) == 3


def test_an_idempotent_create_sent_again_with_nulls_for_fields_it_left_out_replays(store: Store) -> None:
    request = {"action": "create", "type": "Contact", "idempotencyKey": "k"}
    written = store.do(TENANT, AGENT, {**request, "data": {"name": "A"}})
    replay = store.do(TENANT, AGENT, {**request, "data": {"name": "A", "stage": None, "title": None}})
    with pytest.raises(ValidationFailed):  # a null for a field the noun does not have is not left out
        store.do(TENANT, AGENT, {**request, "data": {"name": "A", "nickname": None}})

    assert replay["replayed"] is True and replay["entity"] == written["entity"]
    assert event_count(store) == 1


def test_an_idempotent_create_sent_again_with_empty_data_or_none_replays(store: Store) -> None:
    request = {"action": "create", "type": "Organization", "idempotencyKey": "k"}
    store.do(TENANT, AGENT, {**request, "data": {"name": "Acme"}})
    verb = {"action": "qualify", "type": "Contact", "id": contact(store)["$id"], "idempotencyKey": "q"}
    qualified = store.do(TENANT, AGENT, {**verb, "data": {}})

    assert store.do(TENANT, AGENT, {**request, "data": {"name": "Acme", "industry": None}})["replayed"] is True
    assert store.do(TENANT, AGENT, verb) == {**qualified, "replayed": True}
    assert event_count(store) == 3


def test_a_key_kept_before_requests_were_compared_as_stored_still_replays_the_same_request(
    store: Store, tmp_path: Path
) -> None:
    request = {"action": "create", "type": "Deal", "data": {"name": "D", "value": 100.0}, "idempotencyKey": "k"}
    written = store.do(TENANT, AGENT, request)
    as_given = request_digest(Operation.model_validate(request))  # what the release before kept
    with sqlite3.connect(tenant_path(tmp_path / "data", TENANT)) as db:
        assert db.execute("UPDATE idempotency SET request = ? WHERE key = 'k'", (as_given,)).rowcount == 1

    replay = store.do(TENANT, AGENT, request)

    assert replay["replayed"] is True and replay["entity"] == written["entity"]
    assert event_count(store) == 1


def test_a_refused_write_does_not_burn_its_idempotency_key(store: Store) -> None:
    request: dict[str, Any] = {"action": "create", "type": "Deal", "data": {"name": "D"}, "idempotencyKey": "k"}
    with pytest.raises(ValidationFailed):
        store.do(TENANT, AGENT, request)
    request["data"] = {"name": "D", "value": 5}
    result = store.do(TENANT, AGENT, request)
    assert "replayed" not in result
    assert result["entity"]["value"] == 5


# ---- reason, dryRun -------------------------------------------------------------------------------


def test_the_reason_is_stored_on_the_event(store: Store) -> None:
    alice = contact(store)
    result = store.do(
        TENANT, AGENT, {"action": "qualify", "type": "Contact", "id": alice["$id"], "reason": "replied to pricing"}
    )
    event_id = result["events"][0]["id"]
    assert result["events"][0]["reason"] == "replied to pricing"
    assert store.event(TENANT, event_id)["reason"] == "replied to pricing"
    assert store.events(TENANT, filter={"target": alice["$id"]})["results"][1]["reason"] == "replied to pricing"


def test_dry_run_create_returns_the_would_be_entity_and_events_and_writes_nothing(store: Store) -> None:
    result = store.do(TENANT, AGENT, {"action": "create", "type": "Contact", "data": {"name": "Alice"}, "dryRun": True})
    assert result["dryRun"] is True
    entity = result["entity"]
    assert re.fullmatch(r"contact_[A-Za-z0-9]{9,}", entity["$id"])
    assert entity["stage"] == "Lead"
    assert entity["$version"] == 1
    assert [e["type"] for e in result["events"]] == ["Contact.Created"]
    assert event_count(store) == 0
    assert store.find(TENANT, "Contact")["total"] == 0
    with pytest.raises(NotFound):
        store.get(TENANT, "Contact", entity["$id"])


def test_dry_run_update_shows_the_change_and_leaves_the_entity_alone(store: Store) -> None:
    alice = contact(store)
    result = store.do(
        TENANT,
        AGENT,
        {"action": "update", "type": "Contact", "id": alice["$id"], "data": {"title": "CTO"}, "dryRun": True},
    )
    assert result["dryRun"] is True
    assert result["entity"]["title"] == "CTO"
    assert result["entity"]["$version"] == 2
    assert result["events"][0]["data"] == {"title": "null -> CTO"}
    assert store.get(TENANT, "Contact", alice["$id"]) == alice
    assert event_count(store) == 1
    real = store.do(TENANT, AGENT, {"action": "update", "type": "Contact", "id": alice["$id"], "data": {"title": "X"}})
    assert real["events"][0]["seq"] == 2


def test_dry_run_is_still_validated(store: Store) -> None:
    with pytest.raises(ValidationFailed):
        store.do(TENANT, AGENT, {"action": "create", "type": "Deal", "data": {"name": "D"}, "dryRun": True})


# ---- unique fields --------------------------------------------------------------------------------


def test_a_unique_field_is_refused_when_taken_naming_the_other_entity(store: Store) -> None:
    alice = contact(store, email="alice@startup.io")
    with pytest.raises(ValidationFailed) as exc:
        create(store, "Contact", {"name": "Alice 2", "email": "alice@startup.io"})
    assert alice["$id"] in exc.value.message
    bob = contact(store, email="bob@startup.io")
    with pytest.raises(ValidationFailed) as exc:
        store.do(
            TENANT,
            AGENT,
            {"action": "update", "type": "Contact", "id": bob["$id"], "data": {"email": "alice@startup.io"}},
        )
    assert alice["$id"] in exc.value.message
    assert store.get(TENANT, "Contact", bob["$id"])["email"] == "bob@startup.io"
    assert event_count(store) == 2


def test_a_unique_value_is_freed_when_its_entity_is_deleted_or_changes(store: Store) -> None:
    alice = contact(store, email="alice@startup.io")
    store.do(TENANT, AGENT, {"action": "delete", "type": "Contact", "id": alice["$id"]})
    again = contact(store, email="alice@startup.io")
    assert again["$id"] != alice["$id"]
    store.do(TENANT, AGENT, {"action": "update", "type": "Contact", "id": again["$id"], "data": {"email": "a2@x.io"}})
    third = contact(store, email="alice@startup.io")
    assert third["email"] == "alice@startup.io"


def test_an_organization_domain_is_unique_too(store: Store) -> None:
    first = create(store, "Organization", {"name": "Acme", "domain": "acme.com"})["entity"]
    with pytest.raises(ValidationFailed) as exc:
        create(store, "Organization", {"name": "Acme 2", "domain": "acme.com"})
    assert first["$id"] in exc.value.message


# ---- relationships --------------------------------------------------------------------------------


def test_a_relationship_to_an_existing_live_entity_of_the_right_noun_is_accepted(store: Store) -> None:
    org = create(store, "Organization", {"name": "Acme"})["entity"]
    alice = contact(store, organization=org["$id"])
    assert alice["organization"] == org["$id"]
    assert store.get(TENANT, "Contact", alice["$id"], include=["organization"])["organization"]["$id"] == org["$id"]


def test_a_relationship_to_a_missing_entity_is_refused(store: Store) -> None:
    with pytest.raises(ValidationFailed) as exc:
        contact(store, organization="organization_aaaaaaaaaaaa")
    assert "organization_aaaaaaaaaaaa" in exc.value.message
    assert event_count(store) == 0


def test_a_relationship_to_another_noun_is_refused(store: Store) -> None:
    deal = create(store, "Deal", {"name": "D", "value": 1})["entity"]
    with pytest.raises(ValidationFailed) as exc:
        contact(store, organization=deal["$id"])
    assert "organization" in exc.value.message
    assert event_count(store) == 1


def test_a_relationship_to_a_deleted_entity_is_refused(store: Store) -> None:
    org = create(store, "Organization", {"name": "Acme"})["entity"]
    store.do(TENANT, AGENT, {"action": "delete", "type": "Organization", "id": org["$id"]})
    with pytest.raises(ValidationFailed) as exc:
        contact(store, organization=org["$id"])
    assert org["$id"] in exc.value.message
    alice = contact(store)
    with pytest.raises(ValidationFailed):
        store.do(
            TENANT,
            AGENT,
            {"action": "update", "type": "Contact", "id": alice["$id"], "data": {"organization": org["$id"]}},
        )
    assert "organization" not in store.get(TENANT, "Contact", alice["$id"])


def test_an_update_that_sends_back_a_link_to_an_entity_deleted_since_unchanged_is_not_refused_for_it(
    store: Store,
) -> None:
    org = create(store, "Organization", {"name": "Acme"})["entity"]
    alice = contact(store, organization=org["$id"])
    store.do(TENANT, AGENT, {"action": "delete", "type": "Organization", "id": org["$id"]})
    update = {"action": "update", "type": "Contact", "id": alice["$id"]}

    same = store.do(TENANT, AGENT, {**update, "data": {"name": alice["name"], "organization": org["$id"]}})
    edited = store.do(TENANT, AGENT, {**update, "data": {"title": "CTO", "organization": org["$id"]}})
    qualified = store.do(TENANT, AGENT, {**update, "action": "qualify", "data": {"organization": org["$id"]}})

    assert same["unchanged"] is True and same["events"] == []
    assert edited["events"][0]["changes"] == {"title": {"from": None, "to": "CTO"}}
    assert qualified["entity"]["stage"] == "Qualified" and qualified["entity"]["organization"] == org["$id"]


def test_a_list_of_links_may_keep_a_member_deleted_since_but_not_gain_one(tmp_path: Path) -> None:
    with Store(tmp_path / "data", widgets(tmp_path, '"orgs": "-> Organization[]"')) as store:
        first, second, third = (create(store, "Organization", {"name": n})["entity"]["$id"] for n in "ABC")
        widget = create(store, "Widget", {"name": "w", "orgs": [first, second]})["entity"]
        for gone in (second, third):
            store.do(TENANT, AGENT, {"action": "delete", "type": "Organization", "id": gone})
        update = {"action": "update", "type": "Widget", "id": widget["$id"]}

        reordered = store.do(TENANT, AGENT, {**update, "data": {"orgs": [second, first]}})
        with pytest.raises(ValidationFailed) as gained:
            store.do(TENANT, AGENT, {**update, "data": {"orgs": [second, first, third]}})

        assert reordered["entity"]["orgs"] == [second, first]
        assert third in gained.value.message and "deleted" in gained.value.message
        assert store.get(TENANT, "Widget", widget["$id"])["orgs"] == [second, first]


@pytest.mark.parametrize("old", [{"old": "shape"}, [{"a": 1}, "x"], 7])
def test_a_link_field_that_holds_a_value_of_an_older_type_can_be_pointed_at_an_entity(tmp_path: Path, old: Any) -> None:
    as_json, as_link = widgets(tmp_path, '"link": "json"'), widgets(tmp_path, '"link": "-> Organization"')
    with Store(tmp_path / "data", as_json) as before:
        widget = create(before, "Widget", {"name": "w", "link": old})["entity"]
    with Store(tmp_path / "data", as_link) as store:
        org = create(store, "Organization", {"name": "Acme"})["entity"]["$id"]
        updated = store.do(
            TENANT, AGENT, {"action": "update", "type": "Widget", "id": widget["$id"], "data": {"link": org}}
        )
    assert updated["entity"]["link"] == org


def test_a_relationship_in_another_tenant_does_not_count(store: Store) -> None:
    org = store.do("other", AGENT, {"action": "create", "type": "Organization", "data": {"name": "Acme"}})["entity"]
    with pytest.raises(ValidationFailed):
        contact(store, organization=org["$id"])


# ---- refusals of the request itself ---------------------------------------------------------------


def test_an_unknown_type_is_invalid_type_listing_the_nouns(store: Store) -> None:
    with pytest.raises(InvalidType) as exc:
        create(store, "Person", {"name": "Alice"})
    assert exc.value.code == "invalid_type"
    said = exc.value.message + " " + exc.value.hint
    assert "Person" in said
    for noun in ("Contact", "Deal", "Organization"):
        assert noun in said
    with pytest.raises(InvalidType):
        store.get(TENANT, "Person", "person_aaaaaaaaaaaa")


def test_an_unknown_action_is_unknown_verb_listing_the_verbs(store: Store) -> None:
    alice = contact(store)
    with pytest.raises(UnknownVerb) as exc:
        store.do(TENANT, AGENT, {"action": "promote", "type": "Contact", "id": alice["$id"]})
    assert exc.value.code == "unknown_verb"
    said = exc.value.message + " " + exc.value.hint
    assert "promote" in said
    for verb in ("qualify", "capture", "assign", "merge", "enrich"):
        assert verb in said
    with pytest.raises(UnknownVerb):
        store.do(TENANT, AGENT, {"action": "win", "type": "Contact", "id": alice["$id"]})
    assert event_count(store) == 1


def test_a_malformed_id_is_invalid_id(store: Store) -> None:
    for bad_id in ("nonsense", "contact_", "contact_short", "contact_has space!", "Contact_aaaaaaaaaaaa", ""):
        with pytest.raises(InvalidId) as exc:
            store.do(TENANT, AGENT, {"action": "update", "type": "Contact", "id": bad_id, "data": {"title": "x"}})
        assert exc.value.code == "invalid_id"
        with pytest.raises(InvalidId):
            store.get(TENANT, "Contact", bad_id)
    assert event_count(store) == 0


def test_an_id_with_a_trailing_newline_is_invalid_id(store: Store) -> None:
    alice = contact(store)
    with pytest.raises(InvalidId):
        store.do(TENANT, AGENT, {"action": "qualify", "type": "Contact", "id": alice["$id"] + "\n"})
    with pytest.raises(InvalidId):
        store.get(TENANT, "Contact", alice["$id"] + "\n")
    assert event_count(store) == 1


def test_an_id_of_another_noun_is_invalid_id(store: Store) -> None:
    deal = create(store, "Deal", {"name": "D", "value": 1})["entity"]
    with pytest.raises(InvalidId) as exc:
        store.do(TENANT, AGENT, {"action": "qualify", "type": "Contact", "id": deal["$id"]})
    assert "Contact" in exc.value.message + exc.value.hint
    with pytest.raises(InvalidId):
        store.get(TENANT, "Contact", deal["$id"])
    assert store.get(TENANT, "Deal", deal["$id"])["$version"] == 1


def test_messages_put_an_before_a_noun_or_type_that_starts_with_a_vowel_and_a_before_others(store: Store) -> None:
    alice = contact(store)
    with pytest.raises(ValidationFailed) as exc:
        contact(store, organization="acme")
    assert "'organization' must be the $id of an Organization (organization_...)" in exc.value.message
    with pytest.raises(ValidationFailed) as exc:
        create(store, "Organization", {"name": "Acme", "website": 5, "employeeCount": "many"})
    assert "'website' must be a url" in exc.value.message
    assert "'employeeCount' must be an int" in exc.value.message
    with pytest.raises(InvalidId) as invalid:
        store.do(TENANT, AGENT, {"action": "update", "type": "Organization", "id": alice["$id"], "data": {}})
    assert f"{alice['$id']} is not an Organization id" in invalid.value.message


def test_an_unknown_key_in_an_operation_is_a_validation_error_naming_it(store: Store) -> None:
    with pytest.raises(ValidationFailed) as exc:
        store.do(TENANT, AGENT, {"action": "create", "type": "Contact", "data": {"name": "A"}, "colour": "red"})
    assert "colour" in exc.value.message
    assert event_count(store) == 0


@pytest.mark.parametrize(
    ("request_", "refused"),
    [
        ({"action": "create", "type": "Contact", "data": {"name": "A"}, "ifVersion": 3}, ["ifVersion"]),
        ({"action": "update", "type": "Contact", "id": "contact_fX9bL5nRdQ", "asOf": "2026-01-15"}, ["asOf"]),
        ({"action": "qualify", "type": "Contact", "id": "contact_fX9bL5nRdQ", "toVersion": 1}, ["toVersion"]),
        ({"action": "delete", "type": "Contact", "id": "contact_fX9bL5nRdQ", "force": True}, ["force"]),
        ({"action": "revert", "actor": "agent_x", "since": "2026-01-15", "type": "Contact", "id": "contact_fX9bL5nRdQ"},
         ["id", "type"]),
    ],
)  # fmt: skip
def test_a_key_the_action_does_not_read_is_refused_not_ignored(
    store: Store, request_: dict[str, Any], refused: list[str]
) -> None:
    contact(store)
    with pytest.raises(ValidationFailed) as exc:
        store.do(TENANT, AGENT, request_)
    for key in refused:
        assert repr(key) in exc.value.message
    assert "it takes:" in exc.value.message
    assert event_count(store) == 1


BAD_TENANTS = ["../x", "a/b", "CON", "con", "", "a" * 200, "Upper", "-lead", "a.b", "nul", "lpt1", "acme\x00"]


def test_a_bad_tenant_name_is_invalid_tenant_and_touches_no_file(tmp_path: Path, store: Store) -> None:
    for tenant in BAD_TENANTS:
        with pytest.raises(InvalidTenant) as exc:
            store.do(tenant, AGENT, {"action": "create", "type": "Contact", "data": {"name": "A"}})
        assert exc.value.code == "invalid_tenant"
        with pytest.raises(InvalidTenant):
            store.get(tenant, "Contact", "contact_aaaaaaaaaaaa")
        with pytest.raises(InvalidTenant):
            store.find(tenant, "Contact")
        with pytest.raises(InvalidTenant):
            store.events(tenant)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    assert store.tenants() == []


def test_a_tenant_name_with_a_trailing_newline_is_invalid_tenant(tmp_path: Path, store: Store) -> None:
    with pytest.raises(InvalidTenant):
        store.do("acme\n", AGENT, {"action": "create", "type": "Contact", "data": {"name": "A"}})
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_a_good_tenant_name_gets_its_own_file(tmp_path: Path, store: Store) -> None:
    store.do("acme-2", AGENT, {"action": "create", "type": "Contact", "data": {"name": "A"}})
    assert (tmp_path / "data" / "tenants" / "acme-2.db").is_file()
    assert store.tenants() == ["acme-2"]


def test_a_bad_actor_is_invalid_actor_and_writes_nothing(store: Store) -> None:
    for actor in ("bob", "agent_", "robot_x", "agent_a b", "", "Agent_x", "agent_" + "x" * 65):
        with pytest.raises(InvalidActor) as exc:
            store.do(TENANT, actor, {"action": "create", "type": "Contact", "data": {"name": "A"}})
        assert exc.value.code == "invalid_actor"
    assert event_count(store) == 0


def test_an_actor_with_a_trailing_newline_is_invalid_actor(store: Store) -> None:
    with pytest.raises(InvalidActor):
        store.do(TENANT, "user_bob\n", {"action": "create", "type": "Contact", "data": {"name": "A"}})
    assert event_count(store) == 0


def test_good_actors_are_recorded_on_the_event(store: Store) -> None:
    for actor in ("agent_mR4nVkTw", "user_bob", "system_cron", "agent_a-b_c", "agent_" + "x" * 64):
        result = store.do(TENANT, actor, {"action": "create", "type": "Contact", "data": {"name": "A"}})
        assert result["events"][0]["actor"] == actor
        assert result["entity"]["$createdBy"] == actor
    assert event_count(store) == 5


def test_timestamps_are_rfc3339_utc_with_microseconds(store: Store, clock: Any) -> None:
    clock.advance(0.000123)
    alice = contact(store)
    assert RFC3339_US.match(alice["$createdAt"])
    assert alice["$createdAt"] == "2026-01-15T10:00:00.000123Z"
