"""The three MCP tools seen by an agent through the SDK's in-memory client: listing, results and identity."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from conftest import advance_to
from hypothesis import given
from hypothesis import strategies as st
from mcp import Client, Implementation
from mcp_types import CallToolResult

from server.auth.identity import LocalIdentity, actor_from_client_name
from server.store import Store
from server.store.operations import ACTOR
from server.tools.app import build_server

TENANT = "acme"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def connect(
    store: Store, actor: str | None = None, client_name: str | None = "Claude Code", mode: str = "auto"
) -> AsyncIterator[Client]:
    server = build_server(store, LocalIdentity(TENANT, actor))
    info = Implementation(name=client_name, version="1") if client_name is not None else None
    async with Client(server, mode=mode, client_info=info) as client:
        yield client


async def ok(client: Client, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """A successful call's structured content, after checking that its text is the same JSON."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error is False, result.content[0].text
    assert isinstance(result.structured_content, dict)
    assert json.loads(result.content[0].text) == result.structured_content
    return result.structured_content


def error_of(result: CallToolResult) -> dict[str, Any]:
    assert result.is_error is True, result.structured_content
    body: dict[str, Any] = json.loads(result.content[0].text)  # type: ignore[union-attr]
    assert {"error", "message", "hint"} <= body.keys()
    return body


# ---- tools/list ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_tools_list_shows_exactly_fetch_search_and_do(store: Store) -> None:
    async with connect(store) as client:
        tools = (await client.list_tools()).tools
    assert sorted(t.name for t in tools) == ["do", "fetch", "search"]


@pytest.mark.anyio
async def test_read_tools_are_annotated_read_only_and_idempotent_and_do_destructive(store: Store) -> None:
    async with connect(store) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    for name in ("fetch", "search"):
        annotations = tools[name].annotations
        assert annotations is not None
        assert annotations.read_only_hint is True
        assert annotations.idempotent_hint is True
    do_annotations = tools["do"].annotations
    assert do_annotations is not None
    assert do_annotations.destructive_hint is True
    assert do_annotations.read_only_hint is not True


@pytest.mark.anyio
async def test_every_input_property_of_every_tool_has_a_description(store: Store) -> None:
    async with connect(store) as client:
        tools = (await client.list_tools()).tools
    for tool in tools:
        properties = tool.input_schema["properties"]
        assert properties, tool.name
        for name, prop in properties.items():
            assert isinstance(prop.get("description"), str), f"{tool.name}.{name}"
            assert prop["description"].strip(), f"{tool.name}.{name}"


@pytest.mark.anyio
async def test_dos_output_schema_declares_every_key_its_results_carry(store: Store, clock: Any) -> None:
    import jsonschema

    async with connect(store, actor="agent_rogue") as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        declared = set(tools["do"].output_schema["properties"])
        created = await ok(
            client, "do", {"action": "create", "type": "Contact", "data": {"name": "A"}, "idempotencyKey": "k"}
        )
        alice = created["entity"]["$id"]
        results = [
            created,
            await ok(
                client, "do", {"action": "create", "type": "Contact", "data": {"name": "A"}, "idempotencyKey": "k"}
            ),
            await ok(client, "do", {"action": "update", "type": "Contact", "id": alice, "data": {"name": "A"}}),
            await ok(client, "do", {"action": "qualify", "type": "Contact", "id": alice, "dryRun": True}),
            await ok(client, "do", {"action": "revert", "actor": "agent_rogue", "since": "2000-01-01", "dryRun": True}),
            await ok(client, "do", {"operations": [{"action": "delete", "type": "Contact", "id": alice}]}),
        ]
    for result in results:
        assert set(result) <= declared, set(result) - declared
        jsonschema.validate(result, tools["do"].output_schema)


@pytest.mark.anyio
async def test_type_of_fetch_and_search_is_an_enum_of_the_nouns_plus_event_and_schema(store: Store) -> None:
    nouns = set(store.schema()["nouns"])
    assert {"Contact", "Deal", "Organization"} <= nouns
    async with connect(store) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    for name in ("fetch", "search"):
        type_prop = tools[name].input_schema["properties"]["type"]
        assert set(type_prop["enum"]) == nouns | {"Event", "Schema"}
        assert "type" in tools[name].input_schema["required"]


@pytest.mark.anyio
async def test_dos_text_arguments_publish_the_lengths_the_store_takes(store: Store) -> None:
    async with connect(store) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        too_long = await client.call_tool("do", {"action": "create", "type": "Contact", "reason": "r" * 2001})
    bounds = {}
    for name, prop in tools["do"].input_schema["properties"].items():
        for kind in prop.get("anyOf", [prop]):
            if kind.get("type") == "string":
                bounds[name] = (kind.get("minLength", 0), kind.get("maxLength"))

    assert bounds == {
        "action": (1, 64), "id": (0, 100), "asOf": (0, 128), "actor": (0, 80), "since": (0, 128),
        "until": (0, 128), "idempotencyKey": (1, 200), "reason": (0, 2000),
        "type": (0, None),  # (an enum of the nouns)
    }  # fmt: skip
    assert too_long.is_error
    assert "'reason': String should have at most 2000 characters" in too_long.content[0].text  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_versions_are_published_as_64_bit_integers_from_1_and_flags_as_booleans(store: Store) -> None:
    async with connect(store) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}

    def kinds(tool: str, name: str) -> list[dict[str, Any]]:
        prop = tools[tool].input_schema["properties"][name]
        shown = ("type", "minimum", "maximum")
        return [
            {k: v for k, v in kind.items() if k in shown}
            for kind in prop.get("anyOf", [prop])
            if kind.get("type") != "null"
        ]

    for tool, name in (("fetch", "version"), ("do", "ifVersion"), ("do", "toVersion")):
        assert kinds(tool, name) == [{"type": "integer", "minimum": 1, "maximum": 2**63 - 1}], (tool, name)
    assert kinds("search", "limit") == [{"type": "integer"}]
    for tool, name in (("search", "includeDeleted"), ("do", "force"), ("do", "dryRun")):
        assert kinds(tool, name) == [{"type": "boolean"}], (tool, name)


@pytest.mark.anyio
async def test_every_tool_declares_an_output_schema(store: Store) -> None:
    async with connect(store) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    for tool in tools.values():
        assert tool.output_schema is not None, tool.name
        assert tool.output_schema["type"] == "object"
    search_props = tools["search"].output_schema["properties"]
    assert {"results", "total", "hasMore", "cursor"} <= search_props.keys()
    assert {"entity", "events", "results"} <= tools["do"].output_schema["properties"].keys()


# ---- the seed scenario over MCP -----------------------------------------------------------------


@pytest.mark.anyio
async def test_the_seed_scenario_runs_end_to_end_over_mcp(store: Store, clock: Any) -> None:
    agent = "agent_mR4nVkTw"
    async with connect(store, client_name="mR4nVkTw") as client:
        advance_to(clock, "2026-01-15T12:00:00Z")
        created = await ok(
            client,
            "do",
            {"action": "create", "type": "Contact", "data": {"name": "Alice", "email": "alice@startup.io"}},
        )
        alice = created["entity"]["$id"]
        assert alice.startswith("contact_")
        assert created["entity"]["$version"] == 1
        assert created["entity"]["stage"] == "Lead"
        assert created["entity"]["$createdBy"] == agent
        assert created["entity"]["$createdAt"] == "2026-01-15T12:00:00.000000Z"
        assert [e["type"] for e in created["events"]] == ["Contact.Created"]

        advance_to(clock, "2026-01-16T09:30:00Z")
        qualified = await ok(
            client,
            "do",
            {"action": "qualify", "type": "Contact", "id": alice, "reason": "replied to the pricing email"},
        )
        assert qualified["entity"]["stage"] == "Qualified"
        assert qualified["entity"]["$version"] == 2
        (q_event,) = qualified["events"]
        assert q_event["type"] == "Contact.Qualified"
        assert q_event["reason"] == "replied to the pricing email"
        assert q_event["data"] == {"stage": "Lead -> Qualified"}
        assert q_event["actor"] == agent

        advance_to(clock, "2026-01-17T10:00:00Z")
        updated = await ok(
            client,
            "do",
            {"action": "update", "type": "Contact", "id": alice, "data": {"title": "CTO", "phone": "+1 555 0100"}},
        )
        assert updated["entity"]["$version"] == 3
        assert updated["entity"]["title"] == "CTO"
        assert updated["events"][0]["changes"] == {
            "title": {"from": None, "to": "CTO"},
            "phone": {"from": None, "to": "+1 555 0100"},
        }

        history = await ok(client, "search", {"type": "Event", "filter": {"target": alice}})
        assert [(e["type"], e["version"]) for e in history["results"]] == [
            ("Contact.Created", 1),
            ("Contact.Qualified", 2),
            ("Contact.Updated", 3),
        ]
        assert history["total"] == 3
        assert history["hasMore"] is False

        past = await ok(client, "fetch", {"type": "Contact", "id": alice, "asOf": "2026-01-15T15:00:00Z"})
        assert past["$version"] == 1
        assert past["stage"] == "Lead"
        assert "title" not in past

        advance_to(clock, "2026-01-17T14:00:00Z")
        rolled_back = await ok(
            client,
            "do",
            {"action": "rollback", "type": "Contact", "id": alice, "asOf": "2026-01-15T15:00:00.000000Z"},
        )
        (r_event,) = rolled_back["events"]
        assert r_event["type"] == "Contact.Updated"
        assert r_event["version"] == 4
        assert r_event["data"]["rollbackTo"] == "2026-01-15T15:00:00.000000Z"
        assert r_event["data"]["stage"] == "Qualified -> Lead"

        now = await ok(client, "fetch", {"type": "Contact", "id": alice})
    assert now == rolled_back["entity"]
    assert now["$version"] == 4
    assert {k: v for k, v in now.items() if not k.startswith("$")} == {
        "name": "Alice",
        "email": "alice@startup.io",
        "stage": "Lead",
    }
    assert now["$updatedAt"] == "2026-01-17T14:00:00.000000Z"
    assert store.verify(TENANT)["ok"] is True


# ---- fetch --------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_fetch_schema_without_id_lists_every_noun(store: Store) -> None:
    async with connect(store) as client:
        schema = await ok(client, "fetch", {"type": "Schema"})
    assert set(schema["nouns"]) == set(store.schema()["nouns"])
    assert {"Contact", "Deal", "Organization"} <= schema["nouns"].keys()


@pytest.mark.anyio
async def test_fetch_schema_with_a_noun_gives_its_fields_enums_relationships_and_verbs(store: Store) -> None:
    async with connect(store) as client:
        contact = await ok(client, "fetch", {"type": "Schema", "id": "Contact"})
    assert contact["name"] == "Contact"
    assert {"name", "email", "phone", "title", "stage", "status", "organization"} <= contact["fields"].keys()
    assert contact["fields"]["name"]["required"] is True
    assert contact["fields"]["stage"]["enum"] == ["Lead", "Qualified", "Customer", "Churned", "Partner"]
    assert contact["relationships"]["organization"]["noun"] == "Organization"
    assert {"qualify", "capture", "assign", "merge", "enrich"} <= contact["verbs"].keys()


@pytest.mark.anyio
async def test_search_schema_pages_through_every_noun_once_with_the_default_limit_and_a_cursor(store: Store) -> None:
    nouns = sorted(store.schema()["nouns"])
    assert len(nouns) > 25  # so the default limit makes a second page
    async with connect(store) as client:
        first = await ok(client, "search", {"type": "Schema"})
        second = await ok(client, "search", {"type": "Schema", "cursor": first["cursor"]})
        small = await ok(client, "search", {"type": "Schema", "limit": 5})
    assert [r["name"] for r in first["results"]] == nouns[:25]
    assert first["total"] == len(nouns) and first["hasMore"] is True
    assert [r["name"] for r in second["results"]] == nouns[25:]
    assert second["hasMore"] is False and second["cursor"] is None
    assert [r["name"] for r in small["results"]] == nouns[:5]
    assert first["results"][0] == store.schema(nouns[0])


@pytest.mark.anyio
async def test_fetch_event_by_id_returns_the_event_as_written(store: Store) -> None:
    async with connect(store) as client:
        created = await ok(client, "do", {"action": "create", "type": "Contact", "data": {"name": "Alice"}})
        event = created["events"][0]
        fetched = await ok(client, "fetch", {"type": "Event", "id": event["id"]})
    assert fetched == event
    assert fetched == store.event(TENANT, event["id"])


@pytest.mark.anyio
async def test_fetch_with_version_include_and_fields(store: Store) -> None:
    async with connect(store) as client:
        org = await ok(client, "do", {"action": "create", "type": "Organization", "data": {"name": "Startup Inc"}})
        org_id = org["entity"]["$id"]
        alice = await ok(
            client, "do", {"action": "create", "type": "Contact", "data": {"name": "Alice", "organization": org_id}}
        )
        alice_id = alice["entity"]["$id"]
        await ok(client, "do", {"action": "update", "type": "Contact", "id": alice_id, "data": {"title": "CTO"}})
        v1 = await ok(client, "fetch", {"type": "Contact", "id": alice_id, "version": 1})
        with_org = await ok(client, "fetch", {"type": "Contact", "id": alice_id, "include": ["organization"]})
        narrow = await ok(client, "fetch", {"type": "Contact", "id": alice_id, "fields": ["title"]})
    assert v1 == alice["entity"]
    assert with_org["organization"]["$id"] == org_id
    assert with_org["organization"]["name"] == "Startup Inc"
    assert narrow["title"] == "CTO"
    assert "name" not in narrow
    assert narrow["$id"] == alice_id


# ---- search -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_search_filters_sorts_and_pages_with_a_cursor(store: Store, clock: Any) -> None:
    async with connect(store) as client:
        for value in (100, 200, 300, 400, 500):
            clock.advance(1)
            await ok(client, "do", {"action": "create", "type": "Deal", "data": {"name": f"D{value}", "value": value}})
        args = {"type": "Deal", "filter": {"value": {"$gte": 200}}, "sort": "-value", "limit": 2}
        first = await ok(client, "search", args)
        second = await ok(client, "search", {**args, "cursor": first["cursor"]})
    assert [d["value"] for d in first["results"]] == [500, 400]
    assert first["total"] == 4
    assert first["hasMore"] is True
    assert isinstance(first["cursor"], str)
    assert [d["value"] for d in second["results"]] == [300, 200]
    assert second["hasMore"] is False
    assert second["cursor"] is None


@pytest.mark.anyio
async def test_search_defaults_to_most_recently_updated_first(store: Store, clock: Any) -> None:
    async with connect(store) as client:
        ids = []
        for name in ("Ann", "Ben", "Cy"):
            clock.advance(1)
            created = await ok(client, "do", {"action": "create", "type": "Contact", "data": {"name": name}})
            ids.append(created["entity"]["$id"])
        found = await ok(client, "search", {"type": "Contact"})
    assert [c["$id"] for c in found["results"]] == list(reversed(ids))
    assert found["total"] == 3


@pytest.mark.anyio
async def test_search_events_by_type_glob(store: Store) -> None:
    async with connect(store) as client:
        deal = await ok(client, "do", {"action": "create", "type": "Deal", "data": {"name": "Big", "value": 10}})
        await ok(client, "do", {"action": "win", "type": "Deal", "id": deal["entity"]["$id"]})
        alice = await ok(client, "do", {"action": "create", "type": "Contact", "data": {"name": "Alice"}})
        await ok(client, "do", {"action": "qualify", "type": "Contact", "id": alice["entity"]["$id"]})
        deal_events = await ok(client, "search", {"type": "Event", "filter": {"type": "Deal.*"}})
        qualified = await ok(client, "search", {"type": "Event", "filter": {"type": "*.Qualified"}})
        newest_first = await ok(client, "search", {"type": "Event", "sort": "-seq", "limit": 2})
    assert [e["type"] for e in deal_events["results"]] == ["Deal.Created", "Deal.Won"]
    assert [e["type"] for e in qualified["results"]] == ["Contact.Qualified"]
    assert [e["seq"] for e in newest_first["results"]] == [4, 3]
    assert newest_first["hasMore"] is True


# ---- do -----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_batch_links_operations_with_ref_and_returns_one_result_each(store: Store) -> None:
    async with connect(store) as client:
        out = await ok(
            client,
            "do",
            {
                "operations": [
                    {"action": "create", "type": "Organization", "data": {"name": "Acme"}},
                    {"action": "create", "type": "Contact", "data": {"name": "Bob", "organization": "$ref:0"}},
                    {"action": "qualify", "type": "Contact", "id": "$ref:1"},
                ]
            },
        )
    org, bob, qualified = out["results"]
    assert org["entity"]["$type"] == "Organization"
    assert bob["entity"]["organization"] == org["entity"]["$id"]
    assert qualified["entity"]["$id"] == bob["entity"]["$id"]
    assert qualified["entity"]["stage"] == "Qualified"
    assert store.get(TENANT, "Contact", bob["entity"]["$id"])["$version"] == 2


@pytest.mark.anyio
async def test_a_rollback_through_do_brings_a_deleted_contact_back_with_the_data_given(store: Store) -> None:
    async with connect(store) as client:
        ada = (await ok(client, "do", {"action": "create", "type": "Contact", "data": {"name": "Ada"}}))["entity"]
        await ok(client, "do", {"action": "delete", "type": "Contact", "id": ada["$id"]})
        back = await ok(
            client,
            "do",
            {"action": "rollback", "type": "Contact", "id": ada["$id"], "toVersion": 1, "data": {"title": "CEO"}},
        )
        refused = await client.call_tool(
            "do", {"action": "rollback", "type": "Contact", "id": ada["$id"], "toVersion": 2, "data": {"title": "x"}}
        )
    assert (back["entity"]["$version"], back["entity"]["title"], "$deletedAt" in back["entity"]) == (3, "CEO", False)
    assert back["events"][0]["data"]["rollbackTo"] == 1
    assert error_of(refused)["error"] == "validation_error"
    assert store.get(TENANT, "Contact", ada["$id"])["$version"] == 3


@pytest.mark.anyio
async def test_a_failing_batch_writes_nothing(store: Store) -> None:
    async with connect(store) as client:
        failed = await client.call_tool(
            "do",
            {
                "operations": [
                    {"action": "create", "type": "Organization", "data": {"name": "Acme"}},
                    {"action": "create", "type": "Contact", "data": {"title": "no name"}},
                ]
            },
        )
        orgs = await ok(client, "search", {"type": "Organization"})
    assert error_of(failed)["error"] == "validation_error"
    assert orgs["total"] == 0


@pytest.mark.anyio
async def test_dry_run_shows_the_result_and_events_and_writes_nothing(store: Store) -> None:
    async with connect(store) as client:
        preview = await ok(
            client, "do", {"action": "create", "type": "Contact", "data": {"name": "Alice"}, "dryRun": True}
        )
        contacts = await ok(client, "search", {"type": "Contact"})
        events = await ok(client, "search", {"type": "Event"})
    assert preview["dryRun"] is True
    assert preview["entity"]["name"] == "Alice"
    assert [e["type"] for e in preview["events"]] == ["Contact.Created"]
    assert contacts["total"] == 0
    assert events["total"] == 0


@pytest.mark.anyio
async def test_the_same_idempotency_key_returns_the_first_result_and_writes_once(store: Store) -> None:
    request = {"action": "create", "type": "Contact", "data": {"name": "Alice"}, "idempotencyKey": "k-1"}
    async with connect(store) as client:
        first = await ok(client, "do", request)
        again = await ok(client, "do", request)
        events = await ok(client, "search", {"type": "Event"})
    assert again["entity"]["$id"] == first["entity"]["$id"]
    assert again["events"] == first["events"]
    assert again.get("replayed") is True
    assert "replayed" not in first
    assert events["total"] == 1


@pytest.mark.anyio
async def test_an_update_that_changes_nothing_appends_nothing(store: Store) -> None:
    async with connect(store) as client:
        created = await ok(client, "do", {"action": "create", "type": "Contact", "data": {"name": "Alice"}})
        alice = created["entity"]["$id"]
        same = await ok(client, "do", {"action": "update", "type": "Contact", "id": alice, "data": {"name": "Alice"}})
    assert same.get("unchanged") is True
    assert not same["events"]
    assert same["entity"]["$version"] == 1


# ---- identity and tenancy -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_default_actor_is_agent_and_the_slugged_client_name(store: Store) -> None:
    async with connect(store, client_name="Claude Code") as client:
        created = await ok(client, "do", {"action": "create", "type": "Contact", "data": {"name": "Alice"}})
    assert created["entity"]["$createdBy"] == "agent_Claude-Code"
    assert created["events"][0]["actor"] == "agent_Claude-Code"


@given(st.text(max_size=120))
def test_a_client_name_becomes_an_actor_with_no_dash_at_either_end_of_its_slug(name: str) -> None:
    actor = actor_from_client_name(name)
    slug = actor.removeprefix("agent_")
    assert ACTOR.fullmatch(actor)
    assert not slug.startswith("-") and not slug.endswith("-")


def test_a_long_client_name_is_cut_to_64_characters_without_a_trailing_dash() -> None:
    assert actor_from_client_name("a" * 63 + " b") == "agent_" + "a" * 63


@pytest.mark.anyio
async def test_the_default_actor_follows_the_client_name_in_the_legacy_era_too(store: Store) -> None:
    async with connect(store, client_name="Claude Code", mode="legacy") as client:
        created = await ok(client, "do", {"action": "create", "type": "Contact", "data": {"name": "Alice"}})
    assert created["entity"]["$createdBy"] == "agent_Claude-Code"


@pytest.mark.anyio
async def test_a_configured_actor_wins_over_the_client_name(store: Store) -> None:
    async with connect(store, actor="agent_x", client_name="Claude Code") as client:
        created = await ok(client, "do", {"action": "create", "type": "Contact", "data": {"name": "Alice"}})
        alice = created["entity"]["$id"]
        updated = await ok(client, "do", {"action": "update", "type": "Contact", "id": alice, "data": {"title": "CTO"}})
    assert created["entity"]["$createdBy"] == "agent_x"
    assert created["events"][0]["actor"] == "agent_x"
    assert updated["entity"]["$updatedBy"] == "agent_x"
    assert store.events(TENANT, filter={"actor": "agent_Claude-Code"})["total"] == 0


@pytest.mark.anyio
async def test_writes_land_in_the_connection_tenant(store: Store) -> None:
    async with connect(store) as client:
        created = await ok(client, "do", {"action": "create", "type": "Contact", "data": {"name": "Alice"}})
    assert store.tenants() == [TENANT]
    assert store.get(TENANT, "Contact", created["entity"]["$id"])["name"] == "Alice"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        ("do", {"action": "create", "type": "Contact", "data": {"name": "Alice"}, "tenant": "other"}),
        ("fetch", {"type": "Schema", "tenant": "other"}),
        ("search", {"type": "Contact", "tenant": "other"}),
    ],
)
async def test_tenant_is_never_a_tool_argument(store: Store, tool: str, arguments: dict[str, Any]) -> None:
    async with connect(store) as client:
        result = await client.call_tool(tool, arguments)
    body = error_of(result)
    assert body["error"] == "validation_error"
    assert "tenant" in body["message"]
    assert "other" not in store.tenants()
    if TENANT in store.tenants():
        assert store.events(TENANT)["total"] == 0


# ---- protocol eras ------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_both_protocol_eras_list_and_call_the_tools(store: Store, mode: str) -> None:
    async with connect(store, mode=mode) as client:
        names = sorted(t.name for t in (await client.list_tools()).tools)
        created = await ok(client, "do", {"action": "create", "type": "Contact", "data": {"name": "Alice"}})
        fetched = await ok(client, "fetch", {"type": "Contact", "id": created["entity"]["$id"]})
        found = await ok(client, "search", {"type": "Contact"})
        protocol = client.protocol_version
    assert names == ["do", "fetch", "search"]
    assert fetched == created["entity"]
    assert found["total"] == 1
    if mode == "legacy":
        assert protocol < "2026-07-28"
    else:
        assert protocol >= "2026-07-28"
