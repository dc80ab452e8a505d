"""`headlessly serve` over stdio, driven by the MCP SDK's stdio client as a real subprocess."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from e2e_helpers import HEADLESSLY, INITIALIZE, payload, stdio_process, tenant_db
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


@pytest.mark.anyio
async def test_a_line_that_is_no_json_rpc_message_is_answered_with_a_parse_error_and_the_session_goes_on(
    tmp_path: Path,
) -> None:
    """The SDK drops such lines: a client whose request held a lone surrogate escape waited for ever."""
    async with stdio_process(tmp_path / "data") as process:
        assert process.stdin is not None and process.stdout is not None
        replies = BufferedByteReceiveStream(process.stdout)

        async def exchange(line: str) -> dict[str, Any]:
            assert process.stdin is not None
            await process.stdin.send(line.encode() + b"\n")
            with anyio.fail_after(SESSION_TIMEOUT):
                reply: dict[str, Any] = json.loads(await replies.receive_until(b"\n", 1_000_000))
            return reply

        assert "result" in await exchange(json.dumps(INITIALIZE))
        await process.stdin.send(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}\n')
        not_json = await exchange("{bad json")
        half_pair = await exchange(
            '{"jsonrpc": "2.0", "id": 7, "method": "tools/call", '
            '"params": {"name": "search", "arguments": {"type": "Contact", "query": "caf\\ud83d"}}}'
        )
        after = await exchange('{"jsonrpc": "2.0", "id": 8, "method": "ping"}')

    assert not_json["id"] is None and not_json["error"]["code"] == -32700
    assert half_pair["id"] == 7 and half_pair["error"]["code"] == -32700
    assert "half of a surrogate pair" in half_pair["error"]["message"]
    assert after == {"jsonrpc": "2.0", "id": 8, "result": {}}


@pytest.mark.anyio
async def test_a_request_nested_deeper_than_any_parser_goes_is_answered_and_the_session_goes_on(tmp_path: Path) -> None:
    async with stdio_process(tmp_path / "data") as process:
        assert process.stdin is not None and process.stdout is not None
        replies = BufferedByteReceiveStream(process.stdout)
        deep = "[" * 5000 + "]" * 5000
        lines = [
            json.dumps(INITIALIZE),
            '{"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "do", "arguments": '
            f'{{"action": "create", "type": "Plan", "data": {{"name": "P", "limits": {deep}}}}}}}}}',
            '{"jsonrpc": "2.0", "id": 8, "method": "ping"}',
        ]
        await process.stdin.send("\n".join(lines).encode() + b"\n")
        with anyio.fail_after(SESSION_TIMEOUT):
            answers = [json.loads(await replies.receive_until(b"\n", 1_000_000)) for _ in lines]

    assert answers[1]["id"] == 7 and answers[1]["error"]["code"] == -32700
    assert answers[2] == {"jsonrpc": "2.0", "id": 8, "result": {}}
