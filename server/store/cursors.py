"""Opaque keyset cursors, bound to the query that made them and to the log position they read."""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidCursor

# A sort value whose JSON is longer than this is left out of the cursor (its `elided` positions): a long text
# would make the cursor longer than `decode` takes. The search reads it back from the last row's state at `seq`.
MAX_KEY_JSON = 256
MAX_TOKEN = 8192


@dataclass(frozen=True)
class Cursor:
    keys: list[Any]  # sort-key values of the last row returned (None where elided), then its id (or seq)
    seq: int  # the log position the first page read: later pages read the same state
    elided: tuple[int, ...] = ()  # positions in `keys` whose value is not carried


def sealed_for(conn: sqlite3.Connection, query: dict[str, Any]) -> dict[str, Any]:
    """`query` with the tenant's cursor secret in it: a cursor made with it fits only this tenant."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'cursor_secret'").fetchone()
    return {**query, "tenant": row[0] if row else ""}


def fingerprint(query: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(query, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _seal(body: str, query: dict[str, Any]) -> str:
    return hashlib.sha256(f"{fingerprint(query)}|{body}".encode()).hexdigest()[:16]


def encode(cursor: Cursor, query: dict[str, Any]) -> str:
    fields: dict[str, Any] = {"k": cursor.keys, "s": cursor.seq}
    if cursor.elided:
        fields["e"] = list(cursor.elided)
    body = json.dumps(fields, separators=(",", ":"))
    token = json.dumps({"b": body, "c": _seal(body, query)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


def decode(token: object, query: dict[str, Any], key_count: int, max_seq: int) -> Cursor:
    """The cursor, if this server made it for this very query; else InvalidCursor.

    `key_count` is how many values a cursor of this query carries; `max_seq` the log's head."""
    hint = (
        "Pass back the cursor of the previous page unchanged, with the same type, filter, query, sort, asOf and "
        "includeDeleted (only limit may change)."
    )
    foreign = InvalidCursor("the cursor is not one this server issued for this search", hint=hint)
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN:
        raise foreign
    try:
        outer = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if set(outer) != {"b", "c"}:
            raise ValueError
        body, check = outer["b"], outer["c"]
        inner = json.loads(body)
        keys, seq, elided = inner["k"], inner["s"], inner.get("e", [])
    except (ValueError, KeyError, TypeError):
        raise foreign from None
    if not isinstance(body, str) or not isinstance(check, str) or check != _seal(body, query):
        raise InvalidCursor("the cursor belongs to a different search, or was altered", hint=hint)
    scalar = (str, int, float, bool, type(None))
    if (
        not isinstance(keys, list)
        or len(keys) != key_count
        or not all(isinstance(k, scalar) for k in keys)
        or not isinstance(seq, int)
        or isinstance(seq, bool)
        or not 0 <= seq <= max_seq
        or not isinstance(elided, list)
        or sorted(set(elided)) != elided
        or not all(type(i) is int and 0 <= i < key_count - 1 and keys[i] is None for i in elided)
    ):
        raise foreign
    return Cursor(keys=keys, seq=seq, elided=tuple(elided))
