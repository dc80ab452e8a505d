"""What reaches a running `headlessly serve` over HTTP beyond the token: the Host and Origin a request is
addressed with (DNS rebinding without tokens; reverse proxies with them), whose session a request may use,
and who may change the server's own log."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx2
import pytest
from e2e_helpers import INITIALIZE, MCP_HEADERS, HttpServer, bearer, create_token, http_mcp_client, http_server
from mcp.types import TextContent

TIMEOUT = 30.0
CREATE = {
    "jsonrpc": "2.0",
    "id": 3,
    "method": "tools/call",
    "params": {"name": "do", "arguments": {"action": "create", "type": "Contact", "data": {"name": "Planted"}}},
}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def open_session(http: httpx2.AsyncClient, server: HttpServer, headers: dict[str, str]) -> dict[str, str]:
    """initialize + initialized on /mcp with `headers`: the headers of the session it opened."""
    opened = await http.post(server.url, json=INITIALIZE, headers={**MCP_HEADERS, **headers})
    assert opened.status_code == 200, opened.text
    session = {**MCP_HEADERS, **headers, "mcp-session-id": opened.headers["mcp-session-id"]}
    session["mcp-protocol-version"] = "2025-11-25"
    assert (await http.post(server.url, json=INITIALIZED, headers=session)).status_code == 202
    return session


def contacts(server: HttpServer, tenant: str) -> int:
    import sqlite3
    from contextlib import closing

    db = server.data_dir / "tenants" / f"{tenant}.db"
    if not db.exists():
        return 0
    with closing(sqlite3.connect(db)) as conn:
        (n,) = conn.execute("SELECT count(*) FROM entities WHERE type = 'Contact'").fetchone()
    return int(n)


@pytest.mark.anyio
@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]"])
async def test_without_tokens_a_request_addressed_to_another_host_is_refused_on_any_loopback_address(
    tmp_path: Path, host: str
) -> None:
    """A web page that rebinds its own name to the loopback address sends its name as Host and Origin."""
    with http_server(tmp_path / "data", "--host", host, "--no-auth", "--tenant", "t", "--actor", "user_owner") as srv:
        port = srv.port
        with anyio.fail_after(TIMEOUT):
            async with httpx2.AsyncClient(timeout=httpx2.Timeout(10.0)) as http:
                for headers in (
                    {"Host": f"attacker.example:{port}", "Origin": f"http://attacker.example:{port}"},
                    {"Host": f"attacker.example:{port}"},
                    {"Origin": f"http://attacker.example:{port}"},
                ):
                    refused = await http.post(srv.url, json=INITIALIZE, headers={**MCP_HEADERS, **headers})
                    assert refused.status_code in (403, 421), (headers, refused.status_code)
                # addressed to the loopback name it listens on (or localhost), it is served
                for name in (f"[{host.strip('[]')}]" if ":" in host else host, "localhost"):
                    named = {"Host": f"{name}:{port}", "Origin": f"http://{name}:{port}"}
                    session = await open_session(http, srv, named)
                    assert (await http.post(srv.url, json=CREATE, headers=session)).status_code == 200
    assert contacts(srv, "t") == 2


@pytest.mark.anyio
async def test_without_tokens_an_sse_stream_asked_for_under_another_host_is_refused_with_one_warning_line(
    tmp_path: Path,
) -> None:
    with http_server(tmp_path / "data", "--no-auth", "--no-flush", transport="sse") as srv:
        with anyio.fail_after(TIMEOUT):
            async with httpx2.AsyncClient(timeout=httpx2.Timeout(10.0)) as http:
                refused = await http.get(srv.url, headers={"Host": f"attacker.example:{srv.port}"})
                assert refused.status_code == 421
            await anyio.to_thread.run_sync(srv.wait_for_log, "Invalid Host header", TIMEOUT, 0)
    assert "Traceback" not in srv.log() and "Exception in ASGI application" not in srv.log()


@pytest.mark.anyio
async def test_with_tokens_a_request_forwarded_by_a_reverse_proxy_under_its_own_name_is_served(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    token = create_token(data_dir, "acme", "agent_proxied")
    with http_server(data_dir) as srv:
        with anyio.fail_after(TIMEOUT):
            async with httpx2.AsyncClient(timeout=httpx2.Timeout(10.0)) as http:
                proxied = {"Host": "mcp.example.com", **bearer(token)}
                session = await open_session(http, srv, proxied)
                assert (await http.post(srv.url, json=CREATE, headers=session)).status_code == 200
                # the token still decides: the same name without one is refused
                without = await http.post(srv.url, json=INITIALIZE, headers={**MCP_HEADERS, "Host": "mcp.example.com"})
                assert without.status_code == 401
    assert contacts(srv, "acme") == 1


@pytest.mark.anyio
async def test_a_session_refuses_another_tokens_requests_even_when_both_tokens_have_the_same_actor(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    alpha = create_token(data_dir, "alpha", "agent_x")
    beta = create_token(data_dir, "beta", "agent_x", read_only=True)
    with http_server(data_dir) as srv:
        with anyio.fail_after(TIMEOUT):
            async with httpx2.AsyncClient(timeout=httpx2.Timeout(10.0)) as http:
                session = await open_session(http, srv, bearer(alpha))
                other = await http.post(srv.url, json=CREATE, headers={**session, **bearer(beta)})
                assert 400 <= other.status_code < 500
                own = await http.post(srv.url, json=CREATE, headers=session)
                assert own.status_code == 200
    assert (contacts(srv, "alpha"), contacts(srv, "beta")) == (1, 0)


@pytest.mark.anyio
async def test_a_token_holding_its_most_open_sessions_cannot_open_another_but_other_tokens_can(
    tmp_path: Path,
) -> None:
    """The session table is shared by every tenant: one token must not be able to fill it."""
    data_dir = tmp_path / "data"
    greedy = create_token(data_dir, "mallory", "agent_greedy", read_only=True)
    victim = create_token(data_dir, "victim", "agent_victim")
    with http_server(data_dir, "--sessions-per-token", "2", "--no-flush") as srv:
        with anyio.fail_after(TIMEOUT):
            async with httpx2.AsyncClient(timeout=httpx2.Timeout(10.0)) as http:
                opened: list[dict[str, str]] = []

                async def open_one() -> None:
                    opened.append(await open_session(http, srv, bearer(greedy)))

                async with anyio.create_task_group() as tg:  # at once: each is counted once, none refused early
                    tg.start_soon(open_one)
                    tg.start_soon(open_one)
                first = opened[0]
                refused = await http.post(srv.url, json=INITIALIZE, headers={**MCP_HEADERS, **bearer(greedy)})
                assert refused.status_code == 429
                assert "2 open sessions" in refused.json()["error"]["message"]
                assert (await http.post(srv.url, json=CREATE, headers=first)).status_code == 200  # still served
                other = await open_session(http, srv, bearer(victim))
                assert (await http.post(srv.url, json=CREATE, headers=other)).status_code == 200
                assert (await http.delete(srv.url, headers=first)).status_code == 200
                await open_session(http, srv, bearer(greedy))  # an ended session makes room
            async with http_mcp_client(srv, greedy) as client:  # a later protocol version opens no session,
                for _ in range(3):  # so the token at its cap still makes as many requests as it likes
                    assert not (await client.call_tool("search", {"type": "Contact"})).is_error
    assert contacts(srv, "victim") == 1


@pytest.mark.anyio
async def test_a_session_idle_past_the_session_idle_timeout_is_closed(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    token = create_token(data_dir, "acme", "agent_idle")
    with http_server(data_dir, "--session-idle-timeout", "1", "--no-flush") as srv:
        with anyio.fail_after(TIMEOUT):
            async with httpx2.AsyncClient(timeout=httpx2.Timeout(10.0)) as http:
                session = await open_session(http, srv, bearer(token))
                await anyio.to_thread.run_sync(srv.wait_for_log, "idle timeout", TIMEOUT, 0)
                assert (await http.post(srv.url, json=CREATE, headers=session)).status_code == 404
                fresh = await open_session(http, srv, bearer(token))
                assert (await http.post(srv.url, json=CREATE, headers=fresh)).status_code == 200
    assert contacts(srv, "acme") == 1


@pytest.mark.anyio
@pytest.mark.filterwarnings(
    "ignore::mcp.shared.exceptions.MCPDeprecationWarning"
)  # logging/setLevel is a handshake-era request
async def test_a_client_asking_for_debug_logging_does_not_change_the_servers_own_log(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    nosy = create_token(data_dir, "beta", "agent_nosy", read_only=True)
    writer = create_token(data_dir, "alpha", "agent_writer")
    with http_server(data_dir, "--log-level", "warning", "--no-flush") as srv:
        with anyio.fail_after(TIMEOUT):
            async with http_mcp_client(srv, nosy, mode="legacy") as client:
                await client.set_logging_level("debug")
            async with http_mcp_client(srv, writer) as client:
                result = await client.call_tool(
                    "do", {"action": "create", "type": "Contact", "data": {"name": "Secret Alpha Person"}}
                )
                assert not result.is_error
                assert isinstance(result.content[0], TextContent)
        log = srv.log()
    assert "Secret Alpha Person" not in log
    assert " DEBUG " not in log and " INFO " not in log


@pytest.mark.anyio
async def test_with_tokens_tenant_and_actor_flags_are_ignored_with_a_warning_not_checked(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    token = create_token(data_dir, "acme", "agent_real")
    with http_server(data_dir, "--tenant", "Not_A_Tenant", "--actor", "nobody") as srv:
        with anyio.fail_after(TIMEOUT):
            async with httpx2.AsyncClient(timeout=httpx2.Timeout(10.0)) as http:
                session = await open_session(http, srv, bearer(token))
                assert (await http.post(srv.url, json=CREATE, headers=session)).status_code == 200
        srv.wait_for_log(r"WARNING .*--tenant \(HEADLESSLY_TENANT\) and --actor \(HEADLESSLY_ACTOR\) ignored")
    assert contacts(srv, "acme") == 1
