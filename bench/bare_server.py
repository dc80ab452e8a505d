#!/usr/bin/env python
"""The baseline of the MCP benchmarks: a bare `MCPServer` with one `echo` tool, nothing else.

    python bench/bare_server.py stdio          # MCP over stdin/stdout, like `headlessly serve`
    python bench/bare_server.py http <port>    # streamable HTTP at /mcp on 127.0.0.1 (0 = a free port)

Run as a subprocess over the same transport as `headlessly serve`, so that both servers are measured the
same way. Over HTTP it is served by the same function as `headlessly serve --transport http` (server/listen.py:
uvicorn with `MCPServer.streamable_http_app(host=...)`) and, once listening, prints one line to stderr in the
same shape: `bare listening on http://127.0.0.1:<port>/mcp`. No auth: the bearer token check is part of what
headlessly costs.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mcp.server.mcpserver import MCPServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

server = MCPServer(name="bare")


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


def serve_http(port: int) -> None:
    from server.listen import listen  # uvicorn as `headlessly serve` runs it (the module imports nothing of ours)

    def announce(bound: int) -> None:
        print(f"bare listening on http://127.0.0.1:{bound}/mcp", file=sys.stderr, flush=True)

    listen(server.streamable_http_app(host="127.0.0.1"), "127.0.0.1", port, announce)


def main(argv: list[str]) -> None:
    if argv == ["stdio"]:
        server.run("stdio")
    elif len(argv) == 2 and argv[0] == "http" and argv[1].isdigit():
        serve_http(int(argv[1]))
    else:
        sys.exit("usage: bare_server.py stdio | http <port>")


if __name__ == "__main__":
    main(sys.argv[1:])
