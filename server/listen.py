"""Serving an ASGI app with uvicorn, announcing on stderr the moment it listens (shared with the bench's bare server)."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from typing import Any


class _RefusedSseRequest(logging.Filter):
    """The MCP SDK's SSE endpoint answers a request its Host/Origin check refuses (421/403, with a warning
    saying why) and then raises ValueError("Request validation failed"), which uvicorn would log with a
    whole traceback: one per refused request, for anyone to flood the log with."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, ValueError) and str(exc) == "Request validation failed")


def listen(app: Any, host: str, port: int, announce: Callable[[int], None]) -> None:
    """Serve `app` on host:port (0 = a free port) until stopped; `announce(port)` once it listens."""
    import anyio
    import uvicorn

    uv = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    errors = logging.getLogger("uvicorn.error")  # (uvicorn.Config has set its loggers up)
    if not any(isinstance(f, _RefusedSseRequest) for f in errors.filters):
        errors.addFilter(_RefusedSseRequest())

    failed: list[SystemExit] = []

    async def serve() -> None:
        try:
            await uv.serve()
        except SystemExit as exc:  # uvicorn could not start (a port in use) and has said why on stderr
            failed.append(exc)

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            while not uv.started:
                if failed:
                    return
                await anyio.sleep(0.01)
            sockets = uv.servers[0].sockets if uv.servers else ()
            if sockets:  # none when a signal stopped it while it started
                announce(sockets[0].getsockname()[1])

    # Stop on SIGINT/SIGTERM the way uvicorn does while it serves (drain, then return), also before it
    # installs its own handlers and when it raises the signal again after draining: the caller's
    # shutdown (the server's last flush) then runs as after any normal return.
    def stop(_signum: int, _frame: object) -> None:
        uv.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        anyio.run(run)
        if failed:
            raise SystemExit(1)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
