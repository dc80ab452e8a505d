"""The caller of a tool: tenant, actor and whether it may write, never taken from tool arguments."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken

from ..store.operations import ACTOR
from .tokens import TokenStore


@dataclass(frozen=True)
class Caller:
    tenant: str
    actor: str
    read_only: bool = False


def actor_from_client_name(name: str | None) -> str:
    """`agent_<client name, slugged>`, or `agent_anonymous` when the client gave no usable name."""
    if name:
        slug = re.sub(r"[^A-Za-z0-9_-]+", "-", name.strip()).strip("-")[:64].rstrip("-")
        if slug and ACTOR.fullmatch(f"agent_{slug}"):
            return f"agent_{slug}"
    return "agent_anonymous"


class TokenVerifier:
    """The SDK's TokenVerifier protocol over our token table."""

    def __init__(self, tokens: TokenStore) -> None:
        self.tokens = tokens

    async def verify_token(self, token: str) -> AccessToken | None:
        info = self.tokens.verify(token)
        if info is None:
            return None
        return AccessToken(
            token=token,
            client_id=info.id,  # a session belongs to its token: another token is refused on it, same actor or not
            scopes=["read"] if info.read_only else ["read", "write"],
            claims={"tenant": info.tenant, "actor": info.actor, "readOnly": info.read_only, "tokenId": info.id},
        )


@dataclass(frozen=True)
class LocalIdentity:
    """stdio, or HTTP with --no-auth on loopback: tenant from flags, actor from flags or the client."""

    tenant: str
    actor: str | None

    def resolve(self, client_name: str | None) -> Caller:
        return Caller(self.tenant, self.actor or actor_from_client_name(client_name))


def resolve_caller(local: LocalIdentity | None, client_name: str | None) -> Caller | None:
    """The caller of the current request; None when a token is required and there is none."""
    token = get_access_token()
    if token is not None and token.claims:
        claims: dict[str, Any] = token.claims
        return Caller(claims["tenant"], claims["actor"], bool(claims.get("readOnly")))
    if local is not None:
        return local.resolve(client_name)
    return None
