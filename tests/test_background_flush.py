"""The server's background flush: a child process of `headlessly serve` that sends new events to the lakehouse
every --flush-interval seconds, does the CPU work away from the server's requests, and ends with the server."""

from __future__ import annotations

import json
import os
import re
import select
import signal
from contextlib import AbstractContextManager, suppress
from pathlib import Path

import anyio
import pytest
from conftest import AGENT
from e2e_helpers import (
    HEADLESSLY,
    INITIALIZE,
    HttpServer,
    http_mcp_client,
    http_server,
    kill_process,
    payload,
    run_cli,
    server_env,
)
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from server.lake.background import ChangeWatch
from server.schema import load_schemas
from server.store import Store

TENANT = "acme"
TIMEOUT = 60.0
FLUSHED = r"background flush: (\d+) events of 1 tenant"


def children(pid: int) -> list[int]:
    """The child processes of `pid`, whichever of its threads started them."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with suppress(FileNotFoundError):  # a thread that just ended
            found += [int(c) for c in (task / "children").read_text().split()]
    return sorted(found)


def loaded_libraries(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def wait_for_exit(pid: int, timeout: float) -> None:
    """Waits for a process that is not ours to reap (a pidfd becomes readable when it exits)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        assert ready, f"process {pid} still running after {timeout}s"
    finally:
        os.close(fd)


def lake_events(data_dir: Path) -> list[str]:
    done = run_cli("events", "--tenant", TENANT, "--json", "--from-lake", "--data-dir", data_dir)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


async def create_contacts(server: HttpServer, names: list[str]) -> None:
    async with http_mcp_client(server) as client:
        for name in names:
            result = await client.call_tool("do", {"action": "create", "type": "Contact", "data": {"name": name}})
            payload(result)


def flushing_server(data_dir: Path, cwd: Path | None = None) -> AbstractContextManager[HttpServer]:
    """`headlessly serve --transport http --no-auth` whose background flush runs every 0.2 s."""
    return http_server(data_dir, "--no-auth", "--tenant", TENANT, "--flush-interval", "0.2", cwd=cwd)


async def logged(server: HttpServer, pattern: str, start: int = 0) -> None:
    """Waits (off the event loop) until the server's stderr has a line matching `pattern` from line `start` on."""
    await anyio.to_thread.run_sync(server.wait_for_log, pattern, TIMEOUT, start)


async def first_flush(server: HttpServer) -> int:
    """Writes Alice, waits for the flush process to send her, and returns its pid (the server's only child)."""
    await create_contacts(server, ["Alice"])
    await logged(server, FLUSHED)
    (flusher,) = children(server.proc.pid)
    return flusher


@pytest.mark.anyio
async def test_serve_flushes_new_events_from_a_child_process_while_it_runs(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with flushing_server(data_dir) as server:
        with anyio.fail_after(TIMEOUT):
            await create_contacts(server, ["Alice", "Bob"])
            await logged(server, FLUSHED)
        flushers = children(server.proc.pid)
        server_maps = loaded_libraries(server.proc.pid)
        flusher_maps = loaded_libraries(flushers[0]) if flushers else ""

        assert len(flushers) == 1
        assert "libarrow" in flusher_maps
        assert "libarrow" not in server_maps  # the Parquet and Iceberg work never ran in the server
    assert "Traceback" not in server.log()
    assert len(lake_events(data_dir)) == 2


def widget_schemas(folder: Path, color: str) -> Path:
    folder.mkdir()
    (folder / "widgets.json").write_text(
        f'{{"$domain": "Widgets", "Widget": {{"name": "string!", "color": "{color}"}}}}'
    )
    return folder


@pytest.mark.anyio
async def test_a_server_with_new_schemas_rebuilds_a_tenant_its_flush_process_has_flushed(tmp_path: Path) -> None:
    """The flush process holds no tenant file between rounds, so the server can rebuild a tenant's keys alone."""
    data_dir = tmp_path / "data"
    before = widget_schemas(tmp_path / "before", "string")
    with Store(data_dir, load_schemas([before])) as s:
        for name in ("first", "second"):
            s.do(TENANT, AGENT, {"action": "create", "type": "Widget", "data": {"name": name, "color": "red"}})
    after = widget_schemas(tmp_path / "after", "string#")  # color is now indexed: acme's keys must be rebuilt

    with http_server(
        data_dir, "--no-auth", "--tenant", TENANT, "--flush-interval", "0.2", "--schemas", after
    ) as server:
        with anyio.fail_after(TIMEOUT):
            await logged(server, r"background flush: 2 events of 1 tenant")  # it opened and flushed acme
            async with http_mcp_client(server) as client:
                found = await client.call_tool("search", {"type": "Widget", "filter": {"color": "red"}})

    assert sorted(e["name"] for e in payload(found)["results"]) == ["first", "second"]
    assert "rebuilt what the schemas changed (lookup keys, full text or both) of Widget" in server.log()


@pytest.mark.anyio
async def test_a_killed_servers_flush_process_sends_what_was_written_and_exits(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with flushing_server(data_dir) as server:
        with anyio.fail_after(TIMEOUT):
            flusher = await first_flush(server)
            await create_contacts(server, [f"Contact {i}" for i in range(20)])
        kill_process(server.proc)
        wait_for_exit(flusher, TIMEOUT)

    assert len(lake_events(data_dir)) == 21
    assert run_cli("verify", "--data-dir", data_dir).returncode == 0


@pytest.mark.anyio
async def test_a_flush_process_that_dies_is_replaced_and_the_next_one_catches_up(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with flushing_server(data_dir) as server:
        with anyio.fail_after(TIMEOUT):
            first = await first_flush(server)
            os.kill(first, signal.SIGKILL)
            await logged(server, r"flush process exited with status -9")
            since = len(server.stderr_lines)
            await create_contacts(server, ["Bob", "Carol"])
            await logged(server, FLUSHED, since)
            replacement = children(server.proc.pid)

        assert replacement and replacement != [first]
    assert len(lake_events(data_dir)) == 3  # what the replacement had not sent yet, it sent at shutdown


@pytest.mark.anyio
async def test_over_stdio_the_flush_process_never_writes_into_the_mcp_channel(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    params = StdioServerParameters(
        command=str(HEADLESSLY),
        args=["serve", "--data-dir", str(data_dir), "--tenant", TENANT, "--flush-interval", "0.2"],
        env=server_env(),
    )
    stderr_path = tmp_path / "stderr.log"
    with stderr_path.open("w") as errlog, anyio.fail_after(TIMEOUT):
        async with Client(stdio_client(params, errlog=errlog)) as client:
            created = payload(
                await client.call_tool("do", {"action": "create", "type": "Deal", "data": {"name": "Big", "value": 0}})
            )
            deal, value = created["entity"]["$id"], 0

            async def update() -> None:
                nonlocal value
                value += 1
                request = {"action": "update", "type": "Deal", "id": deal, "data": {"value": value}}
                assert payload(await client.call_tool("do", request))["entity"]["$version"] == value + 1

            while "background flush:" not in stderr_path.read_text():  # keep writing until a flush has run
                await update()
            for _ in range(20):  # and the session goes on, every answer intact
                await update()
            fetched = payload(await client.call_tool("fetch", {"type": "Deal", "id": deal}))

    assert fetched["value"] == value
    assert value > 20 and lake_events(data_dir)  # a flush ran mid-session


def test_a_server_started_beside_a_server_py_still_flushes_with_its_own_package(tmp_path: Path) -> None:
    """The child runs `python -P -m server.lake.background`: a `server.py` in the working directory is not run."""
    workdir = tmp_path / "project"
    workdir.mkdir()
    marker = tmp_path / "imported"
    (workdir / "server.py").write_text(f"open({str(marker)!r}, 'a').write('x')\n")
    data_dir = tmp_path / "data"
    with flushing_server(data_dir, cwd=workdir) as server:
        anyio.run(create_contacts, server, ["Alice"])
        server.wait_for_log(FLUSHED, TIMEOUT)

    assert not marker.exists()
    assert "exited with status" not in server.log()
    assert len(lake_events(data_dir)) == 1


def stdio_serve(data_dir: Path) -> list[str]:
    """`headlessly serve` over stdio for tenant acme, flushing only at its shutdown."""
    return [str(HEADLESSLY), "serve", "--data-dir", str(data_dir), "--tenant", TENANT, "--flush-interval", "3600"]


async def create_alice_over_stdio(proc: anyio.abc.Process) -> None:
    """initialize, initialized and a `do` create of Alice over the process's pipes; returns once she is
    written (the server then waits on its stdin, which stays open)."""
    assert proc.stdin is not None and proc.stdout is not None
    create = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
              "params": {"name": "do", "arguments": {"action": "create", "type": "Contact", "data": {"name": "Alice"}}}}  # fmt: skip
    for request in (INITIALIZE, {"jsonrpc": "2.0", "method": "notifications/initialized"}, create):
        await proc.stdin.send((json.dumps(request) + "\n").encode())
    replies = b""
    async for chunk in proc.stdout:
        replies += chunk
        if b'"id":2' in replies.replace(b" ", b"") and replies.endswith(b"\n"):
            break
    assert b"contact_" in replies, replies.decode()


@pytest.mark.anyio
async def test_a_sigterm_to_the_flush_process_ends_it_after_one_last_flush(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with flushing_server(data_dir) as server:
        with anyio.fail_after(TIMEOUT):
            flusher = await first_flush(server)
            await create_contacts(server, ["Bob", "Carol"])
            os.kill(flusher, signal.SIGTERM)
            await logged(server, r"flush process exited with status 0 ")
        assert len(lake_events(data_dir)) == 3  # before the server's shutdown flush

    assert "Traceback" not in server.log()


@pytest.mark.anyio
async def test_the_flush_logs_at_info_without_pyicebergs_notice_at_every_table_load(tmp_path: Path) -> None:
    with flushing_server(tmp_path / "data") as server:
        with anyio.fail_after(TIMEOUT):
            await first_flush(server)
            start = len(server.stderr_lines)
            await create_contacts(server, ["Bob"])
            await logged(server, FLUSHED, start)
    assert re.search(FLUSHED, server.log())
    assert "FileIO" not in server.log()


@pytest.mark.anyio
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_an_http_server_stopped_by_a_signal_flushes_what_was_written_on_the_way_out(
    tmp_path: Path, sig: signal.Signals
) -> None:
    data_dir = tmp_path / "data"
    with http_server(data_dir, "--no-auth", "--tenant", TENANT, "--flush-interval", "3600") as server:
        with anyio.fail_after(TIMEOUT):
            await create_contacts(server, ["Alice"])
        server.proc.send_signal(sig)  # to the server alone: its flush process is told by the server
        code = await anyio.to_thread.run_sync(server.proc.wait, TIMEOUT)

    assert code == 0, server.log()
    assert "final flush: 1 events" in server.log()
    assert "Traceback" not in server.log()
    assert len(lake_events(data_dir)) == 1


@pytest.mark.anyio
async def test_a_ctrl_c_to_the_whole_process_group_stops_the_server_without_a_flush_process_warning(
    tmp_path: Path,
) -> None:
    """A terminal's Ctrl-C reaches the server and its flush process at once: the server stops it, cleanly."""
    data_dir = tmp_path / "data"
    with flushing_server(data_dir) as server:
        with anyio.fail_after(TIMEOUT):
            await first_flush(server)
            await create_contacts(server, ["Bob"])
        os.killpg(server.proc.pid, signal.SIGINT)
        code = await anyio.to_thread.run_sync(server.proc.wait, TIMEOUT)

    assert code == 0, server.log()
    assert "exited with status" not in server.log()
    assert " WARNING " not in server.log() and " ERROR " not in server.log()
    assert len(lake_events(data_dir)) == 2


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("sig", "to_group"),
    [(signal.SIGTERM, False), (signal.SIGTERM, True), (signal.SIGINT, True)],
    ids=["sigterm", "sigterm-to-group", "ctrl-c"],
)
async def test_a_stdio_server_stopped_by_a_signal_mid_session_flushes_what_was_written_and_exits_0(
    tmp_path: Path, sig: signal.Signals, to_group: bool
) -> None:
    """The client keeps stdin open (as `docker run -i` or a terminal does): the signal alone stops the server.
    To the group (a terminal's Ctrl-C, systemd) it also reaches the flush process, which the server stops."""
    data_dir = tmp_path / "data"
    with anyio.fail_after(TIMEOUT):
        async with await anyio.open_process(stdio_serve(data_dir), env=server_env(), start_new_session=True) as proc:
            assert proc.stderr is not None
            await create_alice_over_stdio(proc)
            if to_group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
            code = await proc.wait()
            seen = b"".join([chunk async for chunk in proc.stderr])

    assert code == 0, seen.decode()
    assert b"final flush: 1 events" in seen
    assert b"Traceback" not in seen
    assert b" WARNING " not in seen and b" ERROR " not in seen
    assert len(lake_events(data_dir)) == 1


@pytest.mark.anyio
async def test_an_http_server_sent_sigterm_twice_still_finishes_its_final_flush(tmp_path: Path) -> None:
    """A supervisor that repeats its SIGTERM (or an impatient operator) must not cut the final flush short."""
    data_dir = tmp_path / "data"
    with http_server(data_dir, "--no-auth", "--tenant", TENANT, "--flush-interval", "3600") as server:
        with anyio.fail_after(TIMEOUT):
            await create_contacts(server, ["Alice"])
        server.proc.send_signal(signal.SIGTERM)
        await anyio.to_thread.run_sync(server.wait_for_log, "shutting down: a last flush")
        server.proc.send_signal(signal.SIGTERM)  # while the final flush runs
        code = await anyio.to_thread.run_sync(server.proc.wait, TIMEOUT)

    assert code == 0, server.log()
    assert "final flush: 1 events" in server.log()
    assert len(lake_events(data_dir)) == 1


@pytest.mark.anyio
async def test_a_stdio_server_whose_client_closes_stdin_then_sends_sigterm_still_finishes_its_final_flush(
    tmp_path: Path,
) -> None:
    """The MCP spec's own order for stopping a stdio server: close its stdin, then SIGTERM if it lingers."""
    data_dir = tmp_path / "data"
    with anyio.fail_after(TIMEOUT):
        async with await anyio.open_process(stdio_serve(data_dir), env=server_env(), start_new_session=True) as proc:
            assert proc.stdin is not None and proc.stderr is not None
            await create_alice_over_stdio(proc)
            await proc.stdin.aclose()
            seen = b""
            async for chunk in proc.stderr:  # the server is shutting down: its final flush is on its way
                seen += chunk
                if b"shutting down: a last flush" in seen:
                    break
            proc.send_signal(signal.SIGTERM)
            code = await proc.wait()
            seen += b"".join([chunk async for chunk in proc.stderr])

    assert code == 0, seen.decode()
    assert len(lake_events(data_dir)) == 1, seen.decode()
    assert b"Traceback" not in seen


def test_a_round_of_the_flush_process_looks_only_at_tenants_written_since_their_last_flush(store: Store) -> None:
    for tenant in ("acme", "beta"):
        store.do(tenant, "agent_a", {"action": "create", "type": "Contact", "data": {"name": "Ada"}})
    watch = ChangeWatch(store)

    first = watch.changed()
    watch.flushed.update(first)
    quiet = watch.changed()
    store.do("beta", "agent_a", {"action": "create", "type": "Contact", "data": {"name": "Bo"}})
    after_a_write = watch.changed()

    assert sorted(first) == ["acme", "beta"]
    assert quiet == {}
    assert sorted(after_a_write) == ["beta"]
