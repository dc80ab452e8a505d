"""A SIGKILL in the middle of sustained writes loses no acknowledged write (durability normal, WAL).

The server runs as a real subprocess; clients keep creating and updating contacts, recording every
write whose result came back; the server is killed with SIGKILL while writes are in flight, restarted
on the same data dir, and every acknowledged write must be there; `headlessly verify` must pass."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from e2e_helpers import http_server, kill_process, payload, pipe_transport, stdio_process, verify
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

TENANT = "crash"
ACTOR = "agent_crash"
WORKERS = 4
TARGET_ACKS = 200
UPDATES_PER_CONTACT = 3
MIN_ACKS = 50  # what even a slow machine acknowledges before the deadline
ACK_DEADLINE = 15.0  # kill after TARGET_ACKS acknowledged writes or this many seconds, whichever comes first
WRITE_PHASE_TIMEOUT = 30.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Acks:
    """Acknowledged writes: entity id -> the highest $version a result came back with."""

    def __init__(self) -> None:
        self.versions: dict[str, int] = {}
        self.count = 0
        self.enough = anyio.Event()
        self.killed = False
        self.in_flight = 0
        self.in_flight_at_kill = 0

    def record(self, entity: dict[str, Any]) -> None:
        self.versions[entity["$id"]] = max(self.versions.get(entity["$id"], 0), entity["$version"])
        self.count += 1
        if self.count >= TARGET_ACKS:
            self.enough.set()


async def write(client: Client, acks: Acks, arguments: dict[str, Any]) -> dict[str, Any]:
    acks.in_flight += 1
    result = await client.call_tool("do", arguments)
    acks.in_flight -= 1
    entity = payload(result)["entity"]
    acks.record(entity)
    return entity


async def sustained_writes(client: Client, acks: Acks, worker: int) -> None:
    """Create a contact, update it a few times, repeat, until the server is killed under us."""
    n = 0
    while True:
        n += 1
        try:
            entity = await write(
                client,
                acks,
                {"action": "create", "type": "Contact", "data": {"name": f"w{worker} c{n}", "title": "v1"}},
            )
            for v in range(2, UPDATES_PER_CONTACT + 2):
                await write(
                    client,
                    acks,
                    {"action": "update", "type": "Contact", "id": entity["$id"], "data": {"title": f"v{v}"}},
                )
        except Exception:
            if acks.killed:  # the in-flight write died with the server: not acknowledged, not checked
                return
            raise


async def write_until_killed(client: Client, acks: Acks, kill: Callable[[], Any]) -> None:
    """WORKERS concurrent writers; after TARGET_ACKS acknowledged writes (or ACK_DEADLINE), SIGKILL the server
    while writes are in flight.

    The client's transport may fail on its own once the server is gone: only what was recorded counts."""
    with anyio.fail_after(WRITE_PHASE_TIMEOUT):
        async with anyio.create_task_group() as tg:
            for w in range(WORKERS):
                tg.start_soon(sustained_writes, client, acks, w)
            with anyio.move_on_after(ACK_DEADLINE):
                await acks.enough.wait()
            acks.killed = True
            acks.in_flight_at_kill = acks.in_flight
            kill()


async def check_all_acknowledged(client: Client, acks: Acks) -> None:
    for entity_id, version in acks.versions.items():
        entity = payload(await client.call_tool("fetch", {"type": "Contact", "id": entity_id}))
        assert entity["$version"] >= version, (entity_id, entity["$version"], version)
        assert entity["title"] == f"v{entity['$version']}"
        assert entity["$updatedBy"] == ACTOR


@pytest.mark.anyio
async def test_sigkill_of_the_stdio_server_mid_write_loses_no_acknowledged_write(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    args = ("--tenant", TENANT, "--actor", ACTOR)

    acks = Acks()
    async with stdio_process(data_dir, *args) as process:
        pid = process.pid
        try:
            async with Client(pipe_transport(process)) as client:
                await write_until_killed(client, acks, lambda: os.kill(pid, signal.SIGKILL))
        except Exception:
            if not acks.killed:  # a failure before the kill is a real one
                raise
        with anyio.fail_after(10):
            await process.wait()
    assert process.returncode == -signal.SIGKILL
    assert acks.count >= MIN_ACKS
    assert acks.in_flight_at_kill >= 1  # killed mid-stream, with writes sent and not yet answered
    assert len(acks.versions) >= MIN_ACKS // (UPDATES_PER_CONTACT + 1)

    async with stdio_process(data_dir, *args) as process:
        with anyio.fail_after(WRITE_PHASE_TIMEOUT):
            async with Client(pipe_transport(process)) as client:
                await check_all_acknowledged(client, acks)

    done = verify(data_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{TENANT}: ok" in done.stdout


@pytest.mark.anyio
async def test_sigkill_of_the_http_server_mid_write_loses_no_acknowledged_write(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    args = ("--no-auth", "--tenant", TENANT, "--actor", ACTOR)

    with http_server(data_dir, *args) as server:
        killed_with: list[int] = []
        acks = Acks()
        try:
            async with httpx2.AsyncClient() as http, Client(streamable_http_client(server.url, http_client=http)) as c:
                await write_until_killed(c, acks, lambda: killed_with.append(kill_process(server.proc)))
        except Exception:
            if not acks.killed:  # a failure before the kill is a real one
                raise
    assert killed_with == [-signal.SIGKILL]
    assert acks.count >= MIN_ACKS
    assert acks.in_flight_at_kill >= 1  # killed mid-stream, with writes sent and not yet answered
    assert len(acks.versions) >= MIN_ACKS // (UPDATES_PER_CONTACT + 1)

    with http_server(data_dir, *args) as server:
        with anyio.fail_after(WRITE_PHASE_TIMEOUT):
            async with httpx2.AsyncClient() as http, Client(streamable_http_client(server.url, http_client=http)) as c:
                await check_all_acknowledged(c, acks)

    done = verify(data_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{TENANT}: ok" in done.stdout
