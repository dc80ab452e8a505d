"""Opaque keyset cursors, bound to the query that made them and to the log position they read."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidCursor


@dataclass(frozen=True)
class Cursor:
    keys: list[Any]  # sort-key values of the last row returned, then its id (or seq)
    seq: int  # the log position the first page read: later pages read the same state


def fingerprint(query: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(query, sort_keys=True, default=str).encode()).hexdigest()[:16]


def encode(cursor: Cursor, query: dict[str, Any]) -> str:
    body = json.dumps({"k": cursor.keys, "s": cursor.seq, "f": fingerprint(query)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


def decode(token: object, query: dict[str, Any]) -> Cursor:
    hint = "Pass back the cursor of the previous page unchanged, with the same type, filter, query and sort."
    if not isinstance(token, str) or not token or len(token) > 4096:
        raise InvalidCursor("the cursor is not one this server issued", hint=hint)
    try:
        body = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        keys, seq, fp = body["k"], body["s"], body["f"]
        if not isinstance(keys, list) or not isinstance(seq, int) or not isinstance(fp, str):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise InvalidCursor("the cursor is not one this server issued", hint=hint) from None
    if fp != fingerprint(query):
        raise InvalidCursor("the cursor belongs to a different search (type, filter, query or sort changed)", hint=hint)
    return Cursor(keys=keys, seq=seq)
