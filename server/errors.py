"""The one exception family of headlessly: every refusal carries a CONTRACT error code."""

from __future__ import annotations

import json
from typing import Any

MAX_TEXT = 2_000  # characters of a message or hint: whatever the request held, an error fits in an agent's context
SHOWN = 80  # characters of a caller's value (not a string) a message shows


def bounded(text: str) -> str:
    """`text`, or its start and end with what lies between left out, past MAX_TEXT characters (the end
    often lists what is valid)."""
    if len(text) <= MAX_TEXT:
        return text
    keep = MAX_TEXT // 2 - 40
    return f"{text[:keep]} ... ({len(text) - 2 * keep:,} characters left out) ... {text[-keep:]}"


def shown(value: Any, limit: int = SHOWN) -> str:
    """A value the caller sent, as a message shows it. Callers speak JSON: anything but a string is shown as
    the JSON it came as (`null`, `true`, `["A"]`, `{"a": 1}`), its first `limit` characters and "..." past
    them; a string is quoted as messages always quoted one ('Acme'), whole (`bounded` bounds the message)."""
    if isinstance(value, str):
        return repr(value)
    try:
        text = json.dumps(value, ensure_ascii=False, default=repr)
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate (\ud800) inside: escaped, as JSON writes it
        text = json.dumps(value, default=repr)
    except (TypeError, ValueError, RecursionError):  # not JSON at all (a hook's value): at least what it is
        text = type(value).__name__
    return clipped(text, limit)


def clipped(text: str, limit: int = SHOWN) -> str:
    """`text`, or its first `limit` characters with "..." for the last three of them."""
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


def a_or_an(word: str) -> str:
    """`word` after the article it takes, by its first letter: "an Organization", "an int", "a User", "a url"."""
    return f"{'an' if word[:1].lower() in ('a', 'e', 'i', 'o') else 'a'} {word}"


class HeadlesslyError(Exception):
    """A refusal the caller can understand and act on: `code`, `message` and `hint`."""

    code = "error"

    def __init__(self, message: str, hint: str = "", **details: Any) -> None:
        message, hint = bounded(message), bounded(hint)
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.hint:
            out["hint"] = self.hint
        out.update(self.details)
        return out


class NotFound(HeadlesslyError):
    """No entity, event, tenant or version answers to what was asked."""

    code = "not_found"


class InvalidType(HeadlesslyError):
    """`type` names no noun."""

    code = "invalid_type"


class InvalidId(HeadlesslyError):
    """An id of the wrong shape or of another noun."""

    code = "invalid_id"


class ValidationFailed(HeadlesslyError):
    """Data, arguments or a hook refused the write."""

    code = "validation_error"


class InvalidFilter(HeadlesslyError):
    """A search filter names an unknown field or misuses an operator."""

    code = "invalid_filter"


class InvalidSort(HeadlesslyError):
    """A sort names an unknown or unsortable field."""

    code = "invalid_sort"


class InvalidCursor(HeadlesslyError):
    """A cursor this server did not issue for this search."""

    code = "invalid_cursor"


class InvalidAsOf(HeadlesslyError):
    """A time that cannot be read, or before the entity existed."""

    code = "invalid_as_of"


class VersionConflict(HeadlesslyError):
    """`ifVersion` does not match the entity's current version."""

    code = "version_conflict"


class UnknownVerb(HeadlesslyError):
    """An action the noun does not declare."""

    code = "unknown_verb"


class Forbidden(HeadlesslyError):
    """The connection may not do this (e.g. a read-only token writing)."""

    code = "forbidden"


class LimitExceeded(HeadlesslyError):
    """A size or count above what is allowed."""

    code = "limit_exceeded"


class InvalidTenant(HeadlesslyError):
    """A tenant name outside the allowed pattern."""

    code = "invalid_tenant"


class InvalidActor(HeadlesslyError):
    """An actor name outside the allowed pattern."""

    code = "invalid_actor"


class HookFailed(HeadlesslyError):
    """A BEFORE hook (the operator's code) raised something other than HookRejected: not the caller's to fix."""

    code = "internal_error"


class StorageError(HeadlesslyError):
    """The database refused a write for a reason outside the caller's control."""

    code = "storage_error"


class DamagedFile(StorageError):
    """SQLite says a tenant's database file is damaged: retrying cannot help; a restore can."""


class EmptyFile(StorageError):
    """A tenant's database file is there but empty (0 bytes): it holds no database. A crash between SQLite making
    a new tenant's file and its first commit leaves one (harmless: the first write makes the database); so does
    a file emptied since (its events lost: a restore brings them back)."""


class Conflict(HeadlesslyError):
    """A command refused because of the state things are in (a tenant that has events, or is open elsewhere)."""

    code = "conflict"


class TenantBusy(StorageError):
    """The tenant cannot be read or written now: another process has it to itself (a restore, a reindex, a
    rebuild for new schemas), or a write under way has held it past a limit."""


class SchemaError(Exception):
    """A malformed schema file: raised at start-up, naming file, noun, field and problem."""

    def __init__(self, file: str, noun: str | None, field: str | None, problem: str) -> None:
        where = file
        if noun:
            where += f": {noun}"
            if field:
                where += f".{field}"
        super().__init__(f"{where}: {problem}")
        self.file, self.noun, self.field, self.problem = file, noun, field, problem
