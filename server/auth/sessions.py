"""A cap on the streamable-HTTP sessions one token holds open. The SDK's session table (10,000 sessions) is
shared by every tenant: without a cap per token, one token (read-only or not) could fill it with sessions it
never uses and lock every other tenant out until they expire (30 minutes idle)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

INVALID_REQUEST = -32600


class SessionQuota:
    """ASGI app in front of /mcp (inside authentication, so the token is known): a request that would open
    a session for a token already holding `per_token` is refused with HTTP 429 before the SDK sees it."""

    def __init__(self, app: ASGIApp, manager: StreamableHTTPSessionManager, per_token: int) -> None:
        self.app = app
        self.manager = manager
        self.per_token = per_token
        self.opening: Counter[str] = Counter()  # requests of each token now opening a session

    def held(self, token_id: str) -> int:
        # The SDK keeps no public count of a credential's sessions; its session owners are the record.
        owners: dict[str, Any] = self.manager._session_owners
        return sum(1 for owner in owners.values() if owner["client_id"] == token_id)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        user = scope.get("user")
        headers = dict(scope.get("headers") or ())
        if scope["type"] != "http" or not isinstance(user, AuthenticatedUser) or b"mcp-session-id" in headers:
            await self.app(scope, receive, send)
            return
        token_id = user.access_token.client_id
        if self.held(token_id) + self.opening[token_id] >= self.per_token:
            await _refuse(send, token_id, self.per_token)
            return
        self.opening[token_id] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.opening[token_id] -= 1
            if not self.opening[token_id]:
                del self.opening[token_id]


async def _refuse(send: Send, token_id: str, per_token: int) -> None:
    message = (
        f"token {token_id} already holds {per_token} open sessions, the most one token may hold; "
        "end one (HTTP DELETE with its mcp-session-id) or reuse it: idle sessions close after 30 minutes"
    )
    body = json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": INVALID_REQUEST, "message": message}})
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [(b"content-type", b"application/json"), (b"retry-after", b"60")],
        }
    )
    await send({"type": "http.response.body", "body": body.encode()})


def limit_sessions_per_token(app: Starlette, manager: StreamableHTTPSessionManager, per_token: int) -> None:
    """Put a SessionQuota in front of the app's /mcp endpoint."""
    for route in app.routes:
        if isinstance(route, Route) and route.path == "/mcp":
            route.app = SessionQuota(route.app, manager, per_token)
            return
    raise LookupError("the streamable HTTP app has no /mcp route")
