"""Pydantic validators built from nouns: one TypeAdapter per noun over its whole field set."""

from __future__ import annotations

import contextlib
import functools
import math
import re
from datetime import date
from typing import Annotated, Any, Literal, NoReturn, NotRequired, Required

import annotated_types
from pydantic import (
    AfterValidator,
    AnyUrl,
    BeforeValidator,
    ConfigDict,
    EmailStr,
    JsonValue,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)
from pydantic.types import AllowInfNan
from typing_extensions import TypedDict

from ..errors import ValidationFailed, a_or_an, clipped, shown
from ..timeutil import ASCII_SPACE, normalize_time
from .nouns import Field, Noun

ID_PATTERN = re.compile(r"^[a-z][a-z0-9]*_[A-Za-z0-9]{9,64}$")
_URL = TypeAdapter(AnyUrl)


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _check_date(value: str) -> str:
    text = value.strip(ASCII_SPACE)  # (as times and filters on dates take it)
    try:
        if not _DATE.fullmatch(text):  # (fromisoformat would also take 20260115 and 2026-W03-4)
            raise ValueError
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise ValueError(f"{value!r} is not a date; use YYYY-MM-DD") from None


def _check_datetime(value: str) -> str:
    return normalize_time(value)


def _check_url(value: str) -> str:
    if any(c.isspace() or not c.isprintable() for c in value):  # the parser would drop them; the text would keep them
        raise ValueError("a url may not contain spaces or control characters")
    _URL.validate_python(value)
    return value


def no_nul(value: str) -> str:
    """Text holds no NUL (U+0000): SQLite's JSON functions end a string at one, so a search could not see
    what follows it, nor match the value as stored."""
    if "\x00" in value:
        raise ValueError("text cannot hold a NUL character (\\u0000); remove it")
    return value


Text = Annotated[StrictStr, AfterValidator(no_nul)]


def _finite_json(value: Any) -> Any:
    """JSON cannot hold NaN or ±Infinity: refuse them anywhere in a json field; and text there holds no NUL,
    as in a text field (SQLite's JSON functions read both)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError("NaN and Infinity are not JSON values")
        if isinstance(item, int) and not isinstance(item, bool) and not INT64_MIN <= item <= INT64_MAX:
            raise ValueError("integers must fit in 64 bits")
        if isinstance(item, str):
            no_nul(item)
        if isinstance(item, dict):
            for key in item:
                no_nul(key)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return value


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
Int64 = Annotated[StrictInt, annotated_types.Interval(ge=INT64_MIN, le=INT64_MAX)]


EXACT_FLOAT_INT = 2**53  # below it every integer is a float exactly, and the other way round
UNKNOWN_SHOWN = 10  # unknown fields a refusal names one by one


def whole_as_int(value: Any) -> Any:
    """JSON has one number type: a whole float (`3.0`) is the integer 3, where it is exact either way;
    anything else as it is. Writes store numbers so (re-sending `100.0` for 100 is not a change; an int
    field takes `3.0`, as JSON Schema's integer does), and filters read them so."""
    if isinstance(value, float) and value.is_integer() and abs(value) < EXACT_FLOAT_INT:
        return int(value)
    return value


# An ASCII address whose domain is lowercase already, as a write stores it: what the filters of email fields
# meet in almost every row they scan. The validator gives such a value back as it is, an email or not.
_STORED_EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-z0-9.-]+")
_EMAIL: Any = None  # pydantic's EmailStr adapter, built on first use


def normalized_email(value: Any) -> Any:
    """An email as writes store it (pydantic's EmailStr: the domain lowercased); other text, and what is no
    text, as it is. An email field's lookup keys and filters read its values so (mutations.field_values,
    filters.FilterCompiler._scalar), values written before the field became an email too."""
    if not isinstance(value, str) or "@" not in value or (_STORED_EMAIL.fullmatch(value) and "xn--" not in value):
        return value
    return _validated_email(value)


@functools.lru_cache(maxsize=4096)
def _validated_email(value: str) -> str:
    """The validator's reading of a value that may be an email (cached: a filter scans the same old values on
    every search). Text it refuses (`bob@LOCALHOST`, `a..b@EXAMPLE.COM`) stays as written, its case too."""
    global _EMAIL
    if _EMAIL is None:
        _EMAIL = TypeAdapter(EmailStr)
    try:
        return str(_EMAIL.validate_python(value))
    except ValueError:
        return value


def _int64_or_float(value: Any) -> Any:
    """A number field keeps integers exact: one past 64 bits is refused, not rounded to a float."""
    value = whole_as_int(value)
    if isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
        raise ValueError("integers must fit in 64 bits; send a float (such as 1.5e22) if rounding is acceptable")
    return value


_BASE: dict[str, Any] = {
    "string": Text,
    "text": Text,
    "number": Annotated[Int64 | Annotated[StrictFloat, AllowInfNan(False)], BeforeValidator(_int64_or_float)],
    "int": Annotated[Int64, BeforeValidator(whole_as_int)],
    "boolean": StrictBool,
    "date": Annotated[StrictStr, AfterValidator(_check_date)],
    "datetime": Annotated[StrictStr, AfterValidator(_check_datetime)],
    "email": EmailStr,
    "url": Annotated[StrictStr, AfterValidator(_check_url)],
    "json": Annotated[JsonValue, AfterValidator(_finite_json)],
    "id": Annotated[StrictStr, StringConstraints(pattern=ID_PATTERN.pattern)],
}


def _field_type(f: Field) -> Any:
    if f.enum:
        base: Any = Literal[f.enum]  # type: ignore[valid-type]
    elif f.relation:
        base = Annotated[StrictStr, StringConstraints(pattern=rf"^{f.relation.lower()}_[A-Za-z0-9]{{9,64}}$")]
    else:
        base = _BASE[f.type]
    return list[base] if f.array else base  # type: ignore[valid-type]


def _adapter(name: str, annotations: dict[str, Any]) -> TypeAdapter[dict[str, Any]]:
    make: Any = TypedDict  # built at run time from the noun: no static type to give
    td = make(name, annotations)
    td.__pydantic_config__ = ConfigDict(extra="forbid")
    adapter: TypeAdapter[dict[str, Any]] = TypeAdapter(td)
    return adapter


class NounValidator:
    """Validates the whole field set of one entity of a noun (meta fields excluded)."""

    def __init__(self, noun: Noun) -> None:
        self.noun = noun
        annotations = {
            name: (Required if f.required else NotRequired)[_field_type(f)] for name, f in noun.fields.items()
        }
        partial = {name: NotRequired[_field_type(f)] for name, f in noun.fields.items()}
        self._adapter = _adapter(noun.name, annotations)
        self._partial = _adapter(noun.name, partial)
        self._required = [name for name, f in noun.fields.items() if f.required]

    def validate(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Normalized fields, or ValidationFailed naming each bad field and what is valid."""
        return self._run(self._adapter, fields)

    def validate_changed(self, merged: dict[str, Any], changed: list[str], restoring: bool = False) -> dict[str, Any]:
        """Like `validate`, for a merge of valid fields: only `changed` are checked (and required).
        `restoring`: `merged` is an earlier state being brought back (which takes no data to fix it)."""
        missing = [name for name in self._required if name not in merged]
        if missing:
            raise ValidationFailed(
                f"{self.noun.name}: "
                + "; ".join(
                    f"'{name}' is required and that state has no value for it"
                    if restoring
                    else f"'{name}' is required and cannot be removed"
                    if name in changed
                    else f"'{name}' is required (this entity has no value for it yet: set it in this write)"
                    for name in missing
                ),
                hint=f"{self.noun.name} requires: {', '.join(self._required)}.",
            )
        subset = {k: merged[k] for k in changed if k in merged}
        if not subset:
            return merged
        return {**merged, **self._run(self._partial, subset)}

    def normalized(self, fields: dict[str, Any]) -> dict[str, Any]:
        """`fields` with each valid value as a write stores it (`100.0` as 100, a time in UTC, an email's domain
        lowercased); unknown fields, nulls and invalid values as they are."""
        out = dict(fields)
        for name, value in fields.items():
            if name in self.noun.fields and value is not None:
                with contextlib.suppress(ValidationError):  # (refused when the write runs)
                    out[name] = self._partial.validate_python({name: value})[name]
        return out

    def check_value(self, name: str, value: Any) -> None:
        """ValidationFailed unless `value` is valid for the field `name` alone."""
        self._run(self._partial, {name: value})

    def refuse_unknown(self, names: list[str]) -> NoReturn:
        """Fields the noun does not have: refused even when they are only being removed (null)."""
        raise ValidationFailed(
            f"{self.noun.name}: "
            + "; ".join(f"unknown field '{name}'" for name in names[:UNKNOWN_SHOWN])
            + (f"; and {len(names) - UNKNOWN_SHOWN:,} more unknown fields" if len(names) > UNKNOWN_SHOWN else "")
            + f" (known fields: {', '.join(self.noun.fields)})",
            hint=self._hint(),
        )

    def _run(self, adapter: TypeAdapter[dict[str, Any]], fields: dict[str, Any]) -> dict[str, Any]:
        try:
            return dict(adapter.validate_python(fields))
        except ValidationError as exc:
            raise ValidationFailed(
                f"{self.noun.name}: " + "; ".join(self._explain(err) for err in _first_per_field(exc)),
                hint=self._hint(),
            ) from None

    def _hint(self) -> str:
        return f"{self.noun.name} fields: " + ", ".join(f"{n} ({f.describe()})" for n, f in self.noun.fields.items())

    def _explain(self, err: Any) -> str:
        loc = ".".join(str(p) for p in err["loc"][:1]) or "(entity)"
        name = str(err["loc"][0]) if err["loc"] else ""
        f = self.noun.fields.get(name)
        kind = err["type"]
        if kind == "extra_forbidden":
            return f"unknown field '{name}' (known fields: {', '.join(self.noun.fields)})"
        if kind == "missing":
            return f"'{name}' is required"
        got = clipped(shown(err.get("input")))  # (a string too)
        expected = f.describe() if f else ""
        msg = err["msg"]
        if f and f.enum and kind == "literal_error":
            msg = f"must be one of {', '.join(f.enum)}"
        elif f and f.relation and kind == "string_pattern_mismatch":
            msg = f"must be the $id of {a_or_an(f.relation)} ({f.relation.lower()}_...)"
        elif (
            f and f.type == "number" and not f.array and (kind.endswith("_type") or kind.startswith(("int_", "float_")))
        ):
            msg = "must be a number, such as 12 or 1.5"
        elif f and kind.endswith("_type") and (len(err["loc"]) == 1 or not f.array):
            msg = f"must be {a_or_an(f.type)}" + (" array" if f.array else "")
        elif kind.startswith("value_error"):
            msg = msg.removeprefix("Value error, ")
        return f"'{loc}' {msg} (got {got}; expected {expected})"


def _first_per_field(exc: ValidationError) -> list[Any]:
    """One error per field: a union type reports each of its arms, which only repeats itself."""
    seen: dict[object, Any] = {}
    for err in exc.errors(include_url=False):
        seen.setdefault(err["loc"][:1], err)
    return list(seen.values())


class Validators:
    """Validators for every noun of a schema set, each built on first use (keeps start-up light)."""

    def __init__(self, nouns: dict[str, Noun]) -> None:
        self._nouns = nouns
        self._by_noun: dict[str, NounValidator] = {}

    def __getitem__(self, noun: str) -> NounValidator:
        validator = self._by_noun.get(noun)
        if validator is None:  # two threads may both build it: same result, last one kept
            validator = self._by_noun[noun] = NounValidator(self._nouns[noun])
        return validator
