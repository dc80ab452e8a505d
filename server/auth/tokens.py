"""Bearer tokens: issued once, stored only as salted SHA-256 hashes, listed and revoked.

A token reads `hly_<id>_<secret>`: the id finds the row, the secret is checked against
`sha256(salt + secret)` in constant time. Tokens are random (256 bits), so a fast hash is
enough: there is nothing to guess that a slow hash would protect."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from ..config import private_dir
from ..errors import NotFound
from ..store.operations import check_actor
from ..store.tenants import check_tenant
from ..timeutil import format_us, now_us

PREFIX = "hly_"


@dataclass(frozen=True)
class TokenInfo:
    id: str
    tenant: str
    actor: str
    read_only: bool
    created_at: str
    revoked_at: str | None
    note: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id, "tenant": self.tenant, "actor": self.actor, "readOnly": self.read_only,
            "createdAt": self.created_at, "revokedAt": self.revoked_at, "note": self.note,
        }  # fmt: skip


def tokens_path(data_dir: Path) -> Path:
    """Where a data dir's tokens are kept (made by the first `TokenStore` opened on it)."""
    return data_dir / "tokens.db"


class TokenStore:
    """The token table in `<data-dir>/tokens.db`."""

    def __init__(self, data_dir: Path) -> None:
        private_dir(data_dir)
        self.path = tokens_path(data_dir)
        with contextlib.suppress(FileExistsError):  # created for our user only; SQLite's -wal/-shm copy its mode
            os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA busy_timeout = 5000")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS tokens (id TEXT PRIMARY KEY, salt BLOB NOT NULL, digest BLOB NOT NULL, "
            "tenant TEXT NOT NULL, actor TEXT NOT NULL, read_only INTEGER NOT NULL, created_at TEXT NOT NULL, "
            "revoked_at TEXT, note TEXT)"
        )

    def close(self) -> None:
        self._conn.close()

    def create(
        self, tenant: str, actor: str, read_only: bool = False, note: str | None = None
    ) -> tuple[str, TokenInfo]:
        """A new token: the secret string (shown once, never stored) and its record."""
        check_tenant(tenant)
        check_actor(actor)
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        info = TokenInfo(token_id, tenant, actor, read_only, format_us(now_us()), None, note)
        with self._lock:
            self._conn.execute(
                "INSERT INTO tokens (id, salt, digest, tenant, actor, read_only, created_at, note) VALUES (?,?,?,?,?,?,?,?)",
                (token_id, salt, _digest(salt, secret), tenant, actor, int(read_only), info.created_at, note),
            )
        return f"{PREFIX}{token_id}_{secret}", info

    def list(self, tenant: str | None = None, include_revoked: bool = False) -> list[TokenInfo]:
        sql = "SELECT id, tenant, actor, read_only, created_at, revoked_at, note FROM tokens WHERE (? IS NULL OR tenant = ?)"
        if not include_revoked:
            sql += " AND revoked_at IS NULL"
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY created_at", (tenant, tenant)).fetchall()
        return [TokenInfo(r[0], r[1], r[2], bool(r[3]), r[4], r[5], r[6]) for r in rows]

    def revoke(self, token_id: str) -> TokenInfo:
        """Revoke by the id `token list` shows, or by the whole token (what someone holding a leaked
        one has at hand); only its id part is ever echoed."""
        token_id, secret = token_parts(token_id)
        with self._lock:
            row = self._conn.execute("SELECT salt, digest, revoked_at FROM tokens WHERE id = ?", (token_id,)).fetchone()
            if row is None:
                raise NotFound(f"no token with id {token_id!r}", hint="`headlessly token list` shows the ids.")
            if secret is not None and not hmac.compare_digest(row[1], _digest(row[0], secret)):
                raise NotFound(
                    f"the token given is not token {token_id}: that id is there, but the rest of the token does not match "
                    "(mistyped, or a token of another data dir); nothing was revoked",
                    hint=f"Revoke by the id alone (`headlessly token revoke {token_id}`) if that is the token you mean.",
                )
            if row[2] is not None:
                raise NotFound(
                    f"token {token_id} was already revoked, at {row[2]}",
                    hint="`headlessly token list --all` shows revoked tokens too.",
                )
            self._conn.execute(
                "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (format_us(now_us()), token_id)
            )
        return next(t for t in self.list(include_revoked=True) if t.id == token_id)

    def verify(self, token: str) -> TokenInfo | None:
        """The token's record if it is genuine and not revoked, else None."""
        if (
            not token.startswith(PREFIX) or not token.isascii()
        ):  # tokens are ASCII; a lone surrogate would not even encode
            return None
        token_id, sep, secret = token[len(PREFIX) :].partition("_")
        if not sep or not token_id or not secret:
            return None
        with self._lock:
            row = self._conn.execute(
                "SELECT salt, digest, tenant, actor, read_only, created_at, revoked_at, note FROM tokens WHERE id = ?",
                (token_id,),
            ).fetchone()
        if row is None or row[6] is not None:
            return None
        if not hmac.compare_digest(row[1], _digest(row[0], secret)):
            return None
        return TokenInfo(token_id, row[2], row[3], bool(row[4]), row[5], row[6], row[7])


def token_parts(text: str) -> tuple[str, str | None]:
    """(id, secret) of what `token revoke` was given: an id (secret None), or a whole token, also as pasted from
    an Authorization header (its secret, '' when it was cut off after the id)."""
    text = text.strip()
    if text[:14].lower() == "authorization:":
        text = text[14:].strip()
    if text[:7].lower() == "bearer ":
        text = text[7:].strip()
    if text.startswith(PREFIX):
        token_id, _, secret = text[len(PREFIX) :].partition("_")
        return token_id, secret
    return text, None


def _digest(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode()).digest()
