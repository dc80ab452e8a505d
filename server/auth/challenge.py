"""The HTTP 401 a request without a valid bearer token gets, worded for the case at hand.

The MCP SDK's RequireAuthMiddleware answers every such request with `error="invalid_token",
error_description="Authentication required"`. RFC 6750 (section 3.1) asks for no error code when the request
carries no credentials at all, and neither case said what to do next. This wrapper answers both in front of it;
requests with a valid token go on to the SDK's middleware (and its scope checks) unchanged."""

from __future__ import annotations

import json

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, RequireAuthMiddleware
from starlette.applications import Starlette
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

REALM = "headlessly"
MAKE_ONE = "An operator makes tokens with `headlessly token create --tenant TENANT --actor ACTOR`."


class Challenge:
    """ASGI app in front of an endpoint that requires a token: a 401 that says what was wrong."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or isinstance(scope.get("user"), AuthenticatedUser):
            await self.app(scope, receive, send)
            return
        await _refuse(send, _scheme(scope))


def _scheme(scope: Scope) -> str | None:
    """The Authorization header's scheme, lowercased ('bearer' only when a token follows); None without one."""
    for name, value in scope.get("headers") or ():
        if name.lower() == b"authorization":
            scheme, _, credentials = value.decode("latin-1").strip().partition(" ")
            return scheme.lower() if credentials.strip() else None
    return None


async def _refuse(send: Send, scheme: str | None) -> None:
    challenge = f'Bearer realm="{REALM}"'
    body: dict[str, str]
    if scheme == "bearer":
        description = "the bearer token is not valid here: unknown, mistyped or revoked"
        challenge += f', error="invalid_token", error_description="{description}"'
        body = {"error": "invalid_token", "error_description": description, "hint": MAKE_ONE}
    elif scheme is None:
        description = "this server needs a bearer token: send the header 'Authorization: Bearer <token>'"
        body = {"error_description": description, "hint": MAKE_ONE}
    else:
        description = f"this server takes bearer tokens only ('Authorization: Bearer <token>'), not {scheme!r}"
        body = {"error_description": description, "hint": MAKE_ONE}
    data = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
        (b"www-authenticate", challenge.encode()),
    ]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def explain_refusals(app: Starlette) -> None:
    """Put a Challenge in front of every endpoint of `app` that the SDK protects with its auth middleware."""
    wrapped = 0
    for route in app.routes:
        if isinstance(route, Route | Mount) and _requires_auth(route.app):
            route.app = Challenge(route.app)
            wrapped += 1
    if not wrapped:
        raise LookupError("the app has no endpoint behind the SDK's authentication")


def _requires_auth(app: object) -> bool:
    """RequireAuthMiddleware, possibly inside our own wrappers (which keep the one they wrap as `.app`)."""
    while app is not None and not isinstance(app, RequireAuthMiddleware):
        app = getattr(app, "app", None)
    return app is not None
