"""The event record: ids, canonical JSON, `old -> new` rendering and the hash chain."""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any, NamedTuple

GENESIS_HASH = "0" * 64
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ID_LENGTH = 12


_ID_TABLE = bytes((_ALPHABET[b % 62].encode()[0]) for b in range(256))


def new_id(prefix: str) -> str:
    """`prefix` + 12 random base62 characters (about 71 bits)."""
    return prefix + secrets.token_bytes(ID_LENGTH).translate(_ID_TABLE).decode()


def _not_serializable(value: object) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False) builds a new C encoder
# per call; this is that same encoder built once (no circular check: values come from JSON).
_ENCODER: Any = json.encoder.c_make_encoder(  # type: ignore[attr-defined]
    None, _not_serializable, json.encoder.encode_basestring, None, ":", ",", False, False, False
)
if _ENCODER is None:  # pragma: no cover - CPython always has the C accelerator
    _ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).iterencode


def dumps(value: Any) -> str:
    """The one JSON encoding stored in the database (compact, UTF-8, key order as given)."""
    return "".join(_ENCODER(value, 0))


def render(value: Any) -> str:
    """A value as it appears in `data`: strings bare, everything else as JSON, absent as null."""
    kind = type(value)
    if kind is str:
        return value  # type: ignore[no-any-return]
    if kind is int:
        return str(value)
    return dumps(value)


def render_change(old: Any, new: Any) -> str:
    return f"{render(old)} -> {render(new)}"


EVENT_ROW_COLUMNS = "seq, id, type, entity_type, action, target, actor, ts, version, data, changes, state, reason, caused_by, prev_hash, hash"


class EventRow(NamedTuple):
    """One event as stored (JSON columns kept as their exact stored text), in column order."""

    seq: int
    id: str
    type: str
    entity_type: str
    action: str
    target: str
    actor: str
    ts: str
    version: int
    data: str
    changes: str
    state: str
    reason: str | None
    caused_by: str | None
    prev_hash: str
    hash: str

    def to_dict(self, data: dict[str, Any] | None = None, changes: dict[str, Any] | None = None) -> dict[str, Any]:
        """The event as the API shows it (`data`/`changes` may be passed when already decoded)."""
        out: dict[str, Any] = {
            "id": self.id,
            "seq": self.seq,
            "type": self.type,
            "target": self.target,
            "actor": self.actor,
            "timestamp": self.ts,
            "version": self.version,
            "data": json.loads(self.data) if data is None else data,
            "changes": json.loads(self.changes) if changes is None else changes,
        }
        if self.reason is not None:
            out["reason"] = self.reason
        if self.caused_by is not None:
            out["causedBy"] = self.caused_by
        out["hash"] = self.hash
        return out


def chain_hash(
    prev_hash: str,
    seq: int,
    event_id: str,
    type_: str,
    target: str,
    actor: str,
    ts: str,
    version: int,
    data: str,
    changes: str,
    state: str,
    reason: str | None,
    caused_by: str | None,
) -> str:
    """sha256 over the previous hash and every stored field of the event, unit-separated."""
    parts = (
        prev_hash, str(seq), event_id, type_, target, actor, ts, str(version),
        data, changes, state, reason if reason is not None else "\x00", caused_by if caused_by is not None else "\x00",
    )  # fmt: skip
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def misnamed(event_type: str, entity_type: str) -> str | None:
    """What is wrong with an event's entity_type, which must be its type's noun (`Contact` for
    `Contact.Qualified`), or None. The hash covers the type, not the entity_type derived from it, so every
    check of an event's hash checks this too."""
    if entity_type == event_type.partition(".")[0]:
        return None
    return f"its entity_type {entity_type!r} is not the noun of its type {event_type}"


def row_hash(row: EventRow) -> str:
    return chain_hash(
        row.prev_hash, row.seq, row.id, row.type, row.target, row.actor, row.ts, row.version,
        row.data, row.changes, row.state, row.reason, row.caused_by,
    )  # fmt: skip
