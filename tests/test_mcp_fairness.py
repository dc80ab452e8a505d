"""Tenants share the server's worker threads: one tenant's calls cannot take them all from the others."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from mcp import Client

from server.auth.identity import LocalIdentity
from server.schema import SchemaSet
from server.store import BeforeContext, Hooks, Store
from server.tools.app import build_server
from server.tools.calls import TenantCalls

AGENT = "agent_fairness"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def held() -> Iterator[threading.Event]:
    """Set to let writes held by the test's BEFORE hook go on (set at the end whatever happens)."""
    release = threading.Event()
    yield release
    release.set()


@pytest.mark.anyio
async def test_one_tenants_calls_cannot_take_every_worker_thread_from_another_tenant(
    tmp_path: Path, schemas: SchemaSet, clock: Any, held: threading.Event
) -> None:
    hooks = Hooks()

    @hooks.before("Contact.create")
    def hold(ctx: BeforeContext) -> None:  # the operator's slow code: the writes queue behind it, each in a thread
        if ctx.data["name"].startswith("held"):
            held.wait(30)

    threads = int(anyio.to_thread.current_default_thread_limiter().total_tokens)
    with Store(tmp_path / "data", schemas, hooks=hooks, clock=clock) as store:
        busy = build_server(store, LocalIdentity("busy", AGENT))
        calm = build_server(store, LocalIdentity("calm", AGENT))
        async with Client(busy) as busy_client, Client(calm) as calm_client:
            results: list[Any] = []

            async def write(i: int) -> None:
                create = {"action": "create", "type": "Contact", "data": {"name": f"held {i}"}}
                results.append(await busy_client.call_tool("do", create))

            async with anyio.create_task_group() as tg:
                for i in range(threads + 10):  # more calls than the server has worker threads
                    tg.start_soon(write, i)
                try:
                    with anyio.fail_after(10):  # not waiting until the busy tenant's writes are let go
                        answer = await calm_client.call_tool("search", {"type": "Contact"})
                        written = await calm_client.call_tool(
                            "do", {"action": "create", "type": "Contact", "data": {"name": "Calm"}}
                        )
                    assert not results  # the busy tenant's writes were all still held meanwhile
                finally:
                    held.set()

        assert answer.is_error is False and answer.structured_content["results"] == []
        assert written.is_error is False
        assert len(results) == threads + 10 and not any(r.is_error for r in results)
        assert store.find("busy", "Contact", limit=1)["total"] == threads + 10


@pytest.mark.anyio
async def test_a_tenants_calls_share_one_limit_and_other_tenants_have_their_own() -> None:
    calls = TenantCalls(per_tenant=3)

    assert calls.slot("acme") is calls.slot("acme")
    assert calls.slot("acme") is not calls.slot("beta")
    assert calls.slot("beta").total_tokens == 3
