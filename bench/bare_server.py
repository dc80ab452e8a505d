#!/usr/bin/env python
"""The baseline of the MCP benchmarks: a bare `MCPServer` with one `echo` tool, nothing else.

    python bench/bare_server.py stdio          # MCP over stdin/stdout, like `headlessly serve`
    python bench/bare_server.py http <port>    # streamable HTTP at /mcp on 127.0.0.1 (0 = a free port)

Run as a subprocess over the same transport as `headlessly serve`, so that both servers are measured the
same way. Over HTTP it is served exactly as `headlessly serve --transport http` serves (uvicorn.Server with
`MCPServer.streamable_http_app(host=...)`, log_level "warning", lifespan "on") and, once listening, prints
one line to stderr in the same shape: `bare listening on http://127.0.0.1:<port>/mcp`. No auth: the bearer
token check is part of what headlessly costs.
"""

from __future__ import annotations

import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer(name="bare")


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


def serve_http(port: int) -> None:
    import anyio
    import uvicorn

    app = server.streamable_http_app(host="127.0.0.1")
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(uv.serve)
            while not uv.started:
                await anyio.sleep(0.01)
            bound = uv.servers[0].sockets[0].getsockname()[1] if uv.servers else port
            print(f"bare listening on http://127.0.0.1:{bound}/mcp", file=sys.stderr, flush=True)

    anyio.run(run)


def main(argv: list[str]) -> None:
    if argv == ["stdio"]:
        server.run("stdio")
    elif len(argv) == 2 and argv[0] == "http" and argv[1].isdigit():
        serve_http(int(argv[1]))
    else:
        sys.exit("usage: bare_server.py stdio | http <port>")


if __name__ == "__main__":
    main(sys.argv[1:])
