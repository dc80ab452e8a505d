"""`headlessly token`: create, list and revoke the bearer tokens of http/sse."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .common import actor_flag, data_dir_option, existing_data_dir_option, fail, main, print_table, tenant_flag


@main.group()
def token() -> None:
    """Create, list and revoke bearer tokens for http/sse (stored only as hashes)."""


@token.command("create")
@click.option("--tenant", required=True, callback=tenant_flag, help="The tenant this token reaches (and no other).")
@click.option(
    "--actor", required=True, callback=actor_flag, help="The actor recorded on every event written with this token."
)
@click.option("--read-only", is_flag=True, help="fetch and search only; do is forbidden.")
@click.option("--note", default=None, help="A label to recognise the token by in `token list`.")
@data_dir_option
def token_create(tenant: str, actor: str, read_only: bool, note: str | None, data_dir: Path) -> None:
    """Create a token and print it once: it cannot be shown again."""
    from ..auth.tokens import TokenStore
    from ..errors import HeadlesslyError

    tokens = TokenStore(data_dir)
    try:
        secret, info = tokens.create(tenant, actor, read_only, note)
    except HeadlesslyError as exc:
        fail(exc.message)
    finally:
        tokens.close()
    click.echo(secret)
    click.echo(
        f"token {info.id} for tenant {info.tenant}, actor {info.actor}{' (read-only)' if read_only else ''}: "
        "store it now, it is not shown again",
        err=True,
    )


@token.command("list")
@click.option("--tenant", default=None, callback=tenant_flag, help="Only this tenant's tokens.")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked tokens.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@existing_data_dir_option
def token_list(tenant: str | None, include_revoked: bool, as_json: bool, data_dir: Path) -> None:
    """List tokens (ids and who they stand for; never the secrets)."""
    from ..auth.tokens import TokenStore, tokens_path

    rows = []
    if tokens_path(data_dir).exists():  # (no tokens yet: nothing to list, and nothing to make)
        tokens = TokenStore(data_dir)
        rows = tokens.list(tenant, include_revoked)
        tokens.close()
    if as_json:
        for t in rows:
            click.echo(json.dumps(t.to_dict()))
        return
    print_table(["id", "tenant", "actor", "access", "created", "revoked", "note"],
           [[t.id, t.tenant, t.actor, "read-only" if t.read_only else "read-write", t.created_at, t.revoked_at or "", t.note or ""] for t in rows])  # fmt: skip


@token.command("revoke")
@click.argument("token_id")
@existing_data_dir_option
def token_revoke(token_id: str, data_dir: Path) -> None:
    """Revoke a token by its id (or the whole token): every later request with it gets HTTP 401."""
    from ..auth.tokens import TokenStore, token_parts, tokens_path
    from ..errors import HeadlesslyError

    if not tokens_path(data_dir).exists():  # (no token was ever made here: nothing to revoke, nothing to make)
        fail(f"no token with id {token_parts(token_id)[0]!r}: there are no tokens in {data_dir}")
    tokens = TokenStore(data_dir)
    try:
        info = tokens.revoke(token_id)
    except HeadlesslyError as exc:
        fail(exc.message)
    finally:
        tokens.close()
    click.echo(f"revoked token {info.id} (tenant {info.tenant}, actor {info.actor})")
