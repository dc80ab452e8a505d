"""Reads: current, asOf and versioned entities, searches with filters and cursors, and the event log."""

from __future__ import annotations

import json
import re
import sqlite3
from typing import Any

from ..errors import InvalidCursor, InvalidFilter, LimitExceeded, NotFound, ValidationFailed
from ..schema import Noun, SchemaSet
from ..schema.validation import INT64_MAX
from ..timeutil import between_microseconds, format_us, parse_as_of
from . import cursors
from .events import EVENT_ROW_COLUMNS, EventRow
from .filters import (
    EVENT_COLUMNS,
    Column,
    FilterCompiler,
    KeyedTerm,
    SortKey,
    entity_columns,
    parse_sort,
)
from .mutations import check_id
from .sqlite import noun_literal, text_of
from .words import words

DEFAULT_LIMIT = 25
MAX_LIMIT = 100
COUNT_CAP = 10_000
WALK_FROM = 1_000  # matches of an indexed filter from which the first page walks the default order
PAGE_CHARS = 4_000_000  # characters of entity state (events: of data and changes) a page holds past its first result
MAX_INCLUDE = 100


def check_limit(limit: Any) -> int:
    if limit is None:
        return DEFAULT_LIMIT
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValidationFailed(
            f"limit must be a whole number from 1 to {MAX_LIMIT}, got {limit!r}", hint=f"Default {DEFAULT_LIMIT}."
        )
    if limit > MAX_LIMIT:
        shown = str(limit) if limit < 10**20 else f"of {len(str(limit))} digits"
        raise LimitExceeded(
            f"limit {shown} is above the maximum of {MAX_LIMIT}", hint="Page through with the cursor instead."
        )
    return limit


def seq_at(conn: sqlite3.Connection, as_of_us: int) -> int:
    """The last seq whose timestamp is <= asOf (timestamps grow with seq)."""
    # ORDER BY ts ... LIMIT 1 walks the unique ts index; max(seq) with a ts condition would scan the log.
    row = conn.execute(
        "SELECT seq FROM events WHERE ts <= ? ORDER BY ts DESC LIMIT 1", (format_us(as_of_us),)
    ).fetchone()
    return row[0] if row else 0


def head_seq(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]


# ---- single entities -------------------------------------------------------------------------


def state_at(conn: sqlite3.Connection, entity_id: str, seq: int | None) -> dict[str, Any] | None:
    if seq is None:
        row = conn.execute("SELECT state FROM entities WHERE id = ?", (entity_id,)).fetchone()
    else:
        row = conn.execute(
            "SELECT state FROM events WHERE target = ? AND seq <= ? ORDER BY seq DESC LIMIT 1", (entity_id, seq)
        ).fetchone()
    return json.loads(row[0]) if row else None


def get_entity(
    conn: sqlite3.Connection,
    schemas: SchemaSet,
    noun: Noun,
    entity_id: str,
    as_of: str | None = None,
    version: int | None = None,
    include: list[str] | None = None,
    fields: list[str] | None = None,
) -> dict[str, Any]:
    check_id(noun, entity_id)
    if include:  # each name once: a name repeated would be expanded (a search each) as many times
        include = list(dict.fromkeys(include))
    if as_of is not None and version is not None:
        raise ValidationFailed(
            "pass asOf or version, not both",
            hint="asOf reads a time; version reads the state right after that version.",
        )
    seq: int | None = None
    if version is not None:
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= INT64_MAX:
            raise ValidationFailed(
                f"version must be a whole number from 1 to {INT64_MAX}, got {version!r}", hint='e.g. "version": 2.'
            )
        row = conn.execute(
            "SELECT state, seq FROM events WHERE target = ? AND version = ?", (entity_id, version)
        ).fetchone()
        if row is None:
            latest = conn.execute("SELECT max(version) FROM events WHERE target = ?", (entity_id,)).fetchone()[0]
            if latest is None:
                raise NotFound(
                    f"{noun.name} {entity_id} does not exist", hint=f"Search {noun.name} to find existing ids."
                )
            raise NotFound(
                f"{entity_id} has no version {version}; its versions are 1 to {latest}",
                hint="Pick a version in that range.",
            )
        state, seq = json.loads(row[0]), row[1]
    else:
        if as_of is not None:
            seq = seq_at(conn, parse_as_of(as_of))
        state = state_at(conn, entity_id, seq)
        if state is None:
            if as_of is not None and state_at(conn, entity_id, None) is not None:
                created = state_at(conn, entity_id, None)
                raise NotFound(
                    f"{noun.name} {entity_id} did not exist at {format_us(parse_as_of(as_of))}; it was created at {created['$createdAt']}",  # type: ignore[index]
                    hint="Use an asOf at or after its creation.",
                )
            raise NotFound(f"{noun.name} {entity_id} does not exist", hint=f"Search {noun.name} to find existing ids.")
        if state.get("$deletedAt") is not None:
            raise NotFound(
                f"{noun.name} {entity_id} was deleted at {state['$deletedAt']} by {state.get('$deletedBy')}",
                hint="Fetch it with an asOf before the deletion to see it, or roll it back to restore it.",
                deletedAt=state["$deletedAt"],
                deletedBy=state.get("$deletedBy"),
            )
    if state.get("$type") != noun.name:
        raise NotFound(f"{entity_id} is not a {noun.name}", hint=f'Fetch it with "type": "{state.get("$type")}".')
    if include:
        expand(conn, schemas, noun, state, include, seq)
    if fields is not None:
        state = project(noun, state, fields, include or [])
    return state


META_FIELDS = (
    "$id",
    "$type",
    "$version",
    "$createdAt",
    "$createdBy",
    "$updatedAt",
    "$updatedBy",
    "$deletedAt",
    "$deletedBy",
)


def project(noun: Noun, state: dict[str, Any], fields: list[str], include: list[str]) -> dict[str, Any]:
    """Only `fields` of `state` (and what `include` expanded, which stays)."""
    unknown = [f for f in fields if f not in noun.fields and f not in noun.reverses and f not in META_FIELDS]
    if unknown:
        raise ValidationFailed(
            f"unknown fields {unknown} for {noun.name}",
            hint=f"{noun.name} fields: {', '.join([*noun.fields, *noun.reverses, *META_FIELDS])}.",
        )
    reverses = [f for f in fields if f in noun.reverses and f not in include]
    if reverses:  # not stored: only include lists them
        raise ValidationFailed(
            f"{', '.join(reverses)}: a reverse relationship of {noun.name} is not stored, so fields alone cannot return it",
            hint=f"Also pass it in include to list those entities: {json.dumps({'include': reverses})}.",
        )
    keep = {"$id", "$type", "$version", "$includeTruncated", *fields, *include}
    return {k: v for k, v in state.items() if k in keep}


def expand(
    conn: sqlite3.Connection, schemas: SchemaSet, noun: Noun, state: dict[str, Any], include: list[str], seq: int | None
) -> None:
    """Replace forward relationship ids by their entities; add reverse relationships as lists."""
    for name in include:
        f = noun.fields.get(name)
        if f is not None and f.relation:
            value = state.get(name)
            if isinstance(value, list):
                state[name] = [_live(state_at(conn, v, seq), f.relation) for v in value]
            elif isinstance(value, str):
                state[name] = _live(state_at(conn, value, seq), f.relation)
            continue
        rev = noun.reverses.get(name)
        if rev is None:
            names = [n for n, fd in noun.fields.items() if fd.relation] + list(noun.reverses)
            raise ValidationFailed(
                f"{noun.name} has no relationship {name!r}",
                hint=f"{noun.name} relationships: {', '.join(names) or 'none'}.",
            )
        other = schemas[rev.noun]
        result = find(conn, schemas, other, {rev.field: state["$id"]}, limit=MAX_LIMIT, sort="$createdAt", _seq=seq)
        state[name] = result["results"]
        if result["hasMore"]:  # say so, and how to read the rest (as of the same moment)
            search: dict[str, Any] = {"type": other.name, "filter": {rev.field: state["$id"]}, "sort": "$createdAt"}
            if seq is not None:
                search["asOf"] = conn.execute("SELECT ts FROM events WHERE seq = ?", (seq,)).fetchone()[0]
            state.setdefault("$includeTruncated", {})[name] = {
                "shown": len(result["results"]),
                "total": result["total"],
                "search": search,
            }


def _live(state: dict[str, Any] | None, noun: str) -> dict[str, Any] | None:
    """The linked entity, unless deleted or of another noun (a link written before the relationship
    was pointed at another noun)."""
    return state if state is not None and state.get("$deletedAt") is None and state.get("$type") == noun else None


# ---- search -------------------------------------------------------------------------------------


def _fts_query(text: str) -> list[str]:
    tokens = words(text)
    if not tokens:
        raise InvalidFilter(
            f"query {text!r} has no words to search for", hint="Pass one or more words; all must appear."
        )
    if len(tokens) > 32:
        raise InvalidFilter("query has more than 32 words", hint="Shorten the query.")
    return tokens


def _changed_since(noun: Noun) -> str:
    """SQL for the ids of `noun`'s entities with an event after the seq bound as its one parameter."""
    return f"SELECT target FROM events WHERE entity_type = {noun_literal(noun.name)} AND seq > ?"


# An event's row read as the entities row it left behind (each event keeps its entity's whole state).
_AS_ENTITY = (
    "e.target AS id, e.entity_type AS type, e.version AS version, "
    """json_extract(e.state, '$."$createdAt"') AS created_at, e.ts AS updated_at, """
    """json_extract(e.state, '$."$deletedAt"') AS deleted_at, e.state AS state"""
)


def _source(noun: Noun, seq: int | None) -> tuple[str, list[Any]]:
    """The rows to search: the materialized table, or every entity's last state at `seq`. An entity with no
    event after `seq` is now as it was then, so only the others' states are read from the log (a cursor's
    later pages and an asOf close to now read little more than the table)."""
    if seq is None:
        return "entities", []
    changed = _changed_since(noun)
    sql = (
        "(SELECT rowid, id, type, version, created_at, updated_at, deleted_at, state FROM entities "
        f"WHERE type = {noun_literal(noun.name)} AND id NOT IN ({changed}) UNION ALL "
        f"SELECT e.rowid, {_AS_ENTITY} FROM events e "
        f"WHERE e.seq IN (SELECT max(seq) FROM events WHERE target IN ({changed}) AND seq <= ? GROUP BY target))"
    )
    return sql, [seq, seq, seq]


def _order(keys: list[SortKey]) -> tuple[str, list[Any]]:
    """Nulls last. Meta columns are never null, so they get no null term and the (type, updated_at)
    index can give the default order without sorting every row. An enum sorts by its declared order."""
    parts, params = [], []
    for k in keys:
        if k.nullable:
            parts.append(f"({k.sql} IS NULL)")
            params += k.params
        parts.append(f"{k.sql} {'DESC' if k.descending else 'ASC'}")
        params += k.params
    return ", ".join([*parts, "id ASC"]), params


def _after(keys: list[SortKey], values: list[Any], last_id: str) -> tuple[str, list[Any]]:
    """Keyset condition: rows strictly after (values, last_id) in the sort order, nulls last. `values` are
    the sort keys' own (`SortKey.sql`: for an enum, its position)."""
    sql = "(id > ?)"
    params: list[Any] = [last_id]
    for key, value in reversed(list(zip(keys, values, strict=True))):
        col, bound = key.sql, key.params
        cmp = "<" if key.descending else ">"
        if value is None:
            sql = f"(({col} IS NULL) AND {sql})"
            params = [*bound, *params]
        elif key.nullable:
            sql = f"(({col} IS NULL) OR ({col} {cmp} ?) OR (({col} = ?) AND {sql}))"
            params = [*bound, *bound, value, *bound, value, *params]
        else:
            sql = f"(({col} {cmp} ?) OR (({col} = ?) AND {sql}))"
            params = [*bound, value, *bound, value, *params]
    return sql, params


def find(
    conn: sqlite3.Connection,
    schemas: SchemaSet,
    noun: Noun,
    filter: Any = None,
    query: str | None = None,
    sort: str | None = None,
    limit: int | None = None,
    cursor: str | None = None,
    as_of: str | None = None,
    include_deleted: bool = False,
    _seq: int | None = None,
) -> dict[str, Any]:
    n = check_limit(limit)
    columns = entity_columns(noun)
    keys = parse_sort(sort, columns, noun.name, "-$updatedAt")
    identity = {
        "type": noun.name,
        "filter": filter,
        "query": query,
        "sort": ",".join(("-" if k.descending else "") + k.column.name for k in keys),  # the default spelt out too
        "asOf": None if as_of is None else format_us(parse_as_of(as_of)),  # the instant, however it is spelt
        "includeDeleted": include_deleted,
    }
    if enums := {k.column.name: list(k.column.enum) for k in keys if k.column.enum}:
        # A cursor carries an enum's position: it goes on only under the order it was made with.
        identity["enumOrder"] = enums
    identity = cursors.sealed_for(conn, identity)
    head = head_seq(conn)
    pinned: int | None
    if cursor is not None:
        page = cursors.decode(cursor, identity, len(keys) + 1, head)
        pinned = page.seq
    elif _seq is not None:
        pinned = _seq
    elif as_of is not None:
        pinned = seq_at(conn, parse_as_of(as_of))
    else:
        pinned = head
    seq_bound: int | None = pinned
    if as_of is None and _seq is None and pinned >= _noun_head(conn, noun):
        seq_bound = None  # nothing of this noun changed since: the materialized table is that state
    compiler = FilterCompiler(columns, noun.name, keys_noun=noun.name if seq_bound is None else None)
    where, params = _entity_where(noun, compiler, filter, include_deleted)
    source, source_params = _source(noun, seq_bound)
    if query is not None:
        tokens = _fts_query(query)
        matched = "SELECT rowid FROM entities_fts WHERE entities_fts MATCH ?"
        fts = " ".join('"' + t.replace('"', '""') + '"*' for t in tokens)
        if seq_bound is None:
            where.append(f"rowid IN ({matched})")
            params.append(fts)
        else:
            # An entity with no event after seq_bound is now as it was then: the FTS index answers for it. Past
            # states of the others are not in the index: match them the way FTS5 does (words, prefixes, no accents).
            body = " || char(10) || ".join(text_of(f, noun.fields[f].array) for f in noun.text_fields) or "''"
            where.append(
                f"(CASE WHEN id IN ({_changed_since(noun)}) THEN words_match({body}, ?) "
                f"ELSE id IN (SELECT id FROM entities WHERE rowid IN ({matched})) END)"
            )
            params += [seq_bound, " ".join(tokens), fts]
    base_where = " AND ".join(where)
    base_params = source_params + params
    total, exact = None, False  # exact: taken from a kept count, so true however large
    if query is None and seq_bound is None:  # the materialized table is current: counts kept beside it apply
        if compiler.terms == 0:
            total, exact = _count_noun(conn, noun, include_deleted), True
        else:
            total = _count_keys(conn, noun, compiler, include_deleted)
            exact = total is not None and _equality(compiler) is not None
    if total is None:
        total = conn.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM {source} WHERE {base_where} LIMIT {COUNT_CAP + 1})", base_params
        ).fetchone()[0]
    plain = query is None and not include_deleted and _default_order(keys)
    equal = _equality(compiler) if plain and keys[0].descending else None
    if equal is not None:
        rows = _keyed_page(conn, noun, equal, (page.keys[0], page.keys[-1]) if cursor is not None else None, n)
    else:
        if compiler.uses_keys and total >= WALK_FROM and plain:
            # Many matches: walking the (type, deleted_at, updated_at) index and probing each entity's keys
            # reaches a page in about limit x (entities / matches) steps, instead of sorting every match.
            walker = FilterCompiler(columns, noun.name, keys_noun=noun.name)
            walker.probe = True
            where, params = _entity_where(noun, walker, filter, include_deleted)
            base_where, base_params = " AND ".join(where), params
        page_where, page_params = base_where, list(base_params)
        if cursor is not None:
            after_sql, after_params = _after(keys, _cursor_values(conn, keys, page), page.keys[-1])
            page_where += " AND " + after_sql
            page_params += after_params
        select_keys = ", ".join(k.sql for k in keys)
        order, order_params = _order(keys)
        rows = conn.execute(
            f"SELECT id, state, {select_keys} FROM {source} WHERE {page_where} ORDER BY {order} LIMIT {n + 1}",
            [*(p for k in keys for p in k.params), *page_params, *order_params],
        ).fetchall()
    has_more = len(rows) > n
    rows = rows[:n]
    if (keep := _within([len(r[1]) for r in rows])) < len(rows):
        rows, has_more = rows[:keep], True
    next_cursor = None
    if has_more:
        last = rows[-1]
        values = list(last[2:])
        elided = tuple(
            i for i, v in enumerate(values) if isinstance(v, str) and len(json.dumps(v)) > cursors.MAX_KEY_JSON
        )
        for i in elided:
            values[i] = None
        next_cursor = cursors.encode(cursors.Cursor(keys=[*values, last[0]], seq=pinned, elided=elided), identity)
    result: dict[str, Any] = {
        "results": [json.loads(r[1]) for r in rows],
        "total": total if exact else min(total, COUNT_CAP),
        "hasMore": has_more,
        "cursor": next_cursor,
    }
    if not exact and total > COUNT_CAP:
        result["totalIsLowerBound"] = True
    return result


def _cursor_values(conn: sqlite3.Connection, keys: list[SortKey], page: cursors.Cursor) -> list[Any]:
    """The sort values of a cursor's last row: as carried, with the elided ones read from that row as the
    cursor's first page saw it."""
    values = page.keys[:-1]
    if page.elided:
        select = ", ".join(k.sql for k in keys)
        row = conn.execute(
            f"SELECT {select} FROM (SELECT {_AS_ENTITY} FROM events e WHERE e.target = ? AND e.seq <= ? "
            "ORDER BY e.seq DESC LIMIT 1)",
            [*(p for k in keys for p in k.params), page.keys[-1], page.seq],
        ).fetchone()
        if row is None:
            raise InvalidCursor("the cursor's last row is not in this tenant", hint="Search again from page 1.")
        values = [row[i] if i in page.elided else v for i, v in enumerate(values)]
    return values


def _within(sizes: list[int]) -> int:
    """How many of a page's results to give: every one, or as many as PAGE_CHARS holds (at least one), so that
    a page of large entities (100 of 1 MB) cannot make a response of hundreds of megabytes."""
    total = 0
    for i, size in enumerate(sizes):
        total += size
        if total > PAGE_CHARS and i > 0:
            return i
    return len(sizes)


def _entity_where(
    noun: Noun, compiler: FilterCompiler, filter: Any, include_deleted: bool
) -> tuple[list[str], list[Any]]:
    condition = compiler.compile(filter)
    # With keys driving the search, keep the planner off the (type, deleted_at, updated_at) index.
    type_term = ("+type" if compiler.uses_keys and not compiler.probe else "type") + f" = {noun_literal(noun.name)}"
    where = [type_term, condition]
    if not include_deleted:
        where.insert(1, "deleted_at IS NULL")
    return where, compiler.params


def _default_order(keys: list[SortKey]) -> bool:
    return len(keys) == 1 and keys[0].column.name == "$updatedAt"


def _one_key(compiler: FilterCompiler) -> KeyedTerm | None:
    """The filter's one condition when it is on an indexed scalar field (each live entity has at most
    one key row for it; a list value has a row per element, so array and json fields are left out)."""
    if compiler.terms != 1 or len(compiler.keyed) != 1:
        return None
    term = compiler.keyed[0]
    return None if term.column.array or term.column.kind == "json" else term


def _equality(compiler: FilterCompiler) -> KeyedTerm | None:
    """The filter's one condition when it is an indexed scalar field equal to one value."""
    term = _one_key(compiler)
    return term if term is not None and term.condition == "= ?" else None


def _count_noun(conn: sqlite3.Connection, noun: Noun, include_deleted: bool) -> int:
    """The count of a search without a filter, from entity_counts."""
    live = "" if include_deleted else " AND live = 1"
    sql = f"SELECT coalesce(sum(n), 0) FROM entity_counts WHERE type = ?{live}"
    return int(conn.execute(sql, (noun.name,)).fetchone()[0])


def _count_keys(conn: sqlite3.Connection, noun: Noun, compiler: FilterCompiler, include_deleted: bool) -> int | None:
    """The count of a filter that is one condition on an indexed scalar field (`_one_key`): kept in
    key_counts for one value, else counted from the keys' index alone; None for any other filter."""
    term = _one_key(compiler)
    if term is None:
        return None
    live = "" if include_deleted else " AND live = 1"
    params = [noun.name, term.column.name, *term.values]
    if term.condition == "= ?":  # one value: its count is kept in key_counts
        sql = f"SELECT coalesce(sum(n), 0) FROM key_counts WHERE type = ? AND field = ? AND value = ?{live}"
        return int(conn.execute(sql, params).fetchone()[0])
    sql = (
        f"SELECT 1 FROM entity_keys WHERE type = ? AND field = ? AND value {term.condition}{live} LIMIT {COUNT_CAP + 1}"
    )
    return int(conn.execute(f"SELECT count(*) FROM ({sql})", params).fetchone()[0])


def _keyed_page(
    conn: sqlite3.Connection, noun: Noun, term: KeyedTerm, after: tuple[str, str] | None, n: int
) -> list[tuple[Any, ...]]:
    """A page in the default order of the live entities whose indexed field equals one value, read in
    that order from the keys' (type, field, value, live, updated_at DESC, id) index: `limit` steps at
    any number of matches."""
    sql = (
        "SELECT e.id, e.state, e.updated_at FROM entity_keys k CROSS JOIN entities e ON e.id = k.id "
        "WHERE k.type = ? AND k.field = ? AND k.value = ? AND k.live = 1"
    )
    params: list[Any] = [noun.name, term.column.name, *term.values]
    if after is not None:
        sql += " AND k.updated_at <= ? AND (k.updated_at < ? OR k.id > ?)"
        params += [after[0], after[0], after[1]]
    return conn.execute(f"{sql} ORDER BY k.updated_at DESC, k.id ASC LIMIT {n + 1}", params).fetchall()


def _noun_head(conn: sqlite3.Connection, noun: Noun) -> int:
    row = conn.execute(
        "SELECT seq FROM events WHERE entity_type = ? ORDER BY seq DESC LIMIT 1", (noun.name,)
    ).fetchone()
    return row[0] if row else 0


# ---- the event log ------------------------------------------------------------------------------

_EVENT_SORTS = {"seq": False, "-seq": True, "timestamp": False, "-timestamp": True}


_RANGE_OPS = ("$eq", "$gt", "$gte", "$lt", "$lte")


class _EventFilter(FilterCompiler):
    """Event filters: `type` globs, and timestamp ranges answered through seq (they grow together).

    `seq_range_only` stays true while every condition is a range on `seq` or `timestamp`, ANDed: such a filter
    selects a run of consecutive seqs, so its count is last - first + 1 (seqs have no gaps)."""

    seq_range_only = True

    def _doc(self, doc: Any, depth: int) -> str:
        if isinstance(doc, dict) and "$or" in doc:
            self.seq_range_only = False
        return super()._doc(doc, depth)

    def _op(self, col: Column, op: str, arg: Any, depth: int) -> str:
        if col.name not in ("seq", "timestamp") or op not in _RANGE_OPS:
            self.seq_range_only = False
        if col.name == "timestamp" and op in ("$gt", "$gte", "$lt", "$lte"):
            self.terms += 1
            value = self._value(col, arg, op)
            if between_microseconds(arg):  # stored times are whole microseconds: X < t <=> trunc(X) < t
                op = {"$gte": "$gt", "$lt": "$lte"}.get(op, op)
            self.params.append(value)
            if op in ("$gt", "$gte"):
                cmp = ">" if op == "$gt" else ">="
                return f"(seq >= coalesce((SELECT seq FROM events WHERE ts {cmp} ? ORDER BY ts LIMIT 1), 9223372036854775807))"
            cmp = "<" if op == "$lt" else "<="
            return f"(seq <= coalesce((SELECT seq FROM events WHERE ts {cmp} ? ORDER BY ts DESC LIMIT 1), 0))"
        return super()._op(col, op, arg, depth)


def find_events(
    conn: sqlite3.Connection,
    filter: Any = None,
    sort: str | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> dict[str, Any]:
    n = check_limit(limit)
    sort_key = sort if sort is not None else "seq"
    if sort_key not in _EVENT_SORTS:
        from ..errors import InvalidSort

        raise InvalidSort(
            f"events sort by {sort!r} is not supported",
            hint="Sort events by 'seq' (oldest first) or '-seq' (newest first).",
        )
    descending = _EVENT_SORTS[sort_key]
    identity = cursors.sealed_for(conn, {"type": "Event", "filter": filter, "sort": sort_key})
    compiler = _EventFilter(EVENT_COLUMNS, "Event", glob_type=True)
    where = compiler.compile(filter)
    params = list(compiler.params)
    pinned = head_seq(conn)
    if cursor is not None:
        page = cursors.decode(cursor, identity, 1, pinned)
        pinned = page.seq
    where += " AND seq <= ?"
    params.append(pinned)
    if compiler.seq_range_only:  # two index seeks, exact at any size
        ends = [
            conn.execute(f"SELECT seq FROM events WHERE {where} ORDER BY seq {order} LIMIT 1", params).fetchone()
            for order in ("ASC", "DESC")
        ]
        total = ends[1][0] - ends[0][0] + 1 if ends[0] is not None and ends[1] is not None else 0
        exact = True
    else:
        total = conn.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM events WHERE {where} LIMIT {COUNT_CAP + 1})", params
        ).fetchone()[0]
        exact = total <= COUNT_CAP
    page_where, page_params = where, list(params)
    if cursor is not None:
        last = page.keys[0] if page.keys else None
        if not isinstance(last, int):
            from ..errors import InvalidCursor

            raise InvalidCursor(
                "the cursor is not one this server issued", hint="Pass back the previous page's cursor unchanged."
            )
        page_where += f" AND seq {'<' if descending else '>'} ?"
        page_params.append(last)
    rows = conn.execute(
        f"SELECT {EVENT_ROW_COLUMNS} FROM events WHERE {page_where} ORDER BY seq {'DESC' if descending else 'ASC'} LIMIT {n + 1}",
        page_params,
    ).fetchall()
    has_more = len(rows) > n
    events = [EventRow(*r) for r in rows[:n]]
    if (keep := _within([len(e.data) + len(e.changes) for e in events])) < len(events):
        events, has_more = events[:keep], True
    result: dict[str, Any] = {
        "results": [e.to_dict() for e in events],
        "total": total if exact else COUNT_CAP,
        "hasMore": has_more,
        "cursor": cursors.encode(cursors.Cursor(keys=[events[-1].seq], seq=pinned), identity) if has_more else None,
    }
    if not exact:
        result["totalIsLowerBound"] = True
    return result


def get_event(conn: sqlite3.Connection, event_id: str) -> dict[str, Any]:
    if not isinstance(event_id, str) or not re.fullmatch(r"evt_[A-Za-z0-9]{9,64}", event_id):
        from ..errors import InvalidId

        raise InvalidId(f"{event_id!r} is not an event id", hint="Event ids look like evt_tR8kJmNxPq.")
    row = conn.execute(f"SELECT {EVENT_ROW_COLUMNS} FROM events WHERE id = ?", (event_id,)).fetchone()
    if row is None:
        raise NotFound(f"event {event_id} does not exist", hint='Search {"type": "Event"} to list events.')
    return EventRow(*row).to_dict()


def iter_events(conn: sqlite3.Connection, after_seq: int = 0, batch: int = 5000) -> Any:
    """Every event after `after_seq`, in seq order, as stored rows."""
    last = after_seq
    while True:
        rows = conn.execute(
            f"SELECT {EVENT_ROW_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (last, batch)
        ).fetchall()
        if not rows:
            return
        for r in rows:
            yield EventRow(*r)
        last = rows[-1][0]
