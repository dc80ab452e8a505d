"""A cap on the streamable-HTTP sessions one token holds open. The SDK's session table (10,000 sessions) is
shared by every tenant: without a cap per token, one token (read-only or not) could fill it with sessions it
never uses and lock every other tenant out until they expire (--session-idle-timeout)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import anyio
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

INVALID_REQUEST = -32600


class SessionQuota:
    """ASGI app in front of /mcp (inside authentication, so the token is known): a request that would open
    a session for a token already holding `per_token` is refused with HTTP 429 before the SDK sees it.

    A token's opening requests go through one at a time (each while the SDK registers its session and
    answers it), so the count of its sessions is exact; other tokens' opens are not held up."""

    def __init__(self, app: ASGIApp, manager: StreamableHTTPSessionManager, per_token: int, idle: float) -> None:
        self.app = app
        self.manager = manager
        self.per_token = per_token
        self.idle = idle
        self.locks: dict[str, anyio.Lock] = {}
        self.users: Counter[str] = Counter()  # requests holding or waiting for each token's lock

    def held(self, token_id: str) -> int:
        # The SDK keeps no public count of a credential's sessions; its session owners are the record.
        owners: dict[str, Any] = self.manager._session_owners
        return sum(1 for owner in owners.values() if owner["client_id"] == token_id)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        user = scope.get("user")
        if scope["type"] != "http" or not isinstance(user, AuthenticatedUser) or not _opens_a_session(scope):
            await self.app(scope, receive, send)
            return
        token_id = user.access_token.client_id
        self.users[token_id] += 1
        try:
            async with self.locks.setdefault(token_id, anyio.Lock()):
                if self.held(token_id) >= self.per_token:
                    await self._refuse(send, token_id)
                    return
                await self.app(scope, receive, send)
        finally:
            self.users[token_id] -= 1
            if not self.users[token_id]:
                del self.users[token_id], self.locks[token_id]

    async def _refuse(self, send: Send, token_id: str) -> None:
        message = (
            f"token {token_id} already holds {self.per_token} open sessions, the most one token may hold; "
            f"end one (HTTP DELETE with its mcp-session-id) or reuse it: idle sessions close after {self.idle:g} s"
        )
        body = json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": INVALID_REQUEST, "message": message}})
        headers = [(b"content-type", b"application/json"), (b"retry-after", b"60")]
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": body.encode()})


def _opens_a_session(scope: Scope) -> bool:
    """A POST without a session of the handshake era (no protocol version yet, or one of that era), as the
    SDK tells them: only such a request opens a session. Requests of later protocol versions open none."""
    headers = dict(scope.get("headers") or ())
    version = headers.get(b"mcp-protocol-version")
    return (
        scope.get("method") == "POST"
        and b"mcp-session-id" not in headers
        and (version is None or version.decode("latin-1") in HANDSHAKE_PROTOCOL_VERSIONS)
    )


def limit_sessions_per_token(
    app: Starlette, manager: StreamableHTTPSessionManager, per_token: int, idle_seconds: float
) -> None:
    """Put a SessionQuota in front of the app's /mcp endpoint."""
    for route in app.routes:
        if isinstance(route, Route) and route.path == "/mcp":
            route.app = SessionQuota(route.app, manager, per_token, idle_seconds)
            return
    raise LookupError("the streamable HTTP app has no /mcp route")
