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


DRAIN_SECONDS = 20.0  # how long a stopping server waits for the tool calls in flight to be answered
log = logging.getLogger("headlessly")


def listen(
    app: Any, host: str, port: int, announce: Callable[[int], None], in_flight: Callable[[], int] | None = None
) -> None:
    """Serve `app` on host:port (0 = a free port) until stopped; `announce(port)` once it listens.

    With `in_flight` (how many tool calls are running), a stop first lets those calls finish and be answered
    (for at most DRAIN_SECONDS), then ends the open SSE streams: by default sse-starlette ends every stream
    the moment uvicorn is told to stop, cutting off the answer to a write that then commits anyway."""
    import anyio
    import uvicorn
    from sse_starlette.sse import AppStatus

    if in_flight is not None:
        AppStatus.disable_automatic_graceful_drain()
        AppStatus.should_exit = False

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

    async def drain() -> None:
        """Once stopping: wait for the calls in flight, then end the SSE streams so uvicorn can finish."""
        assert in_flight is not None
        while not uv.should_exit:
            await anyio.sleep(0.05)
        if n := in_flight():
            log.info("stopping: answering %d call(s) in flight first (at most %.0f s)", n, DRAIN_SECONDS)
        with anyio.move_on_after(DRAIN_SECONDS):
            while in_flight():
                await anyio.sleep(0.05)
        AppStatus.should_exit = True

    async def run() -> None:
        async with anyio.create_task_group() as tg:

            async def serve_then_stop() -> None:
                await serve()
                tg.cancel_scope.cancel()  # (the drain, when it never saw a stop: a failed start)

            tg.start_soon(serve_then_stop)
            if in_flight is not None:
                tg.start_soon(drain)
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
