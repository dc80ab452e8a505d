"""Serving an ASGI app with uvicorn, announcing on stderr the moment it listens (shared with the bench's bare server)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def listen(app: Any, host: str, port: int, announce: Callable[[int], None]) -> None:
    """Serve `app` on host:port (0 = a free port) until stopped; `announce(port)` once it listens."""
    import anyio
    import uvicorn

    uv = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(uv.serve)
            while not uv.started:
                await anyio.sleep(0.01)
            announce(uv.servers[0].sockets[0].getsockname()[1] if uv.servers else port)

    anyio.run(run)
