"""Entities of types the schemas do not define (a noun removed from them, or renamed).

Nothing is ever deleted from a tenant, so such entities and their events stay in it; but fetch, search
and do refuse their type, so no tool reaches them until the noun's definition is back. That is not an
error in the file: it is said, not failed on. `verify` reports them (`undefinedTypes`), a server logs a
warning when it opens the tenant, and the refusal of such a type says how many the tenant still holds.

The counts come from `entity_counts` (kept by triggers, one row per noun and live flag: reading it
scans a handful of rows, whatever the tenant's size), or from the entities themselves for verify."""

from __future__ import annotations

import logging
import sqlite3

from ..schema import SchemaSet

log = logging.getLogger(__name__)

KEPT_COUNTS = "SELECT type, live, n FROM entity_counts WHERE n > 0"
Held = dict[str, int]  # {"live": n, "deleted": n}


def undefined_types(conn: sqlite3.Connection, schemas: SchemaSet, counts: str = KEPT_COUNTS) -> dict[str, Held]:
    """The types of the tenant's entities, live or deleted, that `schemas` do not define, by name, with their
    counts. `counts` gives rows of (type, live, n): the kept counts, or `sqlite.ENTITY_COUNTS` to count rows."""
    found: dict[str, Held] = {}
    for type_, live, n in conn.execute(counts):
        if type_ not in schemas and n:
            held = found.setdefault(type_, {"live": 0, "deleted": 0})
            held["live" if live else "deleted"] += n
    return dict(sorted(found.items()))


def describe(found: dict[str, Held]) -> str:
    """`Widget (2 live, 1 deleted), Gadget (1 deleted)`."""
    return ", ".join(
        f"{name} ({', '.join(f'{n} {how}' for how, n in held.items() if n)})" for name, held in found.items()
    )


def warn_undefined(conn: sqlite3.Connection, tenant: str, schemas: SchemaSet) -> None:
    """Log, as a tenant is opened, the entities it holds of types `schemas` do not define."""
    found = undefined_types(conn, schemas)
    if found:
        log.warning(
            "tenant %s holds entities of types the server's schemas do not define: %s. fetch, search and do "
            "refuse these types, but the entities and their events are kept: restore each noun's definition "
            "(schemas/ or a --schemas folder) to reach them again, or leave it if they were removed on purpose",
            tenant,
            describe(found),
        )


def still_held(conn: sqlite3.Connection, name: str) -> str:
    """For the refusal of an unknown type: what the tenant still holds of it (nothing: '')."""
    (n,) = conn.execute("SELECT coalesce(sum(n), 0) FROM entity_counts WHERE type = ?", (name,)).fetchone()
    if not n:
        return ""
    return (
        f": this tenant still holds {n} {name} {'entity' if n == 1 else 'entities'} (live or deleted), but the "
        f"server's schemas no longer define {name}; they are kept, with their events (search Event with type "
        f"'{name}.*'), and reachable again once the server's operator restores the noun"
    )
