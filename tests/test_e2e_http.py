"""`headlessly serve` over streamable HTTP (/mcp) and SSE (/sse) as a real subprocess on 127.0.0.1:
bearer tokens, HTTP 401s, tenant isolation, read-only tokens, the token's actor, --no-auth, both eras."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from e2e_helpers import (
    INITIALIZE,
    MCP_HEADERS,
    HttpServer,
    bearer,
    create_token,
    error_of,
    http_mcp_client,
    http_server,
    payload,
    raw_request,
    revoke_token,
    run_cli,
    tenant_db,
)
from mcp import Client, MCPError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS

TIMEOUT = 30.0
TRANSPORTS = ["http", "sse"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass(frozen=True)
class Tokens:
    data_dir: Path
    alpha: str  # tenant alpha, agent_alpha, read-write
    alpha_read_only: str  # tenant alpha, agent_alpha_reader, read-only
    beta: str  # tenant beta, agent_beta, read-write


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Tokens:
    data_dir = tmp_path_factory.mktemp("http") / "data"
    return Tokens(
        data_dir,
        alpha=create_token(data_dir, "alpha", "agent_alpha"),
        alpha_read_only=create_token(data_dir, "alpha", "agent_alpha_reader", read_only=True),
        beta=create_token(data_dir, "beta", "agent_beta"),
    )


@pytest.fixture(scope="module", params=TRANSPORTS)
def server(request: pytest.FixtureRequest, tokens: Tokens) -> Iterator[HttpServer]:
    """A token-protected server on the tokens' data dir, per transport (one at a time: one process
    per data dir, as an operator runs it)."""
    with http_server(tokens.data_dir, transport=request.param) as running:
        yield running


async def call(client: Client, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return payload(await client.call_tool(tool, arguments))


async def sdk_client_is_refused(server: HttpServer, token: str | None) -> list[int]:
    """Connect with the SDK client and list tools: it must fail. Returns the HTTP statuses it saw."""
    statuses: list[int] = []
    try:
        async with http_mcp_client(server, token, statuses=statuses) as client:
            await client.list_tools()
    except Exception:  # the SDK fails differently per transport (MCPError, HTTPStatusError, groups of them)
        return statuses
    raise AssertionError(f"the SDK client got through to {server.url} (statuses {statuses})")


async def assert_refused_with_401(server: HttpServer, token: str | None) -> None:
    """Refused with a challenge that fits (RFC 6750 section 3.1: no error code without credentials), by the
    plain HTTP request and by the SDK's client alike."""
    response = await raw_request(server, token)
    assert response.status_code == 401
    challenge = response.headers.get("www-authenticate", "")
    if token is None:
        assert challenge == 'Bearer realm="headlessly"'
        assert "Authorization: Bearer <token>" in response.json()["error_description"]
    else:
        assert challenge.startswith('Bearer realm="headlessly", error="invalid_token", error_description="')
        assert response.json()["error"] == "invalid_token"
    assert "headlessly token create" in response.json()["hint"]
    statuses = await sdk_client_is_refused(server, token)
    assert 401 in statuses
    assert not [s for s in statuses if 200 <= s < 300]


def rows(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return conn.execute(sql, params).fetchall()


# ---- bearer tokens and HTTP 401 -------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_request_without_authorization_gets_http_401(server: HttpServer) -> None:
    with anyio.fail_after(TIMEOUT):
        await assert_refused_with_401(server, None)


@pytest.mark.anyio
@pytest.mark.parametrize("header", ["Basic YWxpY2U6c2VjcmV0", "Bearer"])
async def test_credentials_that_are_not_a_bearer_token_get_a_challenge_that_asks_for_one(
    server: HttpServer, header: str
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with httpx2.AsyncClient(timeout=httpx2.Timeout(10.0)) as http:
            # over SSE, the endpoint that takes the client's messages (a Mount, where /sse is a Route)
            url = server.url if server.transport == "http" else server.url.removesuffix("/sse") + "/messages/"
            response = await http.post(url, json=INITIALIZE, headers={**MCP_HEADERS, "Authorization": header})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="headlessly"'
    description = response.json()["error_description"]
    assert "Authorization: Bearer <token>" in description
    assert ("not 'basic'" in description) == header.startswith("Basic")


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["garbage", "unknown-id", "wrong-secret"])
async def test_a_garbage_token_gets_http_401(server: HttpServer, tokens: Tokens, kind: str) -> None:
    token = {
        "garbage": "not-a-token",
        "unknown-id": "hly_000000000000_" + "x" * 43,
        "wrong-secret": tokens.alpha[:-4] + ("AAAA" if not tokens.alpha.endswith("AAAA") else "BBBB"),
    }[kind]
    with anyio.fail_after(TIMEOUT):
        await assert_refused_with_401(server, token)


@pytest.mark.anyio
async def test_a_revoked_token_gets_http_401_from_the_running_server(server: HttpServer, tokens: Tokens) -> None:
    token = create_token(tokens.data_dir, "alpha", "agent_soon_revoked")
    name = f"Before revocation {server.transport}"
    with anyio.fail_after(TIMEOUT):
        async with http_mcp_client(server, token) as client:
            created = await call(client, "do", {"action": "create", "type": "Contact", "data": {"name": name}})
            found = await call(client, "search", {"type": "Contact", "filter": {"name": name}})
            assert found["total"] == 1
            assert [e["$id"] for e in found["results"]] == [created["entity"]["$id"]]
            assert found["results"][0]["$createdBy"] == "agent_soon_revoked"
        assert (await raw_request(server, token)).status_code == 200
    revoke_token(tokens.data_dir, token)
    with anyio.fail_after(TIMEOUT):
        await assert_refused_with_401(server, token)


# ---- tenancy --------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_tenants_token_never_sees_another_tenants_data(server: HttpServer, tokens: Tokens) -> None:
    transport = server.transport
    name, email = f"Secretive {transport}", f"secret-{transport}@beta.io"
    with anyio.fail_after(TIMEOUT):
        async with http_mcp_client(server, tokens.beta) as b:
            created = await call(b, "do", {"action": "create", "type": "Contact", "data": {"name": name, "email": email}})  # fmt: skip
            contact_id, event_id = created["entity"]["$id"], created["events"][0]["id"]
            assert (await call(b, "fetch", {"type": "Contact", "id": contact_id}))["name"] == name
            assert (await call(b, "search", {"type": "Contact", "filter": {"email": email}}))["total"] == 1

        async with http_mcp_client(server, tokens.alpha) as a:
            assert error_of(await a.call_tool("fetch", {"type": "Contact", "id": contact_id}))["error"] == "not_found"
            assert error_of(await a.call_tool("fetch", {"type": "Event", "id": event_id}))["error"] == "not_found"
            for arguments in (
                {"type": "Contact", "filter": {"email": email}},
                {"type": "Contact", "query": "Secretive"},
                {"type": "Contact", "filter": {"$createdBy": "agent_beta"}, "includeDeleted": True},
                {"type": "Event", "filter": {"target": contact_id}},
                {"type": "Event", "filter": {"actor": "agent_beta"}},
            ):
                found = await call(a, "search", arguments)
                assert (found["total"], found["results"]) == (0, []), arguments
            with pytest.raises(MCPError):
                await a.read_resource(f"headlessly://Contact/{contact_id}")
            # uniqueness is per tenant too: alpha may use beta's email
            mine = await call(
                a, "do", {"action": "create", "type": "Contact", "data": {"name": "Mine", "email": email}}
            )
            assert mine["entity"]["$createdBy"] == "agent_alpha"

    alpha_db, beta_db = tenant_db(tokens.data_dir, "alpha"), tenant_db(tokens.data_dir, "beta")
    assert alpha_db != beta_db and alpha_db.is_file() and beta_db.is_file()
    assert rows(beta_db, "SELECT type FROM entities WHERE id = ?", contact_id) == [("Contact",)]
    assert rows(alpha_db, "SELECT type FROM entities WHERE id = ?", contact_id) == []
    assert rows(alpha_db, "SELECT count(*) FROM events WHERE target = ? OR actor = 'agent_beta'", contact_id) == [(0,)]
    assert rows(beta_db, "SELECT count(*) FROM events WHERE actor <> 'agent_beta'") == [(0,)]


@pytest.mark.anyio
async def test_a_session_opened_with_one_token_refuses_requests_with_another(
    server: HttpServer, tokens: Tokens
) -> None:
    """Knowing another caller's session id is not enough: each request is checked against the session's token."""
    tools_list = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
    statuses: list[int] = []
    with anyio.fail_after(TIMEOUT):
        async with httpx2.AsyncClient(timeout=httpx2.Timeout(10.0)) as http:
            if server.transport == "sse":
                async with http.stream("GET", server.url, headers=bearer(tokens.alpha)) as stream:
                    assert stream.status_code == 200
                    lines = stream.aiter_lines()  # held open: dropping the iterator would close the stream
                    endpoint = await anext(lines)
                    while not endpoint.startswith("data:"):
                        endpoint = await anext(lines)
                    post_url = server.url.removesuffix("/sse") + endpoint.removeprefix("data:").strip()
                    for token in (None, tokens.beta, tokens.alpha):
                        statuses.append((await http.post(post_url, json=INITIALIZE, headers=bearer(token))).status_code)
            else:
                opened = await http.post(server.url, json=INITIALIZE, headers={**MCP_HEADERS, **bearer(tokens.alpha)})
                assert opened.status_code == 200
                session = {**MCP_HEADERS, "mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}  # fmt: skip
                for token in (None, tokens.beta, tokens.alpha):
                    response = await http.post(server.url, json=tools_list, headers={**session, **bearer(token)})
                    statuses.append(response.status_code)
    no_token, other_token, own_token = statuses
    assert no_token == 401
    assert 400 <= other_token < 500
    assert 200 <= own_token < 300


# ---- read-only tokens -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_read_only_token_can_fetch_and_search_but_do_is_forbidden_and_writes_nothing(
    server: HttpServer, tokens: Tokens
) -> None:
    transport = server.transport
    alpha_db = tenant_db(tokens.data_dir, "alpha")
    with anyio.fail_after(TIMEOUT):
        async with http_mcp_client(server, tokens.alpha) as writer:
            org = await call(writer, "do", {"action": "create", "type": "Organization", "data": {"name": f"Readable {transport}"}})  # fmt: skip
            org_id = org["entity"]["$id"]
        events_before = rows(alpha_db, "SELECT count(*), max(seq) FROM events")

        async with http_mcp_client(server, tokens.alpha_read_only) as reader:
            seen = await call(reader, "fetch", {"type": "Organization", "id": org_id})
            assert seen["name"] == f"Readable {transport}"
            found = await call(reader, "search", {"type": "Organization", "filter": {"name": f"Readable {transport}"}})
            assert [e["$id"] for e in found["results"]] == [org_id]
            log = await call(reader, "search", {"type": "Event", "filter": {"target": org_id}})
            assert [e["type"] for e in log["results"]] == ["Organization.Created"]

            for arguments in (
                {"action": "create", "type": "Organization", "data": {"name": "Sneaky"}},
                {"action": "update", "type": "Organization", "id": org_id, "data": {"name": "Renamed"}},
                {"action": "delete", "type": "Organization", "id": org_id},
                {"operations": [{"action": "create", "type": "Contact", "data": {"name": "Sneaky"}}]},
            ):
                result = await reader.call_tool("do", arguments)
                error = error_of(result)
                assert error["error"] == "forbidden", arguments
                assert error["message"]
            after = await call(reader, "fetch", {"type": "Organization", "id": org_id})
            assert (after["$version"], after["name"]) == (1, f"Readable {transport}")
            assert (await call(reader, "search", {"type": "Organization", "filter": {"name": "Sneaky"}}))["total"] == 0

    assert rows(alpha_db, "SELECT count(*), max(seq) FROM events") == events_before
    assert rows(alpha_db, "SELECT count(*) FROM events WHERE actor = 'agent_alpha_reader'") == [(0,)]


# ---- the actor ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_write_may_not_name_another_actor_and_every_event_is_the_tokens_actor(
    server: HttpServer, tokens: Tokens
) -> None:
    transport = server.transport
    with anyio.fail_after(TIMEOUT):
        async with http_mcp_client(server, tokens.alpha) as a:
            created = await call(
                a, "do", {"action": "create", "type": "Contact", "data": {"name": f"Actor {transport}"}}
            )
            cid = created["entity"]["$id"]
            spoofs = [
                {"action": "create", "type": "Contact", "data": {"name": "Spoof"}, "actor": "agent_spoof"},
                {"action": "update", "type": "Contact", "id": cid, "data": {"title": "VP"}, "actor": "user_mallory"},
                {"action": "qualify", "type": "Contact", "id": cid, "actor": "system_cron"},
                {"operations": [{"action": "update", "type": "Contact", "id": cid, "data": {"phone": "+1 555"}, "actor": "agent_spoof"}]},
                {"action": "delete", "type": "Contact", "id": cid, "actor": "user_mallory"},
            ]  # fmt: skip
            for spoof in spoofs:
                refused = error_of(await a.call_tool("do", spoof))
                assert refused["error"] == "validation_error"
                assert "'actor'" in refused["message"], refused
            updated = await call(a, "do", {"action": "update", "type": "Contact", "id": cid, "data": {"title": "VP"}})
            await call(a, "do", {"action": "delete", "type": "Contact", "id": cid})

            log = await call(a, "search", {"type": "Event", "filter": {"target": cid}})
            assert [e["type"] for e in log["results"]] == ["Contact.Created", "Contact.Updated", "Contact.Deleted"]
            assert {e["actor"] for e in log["results"]} == {"agent_alpha"}
            assert created["entity"]["$createdBy"] == updated["entity"]["$updatedBy"] == "agent_alpha"
            for named in ("agent_spoof", "user_mallory", "system_cron"):
                assert (await call(a, "search", {"type": "Event", "filter": {"actor": named}}))["total"] == 0
            deleted = await call(a, "search", {"type": "Contact", "filter": {"$id": cid}, "includeDeleted": True})
            assert deleted["results"][0]["$deletedBy"] == "agent_alpha"

    written = rows(tenant_db(tokens.data_dir, "alpha"), "SELECT DISTINCT actor FROM events WHERE target = ?", cid)
    assert written == [("agent_alpha",)]


# ---- protocol eras --------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("mode", "versions"),
    [
        pytest.param("legacy", HANDSHAKE_PROTOCOL_VERSIONS, id="initialize-handshake"),
        pytest.param("auto", MODERN_PROTOCOL_VERSIONS, id="2026-07-28"),
    ],
)
async def test_both_protocol_eras_work_over_http(
    server: HttpServer, tokens: Tokens, mode: str, versions: tuple[str, ...]
) -> None:
    transport = server.transport
    with anyio.fail_after(TIMEOUT):
        async with http_mcp_client(server, tokens.beta, mode=mode) as b:
            assert b.session.protocol_version in versions
            assert {t.name for t in (await b.list_tools()).tools} == {"fetch", "search", "do"}
            deal = await call(b, "do", {"action": "create", "type": "Deal", "data": {"name": f"{mode} {transport}", "value": 5}})  # fmt: skip
            fetched = await call(b, "fetch", {"type": "Deal", "id": deal["entity"]["$id"]})
            assert (fetched["name"], fetched["value"]) == (f"{mode} {transport}", 5)
            assert fetched["$createdBy"] == "agent_beta"


# ---- --no-auth ------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_no_auth_on_loopback_serves_with_tenant_and_actor_from_the_flags(tmp_path: Path, transport: str) -> None:
    data_dir = tmp_path / "data"
    with http_server(data_dir, "--no-auth", "--tenant", "local", "--actor", "agent_local", transport=transport) as srv:
        assert "no auth" in srv.log()
        with anyio.fail_after(TIMEOUT):
            assert (await raw_request(srv)).status_code == 200
            statuses: list[int] = []
            async with http_mcp_client(srv, statuses=statuses) as c:
                created = await call(c, "do", {"action": "create", "type": "Contact", "data": {"name": "Local"}})
                assert created["events"][0]["actor"] == "agent_local"
                fetched = await call(c, "fetch", {"type": "Contact", "id": created["entity"]["$id"]})
                assert fetched["$createdBy"] == "agent_local"
            assert 401 not in statuses
    assert sorted(p.name for p in (data_dir / "tenants").glob("*.db")) == ["local.db"]
    assert rows(tenant_db(data_dir, "local"), "SELECT DISTINCT actor FROM events") == [("agent_local",)]


def test_no_auth_is_refused_on_a_non_loopback_address(tmp_path: Path) -> None:
    done = run_cli(
        "serve", "--transport", "http", "--host", "0.0.0.0", "--port", "0", "--no-auth", "--data-dir", tmp_path / "d",
        timeout=30,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--no-auth" in done.stderr


# ---- stopping -------------------------------------------------------------------------------------

SLOW_HOOKS = """\
import logging, pathlib, time

def register(hooks):
    @hooks.before("Contact.create")
    def wait_for_go(ctx):
        logging.getLogger("slowhooks").warning("write started")
        deadline = time.monotonic() + 60
        while not pathlib.Path("go").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
"""


@pytest.mark.anyio
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_sigterm_answers_the_calls_in_flight_before_the_server_stops(tmp_path: Path, transport: str) -> None:
    import signal

    work = tmp_path / "work"
    work.mkdir()
    (work / "slowhooks.py").write_text(SLOW_HOOKS)
    answers: list[dict[str, Any]] = []
    with http_server(
        tmp_path / "data", "--no-auth", "--no-flush", "--hooks", "slowhooks", transport=transport, cwd=work
    ) as srv:
        # (the client's own goodbye may find the server gone: only the answer to the write counts here)
        with anyio.fail_after(TIMEOUT), suppress(Exception):
            async with http_mcp_client(srv) as c, anyio.create_task_group() as tg:

                async def write() -> None:
                    answers.append(
                        await call(c, "do", {"action": "create", "type": "Contact", "data": {"name": "Ada"}})
                    )

                await c.list_tools()  # (as an agent has: the client checks a result against the tool's schema)
                tg.start_soon(write)
                await anyio.to_thread.run_sync(srv.wait_for_log, "write started")
                srv.proc.send_signal(signal.SIGTERM)
                await anyio.to_thread.run_sync(srv.wait_for_log, "answering 1 call")
                (work / "go").write_text("")  # the write may end now: the server is stopping meanwhile
        exit_code = await anyio.to_thread.run_sync(srv.proc.wait, TIMEOUT)

    assert [a["entity"]["name"] for a in answers] == ["Ada"]
    assert exit_code == 0
    assert rows(tenant_db(tmp_path / "data", "default"), "SELECT count(*) FROM events") == [(1,)]
