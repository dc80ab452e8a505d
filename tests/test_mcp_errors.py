"""Every CONTRACT error code reaches the agent as a tool error whose text is {"error", "message", "hint"}."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, Implementation
from mcp_types import CallToolResult

from server.auth.identity import LocalIdentity, TokenVerifier
from server.auth.tokens import TokenStore
from server.errors import ValidationFailed
from server.store import Store
from server.tools.app import build_server

TENANT = "acme"
ACTOR = "agent_tester"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def connect(store: Store) -> AsyncIterator[Client]:
    server = build_server(store, LocalIdentity(TENANT, ACTOR))
    async with Client(server, client_info=Implementation(name="error tests", version="1")) as client:
        yield client


def check_error(result: CallToolResult, code: str) -> dict[str, Any]:
    """The parsed CONTRACT error of a tool error, after checking its shape and code."""
    assert result.is_error is True, result.structured_content
    assert len(result.content) >= 1
    text = result.content[0].text  # type: ignore[union-attr]
    body: dict[str, Any] = json.loads(text)
    assert {"error", "message", "hint"} <= body.keys(), body
    assert body["error"] == code, body
    assert isinstance(body["message"], str) and body["message"].strip()
    assert isinstance(body["hint"], str) and body["hint"].strip()
    assert "Traceback" not in text
    assert 'File "' not in text
    return body


def create_contact(store: Store, **data: Any) -> dict[str, Any]:
    return store.do(TENANT, ACTOR, {"action": "create", "type": "Contact", "data": {"name": "Alice", **data}})["entity"]


def event_count(store: Store) -> int:
    return store.events(TENANT)["total"] if TENANT in store.tenants() else 0


# ---- not_found ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_an_unknown_entity_is_not_found(store: Store) -> None:
    async with connect(store) as client:
        result = await client.call_tool("fetch", {"type": "Contact", "id": "contact_doesNotExist1"})
    body = check_error(result, "not_found")
    assert "contact_doesNotExist1" in body["message"]


@pytest.mark.anyio
async def test_an_unknown_event_is_not_found(store: Store) -> None:
    create_contact(store)
    async with connect(store) as client:
        result = await client.call_tool("fetch", {"type": "Event", "id": "evt_doesNotExist1"})
    check_error(result, "not_found")


@pytest.mark.anyio
async def test_a_deleted_entity_is_not_found_with_when_and_by_whom(store: Store, clock: Any) -> None:
    alice = create_contact(store)["$id"]
    clock.advance(60)
    deleted = store.do(TENANT, "user_bob", {"action": "delete", "type": "Contact", "id": alice})["entity"]
    async with connect(store) as client:
        result = await client.call_tool("fetch", {"type": "Contact", "id": alice})
    body = check_error(result, "not_found")
    assert deleted["$deletedAt"] == "2026-01-15T10:01:00.000000Z"
    assert deleted["$deletedAt"] in body["message"]
    assert "user_bob" in body["message"]


@pytest.mark.anyio
async def test_updating_an_unknown_entity_is_not_found_and_writes_nothing(store: Store) -> None:
    async with connect(store) as client:
        result = await client.call_tool(
            "do", {"action": "update", "type": "Contact", "id": "contact_doesNotExist1", "data": {"x": 1}}
        )
    check_error(result, "not_found")
    assert event_count(store) == 0


# ---- invalid_type -------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        ("fetch", {"type": "Contct", "id": "contact_abcdefghij"}),
        ("search", {"type": "Contct"}),
        ("do", {"action": "create", "type": "Contct", "data": {"name": "Alice"}}),
    ],
)
async def test_an_unknown_noun_is_invalid_type_and_the_message_lists_the_nouns(
    store: Store, tool: str, arguments: dict[str, Any]
) -> None:
    async with connect(store) as client:
        result = await client.call_tool(tool, arguments)
    body = check_error(result, "invalid_type")
    assert "Contct" in body["message"]
    listed = body["message"] + " " + body["hint"]
    for noun in ("Contact", "Deal", "Organization"):
        assert noun in listed
    assert event_count(store) == 0


@pytest.mark.anyio
async def test_an_unknown_noun_in_the_schema_is_invalid_type(store: Store) -> None:
    async with connect(store) as client:
        result = await client.call_tool("fetch", {"type": "Schema", "id": "Contct"})
        built_in = await client.call_tool("fetch", {"type": "Schema", "id": "Event"})
    body = check_error(result, "invalid_type")
    assert "Contact" in body["message"] + body["hint"]
    assert "'Event'" in check_error(built_in, "invalid_type")["message"]
    assert "Event" not in check_error(built_in, "invalid_type")["message"].split("nouns are:")[1]


# ---- invalid_id ---------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("bad_id", ["deal_abcdefghij", "not an id", "contact_x"])
async def test_an_id_of_the_wrong_shape_or_noun_is_invalid_id(store: Store, bad_id: str) -> None:
    async with connect(store) as client:
        result = await client.call_tool("fetch", {"type": "Contact", "id": bad_id})
    check_error(result, "invalid_id")


# ---- validation_error ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_missing_required_data_is_a_validation_error_naming_the_field(store: Store) -> None:
    async with connect(store) as client:
        result = await client.call_tool("do", {"action": "create", "type": "Contact", "data": {"title": "CTO"}})
    body = check_error(result, "validation_error")
    assert "name" in body["message"]
    assert event_count(store) == 0


@pytest.mark.anyio
async def test_a_value_outside_the_enum_is_a_validation_error_listing_the_values(store: Store) -> None:
    async with connect(store) as client:
        result = await client.call_tool(
            "do", {"action": "create", "type": "Contact", "data": {"name": "Alice", "stage": "Boss"}}
        )
    body = check_error(result, "validation_error")
    assert "Qualified" in body["message"] + body["hint"]
    assert event_count(store) == 0


@pytest.mark.anyio
async def test_a_dollar_key_in_data_is_a_validation_error_naming_the_key(store: Store) -> None:
    async with connect(store) as client:
        result = await client.call_tool(
            "do",
            {"action": "create", "type": "Contact", "data": {"name": "Alice", "$createdBy": "user_root"}},
        )
    body = check_error(result, "validation_error")
    assert "$createdBy" in body["message"]
    assert event_count(store) == 0


@pytest.mark.anyio
async def test_an_unknown_argument_is_a_validation_error(store: Store) -> None:
    async with connect(store) as client:
        result = await client.call_tool(
            "do", {"action": "create", "type": "Contact", "data": {"name": "Alice"}, "bogus": 1}
        )
    body = check_error(result, "validation_error")
    assert "bogus" in body["message"]
    assert event_count(store) == 0


@pytest.mark.anyio
async def test_a_time_over_128_characters_is_refused_alike_by_every_tool_that_takes_one(store: Store) -> None:
    long = " " * 120 + "2026-01-15T10:00:00Z"
    async with connect(store) as client:
        results = [
            await client.call_tool("fetch", {"type": "Contact", "id": "contact_k7TmPvRxQ2", "asOf": long}),
            await client.call_tool("search", {"type": "Contact", "asOf": long}),
            await client.call_tool("do", {"action": "revert", "actor": "agent_x", "since": long}),
        ]
    for result in results:
        body = check_error(result, "validation_error")
        assert "at most 128 characters" in body["message"]


@pytest.mark.anyio
async def test_an_argument_of_the_wrong_type_is_a_validation_error_naming_it(store: Store) -> None:
    async with connect(store) as client:
        result = await client.call_tool("search", {"type": "Contact", "limit": "abc"})
    body = check_error(result, "validation_error")
    assert "limit" in body["message"]


@pytest.mark.parametrize(
    ("tool", "args", "named"),
    [
        ("fetch", {"type": "Schema", "id": "Deal", "version": 2}, ["version"]),
        ("fetch", {"type": "Schema", "asOf": "garbage", "fields": ["nope"]}, ["asOf", "fields"]),
        ("fetch", {"type": "Event", "id": "evt_123456789", "include": ["zzz"]}, ["include"]),
        (
            "fetch",
            {"type": "Event", "id": "evt_123456789", "fields": ["type"], "asOf": "2026-01-01"},
            ["asOf", "fields"],
        ),
        ("search", {"type": "Schema", "filter": {"nope": {"$bogus": 1}}}, ["filter"]),
        ("search", {"type": "Schema", "sort": "nonsense", "query": "x"}, ["query", "sort"]),
        ("search", {"type": "Schema", "asOf": "not-a-time", "includeDeleted": True}, ["asOf", "includeDeleted"]),
        ("search", {"type": "Event", "query": "alice"}, ["query"]),
        ("search", {"type": "Event", "asOf": "2026-01-01", "includeDeleted": True}, ["asOf", "includeDeleted"]),
    ],
)
@pytest.mark.anyio
async def test_an_argument_that_does_not_apply_to_events_or_the_schema_is_a_validation_error_naming_it(
    store: Store, tool: str, args: dict[str, Any], named: list[str]
) -> None:
    async with connect(store) as client:
        result = await client.call_tool(tool, args)
    body = check_error(result, "validation_error")
    for name in named:
        assert name in body["message"] and name in body["hint"]


@pytest.mark.anyio
async def test_a_forged_schema_search_cursor_is_invalid_cursor(store: Store) -> None:
    async with connect(store) as client:
        first = await client.call_tool("search", {"type": "Schema", "limit": 2})
        assert first.is_error is False
        forged = await client.call_tool("search", {"type": "Schema", "cursor": "eyJiIjoiIiwiYyI6IiJ9"})
        of_events = await client.call_tool("search", {"type": "Event", "cursor": first.structured_content["cursor"]})  # type: ignore[index]
    check_error(forged, "invalid_cursor")
    check_error(of_events, "invalid_cursor")


@pytest.mark.parametrize(
    ("tool", "args", "named"),
    [
        ("do", {"action": "update", "type": "Contact", "data": {"title": "x"}, "ifVersion": True}, "ifVersion"),
        ("do", {"action": "rollback", "type": "Contact", "toVersion": True}, "toVersion"),
        ("do", {"action": "update", "type": "Contact", "data": {"title": "x"}, "dryRun": "yes"}, "dryRun"),
        ("fetch", {"type": "Contact", "version": True}, "version"),
        ("search", {"type": "Contact", "limit": True}, "limit"),
        ("search", {"type": "Contact", "includeDeleted": 1}, "includeDeleted"),
    ],
)
@pytest.mark.anyio
async def test_true_for_a_number_or_a_number_for_a_flag_is_a_validation_error_and_writes_nothing(
    store: Store, tool: str, args: dict[str, Any], named: str
) -> None:
    contact = create_contact(store)
    async with connect(store) as client:
        result = await client.call_tool(tool, {**args, "id": contact["$id"]} if tool != "search" else args)
    body = check_error(result, "validation_error")
    assert f"'{named}'" in body["message"]
    assert store.get(TENANT, "Contact", contact["$id"])["$version"] == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("tool", "args"),
    [
        ("fetch", {"type": "Contact", "version": 2**63}),
        ("do", {"action": "rollback", "type": "Contact", "toVersion": 2**63}),
        ("do", {"action": "update", "type": "Contact", "ifVersion": 2**63, "data": {"title": "CTO"}}),
        ("do", {"operations": [{"action": "rollback", "type": "Contact", "toVersion": 2**63}]}),
    ],
)
async def test_a_version_past_64_bits_is_a_validation_error_and_writes_nothing(
    store: Store, tool: str, args: dict[str, Any]
) -> None:
    contact = create_contact(store)
    if "operations" in args:
        args = {"operations": [{**args["operations"][0], "id": contact["$id"]}]}
    async with connect(store) as client:
        result = await client.call_tool(tool, {**args, "id": contact["$id"]} if "operations" not in args else args)
    body = check_error(result, "validation_error")
    assert "9223372036854775807" in body["message"]
    assert store.get(TENANT, "Contact", contact["$id"])["$version"] == 1
    with pytest.raises(ValidationFailed):
        store.get(TENANT, "Contact", contact["$id"], version=2**63)


@pytest.mark.anyio
async def test_operations_together_with_a_single_operation_is_a_validation_error(store: Store) -> None:
    async with connect(store) as client:
        result = await client.call_tool(
            "do",
            {"action": "create", "operations": [{"action": "create", "type": "Contact", "data": {"name": "A"}}]},
        )
    check_error(result, "validation_error")
    assert event_count(store) == 0


@pytest.mark.anyio
@pytest.mark.parametrize(
    "request_",
    [
        {"operations": []},
        {"operations": [{"action": "create", "type": "Contact", "data": {"name": "A"}, "dryRun": True}]},
        {"action": "create", "type": "Contact", "data": {"name": "A"}, "ifVersion": 2},
    ],
)
async def test_a_malformed_batch_or_a_key_the_action_does_not_take_is_a_validation_error_with_a_hint(
    store: Store, request_: dict[str, Any]
) -> None:
    async with connect(store) as client:
        result = await client.call_tool("do", request_)
    check_error(result, "validation_error")
    assert event_count(store) == 0


@pytest.mark.anyio
async def test_an_unknown_tool_is_not_found_naming_the_tools(store: Store) -> None:
    async with connect(store) as client:
        result = await client.call_tool("nope", {})
    body = check_error(result, "not_found")
    assert "'nope'" in body["message"]
    assert "do, fetch, search" in body["message"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("tool", "arguments", "code", "said"),
    [
        ("do", {"action": "create", "type": "Contact", "data": {f"k{i}": 1 for i in range(50_000)}},
         "validation_error", "and 49,990 more unknown fields (known fields: name, "),
        ("fetch", {"type": "Contact", "fields": [f"f{i}" for i in range(20_000)]}, "validation_error",
         "characters left out"),
        ("search", {"type": "Contact", "filter": {"stage": "x" * 100_000}}, "invalid_filter", "characters left out"),
        ("search", {"type": "Contact", "filter": {"n" * 100_000: 1}}, "invalid_filter", "characters left out"),
        ("do", {"operations": [{"action": "create", "type": "Contact", "data": {"n" * 100_000: 1}}]},
         "validation_error", "(the whole batch was refused; nothing was written)"),
        ("fetch", {"type": "Contact", **{f"u{i}": 1 for i in range(5_000)}}, "validation_error",
         "and 4,990 more; valid arguments: "),
        ("do", {"action": "create", "type": "Contact", "u" * 100_000: 1}, "validation_error", "characters left out"),
        ("fetch", {"type": "Contact", "include": [1] * 5_000}, "validation_error", "and 4,990 more"),
        ("do", {"operations": [1] * 5_000}, "validation_error", "and 4,990 more"),
        ("n" * 100_000, {}, "not_found", "characters left out"),
    ],
)  # fmt: skip
async def test_an_error_stays_short_however_large_the_request_that_caused_it(
    store: Store, tool: str, arguments: dict[str, Any], code: str, said: str
) -> None:
    alice = create_contact(store)["$id"]
    if tool == "fetch":
        arguments = {**arguments, "id": alice}
    async with connect(store) as client:
        result = await client.call_tool(tool, arguments)
    body = check_error(result, code)
    assert said in body["message"]
    assert len(body["message"]) <= 2_000 and len(body.get("hint", "")) <= 2_000
    assert event_count(store) == 1


# ---- errors that say how to recover in one step ----------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("tool", "arguments", "code", "said"),
    [
        ("do", {}, "validation_error", "'action' is missing: pass action (with type, id, data ...), or operations"),
        ("do", {"action": "rollback", "type": "Contact", "id": "contact_aaaaaaaaaaaa", "version": 3},
         "validation_error", "did you mean toVersion or ifVersion?"),
        ("search", {"type": "Contact", "filter": {"stage": {"in": ["Lead"]}}}, "invalid_filter",
         "stage: operator keys start with '$' (did you mean $in?)"),
        ("do", {"operations": [{"action": "create", "type": "Contact", "data": {"name": "A", "organization": "$ref:1"}}]},
         "validation_error", "$ref:1 does not name an earlier operation: a $ref names the entity of an operation before this one; there is no operation before this one to name"),
        ("do", {"operations": [{"action": "create", "type": "Organization", "data": {"name": "A"}},
                               {"action": "update", "type": "Organization", "id": "$ref:00", "data": {"name": "B"}}]},
         "validation_error", "'$ref:00' is not a $ref: a $ref is \"$ref:N\""),
        ("search", {"type": "Pipeline", "filter": {"name": {"$gt": None}}}, "invalid_filter",
         "name: $gt got null, which is not a valid string value"),
        ("search", {"type": "Pipeline", "filter": {"isDefault": {"$in": [True, ["A"]]}}}, "invalid_filter",
         'isDefault: $in got ["A"], which is not a valid boolean value'),
        ("search", {"type": "Pipeline", "filter": {"name": {}}}, "invalid_filter",
         "name: {} is an empty operator object; an operator object holds one or more of $eq, $ne,"),
        ("do", {"action": "create", "type": "Pipeline", "data": {"name": "P", "isDefault": "yes", "slug": True}},
         "validation_error", "'slug' must be a string (got true;"),
        ("do", {"action": "frob", "type": "Contact", "id": "contact_aaaaaaaaaaaa"}, "unknown_verb",
         "its actions are: create, update, delete, rollback, qualify, capture, assign, merge, enrich (and revert, which takes no type)"),
        ("do", {"action": "qualfy", "type": "Contact", "id": "contact_aaaaaaaaaaaa", "toVersion": 1}, "unknown_verb",
         "Contact has no action 'qualfy'"),
        ("do", {"action": "update", "type": "Contact", "id": "contact_aaaaaaaaaaaa", "reason": "a\x00"},
         "validation_error", "'reason': text cannot hold a NUL character"),
    ],
)  # fmt: skip
async def test_a_common_slip_gets_an_error_that_names_the_fix(
    store: Store, tool: str, arguments: dict[str, Any], code: str, said: str
) -> None:
    async with connect(store) as client:
        result = await client.call_tool(tool, arguments)
    body = check_error(result, code)
    assert said in body["message"] + " " + body.get("hint", "")


@pytest.mark.anyio
async def test_the_example_in_every_nouns_filter_hint_is_a_filter_that_noun_accepts(store: Store) -> None:
    async with connect(store) as client:
        for noun in store.schemas.names():
            refused = check_error(
                await client.call_tool("search", {"type": noun, "filter": {"nope": 1}}), "invalid_filter"
            )
            example = json.loads(refused["hint"].split("Example: ")[1].rstrip("."))
            accepted = await client.call_tool("search", {"type": noun, "filter": example})
            assert accepted.is_error is False, (noun, example, accepted.content)
            assert "$updatedAt" in example


# ---- search errors ------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "bad_filter",
    [{"nickname": "Al"}, {"name": {"$like": "Al%"}}, {"$or": "not a list"}],
)
async def test_a_bad_filter_is_invalid_filter(store: Store, bad_filter: dict[str, Any]) -> None:
    create_contact(store)
    async with connect(store) as client:
        result = await client.call_tool("search", {"type": "Contact", "filter": bad_filter})
    check_error(result, "invalid_filter")


@pytest.mark.anyio
async def test_an_unknown_filter_field_names_the_valid_fields(store: Store) -> None:
    create_contact(store)
    async with connect(store) as client:
        result = await client.call_tool("search", {"type": "Contact", "filter": {"nickname": "Al"}})
    body = check_error(result, "invalid_filter")
    assert "nickname" in body["message"]
    assert "email" in body["message"] + body["hint"]


@pytest.mark.anyio
async def test_an_unknown_operator_names_the_valid_operators(store: Store) -> None:
    create_contact(store)
    async with connect(store) as client:
        result = await client.call_tool("search", {"type": "Contact", "filter": {"name": {"$like": "A"}}})
    body = check_error(result, "invalid_filter")
    assert "$regex" in body["message"] + body["hint"]


@pytest.mark.anyio
async def test_an_unknown_event_filter_field_is_invalid_filter(store: Store) -> None:
    create_contact(store)
    async with connect(store) as client:
        result = await client.call_tool("search", {"type": "Event", "filter": {"name": "Alice"}})
    check_error(result, "invalid_filter")


@pytest.mark.anyio
@pytest.mark.parametrize("bad_sort", ["nickname", "-nickname", "name,,"])
async def test_a_bad_sort_is_invalid_sort(store: Store, bad_sort: str) -> None:
    create_contact(store)
    async with connect(store) as client:
        result = await client.call_tool("search", {"type": "Contact", "sort": bad_sort})
    check_error(result, "invalid_sort")


@pytest.mark.anyio
async def test_a_forged_cursor_is_invalid_cursor(store: Store) -> None:
    create_contact(store)
    async with connect(store) as client:
        result = await client.call_tool("search", {"type": "Contact", "cursor": "garbage"})
    check_error(result, "invalid_cursor")


@pytest.mark.anyio
async def test_a_cursor_of_another_search_is_invalid_cursor(store: Store, clock: Any) -> None:
    for name in ("Ann", "Ben", "Cy"):
        clock.advance(1)
        create_contact(store, name=name)
    async with connect(store) as client:
        page = await client.call_tool("search", {"type": "Contact", "limit": 1})
        cursor = page.structured_content["cursor"]  # type: ignore[index]
        result = await client.call_tool("search", {"type": "Deal", "limit": 1, "cursor": cursor})
    assert isinstance(cursor, str)
    check_error(result, "invalid_cursor")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("limit", "said"), [(101, "limit 101 "), (1000, "limit 1000 "), (1e308, "limit of 309 digits")]
)
async def test_a_limit_above_100_is_limit_exceeded(store: Store, limit: float, said: str) -> None:
    async with connect(store) as client:
        result = await client.call_tool("search", {"type": "Contact", "limit": limit})
    body = check_error(result, "limit_exceeded")
    assert said in body["message"]
    assert "maximum of 100" in body["message"]


@pytest.mark.anyio
@pytest.mark.parametrize("limit", [0, -1])
async def test_a_limit_below_1_is_a_validation_error(store: Store, limit: int) -> None:
    async with connect(store) as client:
        result = await client.call_tool("search", {"type": "Contact", "limit": limit})
    body = check_error(result, "validation_error")
    assert "limit" in body["message"]


@pytest.mark.anyio
@pytest.mark.parametrize("noun", ["Contact", "Event"])
async def test_fetch_without_an_id_is_invalid_id_with_a_hint_to_search(store: Store, noun: str) -> None:
    async with connect(store) as client:
        result = await client.call_tool("fetch", {"type": noun})
    body = check_error(result, "invalid_id")
    assert body["message"] == f"fetch needs an id: the {'id' if noun == 'Event' else '$id'} of the {noun} to read"
    assert "Search" in body["hint"]


@pytest.mark.anyio
@pytest.mark.parametrize("action", ["update", "delete", "qualify", "rollback"])
async def test_a_write_without_an_id_is_invalid_id_saying_what_needs_it(store: Store, action: str) -> None:
    async with connect(store) as client:
        result = await client.call_tool("do", {"action": action, "type": "Contact"})
    body = check_error(result, "invalid_id")
    assert body["message"] == f"{action} needs an id: the $id of the Contact to {action}"
    assert "contact_" in body["hint"]
    assert event_count(store) == 0


@pytest.mark.anyio
async def test_a_limit_of_100_is_accepted(store: Store) -> None:
    async with connect(store) as client:
        result = await client.call_tool("search", {"type": "Contact", "limit": 100})
    assert result.is_error is False
    assert result.structured_content == {"results": [], "total": 0, "hasMore": False, "cursor": None}


# ---- time ---------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("as_of", ["yesterday", "2026-13-45", "16/01/2026"])
async def test_an_unreadable_time_is_invalid_as_of(store: Store, as_of: str) -> None:
    alice = create_contact(store)["$id"]
    async with connect(store) as client:
        result = await client.call_tool("fetch", {"type": "Contact", "id": alice, "asOf": as_of})
    check_error(result, "invalid_as_of")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("as_of", "said"),
    [
        (
            "2026-01-15T10:00:10+24:00",
            "'2026-01-15T10:00:10+24:00' is not a valid time: its offset is past 23:59 hours",
        ),
        ("2026-02-29", "'2026-02-29' is not a valid date: day is out of range for month"),
        ("\uff12\uff10\uff12\uff16-01-15", "is not an RFC 3339 time with an offset"),
    ],
)
async def test_an_invalid_time_says_what_is_wrong_with_it_in_plain_words(store: Store, as_of: str, said: str) -> None:
    alice = create_contact(store)["$id"]
    async with connect(store) as client:
        result = await client.call_tool("fetch", {"type": "Contact", "id": alice, "asOf": as_of})
    body = check_error(result, "invalid_as_of")
    assert said in body["message"]
    assert "timedelta" not in body["message"] and "isoformat" not in body["message"]


@pytest.mark.anyio
async def test_a_rollback_to_an_unreadable_time_is_invalid_as_of_and_writes_nothing(store: Store) -> None:
    alice = create_contact(store)["$id"]
    async with connect(store) as client:
        result = await client.call_tool(
            "do", {"action": "rollback", "type": "Contact", "id": alice, "asOf": "last tuesday"}
        )
    check_error(result, "invalid_as_of")
    assert event_count(store) == 1


# ---- writes -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_stale_if_version_is_version_conflict_giving_the_current_version(store: Store) -> None:
    alice = create_contact(store)["$id"]
    store.do(TENANT, "user_bob", {"action": "update", "type": "Contact", "id": alice, "data": {"title": "CTO"}})
    async with connect(store) as client:
        result = await client.call_tool(
            "do",
            {"action": "update", "type": "Contact", "id": alice, "data": {"title": "CEO"}, "ifVersion": 1},
        )
    body = check_error(result, "version_conflict")
    assert "2" in body["message"]
    assert body.get("currentVersion", 2) == 2
    assert store.get(TENANT, "Contact", alice)["title"] == "CTO"
    assert event_count(store) == 2


@pytest.mark.anyio
async def test_an_unknown_verb_is_unknown_verb_listing_the_nouns_verbs(store: Store) -> None:
    alice = create_contact(store)["$id"]
    async with connect(store) as client:
        result = await client.call_tool("do", {"action": "frobnicate", "type": "Contact", "id": alice})
    body = check_error(result, "unknown_verb")
    assert "frobnicate" in body["message"]
    assert "qualify" in body["message"] + body["hint"]
    assert event_count(store) == 1


@pytest.mark.anyio
async def test_a_verb_of_another_noun_is_unknown_verb(store: Store) -> None:
    alice = create_contact(store)["$id"]
    async with connect(store) as client:
        result = await client.call_tool("do", {"action": "win", "type": "Contact", "id": alice})
    check_error(result, "unknown_verb")


@pytest.mark.anyio
async def test_a_unique_field_clash_is_a_validation_error_and_writes_nothing(store: Store) -> None:
    create_contact(store, email="alice@startup.io")
    async with connect(store) as client:
        result = await client.call_tool(
            "do",
            {"action": "create", "type": "Contact", "data": {"name": "Other", "email": "alice@startup.io"}},
        )
    body = check_error(result, "validation_error")
    assert "email" in body["message"]
    assert event_count(store) == 1


# ---- read-only tokens (the Forbidden path itself is covered end to end over HTTP) ---------------


@pytest.mark.anyio
async def test_a_read_only_token_verifies_to_read_only_claims(tmp_path: Path) -> None:
    tokens = TokenStore(tmp_path / "data")
    try:
        secret, info = tokens.create(TENANT, "agent_reader", read_only=True)
        access = await TokenVerifier(tokens).verify_token(secret)
    finally:
        tokens.close()
    assert access is not None
    assert access.claims is not None
    assert access.claims["readOnly"] is True
    assert access.claims["tenant"] == TENANT
    assert access.claims["actor"] == "agent_reader"
    assert access.claims["tokenId"] == info.id
    assert "write" not in access.scopes


@pytest.mark.anyio
async def test_a_read_write_token_verifies_to_writable_claims(tmp_path: Path) -> None:
    tokens = TokenStore(tmp_path / "data")
    try:
        secret, _ = tokens.create(TENANT, "agent_writer")
        access = await TokenVerifier(tokens).verify_token(secret)
    finally:
        tokens.close()
    assert access is not None
    assert access.claims is not None
    assert access.claims["readOnly"] is False
    assert access.claims["actor"] == "agent_writer"
    assert "write" in access.scopes


@pytest.mark.anyio
async def test_revoked_and_garbage_tokens_do_not_verify(tmp_path: Path) -> None:
    tokens = TokenStore(tmp_path / "data")
    try:
        secret, info = tokens.create(TENANT, "agent_reader", read_only=True)
        tokens.revoke(info.id)
        verifier = TokenVerifier(tokens)
        revoked = await verifier.verify_token(secret)
        garbage = [
            await verifier.verify_token(bad)
            for bad in ("", "garbage", "hly_", "hly_nothing", f"hly_{info.id}_", secret.replace("hly_", "xyz_"))
        ]
    finally:
        tokens.close()
    assert revoked is None
    assert garbage == [None] * 6
