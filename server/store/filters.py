"""Filters and sorts → SQL. Field names are checked against the noun; values are always bound."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import regex

from ..errors import InvalidFilter, InvalidSort, shown
from ..schema import Noun
from ..schema.validation import normalized_email, whole_as_int
from ..timeutil import between_microseconds, format_us, parse_time
from .patterns import compile_pattern
from .sqlite import json_path

TEXT_KINDS = ("string", "text", "email", "url", "id")
OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists", "$regex", "$not")
LOGICAL = ("$and", "$or")
MAX_IN = 500
MAX_DEPTH = 8
MAX_TERMS = 64
MAX_REGEX = 256
_ORDERABLE = {"number", "int", "date", "datetime", "string", "text", "email", "url", "id"}


@dataclass(frozen=True)
class Column:
    """A filterable, sortable field: its SQL expression over the source row and its value type."""

    name: str
    sql: str
    kind: str
    array: bool = False
    enum: tuple[str, ...] | None = None
    json_path: str | None = None  # for arrays: json_each(state, path)
    indexed: bool = False  # has rows in entity_keys
    nullable: bool = True  # False for meta columns every row has


def _meta(name: str, sql: str, kind: str, nullable: bool = False) -> Column:
    return Column(name, sql, kind, nullable=nullable)


ENTITY_META = {
    "$id": _meta("$id", "id", "id"),
    "$type": _meta("$type", "type", "string"),
    "$version": _meta("$version", "version", "int"),
    "$createdAt": _meta("$createdAt", "created_at", "datetime"),
    "$updatedAt": _meta("$updatedAt", "updated_at", "datetime"),
    "$deletedAt": _meta("$deletedAt", "deleted_at", "datetime", nullable=True),
    "$createdBy": _meta("$createdBy", json_path("$createdBy"), "string"),
    "$updatedBy": _meta("$updatedBy", json_path("$updatedBy"), "string"),
    "$deletedBy": _meta("$deletedBy", json_path("$deletedBy"), "string", nullable=True),
}

EVENT_COLUMNS = {
    "type": Column("type", "type", "string"),
    "target": Column("target", "target", "id"),
    "actor": Column("actor", "actor", "string"),
    "timestamp": Column("timestamp", "ts", "datetime"),
    "version": Column("version", "version", "int"),
    "seq": Column("seq", "seq", "int"),
    "id": Column("id", "id", "string"),
    "causedBy": Column("causedBy", "caused_by", "string"),
}


def entity_columns(noun: Noun) -> dict[str, Column]:
    cols = dict(ENTITY_META)
    for f in noun.fields.values():
        kind = "id" if f.relation else f.type
        path = f'$."{f.name}"'
        cols[f.name] = Column(f.name, json_path(f.name), kind, f.array, f.enum, path, f.indexed or f.unique)
    return cols


@dataclass(frozen=True)
class KeyedTerm:
    """One indexed-field condition, as `entity_keys` answers it: `value <condition>` with `values` bound."""

    column: Column
    condition: str
    values: list[Any]


EVENT_EXAMPLE = '{"type": "Deal.*", "actor": "agent_mR4nVkTw", "timestamp": {"$gte": "2026-01-15"}}'


class FilterCompiler:
    """Compiles one filter document into a WHERE clause and its parameters."""

    def __init__(
        self, columns: dict[str, Column], what: str, glob_type: bool = False, keys_noun: str | None = None
    ) -> None:
        self.columns = columns
        self.what = what
        self.glob_type = glob_type
        self.keys_noun = keys_noun  # set when filtering the materialized table: indexed fields use entity_keys
        self.params: list[Any] = []
        self.terms = 0
        self.uses_keys = False
        self.keyed: list[KeyedTerm] = []
        # False: an indexed condition is `id IN (matching keys)` (the keys drive the search); True: it is an
        # EXISTS probe per entity row (the rows drive, e.g. walking an index in the sort order).
        self.probe = False

    def compile(self, doc: Any) -> str:
        if doc is None:
            return "1"
        sql = self._doc(doc, 0)  # (which also bounds how deep `doc` nests)
        try:  # SQLite binds text as UTF-8: a lone surrogate (\ud800-\udfff) anywhere would fail there
            json.dumps(doc, ensure_ascii=False, default=repr).encode()
        except UnicodeEncodeError as exc:
            raise self._fail(
                f"the filter holds text that is not valid Unicode ({exc.reason}: {exc.object[exc.start : exc.end]!r})"
            ) from None
        return sql

    def _fail(self, message: str) -> InvalidFilter:
        return InvalidFilter(
            message,
            hint=f"Filter fields of {self.what}: {', '.join(self.columns)}. Operators: {', '.join(OPERATORS + LOGICAL)}; "
            f"a bare value means $eq. Example: {EVENT_EXAMPLE if self.glob_type else self._example()}.",
        )

    def _example(self) -> str:
        """A filter on this noun's own fields: an enum (or else a text field) and a time."""
        fields = [c for c in self.columns.values() if not c.name.startswith("$")]
        enum = next(((c.name, c.enum[0]) for c in fields if c.enum), None)
        text = next((c.name for c in fields if c.kind in ("string", "text") and not c.array), None)
        first = dict([enum]) if enum else {text: "..."} if text else {}
        return json.dumps({**first, "$updatedAt": {"$gte": "2026-01-15"}})

    def _too_deep(self) -> InvalidFilter:
        # ($not nests as $and and $or do: each level is one more for SQLite's parser, whose stack is bounded)
        return self._fail(f"filter nests deeper than {MAX_DEPTH} levels ($and, $or and $not count alike)")

    def _doc(self, doc: Any, depth: int) -> str:
        if depth > MAX_DEPTH:
            raise self._too_deep()
        if not isinstance(doc, dict):
            raise self._fail(f"a filter must be an object of field conditions, got {shown(doc)}")
        parts = []
        for key, value in doc.items():
            if key in LOGICAL:
                if not isinstance(value, list) or not value:
                    raise self._fail(f"{key} takes a non-empty list of filters")
                joiner = " AND " if key == "$and" else " OR "
                parts.append("(" + joiner.join(self._doc(v, depth + 1) for v in value) + ")")
            elif key.startswith("$") and key not in self.columns:
                raise self._fail(
                    f"unknown operator or field {key!r} at the top of a filter; fields of {self.what}: {', '.join(self.columns)}; combine with {', '.join(LOGICAL)}"
                )
            else:
                col = self.columns.get(key)
                if col is None:
                    raise self._fail(
                        f"unknown field {key!r} for {self.what}; its fields are: {', '.join(self.columns)}"
                    )
                parts.append(self._field(col, value, depth))
        if not parts and depth > 0:
            # `{}` inside $and/$or is a condition of its own (true): the fast paths that take a filter of one
            # indexed condition for that condition alone must not miss it (`{"$or": [{}, X]}` matches all).
            self._count_term()
        return "(" + " AND ".join(parts) + ")" if parts else "1"

    def _count_term(self) -> None:
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise self._fail(f"a filter may have at most {MAX_TERMS} conditions")

    def _field(self, col: Column, cond: Any, depth: int) -> str:
        if depth > MAX_DEPTH:  # (reached by $not: a field's own conditions are at its document's depth)
            raise self._too_deep()
        if isinstance(cond, dict) and col.kind != "json" and (bare := [k for k in cond if f"${k}" in OPERATORS]):
            raise self._fail(f"{col.name}: operator keys start with '$' (did you mean ${bare[0]}?)")
        if isinstance(cond, dict) and not cond:
            raise self._fail(
                f"{col.name}: {{}} is an empty operator object; an operator object holds one or more of "
                f'{", ".join(OPERATORS)}, such as {{"$ne": null}}'
            )
        if isinstance(cond, dict) and cond and all(isinstance(k, str) and k.startswith("$") for k in cond):
            return "(" + " AND ".join(self._op(col, op, arg, depth) for op, arg in cond.items()) + ")"
        return self._op(col, "$eq", cond, depth)

    @staticmethod
    def _missing(col: Column, missing: bool) -> str:
        return f"({col.sql} IS {'' if missing else 'NOT '}NULL)"

    def _op(self, col: Column, op: str, arg: Any, depth: int) -> str:
        self._count_term()
        if op == "$not":
            if not isinstance(arg, dict) or not arg:
                raise self._fail(f'{col.name}: $not takes an operator object such as {{"$eq": 1}}')
            return f"NOT coalesce({self._field(col, arg, depth + 1)}, 0)"
        if op == "$exists":
            if not isinstance(arg, bool):
                raise self._fail(f"{col.name}: $exists takes true or false")
            return self._missing(col, not arg)
        if op not in OPERATORS:
            raise self._fail(f"{col.name}: unknown operator {op!r}; operators are: {', '.join(OPERATORS)}")
        if arg is None and op in ("$eq", "$ne"):  # null is the absent value: {"$eq": null} is {"$exists": false}
            return self._missing(col, op == "$eq")
        if op == "$regex":
            if col.kind not in TEXT_KINDS:
                raise self._fail(f"{col.name}: $regex applies to text fields ({', '.join(TEXT_KINDS)}), not {col.kind}")
            if not isinstance(arg, str):
                raise self._fail(f"{col.name}: $regex takes a pattern string, got {shown(arg)}")
            if len(arg) > MAX_REGEX:
                raise self._fail(f"{col.name}: a $regex pattern is at most {MAX_REGEX} characters, got {len(arg)}")
            try:
                compile_pattern(arg)
            except regex.error as exc:
                raise self._fail(f"{col.name}: invalid regular expression: {exc}") from None
            self.params.append(arg)
            return self._scalar(col, "regexp(?, {x})")
        if op in ("$in", "$nin"):
            if not isinstance(arg, list) or not arg or len(arg) > MAX_IN:
                raise self._fail(f"{col.name}: {op} takes a non-empty list of at most {MAX_IN} values")
            inner = self._any_of(col, arg, op)
            return f"NOT coalesce({inner}, 0)" if op == "$nin" else inner
        if self._is_glob(col, arg) and op in ("$eq", "$ne"):
            sql = self._glob(arg)
            return sql if op == "$eq" else f"NOT ({sql})"
        value = self._value(col, arg, op)
        if op in ("$gt", "$gte", "$lt", "$lte") and (col.kind not in _ORDERABLE or isinstance(value, bool)):
            raise self._fail(f"{col.name}: {op} needs an orderable field (numbers, dates, times, text)")
        if col.enum and op in ("$gt", "$gte", "$lt", "$lte"):
            return self._enum_range(col, op, value)
        if (col.kind == "datetime" and between_microseconds(arg)) or (col.kind == "date" and within_a_day(arg)):
            # Every stored time is a whole microsecond, and a date is the start of its day: a time between
            # them equals none, and is compared as the one before it (X < t  <=>  trunc(X) < t, and so on).
            if op in ("$eq", "$ne"):
                return "0" if op == "$eq" else "1"
            op = {"$gte": "$gt", "$lt": "$lte"}.get(op, op)
        sql_op = {"$eq": "=", "$ne": "=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}[op]
        if op in ("$gt", "$gte", "$lt", "$lte") and col.json_path is not None:
            # SQLite orders every number below every text: a value stored under an older type of the field
            # (a string where it is a number now, or the reverse) would pass every $gt or every $lt.
            # (Meta columns have one type.)
            types = "('integer', 'real')" if isinstance(value, (int, float)) else "('text')"
            if col.indexed and self.keys_noun and self._keyable(col, [value]):
                return self._keyed(col, f"{sql_op} ? AND typeof(value) IN {types}", [value])
            return self._typed(
                col, f"{sql_op} ? AND typeof({{x}}) IN {types}", [value], any_text=isinstance(value, str)
            )
        if op != "$ne" and col.indexed and self.keys_noun and self._keyable(col, [value]):
            return self._keyed(col, f"{sql_op} ?", [value])
        inner = self._typed(col, f"{sql_op} ?", [value])
        return f"NOT coalesce({inner}, 0)" if op == "$ne" else inner

    def _enum_range(self, col: Column, op: str, value: str) -> str:
        """A range on an enum follows its declared order: `$gte: "Proposal"` is `$in` the members from Proposal
        on. A value that is no longer a member (the enum changed since it was written) is in no range."""
        enum = col.enum or ()
        at = enum.index(value)  # (`_value` refused a bound that is not a member)
        members = {"$gt": enum[at + 1 :], "$gte": enum[at:], "$lt": enum[:at], "$lte": enum[: at + 1]}
        return self._any_of(col, list(members[op]), "$in")

    def _is_glob(self, col: Column, value: Any) -> bool:
        return self.glob_type and col.name == "type" and isinstance(value, str) and any(c in value for c in "*?[")

    def _any_of(self, col: Column, arg: list[Any], op: str) -> str:
        """`$in`: the field equals one of the values; null among them also takes an absent field, a
        type glob among them (events) matches as a glob."""
        globs = [self._glob(v) for v in arg if self._is_glob(col, v)]
        plain = [  # a time between two microseconds equals no stored time (checked before it is rounded)
            self._value(col, v, op)
            for v in arg
            if v is not None
            and not self._is_glob(col, v)
            and not (col.kind == "datetime" and between_microseconds(v))
            and not (col.kind == "date" and within_a_day(v))
        ]
        parts = globs + ([self._missing(col, True)] if None in arg else [])
        if plain:
            marks = ",".join("?" * len(plain))
            if not parts and op == "$in" and col.indexed and self.keys_noun and self._keyable(col, plain):
                return self._keyed(col, f"IN ({marks})", plain)
            parts.append(self._typed(col, f"IN ({marks})", plain))
        return "(" + " OR ".join(parts) + ")" if parts else "0"

    @staticmethod
    def _keyable(col: Column, values: list[Any]) -> bool:
        """Lookup keys hold a json field's strings and numbers, not its true/false (SQLite stores those as 1/0)."""
        return col.kind != "json" or not any(isinstance(v, bool) for v in values)

    def _typed(self, col: Column, condition: str, values: list[Any], any_text: bool = False) -> str:
        """`{field} <condition>` with `values` bound. A json field's condition is equality (`= ?` or
        `IN (...)`) by JSON type too (SQLite reads true and false as 1 and 0, JSON does not), on its
        value or on any element of a list it holds, as its lookup keys answer it. `any_text`: the condition
        may hold for text other than `values` (a range over text), so for a list's JSON text too."""
        if col.kind != "json":
            self.params.extend(values)
            # (a list's or an object's JSON text, which json_extract gives for it, starts with [ or {)
            text_of_a_list = any_text or any(isinstance(v, str) and v.startswith(("[", "{")) for v in values)
            return self._scalar(col, f"{{x}} {condition}", text_of_a_list)
        if col.array:
            return self._scalar(col, self._json_equal("value", "type", values))
        path = f"'{col.json_path}'"
        whole = self._json_equal(col.sql, f"json_type(state, {path})", values)
        element = self._json_equal("value", "type", values)
        return f"({whole} OR EXISTS (SELECT 1 FROM json_each(state, {path}) WHERE json_type(state, {path}) = 'array' AND {element}))"

    def _json_equal(self, value: str, kind: str, values: list[Any]) -> str:
        flags = ", ".join("'true'" if v else "'false'" for v in values if isinstance(v, bool))
        rest = [v for v in values if not isinstance(v, bool)]
        parts = [f"{kind} IN ({flags})"] if flags else []
        if rest:
            self.params.extend(rest)
            parts.append(f"({value} IN ({','.join('?' * len(rest))}) AND {kind} IN ('text', 'integer', 'real'))")
        return "(" + " OR ".join(parts) + ")"

    def _keyed(self, col: Column, condition: str, values: list[Any]) -> str:
        """An indexed field's condition answered from `entity_keys` (one index range, not a scan)."""
        self.uses_keys = True
        self.keyed.append(KeyedTerm(col, condition, values))
        if self.probe:  # an id has one type: the (id, field, value) index answers it alone
            self.params.extend([col.name, *values])
            return (
                f"EXISTS (SELECT 1 FROM entity_keys k WHERE k.id = entities.id AND k.field = ? AND k.value {condition})"
            )
        self.params.extend([self.keys_noun, col.name, *values])
        return f"(id IN (SELECT id FROM entity_keys WHERE type = ? AND field = ? AND value {condition}))"

    def _scalar(self, col: Column, template: str, text_of_a_list: bool = True) -> str:
        """Apply a condition to the field, or to any element of an array field (a lone value is a list of one).
        A value of another shape (a list where the field is a scalar now, an object) meets no condition: the
        values compared are the ones its lookup keys list (mutations.field_values), so `$ne` is `$eq`'s opposite.
        `text_of_a_list`: False when the condition cannot hold for the JSON text of a list or an object.
        An email field's value is compared as a write stores it, as its keys list it: one written while the field
        was a string (`Bob@EXAMPLE.com`) too (a function call per row, on email fields only)."""
        if col.json_path is None:  # a meta column: one type, never a list
            return "(" + template.format(x=col.sql) + ")"
        path = f"'{col.json_path}'"
        whole, element = (
            (f"email_value({col.sql})", "email_value(value)") if col.kind == "email" else (col.sql, "value")
        )
        if col.array:  # (an object's members have text keys; a list's elements numbers, a lone value none)
            return (
                f"EXISTS (SELECT 1 FROM json_each(state, {path}) WHERE ({template.format(x=element)}) "
                "AND type NOT IN ('array', 'object') AND typeof(key) != 'text')"
            )
        if not text_of_a_list:
            return "(" + template.format(x=whole) + ")"
        return f"(({template.format(x=whole)}) AND json_type(state, {path}) NOT IN ('array', 'object'))"

    def _glob(self, pattern: str) -> str:
        m = re.fullmatch(r"([A-Z][A-Za-z0-9]*)\.\*", pattern)
        if m:
            self.params.append(m.group(1))
            return "(entity_type = ?)"
        m = re.fullmatch(r"\*\.([A-Z][A-Za-z0-9]*)", pattern)
        if m:
            self.params.append(m.group(1))
            return "(action = ?)"
        self.params.append(pattern)
        return "(type GLOB ?)"

    def _value(self, col: Column, value: Any, op: str) -> Any:
        kind = col.kind
        bad = False
        if isinstance(value, (dict, list)):
            if kind == "json":  # a json field is compared by its scalars (or a list's elements)
                raise self._fail(
                    f"{col.name}: {op} takes a string, number or boolean on a json field, not {shown(value)}"
                    " (objects and whole lists are not compared)"
                )
            bad = True
        elif kind in ("number",):
            bad = not isinstance(value, (int, float)) or isinstance(value, bool)
        elif kind == "int":  # (2.5 is a fine bound for an int field: SQLite compares the two as numbers)
            value = whole_as_int(value)
            bad = not isinstance(value, (int, float)) or isinstance(value, bool)
        elif kind == "boolean":
            bad = not isinstance(value, bool)
        elif kind == "datetime":
            try:
                return format_us(parse_time(value))
            except ValueError as exc:
                raise self._fail(f"{col.name}: {exc}") from None
        elif kind == "date":
            try:
                return day_of(value)[0]
            except ValueError as exc:  # (parse_time says what is wrong: an impossible day, an offset past 24 h)
                raise self._fail(f"{col.name}: {exc}") from None
        elif kind == "json":
            bad = value is None
        elif kind == "email" and isinstance(value, str) and op != "$regex":
            return normalized_email(value)
        else:
            bad = not isinstance(value, str)
        if not bad and isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
            raise self._fail(f"{col.name}: {value} is outside the 64-bit integer range")
        if isinstance(value, float) and value != value:
            bad = True
        if bad:
            raise self._fail(f"{col.name}: {op} got {shown(value)}, which is not a valid {kind} value")
        if col.enum and value not in col.enum:
            order = f" ({op} follows that declared order)" if op in ("$gt", "$gte", "$lt", "$lte") else ""
            raise self._fail(f"{col.name}: {value!r} is not one of {', '.join(col.enum)}{order}")
        return value


DAY_US = 86_400_000_000


def day_of(value: Any) -> tuple[str, bool]:
    """A date field's operand as a day, and whether it is that day's start: a date is (parse_time takes it as
    its start), a time gives its day in UTC (dates and datetimes compare as times). ValueError otherwise."""
    us = parse_time(value)
    return format_us(us)[:10], us % DAY_US == 0


def within_a_day(value: Any) -> bool:
    """A time after the start of its day: a date field's day never equals it."""
    try:
        return between_microseconds(value) or not day_of(value)[1]
    except ValueError:
        return False


@dataclass(frozen=True)
class SortKey:
    column: Column
    descending: bool

    @property
    def sql(self) -> str:
        """SQL whose order is the field's, with `params` bound in it. An enum's is its value's position among
        the declared members; an absent value, or one that is no longer a member, takes the position past the
        last one in the sort's direction: after every member (as absent values of other fields sort last)."""
        enum = self.column.enum
        if not enum:
            return self.column.sql
        whens = " ".join(f"WHEN ? THEN {i}" for i in range(len(enum)))
        return f"(CASE {self.column.sql} {whens} ELSE {-1 if self.descending else len(enum)} END)"

    @property
    def params(self) -> list[Any]:
        return list(self.column.enum or ())

    @property
    def nullable(self) -> bool:
        """Whether `sql` may be NULL (an enum's position never is)."""
        return self.column.nullable and not self.column.enum


def parse_sort(sort: Any, columns: dict[str, Column], what: str, default: str) -> list[SortKey]:
    text = default if sort is None else sort
    if not isinstance(text, str) or not text.strip():
        raise InvalidSort('sort must be a string such as "-$updatedAt" or "name,-value"', hint=_sort_hint(columns))
    keys: list[SortKey] = []
    for part in text.split(","):
        part = part.strip()
        desc = part.startswith("-")
        name = part[1:] if desc else part
        col = columns.get(name)
        if col is None:
            raise InvalidSort(
                f"cannot sort {what} by {name!r}: unknown field. {_sort_hint(columns)}", hint=_sort_hint(columns)
            )
        if col.array or col.kind in ("json",):
            raise InvalidSort(
                f"cannot sort by {name!r}: arrays and json fields have no order", hint=_sort_hint(columns)
            )
        if any(key.column.name == name for key in keys):  # (the second could never order anything)
            raise InvalidSort(
                f"sort names {name!r} twice ({text.strip()!r}); each field may be sorted by once",
                hint=_sort_hint(columns),
            )
        keys.append(SortKey(col, desc))
    if len(keys) > 4:
        raise InvalidSort("sort takes at most 4 fields", hint=_sort_hint(columns))
    return keys


def _sort_hint(columns: dict[str, Column]) -> str:
    names = [n for n, c in columns.items() if not c.array and c.kind != "json"]
    return f"Sortable fields: {', '.join(names)}; prefix '-' for descending, separate several with ','."
