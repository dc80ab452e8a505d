"""Helpers for the end-to-end tests: the real `headlessly` command as a subprocess.

Not a test module. Every helper that starts a process also ends it (terminate, then kill),
whatever happens in between, so a failing test never leaves a server behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx2
import mcp_types
from anyio.streams.text import TextReceiveStream
from mcp import Client
from mcp.client._transport import TransportStreams
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.message import SessionMessage
from mcp_types import Implementation

HEADLESSLY = Path(sys.executable).parent / "headlessly"
STARTUP_TIMEOUT = 20.0
CLI_TIMEOUT = 60.0
LISTENING = re.compile(r"headlessly listening on (http://[^\s/]+:(\d+)/(mcp|sse))\b")
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw-e2e", "version": "1"},
    },
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def server_env() -> dict[str, str]:
    """The test's environment without HEADLESSLY_* settings, so only the flags count (nor PYICEBERG_* ones,
    which would send the lakehouse elsewhere)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("HEADLESSLY_", "PYICEBERG_"))}


def run_cli(*args: str | Path, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """`headlessly <args>` to completion, output captured (killed if it outlives `timeout`)."""
    return subprocess.run(
        [str(HEADLESSLY), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=server_env(),
        check=False,
    )


def create_token(data_dir: Path, tenant: str, actor: str, read_only: bool = False) -> str:
    """A new bearer token made with `headlessly token create` (printed once on stdout)."""
    args: list[str | Path] = ["token", "create", "--tenant", tenant, "--actor", actor, "--data-dir", data_dir]
    if read_only:
        args.append("--read-only")
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert re.fullmatch(r"hly_[0-9a-f]+_\S+", token), done.stdout
    return token


def token_id(token: str) -> str:
    """The id part of `hly_<id>_<secret>`, as `token revoke` takes it."""
    return token.removeprefix("hly_").split("_", 1)[0]


def revoke_token(data_dir: Path, token: str) -> None:
    done = run_cli("token", "revoke", token_id(token), "--data-dir", data_dir)
    assert done.returncode == 0, done.stderr


def verify(data_dir: Path) -> subprocess.CompletedProcess[str]:
    """`headlessly verify --data-dir D` (exit 0 when every tenant is sound)."""
    return run_cli("verify", "--data-dir", data_dir)


def stop_process(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """Terminate, then kill; always reaps the process."""
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=grace)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with suppress(OSError):
                stream.close()


def kill_process(proc: subprocess.Popen[Any]) -> int:
    """SIGKILL now (no chance to flush or close anything) and reap; returns the exit status."""
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
    return proc.wait(timeout=10)


@dataclass
class HttpServer:
    """A running `headlessly serve --transport http|sse` and what it printed on stderr."""

    proc: subprocess.Popen[bytes]
    url: str
    port: int
    data_dir: Path
    stderr_lines: list[str] = field(default_factory=list)
    stderr_changed: threading.Condition = field(default_factory=threading.Condition)

    @property
    def transport(self) -> str:
        return "sse" if self.url.endswith("/sse") else "http"

    def log(self) -> str:
        return "".join(self.stderr_lines)

    def wait_for_log(self, pattern: str, timeout: float = STARTUP_TIMEOUT, start: int = 0) -> re.Match[str]:
        """Blocks until a line on the server's stderr (from line `start` on) matches `pattern` (a regex);
        fails after `timeout`."""
        found: list[re.Match[str]] = []

        def seen() -> bool:
            found[:] = [m for line in self.stderr_lines[start:] if (m := re.search(pattern, line))][:1]
            return bool(found)

        with self.stderr_changed:
            if not self.stderr_changed.wait_for(seen, timeout):
                raise AssertionError(f"no stderr line matched {pattern!r} within {timeout}s:\n{self.log()}")
        return found[0]


def _start_http(data_dir: Path, transport: str, args: tuple[str, ...], cwd: Path | None = None) -> HttpServer:
    command = [str(HEADLESSLY), "serve", "--transport", transport, "--host", "127.0.0.1", "--port", "0"]
    proc = subprocess.Popen(
        [*command, "--data-dir", str(data_dir), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=server_env(),
        start_new_session=True,
        cwd=cwd,
    )
    lines: list[str] = []
    changed = threading.Condition()
    found: dict[str, str] = {}
    ready = threading.Event()

    def read_stderr() -> None:  # keeps draining after the banner, so the server never blocks on a full pipe
        assert proc.stderr is not None
        for raw in iter(proc.stderr.readline, b""):
            line = raw.decode("utf-8", "replace")
            with changed:
                lines.append(line)
                changed.notify_all()
            if not ready.is_set() and (m := LISTENING.search(line)):
                found["url"], found["port"] = m.group(1), m.group(2)
                ready.set()
        ready.set()  # end of stream: the server is gone

    threading.Thread(target=read_stderr, name=f"stderr-{proc.pid}", daemon=True).start()
    try:
        if not ready.wait(STARTUP_TIMEOUT) or "url" not in found:
            raise AssertionError(f"headlessly serve did not start (exit {proc.poll()}):\n{''.join(lines)}")
    except BaseException:
        stop_process(proc)
        raise
    return HttpServer(proc, found["url"], int(found["port"]), data_dir, lines, changed)


@contextmanager
def http_server(data_dir: Path, *args: str, transport: str = "http", cwd: Path | None = None) -> Iterator[HttpServer]:
    """`headlessly serve --transport http|sse --port 0 --data-dir D <args>` (in `cwd`): yields once it
    listens, always stops it afterwards."""
    server = _start_http(data_dir, transport, args, cwd)
    try:
        yield server
    finally:
        stop_process(server.proc)


def tenant_db(data_dir: Path, tenant: str) -> Path:
    return data_dir / "tenants" / f"{tenant}.db"


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token is not None else {}


@asynccontextmanager
async def http_mcp_client(
    server: HttpServer,
    token: str | None = None,
    mode: str = "auto",
    statuses: list[int] | None = None,
    client_info: Implementation | None = None,
) -> AsyncIterator[Client]:
    """The SDK client over streamable HTTP (/mcp) or SSE (/sse), with an optional bearer token.
    `statuses` collects the HTTP status of every response the client received."""

    async def record(response: httpx2.Response) -> None:
        if statuses is not None:
            statuses.append(response.status_code)

    hooks: dict[str, list[Any]] = {"response": [record]}
    if server.url.endswith("/sse"):

        def factory(
            headers: dict[str, str] | None = None,
            timeout: httpx2.Timeout | None = None,
            auth: httpx2.Auth | None = None,
        ) -> httpx2.AsyncClient:
            return httpx2.AsyncClient(headers=headers, timeout=timeout, auth=auth, event_hooks=hooks)

        transport = sse_client(server.url, headers=bearer(token), httpx_client_factory=factory)
        async with Client(transport, mode=mode, client_info=client_info) as client:
            yield client
    else:
        async with (
            httpx2.AsyncClient(headers=bearer(token), event_hooks=hooks, timeout=httpx2.Timeout(30.0)) as http,
            Client(streamable_http_client(server.url, http_client=http), mode=mode, client_info=client_info) as client,
        ):
            yield client


async def raw_request(server: HttpServer, token: str | None = None) -> httpx2.Response:
    """One plain HTTP request, no SDK: an initialize POST to /mcp, or the GET that opens /sse
    (closed as soon as the status line is in, unless it is a refusal: then its body is read)."""
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(10.0)) as http:
        if server.url.endswith("/sse"):
            async with http.stream("GET", server.url, headers=bearer(token)) as response:
                if response.status_code != 200:
                    await response.aread()
                return response
        return await http.post(server.url, json=INITIALIZE, headers={**MCP_HEADERS, **bearer(token)})


# ---- MCP over the pipes of a process we own (so that we know its PID) -----------------------------


def _parse_line(line: str) -> SessionMessage | Exception:
    try:
        return SessionMessage(mcp_types.jsonrpc_message_adapter.validate_json(line, by_name=False))
    except ValueError as exc:
        return exc


@asynccontextmanager
async def stdio_process(data_dir: Path, *args: str) -> AsyncIterator[anyio.abc.Process]:
    """`headlessly serve --data-dir D <args>` (stdio) as a process whose PID the test knows.
    At exit its stdin is closed; if it is still alive 5 s later it is killed."""
    process = await anyio.open_process(
        [str(HEADLESSLY), "serve", "--data-dir", str(data_dir), *args],
        env=server_env(),
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None and process.stdin is not None:
                with suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    await process.stdin.aclose()  # end of input: a stdio server shuts down on its own
                with anyio.move_on_after(5):
                    await process.wait()
            if process.returncode is None:
                with suppress(ProcessLookupError):
                    process.kill()
            with anyio.move_on_after(10):
                await process.wait()
            await process.aclose()


@asynccontextmanager
async def pipe_transport(process: anyio.abc.Process) -> AsyncIterator[TransportStreams]:
    """An MCP client transport over an already running stdio server: newline-delimited JSON-RPC."""
    assert process.stdin is not None and process.stdout is not None
    stdin, stdout = process.stdin, process.stdout
    to_session, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream, from_session = anyio.create_memory_object_stream[SessionMessage](0)

    async def reader() -> None:
        buffer = ""
        async with to_session:
            with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream, OSError):
                async for chunk in TextReceiveStream(stdout):
                    lines = (buffer + chunk).split("\n")
                    buffer = lines.pop()
                    for line in lines:
                        if line.strip():
                            await to_session.send(_parse_line(line))

    async def writer() -> None:
        async with from_session:
            with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                async for message in from_session:
                    data = message.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n"
                    await stdin.send(data.encode())
            # the server died under us: let pending requests see the connection end
            await to_session.aclose()

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        tg.start_soon(writer)
        try:
            yield read_stream, write_stream
        finally:
            tg.cancel_scope.cancel()
            for stream in (read_stream, write_stream):
                stream.close()


def payload(result: Any) -> dict[str, Any]:
    """A tool result's structured content, failing with its text if it was an error."""
    assert not result.is_error, result.content[0].text if result.content else result
    content: dict[str, Any] = result.structured_content
    return content


def error_of(result: Any) -> dict[str, Any]:
    """A tool error's CONTRACT JSON ({"error", "message", "hint"})."""
    assert result.is_error, result.structured_content
    error: dict[str, Any] = json.loads(result.content[0].text)
    return error
