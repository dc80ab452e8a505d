"""`headlessly serve` over stdio, driven by the MCP SDK's stdio client as a real subprocess."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import pytest
from e2e_helpers import HEADLESSLY, payload, tenant_db
from mcp import Client, StdioServerParameters
from mcp_types import Implementation
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS

SESSION_TIMEOUT = 30.0
ERAS = [
    pytest.param("legacy", HANDSHAKE_PROTOCOL_VERSIONS, id="initialize-handshake"),
    pytest.param("auto", MODERN_PROTOCOL_VERSIONS, id="2026-07-28"),
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def stdio(data_dir: Path, *args: str) -> StdioServerParameters:
    return StdioServerParameters(command=str(HEADLESSLY), args=["serve", "--data-dir", str(data_dir), *args])


async def call(client: Client, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return payload(await client.call_tool(tool, arguments))


def actors_in_file(db: Path) -> set[str]:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return {row[0] for row in conn.execute("SELECT DISTINCT actor FROM events")}


@pytest.mark.anyio
@pytest.mark.parametrize(("mode", "versions"), ERAS)
async def test_stdio_server_creates_updates_and_fetches_as_the_actor_from_the_flag(
    tmp_path: Path, mode: str, versions: tuple[str, ...]
) -> None:
    data_dir = tmp_path / "data"
    params = stdio(data_dir, "--tenant", "acme", "--actor", "agent_e2e")
    with anyio.fail_after(SESSION_TIMEOUT):
        async with Client(params, mode=mode, client_info=Implementation(name="Some Client", version="1")) as c:
            assert c.session.protocol_version in versions
            tools = {t.name: t for t in (await c.list_tools()).tools}
            assert set(tools) == {"fetch", "search", "do"}
            assert tools["fetch"].annotations is not None and tools["fetch"].annotations.read_only_hint is True
            assert tools["do"].annotations is not None and tools["do"].annotations.read_only_hint is False

            created = await call(c, "do", {"action": "create", "type": "Contact", "data": {"name": "Ada"}})
            contact_id = created["entity"]["$id"]
            updated = await call(c, "do", {"action": "update", "type": "Contact", "id": contact_id, "data": {"title": "CTO"}})  # fmt: skip
            assert updated["entity"]["$version"] == 2

            fetched = await call(c, "fetch", {"type": "Contact", "id": contact_id})
            assert (fetched["name"], fetched["title"], fetched["$version"]) == ("Ada", "CTO", 2)
            assert fetched["$createdBy"] == fetched["$updatedBy"] == "agent_e2e"

            resource = await c.read_resource(f"headlessly://Contact/{contact_id}")
            assert json.loads(resource.contents[0].text)["title"] == "CTO"  # type: ignore[union-attr]

            events = await call(c, "search", {"type": "Event", "filter": {"target": contact_id}})
            assert [(e["type"], e["version"], e["actor"]) for e in events["results"]] == [
                ("Contact.Created", 1, "agent_e2e"),
                ("Contact.Updated", 2, "agent_e2e"),
            ]
    # the tenant came from --tenant: its own file, written by the flag's actor only
    assert actors_in_file(tenant_db(data_dir, "acme")) == {"agent_e2e"}
    assert sorted(p.name for p in (data_dir / "tenants").glob("*.db")) == ["acme.db"]


@pytest.mark.anyio
@pytest.mark.parametrize(("mode", "versions"), ERAS)
async def test_stdio_server_without_actor_writes_as_the_client_name(
    tmp_path: Path, mode: str, versions: tuple[str, ...]
) -> None:
    data_dir = tmp_path / "data"
    info = Implementation(name="E2E Runner", version="1")
    with anyio.fail_after(SESSION_TIMEOUT):
        async with Client(stdio(data_dir, "--tenant", "acme"), mode=mode, client_info=info) as c:
            assert c.session.protocol_version in versions
            created = await call(c, "do", {"action": "create", "type": "Organization", "data": {"name": "Acme"}})
            assert created["events"][0]["actor"] == "agent_E2E-Runner"
            fetched = await call(c, "fetch", {"type": "Organization", "id": created["entity"]["$id"]})
            assert fetched["$createdBy"] == "agent_E2E-Runner"
    assert actors_in_file(tenant_db(data_dir, "acme")) == {"agent_E2E-Runner"}
