"""Parse one value of the compact schema notation (CONTRACT §3) into a typed spec."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

TYPES = ("string", "text", "number", "int", "boolean", "date", "datetime", "email", "url", "json", "id")
CRUD = ("create", "update", "delete", "rollback", "revert")

FIELD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
NOUN_NAME = re.compile(r"^[A-Z][A-Za-z0-9]{0,63}$")
VERB_NAME = re.compile(r"^[a-z][a-zA-Z]{0,63}$")
PAST_TENSE = re.compile(r"^[A-Z][A-Za-z0-9]{0,63}$")
ENUM_MEMBER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

_TYPED = re.compile(r"^(?P<type>[a-z]+)(?P<array>\[\])?(?P<flag>[!?])?(?P<index>#{1,2})?(?:\s*=\s*(?P<default>.+))?$")
_RELATION = re.compile(r"^->\s*(?P<noun>[A-Za-z0-9]+)(?:\.(?P<reverse>[A-Za-z0-9_]+))?(?P<array>\[\])?(?P<flag>[!?])?$")
_REVERSE = re.compile(r"^<-\s*(?P<noun>[A-Za-z0-9]+)\.(?P<field>[A-Za-z0-9_]+)(?P<array>\[\])?$")


class NotationError(ValueError):
    """What is wrong with one notation value (the caller adds file, noun and field)."""


@dataclass(frozen=True)
class FieldSpec:
    type: str
    required: bool = False
    array: bool = False
    indexed: bool = False
    unique: bool = False
    default: Any = None
    enum: tuple[str, ...] | None = None
    relation: str | None = None  # target noun of a `->` relationship
    reverse_name: str | None = None


@dataclass(frozen=True)
class ReverseSpec:
    noun: str
    field: str


@dataclass(frozen=True)
class VerbSpec:
    past: str


Spec = FieldSpec | ReverseSpec | VerbSpec


def parse_entry(key: str, value: object) -> Spec:
    """One `key: value` pair of a noun: a field, a reverse relationship or a verb."""
    if not isinstance(value, str):
        raise NotationError(f"expected a notation string, got {json.dumps(value)}")
    text = value.strip()
    if not text:
        raise NotationError(
            "empty notation; expected a type such as 'string!', an enum 'A | B', '-> Noun', '<- Noun.field' or a verb's past tense"
        )
    if VERB_NAME.fullmatch(key) and PAST_TENSE.fullmatch(text) and "|" not in text:
        if text.lower() in TYPES:  # read as a verb, the field would silently be gone
            raise NotationError(
                f"{text!r} reads as a verb's event name; types are lowercase: for a field of type "
                f"{text.lower()}, write '{key}': '{text.lower()}'"
            )
        if key in CRUD:
            raise NotationError(f"'{key}' is a built-in action and cannot be declared as a verb")
        return VerbSpec(past=text)
    if not FIELD_NAME.fullmatch(key):
        raise NotationError(f"invalid field name; field names match {FIELD_NAME.pattern}")
    if text.startswith("->"):
        return _relation(text)
    if text.startswith("<-"):
        m = _REVERSE.fullmatch(text)
        if not m:
            raise NotationError(f"invalid reverse relationship {text!r}; expected '<- Noun.field[]'")
        return ReverseSpec(noun=m["noun"], field=m["field"])
    if "|" in text and not _TYPED.fullmatch(text):  # ("string = a|b" is a typed field with a default)
        return _enum(text)
    if PAST_TENSE.fullmatch(text):  # a verb spelt with a capital: 'Frob': 'Frobbed'
        raise NotationError(
            f"cannot read {text!r} as a type; if '{key}' is meant as a verb, its name starts lowercase "
            f"('{key[0].lower() + key[1:]}': '{text}')"
        )
    if VERB_NAME.fullmatch(key) and text.isalpha() and text.islower() and text not in TYPES:  # 'frob': 'frobbed'
        raise NotationError(
            f"unknown type {text!r}; valid types: {', '.join(TYPES)}; if '{key}' is meant as a verb, its value "
            f"is the past tense in PascalCase ('{key}': '{text[0].upper() + text[1:]}')"
        )
    return _typed(text)


def _relation(text: str) -> FieldSpec:
    m = _RELATION.fullmatch(text)
    if not m:
        raise NotationError(f"invalid relationship {text!r}; expected '-> Noun.reverseName'")
    if not NOUN_NAME.fullmatch(m["noun"]):
        raise NotationError(f"relationship target {m['noun']!r} is not a PascalCase noun name")
    return FieldSpec(
        type="id",
        required=m["flag"] == "!",
        array=bool(m["array"]),
        indexed=True,
        relation=m["noun"],
        reverse_name=m["reverse"],
    )


def _enum(text: str) -> FieldSpec:
    body, eq, default = text.partition("=")
    required = False
    body = body.strip()
    if body.endswith("!"):
        required, body = True, body[:-1].strip()
    members = tuple(m.strip() for m in body.split("|"))
    for member in members:
        if not ENUM_MEMBER.fullmatch(member):
            raise NotationError(f"invalid enum member {member!r} in {text!r}; members match {ENUM_MEMBER.pattern}")
    if len(set(members)) != len(members):
        raise NotationError(f"enum {text!r} repeats a member")
    if len(members) < 2:
        raise NotationError(f"enum {text!r} needs at least two members")
    if eq and not default.strip():
        raise NotationError(f"enum {text!r} has '=' but no default after it")
    dflt = default.strip() or None
    if dflt is not None and dflt not in members:
        raise NotationError(f"default {dflt!r} is not one of the enum's members {list(members)}")
    return FieldSpec(type="string", required=required, enum=members, default=dflt)


def _typed(text: str) -> FieldSpec:
    m = _TYPED.fullmatch(text)
    if not m:
        raise NotationError(
            f"cannot read {text!r}; expected TYPE[[]][!|?][#|##][ = default] with TYPE one of {', '.join(TYPES)}"
        )
    kind = m["type"]
    if kind not in TYPES:
        raise NotationError(f"unknown type {kind!r}; valid types: {', '.join(TYPES)}")
    if kind == "json" and m["index"] == "##":
        raise NotationError(
            f"{text!r}: a json field cannot be unique (an object has no one value to compare); "
            "make it 'json#' or put the unique value in a field of its own"
        )
    default = _default(kind, m["default"], bool(m["array"])) if m["default"] is not None else None
    return FieldSpec(
        type=kind,
        required=m["flag"] == "!",
        array=bool(m["array"]),
        indexed=bool(m["index"]),
        unique=m["index"] == "##",
        default=default,
    )


def _default(kind: str, raw: str, array: bool) -> Any:
    raw = raw.strip()
    if kind in ("string", "text", "email", "url", "date", "datetime", "id") and not array:
        if raw.startswith('"'):
            try:
                return json.loads(raw)
            except json.JSONDecodeError:
                raise NotationError(f"default {raw!r} is not a valid JSON string") from None
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise NotationError(f"default {raw!r} for a {kind} field is not a JSON value") from None
