"""The schema and entities as MCP resources, for inspectors and hosts that browse."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from mcp import Client, MCPError

from server.auth.identity import LocalIdentity
from server.store import Store
from server.tools.app import build_server

TENANT = "acme"
ACTOR = "agent_browser"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def connect(store: Store, mode: str = "auto", tenant: str = TENANT) -> AsyncIterator[Client]:
    async with Client(build_server(store, LocalIdentity(tenant, ACTOR)), mode=mode) as client:
        yield client


async def read_json(client: Client, uri: str) -> Any:
    result = await client.read_resource(uri)
    assert len(result.contents) == 1
    content = result.contents[0]
    assert str(content.uri) == uri
    assert content.mime_type == "application/json"
    return json.loads(content.text)  # type: ignore[union-attr]


def create_contact(store: Store, name: str = "Alice") -> str:
    created = store.do(TENANT, ACTOR, {"action": "create", "type": "Contact", "data": {"name": name}})
    return str(created["entity"]["$id"])


@pytest.mark.anyio
async def test_resources_list_offers_the_whole_schema(store: Store) -> None:
    async with connect(store) as client:
        resources = (await client.list_resources()).resources
    by_uri = {str(r.uri): r for r in resources}
    assert "headlessly://schema" in by_uri
    assert by_uri["headlessly://schema"].mime_type == "application/json"


@pytest.mark.anyio
async def test_resource_templates_offer_one_noun_and_one_entity(store: Store) -> None:
    async with connect(store) as client:
        templates = (await client.list_resource_templates()).resource_templates
    by_template = {t.uri_template: t for t in templates}
    assert {"headlessly://schema/{noun}", "headlessly://{noun}/{id}"} <= by_template.keys()
    for template in by_template.values():
        assert template.mime_type == "application/json"
        assert template.description


@pytest.mark.anyio
async def test_the_schema_resource_lists_every_noun(store: Store) -> None:
    async with connect(store) as client:
        schema = await read_json(client, "headlessly://schema")
    assert schema == store.schema()
    assert {"Contact", "Deal", "Organization"} <= schema["nouns"].keys()


@pytest.mark.anyio
async def test_a_noun_schema_resource_gives_its_fields_and_verbs(store: Store) -> None:
    async with connect(store) as client:
        contact = await read_json(client, "headlessly://schema/Contact")
        deal = await read_json(client, "headlessly://schema/Deal")
    assert contact == store.schema("Contact")
    assert contact["name"] == "Contact"
    assert "qualify" in contact["verbs"]
    assert contact["fields"]["email"]["unique"] is True
    assert deal["fields"]["value"]["required"] is True
    assert "win" in deal["verbs"]


@pytest.mark.anyio
async def test_an_entity_resource_is_its_current_state(store: Store, clock: Any) -> None:
    alice = create_contact(store)
    async with connect(store) as client:
        before = await read_json(client, f"headlessly://Contact/{alice}")
        clock.advance(1)
        store.do(TENANT, "user_bob", {"action": "update", "type": "Contact", "id": alice, "data": {"title": "CTO"}})
        after = await read_json(client, f"headlessly://Contact/{alice}")
    assert before["$id"] == alice
    assert before["$version"] == 1
    assert "title" not in before
    assert after == store.get(TENANT, "Contact", alice)
    assert after["$version"] == 2
    assert after["title"] == "CTO"
    assert after["$updatedBy"] == "user_bob"


@pytest.mark.anyio
async def test_an_entity_resource_reads_the_same_in_the_legacy_era(store: Store) -> None:
    alice = create_contact(store)
    async with connect(store, mode="legacy") as client:
        state = await read_json(client, f"headlessly://Contact/{alice}")
    assert state == store.get(TENANT, "Contact", alice)


@pytest.mark.anyio
async def test_every_type_the_errors_name_is_readable_event_and_schema_too(store: Store) -> None:
    alice = create_contact(store)
    (created,) = store.events(TENANT)["results"]
    async with connect(store) as client:
        with pytest.raises(MCPError) as exc:
            await client.read_resource("headlessly://Nope/x")
        valid = json.loads(exc.value.error.message)["message"].split("valid types: ")[1].split(", ")
        event = await read_json(client, f"headlessly://Event/{created['id']}")
        schema = await read_json(client, "headlessly://Schema/Contact")
        with pytest.raises(MCPError) as missing:
            await client.read_resource("headlessly://Event/evt_doesNotExist")
    assert {"Event", "Schema"} <= set(valid)
    assert event == created and event["target"] == alice
    assert schema == store.schema("Contact")
    assert json.loads(missing.value.error.message)["error"] == "not_found"


@pytest.mark.anyio
async def test_an_unknown_entity_resource_is_an_mcp_error_saying_not_found(store: Store) -> None:
    create_contact(store)
    async with connect(store) as client:
        with pytest.raises(MCPError) as exc:
            await client.read_resource("headlessly://Contact/contact_doesNotExist1")
    assert "not_found" in str(exc.value)
    assert "contact_doesNotExist1" in str(exc.value)
    assert "Traceback" not in str(exc.value)


@pytest.mark.anyio
async def test_a_deleted_entity_resource_is_not_found(store: Store, clock: Any) -> None:
    alice = create_contact(store)
    clock.advance(1)
    store.do(TENANT, ACTOR, {"action": "delete", "type": "Contact", "id": alice})
    async with connect(store) as client:
        with pytest.raises(MCPError) as exc:
            await client.read_resource(f"headlessly://Contact/{alice}")
    assert "not_found" in str(exc.value)


@pytest.mark.anyio
async def test_an_entity_of_another_tenant_is_not_readable_as_a_resource(store: Store) -> None:
    alice = create_contact(store)
    async with connect(store, tenant="other") as client:
        with pytest.raises(MCPError) as exc:
            await client.read_resource(f"headlessly://Contact/{alice}")
    assert "not_found" in str(exc.value)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("uri", "code"),
    [
        ("headlessly://schema/Nope", "invalid_type"),
        ("headlessly://Nope/nope_abcdefghij", "invalid_type"),
        ("headlessly://Contact/deal_abcdefghij", "invalid_id"),
    ],
)
async def test_a_bad_resource_uri_is_an_mcp_error_with_the_contract_code(store: Store, uri: str, code: str) -> None:
    async with connect(store) as client:
        with pytest.raises(MCPError) as exc:
            await client.read_resource(uri)
    body = json.loads(exc.value.error.message)
    assert body["error"] == code
    assert body["hint"]


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_the_capabilities_promise_no_change_notifications_since_none_are_sent(store: Store, mode: str) -> None:
    async with connect(store, mode) as client:
        capabilities = client.server_capabilities
    assert capabilities.resources is not None and capabilities.tools is not None
    assert not capabilities.resources.subscribe and not capabilities.resources.list_changed
    assert not capabilities.tools.list_changed


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_prompt_that_does_not_exist_is_invalid_params_saying_there_are_none(store: Store, mode: str) -> None:
    async with connect(store, mode) as client:
        assert (await client.list_prompts()).prompts == []
        with pytest.raises(MCPError) as refused:
            await client.get_prompt("summarize")
    assert refused.value.error.code == -32602
    assert (
        refused.value.error.message
        == "Unknown prompt: summarize (this server offers no prompts: prompts/list is empty)"
    )


@pytest.mark.anyio
async def test_a_prompt_of_a_huge_name_is_refused_in_a_short_message(store: Store) -> None:
    async with connect(store, "auto") as client:
        with pytest.raises(MCPError) as refused:
            await client.get_prompt("p" * 200_000)
    assert refused.value.error.code == -32602
    assert len(refused.value.error.message) <= 2_000
    assert refused.value.error.message.endswith("(this server offers no prompts: prompts/list is empty)")


@pytest.mark.anyio
@pytest.mark.parametrize(
    "uri",
    [
        "headlessly://Contact",
        "headlessly://Schema",
        "headlessly://Contact/contact_abc/def",
        "headlessly://schema/Contact?x=1",
    ],
)
async def test_an_address_that_names_no_resource_is_refused_in_the_error_json_naming_what_can_be_read(
    store: Store, uri: str
) -> None:
    async with connect(store) as client:
        with pytest.raises(MCPError) as refused:
            await client.read_resource(uri)
    assert refused.value.error.code == -32602
    error = json.loads(refused.value.error.message)
    assert error["error"] == "not_found" and error["message"].startswith(f"Unknown resource: {uri} ")
    assert "headlessly://{noun}/{id}" in error["message"] and "$id" in error["hint"]
