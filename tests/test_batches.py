"""Batches: `{"operations": [...]}` is atomic, may refer to earlier results with `$ref:N`, and can be dry-run."""

from __future__ import annotations

from typing import Any

import pytest

from server.errors import HeadlesslyError, NotFound, ValidationFailed
from server.store import Store
from server.timeutil import parse_time

TENANT = "acme"
AGENT = "agent_mR4nVkTw"


def batch(store: Store, *ops: dict[str, Any], dry_run: bool | None = None) -> dict[str, Any]:
    request: dict[str, Any] = {"operations": list(ops)}
    if dry_run is not None:
        request["dryRun"] = dry_run
    return store.do(TENANT, AGENT, request)


def nothing_written(store: Store) -> None:
    assert store.events(TENANT)["total"] == 0
    for noun in ("Organization", "Contact", "Deal"):
        assert store.find(TENANT, noun, include_deleted=True)["total"] == 0
    if TENANT not in store.tenants():
        return  # refused before the tenant was opened: it has no file at all
    report = store.verify(TENANT)
    assert report["ok"] is True, report["problems"]
    assert report["events"] == 0
    assert report["entities"] == 0


def test_a_batch_writes_every_operation_and_links_them_with_refs(store: Store) -> None:
    result = batch(
        store,
        {"action": "create", "type": "Organization", "data": {"name": "Startup Inc", "domain": "startup.io"}},
        {"action": "create", "type": "Contact", "data": {"name": "Alice", "organization": "$ref:0"}},
        {
            "action": "create",
            "type": "Deal",
            "data": {"name": "Pilot", "value": 5000, "organization": "$ref:0", "contact": "$ref:1"},
        },
    )
    org, alice, deal = (r["entity"] for r in result["results"])
    assert alice["organization"] == org["$id"]
    assert deal["organization"] == org["$id"]
    assert deal["contact"] == alice["$id"]
    assert store.get(TENANT, "Deal", deal["$id"]) == deal
    assert store.get(TENANT, "Contact", alice["$id"])["organization"] == org["$id"]
    events = store.events(TENANT)["results"]
    assert [e["type"] for e in events] == ["Organization.Created", "Contact.Created", "Deal.Created"]
    assert [e["seq"] for e in events] == [1, 2, 3]
    assert [r["events"][0]["id"] for r in result["results"]] == [e["id"] for e in events]
    assert events[1]["data"]["organization"] == org["$id"]


def test_a_ref_can_name_the_id_of_a_later_operation(store: Store) -> None:
    result = batch(
        store,
        {"action": "create", "type": "Contact", "data": {"name": "Alice"}},
        {"action": "qualify", "type": "Contact", "id": "$ref:0", "reason": "hot"},
        {"action": "update", "type": "Contact", "id": "$ref:0", "data": {"title": "CTO"}},
    )
    created, qualified, updated = result["results"]
    alice = created["entity"]["$id"]
    assert qualified["entity"]["$id"] == alice
    assert qualified["events"][0]["type"] == "Contact.Qualified"
    assert updated["entity"]["$version"] == 3
    current = store.get(TENANT, "Contact", alice)
    assert current["stage"] == "Qualified"
    assert current["title"] == "CTO"
    assert current["$version"] == 3


def test_a_batch_whose_last_operation_fails_leaves_nothing_behind(store: Store) -> None:
    with pytest.raises(ValidationFailed) as exc:
        batch(
            store,
            {"action": "create", "type": "Organization", "data": {"name": "Startup Inc", "domain": "startup.io"}},
            {"action": "create", "type": "Contact", "data": {"name": "Alice", "email": "a@startup.io"}},
            {"action": "qualify", "type": "Contact", "id": "$ref:1"},
            {"action": "create", "type": "Deal", "data": {"name": "No value"}},
        )
    assert "operations[3]" in exc.value.message
    nothing_written(store)
    # the unique values the refused batch wanted are still free
    batch(
        store,
        {"action": "create", "type": "Organization", "data": {"name": "Startup Inc", "domain": "startup.io"}},
        {"action": "create", "type": "Contact", "data": {"name": "Alice", "email": "a@startup.io"}},
    )
    assert store.events(TENANT)["total"] == 2


def test_a_failed_batch_leaves_existing_entities_as_they_were(store: Store) -> None:
    alice = store.do(TENANT, AGENT, {"action": "create", "type": "Contact", "data": {"name": "Alice"}})["entity"]
    with pytest.raises(HeadlesslyError):
        batch(
            store,
            {"action": "update", "type": "Contact", "id": alice["$id"], "data": {"title": "CTO"}},
            {"action": "qualify", "type": "Contact", "id": alice["$id"]},
            {"action": "delete", "type": "Contact", "id": alice["$id"]},
            {"action": "update", "type": "Contact", "id": "contact_aaaaaaaaaaaa", "data": {"title": "x"}},
        )
    assert store.get(TENANT, "Contact", alice["$id"]) == alice
    assert store.events(TENANT)["total"] == 1
    assert store.verify(TENANT)["ok"] is True


def test_the_error_names_the_failing_operation_index(store: Store) -> None:
    with pytest.raises(ValidationFailed) as exc:
        batch(
            store,
            {"action": "create", "type": "Contact", "data": {"name": "Alice"}},
            {"action": "create", "type": "Contact", "data": {"name": "Bob"}},
            {"action": "create", "type": "Contact", "data": {"name": "Carol", "stage": "Boss"}},
            {"action": "create", "type": "Contact", "data": {"name": "Dave"}},
        )
    assert "operations[2]" in exc.value.message
    assert "operations[0]" not in exc.value.message
    assert "stage" in exc.value.message
    nothing_written(store)


def test_a_malformed_operation_in_a_batch_is_named_by_its_index(store: Store) -> None:
    with pytest.raises(ValidationFailed) as exc:
        batch(
            store,
            {"action": "create", "type": "Contact", "data": {"name": "Alice"}},
            {"action": "create", "type": "Contact", "data": {"name": "Bob"}, "colour": "red"},
        )
    assert "operations[1]" in exc.value.message
    assert "colour" in exc.value.message
    nothing_written(store)


@pytest.mark.parametrize("key", ["ifVersion", "toVersion"])
def test_true_is_not_taken_for_version_1_in_a_batch(store: Store, key: str) -> None:
    created = store.do("acme", "agent_a", {"action": "create", "type": "Contact", "data": {"name": "Alice"}})
    contact = created["entity"]["$id"]
    action = "update" if key == "ifVersion" else "rollback"
    with pytest.raises(ValidationFailed) as exc:
        batch(store, {"action": action, "type": "Contact", "id": contact, "data": {"title": "x"}, key: True})
    assert f"'{key}'" in exc.value.message and "not true or false" in exc.value.message
    assert store.get("acme", "Contact", contact)["$version"] == 1


def test_unique_values_collide_inside_one_batch(store: Store) -> None:
    with pytest.raises(ValidationFailed) as exc:
        batch(
            store,
            {"action": "create", "type": "Contact", "data": {"name": "Alice", "email": "a@startup.io"}},
            {"action": "create", "type": "Contact", "data": {"name": "Alice 2", "email": "a@startup.io"}},
        )
    assert "operations[1]" in exc.value.message
    nothing_written(store)


@pytest.mark.parametrize(
    "ops",
    [
        [
            {"action": "create", "type": "Contact", "data": {"name": "Alice", "organization": "$ref:1"}},
            {"action": "create", "type": "Organization", "data": {"name": "Startup Inc"}},
        ],
        [
            {"action": "create", "type": "Organization", "data": {"name": "Startup Inc"}},
            {"action": "create", "type": "Contact", "data": {"name": "Alice", "organization": "$ref:7"}},
        ],
        [
            {"action": "create", "type": "Contact", "data": {"name": "Alice"}},
            {"action": "qualify", "type": "Contact", "id": "$ref:1"},
        ],
    ],
    ids=["later-index-in-data", "out-of-range-in-data", "own-index-as-id"],
)
def test_a_ref_to_a_later_or_missing_index_is_refused(store: Store, ops: list[dict[str, Any]]) -> None:
    with pytest.raises(ValidationFailed) as exc:
        batch(store, *ops)
    assert "$ref:" in exc.value.message
    nothing_written(store)


@pytest.mark.parametrize(
    "ref",
    ["$ref:" + "9" * 4301, "$ref:" + "1" * 10, "$ref:\u0660", "$ref:\U0001d7ce", "$ref:0\n", " $ref:0", "$ref:-0"],
    ids=[
        "past-int-digits",
        "ten-digits",
        "arabic-indic-zero",
        "math-zero",
        "trailing-newline",
        "leading-space",
        "minus",
    ],
)
def test_a_ref_that_is_not_ascii_digits_naming_an_earlier_operation_is_a_validation_error(
    store: Store, ref: str
) -> None:
    with pytest.raises(ValidationFailed):
        batch(
            store,
            {"action": "create", "type": "Organization", "data": {"name": "Startup Inc"}},
            {"action": "create", "type": "Contact", "data": {"name": "Alice", "organization": ref}},
        )
    nothing_written(store)


@pytest.mark.parametrize(
    "ref",
    ["$ref:00", "$ref:01", "$ref:-1", "$ref:+0", "$ref: 0", "$ref:0 ", "$REF:0", "$ref0", "$ref", "$ref:", " $ref:0"],
)
@pytest.mark.parametrize("where", ["data", "id"])
def test_a_near_miss_of_a_ref_is_a_validation_error_giving_the_form_and_the_refs_that_can_be_named(
    store: Store, ref: str, where: str
) -> None:
    second = (
        {"action": "create", "type": "Contact", "data": {"name": "Alice", "organization": ref}}
        if where == "data"
        else {"action": "update", "type": "Organization", "id": ref, "data": {"name": "Acme"}}
    )
    with pytest.raises(ValidationFailed) as exc:
        batch(store, {"action": "create", "type": "Organization", "data": {"name": "Startup Inc"}}, second)
    assert exc.value.message.startswith(f"operations[1] ({second['action']}): {ref!r} is not a $ref: a $ref is ")
    assert '"$ref:N", N the index of an earlier operation in digits (0, 1, 2, ...: no sign, space or leading zero)' in (
        exc.value.message
    )
    assert "; this operation can name $ref:0 (the whole batch was refused" in exc.value.message
    nothing_written(store)


@pytest.mark.parametrize(("op", "said"), [(5, "got 5"), (None, "got null"), (["create"], 'got ["create"]')])
def test_an_operation_that_is_not_an_object_is_refused_showing_it_as_json(store: Store, op: Any, said: str) -> None:
    with pytest.raises(ValidationFailed) as exc:
        batch(store, {"action": "create", "type": "Organization", "data": {"name": "Startup Inc"}}, op)
    assert exc.value.message == f"operations[1]: an operation must be an object, {said}"
    nothing_written(store)


def test_a_ref_to_a_revert_says_the_revert_names_no_entity_and_which_refs_can_be_named(store: Store) -> None:
    with pytest.raises(ValidationFailed) as exc:
        batch(
            store,
            {"action": "create", "type": "Organization", "data": {"name": "Startup Inc"}},
            {"action": "revert", "actor": "agent_nobody", "since": "2026-01-01"},
            {"action": "create", "type": "Organization", "data": {"name": "Acme"}},
            {"action": "update", "type": "Organization", "id": "$ref:1", "data": {"name": "Acme 2"}},
        )
    assert exc.value.message == (
        "operations[3] (update): $ref:1 names operations[1], a revert, which acts on no single entity: a $ref names "
        "an operation whose result has an entity (not a revert); this operation can name $ref:0, $ref:2 "
        "(the whole batch was refused; nothing was written)"
    )
    nothing_written(store)


def test_a_ref_to_a_revert_when_no_earlier_operation_has_an_entity_says_so(store: Store) -> None:
    with pytest.raises(ValidationFailed) as exc:
        batch(
            store,
            {"action": "revert", "actor": "agent_nobody", "since": "2026-01-01"},
            {"action": "update", "type": "Contact", "id": "$ref:0", "data": {"title": "CTO"}},
        )
    assert "$ref:0 names operations[0], a revert, which acts on no single entity" in exc.value.message
    assert "no operation before this one has an entity to name" in exc.value.message
    assert "$ref:0 to $ref:0" not in exc.value.message + exc.value.hint
    nothing_written(store)


def test_a_ref_past_the_earlier_operations_lists_the_refs_that_can_be_named_in_runs(store: Store) -> None:
    with pytest.raises(ValidationFailed) as exc:
        batch(
            store,
            {"action": "create", "type": "Organization", "data": {"name": "A"}},
            {"action": "create", "type": "Organization", "data": {"name": "B"}},
            {"action": "revert", "actor": "agent_nobody", "since": "2026-01-01"},
            {"action": "create", "type": "Organization", "data": {"name": "C"}},
            {"action": "create", "type": "Contact", "data": {"name": "Alice", "organization": "$ref:4"}},
        )
    assert exc.value.message.startswith(
        "operations[4] (create): $ref:4 does not name an earlier operation: a $ref names the entity of an operation "
        "before this one; this operation can name $ref:0 to $ref:1, $ref:3 ("
    )
    nothing_written(store)


def test_a_ref_is_only_read_in_a_relationship_so_text_may_say_dollar_ref(store: Store) -> None:
    result = store.do(
        TENANT,
        AGENT,
        {
            "operations": [
                {"action": "create", "type": "Organization", "data": {"name": "Acme"}},
                {
                    "action": "create",
                    "type": "Contact",
                    "data": {"name": "Bob", "title": "$ref:0", "organization": "$ref:0"},
                },
            ]
        },
    )
    bob = result["results"][1]["entity"]
    assert bob["title"] == "$ref:0"
    assert bob["organization"] == result["results"][0]["entity"]["$id"]


def test_keys_sent_as_null_or_false_count_as_not_given_in_a_batch_too(store: Store) -> None:
    result = store.do(
        TENANT,
        AGENT,
        {"operations": [
            {"action": "create", "type": "Contact", "id": None, "ifVersion": None, "data": {"name": "Ada"}, "force": False},
            {"action": "update", "type": "Contact", "id": "$ref:0", "asOf": None, "data": {"title": "CTO"}},
        ]},
    )  # fmt: skip
    assert result["results"][1]["entity"]["title"] == "CTO"


def test_a_ref_to_an_operation_of_the_wrong_noun_is_refused(store: Store) -> None:
    with pytest.raises(HeadlesslyError):
        batch(
            store,
            {"action": "create", "type": "Deal", "data": {"name": "D", "value": 1}},
            {"action": "create", "type": "Contact", "data": {"name": "Alice", "organization": "$ref:0"}},
        )
    nothing_written(store)


def test_a_dry_run_batch_shows_every_result_and_writes_nothing(store: Store) -> None:
    result = batch(
        store,
        {"action": "create", "type": "Organization", "data": {"name": "Startup Inc"}},
        {"action": "create", "type": "Contact", "data": {"name": "Alice", "organization": "$ref:0"}},
        {"action": "qualify", "type": "Contact", "id": "$ref:1"},
        dry_run=True,
    )
    assert result["dryRun"] is True
    org, alice, qualified = result["results"]
    assert alice["entity"]["organization"] == org["entity"]["$id"]
    assert qualified["entity"]["stage"] == "Qualified"
    assert qualified["entity"]["$version"] == 2
    assert [r["events"][0]["type"] for r in result["results"]] == [
        "Organization.Created",
        "Contact.Created",
        "Contact.Qualified",
    ]
    nothing_written(store)
    with pytest.raises(NotFound):
        store.get(TENANT, "Contact", alice["entity"]["$id"])


def test_a_dry_run_batch_still_refuses_what_would_fail(store: Store) -> None:
    with pytest.raises(ValidationFailed) as exc:
        batch(
            store,
            {"action": "create", "type": "Contact", "data": {"name": "Alice"}},
            {"action": "create", "type": "Deal", "data": {"name": "D"}},
            dry_run=True,
        )
    assert "operations[1]" in exc.value.message
    nothing_written(store)


def test_a_batch_is_refused_when_empty_or_with_stray_keys(store: Store) -> None:
    with pytest.raises(ValidationFailed):
        store.do(TENANT, AGENT, {"operations": []})
    with pytest.raises(ValidationFailed):
        store.do(
            TENANT,
            AGENT,
            {"operations": [{"action": "create", "type": "Contact", "data": {"name": "A"}}], "reason": "x"},
        )
    nothing_written(store)


def test_batch_results_keep_the_order_of_the_operations(store: Store) -> None:
    names = [f"Contact {i}" for i in range(30)]
    result = batch(store, *({"action": "create", "type": "Contact", "data": {"name": n}} for n in names))
    assert [r["entity"]["name"] for r in result["results"]] == names
    assert [r["events"][0]["seq"] for r in result["results"]] == list(range(1, 31))
    stamps = [r["events"][0]["timestamp"] for r in result["results"]]
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == 30


def test_an_idempotency_key_covers_what_its_refs_name_so_a_ref_to_another_entity_is_another_request(
    store: Store,
) -> None:
    qualify = {"action": "qualify", "type": "Contact", "id": "$ref:0", "idempotencyKey": "q1"}
    first = batch(store, {"action": "create", "type": "Contact", "data": {"name": "Alice"}}, qualify)
    alice = first["results"][0]["entity"]["$id"]
    with pytest.raises(ValidationFailed) as exc:
        batch(store, {"action": "create", "type": "Contact", "data": {"name": "Bob"}}, qualify)
    assert "q1" in exc.value.message and "another request" in exc.value.message
    assert store.find(TENANT, "Contact")["total"] == 1
    # the same batch again, each operation with its key: every ref names the same entity, so it replays
    keyed = ({"action": "create", "type": "Contact", "data": {"name": "Carol"}, "idempotencyKey": "c1"}, {**qualify, "idempotencyKey": "q2"})  # fmt: skip
    once = batch(store, *keyed)
    again = batch(store, *keyed)
    assert [r.get("replayed") for r in again["results"]] == [True, True]
    assert again["results"][1]["entity"] == once["results"][1]["entity"]
    assert store.get(TENANT, "Contact", alice)["stage"] == "Qualified"
    assert store.find(TENANT, "Contact")["total"] == 2


def test_a_batch_that_would_write_more_than_the_state_budget_is_refused_whole(store: Store) -> None:
    from server.errors import LimitExceeded
    from server.store.mutations import MAX_REQUEST_STATE, MAX_STATE_BYTES

    big = "x" * (MAX_STATE_BYTES - 1_000)
    note = store.do(TENANT, AGENT, {"action": "create", "type": "Contact", "data": {"name": "Big", "title": big}})
    entity_id = note["entity"]["$id"]
    updates = [
        {"action": "update", "type": "Contact", "id": entity_id, "data": {"phone": str(i)}}
        for i in range(MAX_REQUEST_STATE // MAX_STATE_BYTES + 2)
    ]
    with pytest.raises(LimitExceeded) as exc:
        batch(store, *updates)
    assert "characters of entity state" in exc.value.message and exc.value.hint
    assert store.events(TENANT)["total"] == 1
    assert store.get(TENANT, "Contact", entity_id)["$version"] == 1
    assert len(batch(store, *updates[:10])["results"]) == 10


def test_a_batchs_events_take_consecutive_microseconds_from_its_first(tmp_path: Any, schemas: Any) -> None:
    """An asOf can fall between a batch's events (it reads the events stamped by then, as CONTRACT §6 defines
    it) only within those few microseconds, however long the batch took to write."""
    ticks = iter(range(1_768_471_200_000_000, 1_768_471_300_000_000, 1_000_000))  # a clock a second on at each look
    with Store(tmp_path / "data", schemas, clock=lambda: next(ticks)) as s:
        ops = [{"action": "create", "type": "Contact", "data": {"name": n}} for n in ("A", "B", "C")]
        stamps = [r["events"][0]["timestamp"] for r in s.do(TENANT, AGENT, {"operations": ops})["results"]]
        after = s.do(TENANT, AGENT, {"action": "create", "type": "Contact", "data": {"name": "D"}})
    first = parse_time(stamps[0])
    assert [parse_time(t) for t in stamps] == [first, first + 1, first + 2]
    assert parse_time(after["events"][0]["timestamp"]) - first >= 1_000_000  # the next request: the clock again
