"""Writes: create, update, delete, verbs, rollback, revert and batches, inside one writer transaction."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import re
import sqlite3
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import (
    HeadlesslyError,
    HookFailed,
    InvalidAsOf,
    InvalidId,
    InvalidType,
    LimitExceeded,
    NotFound,
    StorageError,
    UnknownVerb,
    ValidationFailed,
    VersionConflict,
    a_or_an,
    bounded,
    shown,
)
from ..schema import Field, Noun, SchemaSet
from ..schema.validation import Validators, normalized_email
from ..timeutil import between_microseconds, format_us, parse_as_of
from .events import dumps, new_id, render_change
from .hooks import BeforeContext, HookRejected, Hooks, hook_name
from .operations import CRUD_ACTIONS, Operation, check_actor
from .undefined import still_held
from .writer import Txn

log = logging.getLogger(__name__)
Checked = TypeVar("Checked")
# a write's links to check once the whole revert is written: entity, noun, fields, names to check, links it kept
_Links = tuple[str, Noun, dict[str, Any], list[str], dict[str, Any] | None]
MAX_STATE_BYTES = 1_000_000
MAX_REQUEST_STATE = 64_000_000  # characters of entity state one request (a batch, a revert) may write
_MISSING = object()
_REF = re.compile(r"\$ref:(0|[1-9][0-9]*)")  # ASCII digits, no leading zero, matched whole: one spelling per index
_REF_LIKE = re.compile(r"\s*\$ref", re.IGNORECASE)  # meant as a $ref, but not one (no id starts with '$')
REF_FORM = '"$ref:N", N the index of an earlier operation in digits (0, 1, 2, ...: no sign, space or leading zero)'
REF_RUNS_SHOWN = 10  # runs of nameable operations a refusal lists
ID_SHAPE = re.compile(r"^([a-z][a-z0-9]*)_[A-Za-z0-9]{9,64}$")


def _ref_named(value: str) -> str:
    """A $ref (or what was meant as one) as a refusal names it: its first 40 characters, and "..." past them."""
    return value if len(value) <= 40 else value[:40] + "..."


@dataclass(frozen=True)
class Env:
    """What every write needs besides the transaction: the nouns, their validators, the hooks."""

    schemas: SchemaSet
    validators: Validators
    hooks: Hooks


class Loaded:
    """An entity as the transaction found it: its row, its whole state and its fields alone."""

    __slots__ = ("fields", "rowid", "state")

    def __init__(self, rowid: int, state: dict[str, Any]) -> None:
        self.rowid = rowid
        self.state = state
        self.fields = fields_of(state)

    @property
    def deleted(self) -> bool:
        return self.state.get("$deletedAt") is not None


def meta_of(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if k.startswith("$")}


def fields_of(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if not k.startswith("$")}


def same(a: Any, b: Any) -> bool:
    """Equality that tells 1, 1.0 and True apart, as their JSON text does; object keys in any order."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):  # 0.0 and -0.0 are equal numbers but not the same JSON
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return bool(a == b)


def diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`{field: {"from", "to"}}` for every field that differs (absent shows as null)."""
    out: dict[str, dict[str, Any]] = {}
    for key, a in old.items():
        b = new.get(key, _MISSING)
        if b is _MISSING:
            out[key] = {"from": a, "to": None}
        elif a is not b and not same(a, b):
            out[key] = {"from": a, "to": b}
    for key, b in new.items():
        if key not in old:
            out[key] = {"from": None, "to": b}
    return out


def rendered(changes: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {k: render_change(c["from"], c["to"]) for k, c in changes.items()}


@dataclass(frozen=True)
class Written:
    """One appended event (as the API shows it) and the entity state right after it."""

    state: dict[str, Any]
    event: dict[str, Any]

    def result(self) -> dict[str, Any]:
        return {"entity": self.state, "events": [self.event]}


class UniqueClash(ValidationFailed):
    """A unique value another live entity holds; `value` is the key that clashed (an element, for a list)."""

    value: Any = None

    def of(self, value: Any) -> UniqueClash:
        self.value = value
        return self


class Unrestorable(ValidationFailed):
    """An earlier state that cannot be written again now (the schemas changed since it was written)."""


def _conflict(target: str, noun: str, refusal: ValidationFailed) -> dict[str, Any]:
    """The conflict entry of an entity a revert cannot bring back, from the refusal that says why."""
    existing, field = refusal.details.get("existing"), refusal.details.get("field")
    if isinstance(refusal, Unrestorable):
        message, hint = refusal.message, refusal.hint
    else:
        message = f"{target} cannot be brought back: {refusal.message}"
        hint = (
            f"Change {existing}'s {field} first, then revert again."
            if existing
            else "Bring the linked entity back first (rollback), or revert again after that."
        )
    return {
        "id": target,
        "type": noun,
        "message": f"{message} (force does not change this)",
        "hint": hint,
        **refusal.details,
    }


@dataclass(frozen=True)
class _Restore:
    """A revert's write of one entity back to an earlier state, as prepared before it is tried."""

    row: Any  # the revert's row of this entity: target, noun, first version, event ids
    noun: Noun
    fields: dict[str, Any]
    deleted: bool

    @property
    def target(self) -> str:
        return str(self.row[0])

    def links(self, current: Loaded) -> _Links:
        """What to check once the whole revert is written: the links this write makes (see check_relations)."""
        return (
            self.target,
            self.noun,
            self.fields,
            links_to_check(current, self.fields, self.deleted),
            kept_links(current),
        )


def _revert_of(row: Any) -> dict[str, Any]:
    """A revert event's data: the ids of the events it undoes, from the revert's row of the entity."""
    return {"revertOf": row[3].split(",")}


def _cycle(start: str, holders: dict[str, str]) -> list[str] | None:
    """The entities that each wait for the next one's unique value, around to the first, on the way from `start`."""
    path: list[str] = []
    at: str | None = start
    while at is not None and at not in path:
        path.append(at)
        at = holders.get(at)
    return None if at is None else path[path.index(at) :]


def _exchange_conflict(
    restore: _Restore, group: list[str], refused: _Restore, refusal: ValidationFailed
) -> dict[str, Any]:
    """The conflict entry of an entity among others that exchanged unique values with it, when their earlier
    states cannot all be written (`refused` could not be, for `refusal`)."""
    others = [t for t in group if t != restore.target]
    entry = {"id": restore.target, "type": restore.noun.name, "exchangesWith": others}
    field = refusal.details.get("field")
    if refusal.details.get("existing") in group:  # their earlier states hold one value twice
        return {
            **entry,
            "message": f"{restore.target} cannot be brought back: its earlier state and those of {', '.join(others)}, "
            f"which exchanged unique values with it in the window, would give two of them the same {field} "
            "(force does not change this)",
            "hint": f"Bring them back by hand (update or rollback), choosing which of them keeps that {field}.",
            "field": field,
        }
    if restore is refused:
        return {**_conflict(restore.target, restore.noun.name, refusal), **entry}
    return {
        **entry,
        "message": f"{restore.target} cannot be brought back: it exchanged unique values with {', '.join(others)} in "
        f"the window, and {refused.target} cannot be brought back (force does not change this)",
        "hint": f"Resolve {refused.target}'s conflict first, then revert again.",
    }


class _Blocked(Exception):
    """Entities whose links failed at the end of a revert's pass: the pass is tried again without them."""

    def __init__(self, conflicts: list[dict[str, Any]]) -> None:
        super().__init__(", ".join(c["id"] for c in conflicts))
        self.conflicts = conflicts


class Mutator:
    """Applies operations for one actor inside one writer transaction."""

    def __init__(self, txn: Txn, env: Env, actor: str, caused_by: str | None = None, dry_run: bool = False) -> None:
        self.txn = txn
        self.dry_run = dry_run  # the whole run is a preview (what BEFORE hooks are told)
        self.conn = txn.conn
        self.env = env
        self.actor = actor  # checked by the caller
        self.caused_by = caused_by
        self.refs: list[str | None] = []  # per operation run: the $id of its entity, for $ref:N (None: it has none)
        self.ref_actions: list[str] = []  # per operation run: its action
        self.state_written = 0  # characters of state this run has written, against MAX_REQUEST_STATE
        self.keys_let_go: set[str] = set()  # entities whose lookup keys a revert removed before writing them

    # ---- entry points -------------------------------------------------------------------

    def run(self, ops: list[Operation], batch: bool) -> list[dict[str, Any]]:
        results = []
        for i, op in enumerate(ops):
            try:
                result = self.apply(op)
            except HeadlesslyError as exc:
                if batch:
                    exc.message = bounded(
                        f"operations[{i}] ({op.action}): {exc.message} (the whole batch was refused; nothing was written)"
                    )
                    exc.args = (exc.message,)
                    exc.details.setdefault("index", i)
                raise
            entity = result.get("entity")
            self.refs.append(entity.get("$id") if isinstance(entity, dict) else None)
            self.ref_actions.append(op.action)
            results.append(result)
        return results

    def apply(self, op: Operation) -> dict[str, Any]:
        asked = None
        if op.idempotencyKey is not None:
            named = self._refs_named(op)
            # The request as a write stores it (a retry may spell a value another way) and as given (the schemas
            # that tell how a value is stored may change between a request and its retry), kept as one text.
            as_stored, as_given = request_digest(self._as_stored(named)), request_digest(named)
            asked = as_stored if as_stored == as_given else f"{as_stored} {as_given}"
            row = self.conn.execute(
                "SELECT result, request FROM idempotency WHERE actor = ? AND key = ?", (self.actor, op.idempotencyKey)
            ).fetchone()
            if row is not None:
                # (None: a key kept before requests were; one digest: kept before both were)
                if row[1] is not None and not {as_stored, as_given} & set(row[1].split()):
                    raise ValidationFailed(
                        f"idempotencyKey {op.idempotencyKey!r} was already used by {self.actor} for another request; "
                        "the same key returns the first result only for the same request",
                        hint="Use a new key for a new write; send the first request again to get its result.",
                    )
                replay: dict[str, Any] = json.loads(row[0])
                replay["replayed"] = True
                return replay
        result = self._dispatch(op)
        if op.idempotencyKey is not None:
            self.conn.execute(
                "INSERT INTO idempotency (actor, key, result, seq, request) VALUES (?, ?, ?, ?, ?)",
                (self.actor, op.idempotencyKey, dumps(result), self.txn.head.seq, asked),
            )
        return result

    def _dispatch(self, op: Operation) -> dict[str, Any]:
        if op.action == "revert":
            check_arguments(op)
            return self.revert(op)
        noun = self.noun(op.type)
        verb = noun.verbs.get(op.action)
        if op.action not in CRUD_ACTIONS and verb is None:  # (before its arguments: a typo is not a verb)
            valid = ", ".join([*(a for a in CRUD_ACTIONS if a != "revert"), *noun.verbs])
            raise UnknownVerb(
                f"{noun.name} has no action {op.action!r}; its actions are: {valid} (and revert, which takes no type)",
                hint=f'Use one of: {valid}. fetch {{"type": "Schema", "id": "{noun.name}"}} shows what each verb sets.',
            )
        check_arguments(op)
        if op.action == "create":
            if op.id is not None:
                raise ValidationFailed("create does not take an id: ids are assigned by the store", hint="Remove 'id'.")
            return self.create(noun, op)
        target = self.resolve_id(noun, op.id, op.action)
        if op.action == "update":
            return self.update(noun, target, op)
        if op.action == "delete":
            return self.delete(noun, target, op)
        if op.action == "rollback":
            return self.rollback(noun, target, op)
        assert verb is not None
        return self.verb(noun, target, op, verb.past, verb.sets)

    # ---- lookups ------------------------------------------------------------------------

    def noun(self, name: str | None) -> Noun:
        if name is None or name not in self.env.schemas:
            valid = ", ".join(self.env.schemas.names())
            what = (
                "'type' is required for this action"
                if name is None
                else f"unknown type {name!r}{still_held(self.conn, name)}"  # (a noun removed from the schemas)
            )
            raise InvalidType(
                f"{what}; valid types: {valid}",
                hint='Pass one of the nouns as type; fetch {"type": "Schema"} describes them.',
            )
        return self.env.schemas[name]

    def resolve_id(self, noun: Noun, raw: str | None, action: str) -> str:
        if raw is None:
            raise InvalidId(
                f"{action} needs an id: the $id of the {noun.name} to {action}",
                hint=f"Pass the entity's $id ({noun.prefix}...) as id.",
            )
        return check_id(noun, self._ref(raw))

    def _ref(self, value: str) -> str:
        m = _REF.fullmatch(value)
        if not m:
            if _REF_LIKE.match(value):
                raise ValidationFailed(
                    f"{shown(_ref_named(value))} is not a $ref: a $ref is {REF_FORM}; {self._nameable()}",
                    hint=self._ref_hint(),
                )
            return value
        digits = m.group(1)
        index = int(digits) if len(digits) <= 9 else len(self.refs)  # (int() refuses past 4,300 digits)
        named = _ref_named(value)
        if index >= len(self.refs):
            raise ValidationFailed(
                f"{named} does not name an earlier operation: a $ref names the entity of an operation before this "
                f"one; {self._nameable()}",
                hint=self._ref_hint(),
            )
        if self.refs[index] is None:
            raise ValidationFailed(
                f"{named} names operations[{index}], {a_or_an(self.ref_actions[index])}, which acts on no single "
                f"entity: a $ref names an operation whose result has an entity (not a revert); {self._nameable()}",
                hint=self._ref_hint(),
            )
        return self.refs[index]  # type: ignore[return-value]

    def _nameable(self) -> str:
        """The $refs this operation can use, as runs ("$ref:0 to $ref:2, $ref:4"), or why there are none."""
        if not self.refs:
            return "there is no operation before this one to name"
        runs: list[list[int]] = []
        for i, ref in enumerate(self.refs):
            if ref is None:
                continue
            if runs and runs[-1][1] == i - 1:
                runs[-1][1] = i
            else:
                runs.append([i, i])
        if not runs:
            return "no operation before this one has an entity to name"
        shown_runs = [f"$ref:{a}" if a == b else f"$ref:{a} to $ref:{b}" for a, b in runs[:REF_RUNS_SHOWN]]
        more = f" and {len(runs) - REF_RUNS_SHOWN:,} more runs" if len(runs) > REF_RUNS_SHOWN else ""
        return f"this operation can name {', '.join(shown_runs)}{more}"

    @staticmethod
    def _ref_hint() -> str:
        return (
            "In a batch, $ref:N (in id, or in a relationship field of data) is the $id of the entity operations[N] "
            "created or changed; pass an entity's own $id to name one written before the batch."
        )

    def _refs_named(self, op: Operation) -> Operation:
        """`op` with each `$ref:N` this batch can already name replaced by that entity's id: what an
        idempotency key stands for (`$ref:0` is another request when operations[0] made another entity)."""

        def named(value: Any) -> Any:
            if isinstance(value, list):
                return [named(v) for v in value]
            try:
                return self._ref(value) if isinstance(value, str) else value
            except ValidationFailed:  # names nothing yet: refused when the operation runs
                return value

        if not self.refs:
            return op
        noun = self.env.schemas.nouns.get(op.type) if op.type else None
        data = op.data
        if data and noun is not None:
            data = {k: named(v) if k in noun.fields and noun.fields[k].relation else v for k, v in data.items()}
        return op.model_copy(update={"id": named(op.id), "data": data})

    def _as_stored(self, op: Operation) -> Operation:
        """`op` with its data and times as a write would store them: what an idempotency key stands for, so
        that a retry spelling a value another way (`100.0` for 100, `+00:00` for `Z`) is the same request."""
        data = op.data
        noun = self.env.schemas.nouns.get(op.type) if op.type else None
        if data and noun is not None:
            if op.action == "create":  # a field's null is its absence (an update's null removes the field)
                data = {k: v for k, v in data.items() if v is not None or k not in noun.fields}
            data = self.env.validators[noun.name].normalized(data)
        data = data or None  # no data, or none given
        times = {}
        for name in ("asOf", "since", "until"):
            text = getattr(op, name)
            if text is not None and not between_microseconds(text):  # (a revert's since rounds such a time up)
                with contextlib.suppress(HeadlesslyError):  # (refused when the operation runs)
                    times[name] = format_us(parse_as_of(text, name))
        return op.model_copy(update={"data": data, **times})

    def _resolve_refs(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._ref(value)
        if isinstance(value, list):
            return [self._resolve_refs(v) for v in value]
        return value

    def load(self, noun: Noun, entity_id: str) -> Loaded:
        row = self.conn.execute("SELECT rowid, type, state FROM entities WHERE id = ?", (entity_id,)).fetchone()
        if row is None:
            raise NotFound(f"{noun.name} {entity_id} does not exist", hint=f"Search {noun.name} to find existing ids.")
        if row[1] != noun.name:
            raise InvalidId(
                f"{entity_id} is {a_or_an(row[1])}, not {a_or_an(noun.name)}", hint=f'Use "type": "{row[1]}" for it.'
            )
        return Loaded(rowid=row[0], state=json.loads(row[2]))

    def load_live(self, noun: Noun, entity_id: str, op: Operation) -> Loaded:
        current = self.load(noun, entity_id)
        if current.deleted:
            raise NotFound(
                f"{noun.name} {entity_id} was deleted at {current.state['$deletedAt']} by {current.state.get('$deletedBy')}",
                hint="Roll it back to a time before the deletion to restore it.",
            )
        self.check_version(current, op)
        return current

    @staticmethod
    def check_version(current: Loaded, op: Operation) -> None:
        if op.ifVersion is not None and current.state["$version"] != op.ifVersion:
            raise VersionConflict(
                f"{current.state['$id']} is at version {current.state['$version']}, not {op.ifVersion}",
                hint="Fetch it again, re-apply your change to the current state, and retry with the new ifVersion.",
                currentVersion=current.state["$version"],
            )

    # ---- the operations -----------------------------------------------------------------

    def patch_of(
        self, noun: Noun, op: Operation, current: Loaded | None, held: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The caller's data as a merge patch: no '$' keys, no unknown fields (not even to remove
        one, unless the entity still holds it from an older schema, or `held`, the state a rollback
        restores, does and data removes it), `$ref:N` resolved in relationships."""
        data = op.data or {}
        bad = [k for k in data if k.startswith("$")]
        if bad:
            raise ValidationFailed(
                f"{', '.join(repr(k) for k in bad)}: fields starting with '$' are set by the store and cannot be written",
                hint="Remove the $ keys from data; $id, $version and the other meta fields are managed for you.",
            )
        unknown = [
            k
            for k in data
            if k not in noun.fields
            and (current is None or k not in current.fields)
            and not (held is not None and k in held and data[k] is None)
        ]
        if unknown:
            self.env.validators[noun.name].refuse_unknown(unknown)
        return {
            k: self._resolve_refs(v) if k in noun.fields and noun.fields[k].relation else v for k, v in data.items()
        }

    def create(self, noun: Noun, op: Operation) -> dict[str, Any]:
        def checked(patch: dict[str, Any]) -> dict[str, Any]:
            # null is the absent value: a field given as null gets its default, as one left out does
            fields = {
                f.name: f.default for f in noun.fields.values() if f.default is not None and patch.get(f.name) is None
            }
            fields.update({k: v for k, v in patch.items() if v is not None})
            return self.validate(noun, fields, None)

        given = self.patch_of(noun, op, None)
        patch = self.before_hooks(noun, "create", "Created", None, given, None, op)
        fields = self.hooked(given, patch, checked)
        entity_id = new_id(noun.prefix)
        with self.hooks_clashes(noun, given, patch):
            event = self.write(noun, entity_id, "Created", None, fields, fields, op, extra_data=None)
        return event.result()

    def update(self, noun: Noun, entity_id: str, op: Operation) -> dict[str, Any]:
        current = self.load_live(noun, entity_id, op)
        given = self.patch_of(noun, op, current)
        patch = self.before_hooks(noun, "update", "Updated", entity_id, given, current.state, op)
        merged = self.hooked(given, patch, lambda p: self.validate_merge(noun, current, p))
        changes = diff(current.fields, merged)
        if not changes:
            return {"entity": current.state, "events": [], "unchanged": True}
        with self.hooks_clashes(noun, given, patch):
            event = self.write(noun, entity_id, "Updated", current, merged, None, op, changes=changes)
        return event.result()

    def verb(self, noun: Noun, entity_id: str, op: Operation, past: str, sets: str | None) -> dict[str, Any]:
        current = self.load_live(noun, entity_id, op)
        patch = self.patch_of(noun, op, current)
        if sets is not None:
            if patch.get(sets, past) != past:
                raise ValidationFailed(
                    f"{op.action} sets {noun.name}.{sets} to {past!r}; data may not set it to {shown(patch[sets])}",
                    hint=f"Leave {sets} out of data, or use update to set it to another value.",
                )
            patch[sets] = past
        given = patch
        patch = self.before_hooks(noun, op.action, past, entity_id, given, current.state, op)
        if sets is not None and patch.get(sets) != past:  # the event would say Qualified with another stage
            raise HookFailed(
                f"a BEFORE hook changed {noun.name}.{sets}, which {op.action} sets to {past!r}, to {shown(patch.get(sets))}",
                hint="This is a fault in the server's hooks: a hook may reject a verb, not change what it sets.",
            )
        merged = self.hooked(given, patch, lambda p: self.validate_merge(noun, current, p))
        with self.hooks_clashes(noun, given, patch):
            event = self.write(noun, entity_id, past, current, merged, None, op)
        return event.result()

    def delete(self, noun: Noun, entity_id: str, op: Operation) -> dict[str, Any]:
        if op.data:
            raise ValidationFailed("delete takes no data", hint="Remove 'data', or update first and then delete.")
        current = self.load_live(noun, entity_id, op)
        if self.before_hooks(noun, "delete", "Deleted", entity_id, {}, current.state, op):
            raise gave_a_delete_data(entity_id)
        event = self.write(noun, entity_id, "Deleted", current, current.fields, None, op, deleted=True)
        return event.result()

    def rollback(self, noun: Noun, entity_id: str, op: Operation) -> dict[str, Any]:
        if (op.asOf is None) == (op.toVersion is None):
            raise ValidationFailed(
                "rollback needs exactly one of 'asOf' or 'toVersion'",
                hint='e.g. {"asOf": "2026-01-15T15:00:00Z"} or {"toVersion": 2}.',
            )
        current = self.load(noun, entity_id)
        self.check_version(current, op)
        if op.asOf is not None:
            as_of_us = parse_as_of(op.asOf)
            if as_of_us >= (stamp := self.txn.next_ts_us()):  # (its state would be the one this rollback writes)
                raise InvalidAsOf(
                    f"asOf {format_us(as_of_us)} is not in the past: this rollback would be written at "
                    f"{format_us(stamp)}, and a rollback goes back to a state the entity had before it",
                    hint="Pass an earlier time (fetch with that asOf shows the state it restores), or toVersion.",
                )
            row = self.conn.execute(
                "SELECT state FROM events WHERE target = ? AND ts <= ? ORDER BY seq DESC LIMIT 1",
                (entity_id, format_us(as_of_us)),
            ).fetchone()
            if row is None:
                raise InvalidAsOf(
                    f"{entity_id} did not exist at {format_us(as_of_us)}: it was created at {current.state['$createdAt']}",
                    hint="Roll back to a time at or after its creation, or delete it instead.",
                )
            rollback_to: Any = format_us(as_of_us)
        else:
            row = self.conn.execute(
                "SELECT state FROM events WHERE target = ? AND version = ?", (entity_id, op.toVersion)
            ).fetchone()
            if row is None:
                raise ValidationFailed(
                    f"{entity_id} has no version {op.toVersion}; its versions are 1 to {current.state['$version']}",
                    hint="Pick a toVersion within that range.",
                )
            rollback_to = op.toVersion
        past_state = json.loads(row[0])
        wanted = self.with_data(noun, entity_id, current, past_state, op)
        target_fields = self.restored(noun, "rollback", current, wanted, op)
        self.check_relations(
            noun, target_fields, links_to_check(current, target_fields, is_deleted(past_state)), kept_links(current)
        )
        with self.hooks_clashes(noun, wanted, target_fields):
            event = self.write(
                noun, entity_id, "Updated", current, target_fields, None, op,
                extra_data={"rollbackTo": rollback_to}, deleted=is_deleted(past_state),
            )  # fmt: skip
        return event.result()

    def with_data(
        self, noun: Noun, entity_id: str, current: Loaded, past_state: dict[str, Any], op: Operation
    ) -> dict[str, Any]:
        """The fields a rollback brings back, with its `data` merged over them (a value the current schemas
        require that the earlier state lacks, or one they now refuse): how an entity whose earlier state no
        longer fits the schemas comes back, even a deleted one, which no update can reach."""
        fields = fields_of(past_state)
        if not op.data:
            return fields
        if is_deleted(past_state):
            raise ValidationFailed(
                f"{entity_id} was deleted in the state this rollback goes back to, so it takes no data",
                hint="Leave data out, or roll back to a time (or version) when the entity existed to restore it "
                "with that data.",
            )
        return merge(fields, self.patch_of(noun, op, current, held=fields))

    def restored(
        self, noun: Noun, action: str, current: Loaded, target_fields: dict[str, Any], op: Operation
    ) -> dict[str, Any]:
        """The fields a rollback or revert brings `current` back to, after the BEFORE hooks (which see
        the change as a merge patch: each differing field, null where it goes away) and type checks."""

        def checked(patch: dict[str, Any]) -> dict[str, Any]:
            merged = merge(current.fields, patch)
            changed = list(diff(current.fields, merged))
            return self.env.validators[noun.name].validate_changed(merged, changed, restoring=True)

        given = {k: target_fields.get(k) for k in diff(current.fields, target_fields)}
        patch = self.before_hooks(noun, action, "Updated", current.state["$id"], given, current.state, op)
        try:
            return self.hooked(given, patch, checked)
        except ValidationFailed as exc:  # most often: that state was written under other schemas
            raise Unrestorable(
                f"{current.state['$id']} cannot go back to that state: the current schemas do not accept it ({exc.message})",
                hint="A rollback restores a whole earlier state, and this one no longer fits the schemas: roll back "
                "with data giving the values to use instead (a required field it lacks, a value now refused), or "
                "update the entity to the values you want."
                if action == "rollback"
                else "A revert restores a whole earlier state, and this one no longer fits the schemas: roll the "
                "entity back with data giving the values to use instead, or update it to the values you want.",
            ) from None

    def revert(self, op: Operation) -> dict[str, Any]:
        if op.actor is None or op.since is None:
            raise ValidationFailed(
                "revert needs 'actor' and 'since'",
                hint='e.g. {"action": "revert", "actor": "agent_x", "since": "2026-01-16T00:00:00Z"}.',
            )
        victim = check_actor(op.actor)
        # A since between two microseconds starts at the next one (stored times are whole microseconds).
        given = parse_as_of(op.since, "since")
        since_us = given + (1 if between_microseconds(op.since) else 0)
        until_us = parse_as_of(op.until, "until") if op.until is not None else None
        since, until = format_us(since_us), None if until_us is None else format_us(until_us)
        # (compared as given: a since and an until inside the same microsecond make an empty window, not a mistake)
        if until_us is not None and until_us < given:
            raise ValidationFailed(
                f"'until' ({until}) is before 'since' ({format_us(given)}): the window is empty",
                hint="Pass an until at or after since, or leave it out to revert up to now.",
            )
        rows = self.conn.execute(
            "SELECT target, entity_type, min(version), group_concat(id) FROM events "
            "WHERE actor = ? AND ts >= ? AND (? IS NULL OR ts <= ?) GROUP BY target, entity_type ORDER BY min(seq)",
            (victim, since, until, until),
        ).fetchall()
        # An entity whose earlier state cannot be written now (the schemas refuse it, a unique value is
        # held by an entity this revert leaves alone, or a link points at an entity deleted since) is a
        # conflict like one changed by someone else, and the others are still reverted. Links can only be
        # checked once every entity is back: the pass is tried again without the entities whose links
        # failed (with the same hook results: BEFORE hooks run once per entity).
        blocked: dict[str, dict[str, Any]] = {}
        memo: dict[str, Any] = {}
        while True:
            try:
                with self._savepoint("revert"):
                    outcome = self._revert_entities(rows, victim, until, op, blocked, memo)
            except _Blocked as exc:
                blocked.update((conflict["id"], conflict) for conflict in exc.conflicts)
                continue
            return {"entity": None, **outcome, "revertOf": {"actor": victim, "since": since, "until": until}}

    @contextmanager
    def _savepoint(self, name: str) -> Iterator[None]:
        """Undo everything the block wrote if it raises: the rows, and this run's log head and state count."""
        head, written = self.txn.head, self.state_written
        self.conn.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self.conn.execute(f"ROLLBACK TO {name}")
            self.conn.execute(f"RELEASE {name}")
            self.txn.head, self.state_written = head, written
            raise
        self.conn.execute(f"RELEASE {name}")

    def _revert_entities(
        self,
        rows: list[Any],
        victim: str,
        until: str | None,
        op: Operation,
        blocked: dict[str, dict[str, Any]],
        memo: dict[str, Any],
    ) -> dict[str, Any]:
        reverted: list[dict[str, Any]] = []
        conflicts: list[dict[str, Any]] = []
        unchanged: list[str] = []
        events: list[dict[str, Any]] = []
        links: list[_Links] = []
        queue = deque(rows)
        pending = {row[0] for row in rows}  # targets not handled yet in this pass
        waiting: dict[str, str] = {}  # put back behind a unique value's holder since the last write: the holder
        tried: dict[str, _Restore] = {}

        def done(target: str, event: Written, made: _Links | None = None) -> None:
            pending.discard(target)
            if made is not None:
                links.append(made)
            waiting.clear()
            reverted.append(event.state)
            events.append(event.event)

        while queue:
            row = queue.popleft()
            target, entity_type, first_version = row[:3]
            if target in blocked:
                conflicts.append(blocked[target])
                pending.discard(target)
                continue
            noun = self.env.schemas.nouns.get(entity_type)
            if noun is None:
                conflicts.append(
                    {"id": target, "type": entity_type, "message": f"{entity_type} is no longer a known noun"}
                )
                pending.discard(target)
                continue
            others = [
                r[0]
                for r in self.conn.execute(
                    # An earlier revert of this same actor's events is not "someone else's change":
                    # repeating a revert is a no-op. A revert of anyone else's events is a change, and so
                    # is the actor's own write after `until` (outside the window, it is not undone silently)
                    # unless a revert has undone it already.
                    "SELECT DISTINCT e.actor FROM events e WHERE e.target = ? AND e.version > ? "
                    "AND (e.actor != ? OR (e.ts > ? AND NOT EXISTS (SELECT 1 FROM events r, json_each(r.data, "
                    "'$.revertOf') undone WHERE r.target = e.target AND r.version > e.version AND undone.value = e.id))) "
                    "AND (SELECT r.actor FROM events r WHERE r.id = json_extract(e.data, '$.revertOf[0]')) IS NOT ?",
                    (target, first_version, victim, until, victim),
                )
            ]
            if others and not op.force:
                conflicts.append({
                    "id": target, "type": entity_type, "changedBy": others,
                    "message": f"{target} was changed afterwards by {', '.join(others)}"
                    + (f" ({victim} after 'until')" if victim in others else "")
                    + "; pass force: true to revert it anyway",
                })  # fmt: skip
                pending.discard(target)
                continue
            current = self.load(noun, target)
            if first_version == 1:
                pending.discard(target)
                if current.deleted:
                    unchanged.append(target)
                    continue
                if target not in memo:
                    memo[target] = self.before_hooks(noun, "revert", "Deleted", target, {}, current.state, op)
                if memo[target]:
                    raise gave_a_delete_data(target)
                event = self.write(
                    noun, target, "Deleted", current, current.fields, None, op, extra_data=_revert_of(row), deleted=True
                )
                done(target, event)
            else:
                (before_text,) = self.conn.execute(
                    "SELECT state FROM events WHERE target = ? AND version = ?", (target, first_version - 1)
                ).fetchone()
                before = json.loads(before_text)
                target_fields = fields_of(before)
                if not diff(current.fields, target_fields) and current.deleted == is_deleted(before):
                    unchanged.append(target)
                    pending.discard(target)
                    continue
                if target not in memo:
                    try:
                        memo[target] = self.restored(noun, "revert", current, target_fields, op)
                    except Unrestorable as exc:
                        blocked[target] = _conflict(target, noun.name, exc)
                        queue.appendleft(row)  # reported in its place, as a blocked entity
                        continue
                restore = tried[target] = _Restore(row, noun, memo[target], is_deleted(before))
                try:
                    with self._savepoint("revert_entity"):
                        event = self._restore(restore, current, op)
                except ValidationFailed as exc:  # a unique value another entity holds now
                    holder = exc.details.get("existing")
                    if isinstance(holder, str) and holder in pending and holder != target and holder not in blocked:
                        again = target in waiting
                        waiting[target] = holder  # the holder comes later in this revert and may let go of it
                        if not again:
                            queue.append(row)
                            continue
                        # No write since: the entities wait for each other's values (a swap). Write them together.
                        cycle = _cycle(target, waiting)
                        if cycle is not None:
                            swapped = self._restore_together([tried[t] for t in cycle], op)
                            while not isinstance(swapped, list):  # a value held by one more entity of the revert?
                                more = swapped[1].details.get("existing")
                                if more not in tried or more in cycle or more not in pending or more in blocked:
                                    break
                                cycle.append(more)
                                swapped = self._restore_together([tried[t] for t in cycle], op)
                            if isinstance(swapped, list):
                                for restore, current, event in swapped:
                                    done(restore.target, event, restore.links(current))
                                queue = deque(r for r in queue if r[0] not in cycle)
                            else:  # one of them cannot be brought back: so none of them
                                for t in cycle:
                                    blocked[t] = _exchange_conflict(tried[t], cycle, *swapped)
                                    waiting.pop(t)
                            if target not in pending:
                                continue  # written with the others
                            # Reported in its place if blocked; else tried again, as its holder has let go.
                            queue.appendleft(row)
                            continue
                    blocked[target] = _conflict(target, noun.name, exc)
                    waiting.pop(target, None)  # (not part of a swap any more)
                    queue.appendleft(row)
                    continue
                done(target, event, restore.links(current))
        failed = []
        for target, noun, fields, changed, kept in links:
            try:
                self.check_relations(noun, fields, changed, kept)
            except ValidationFailed as exc:
                failed.append(_conflict(target, noun.name, exc))
        if failed:
            raise _Blocked(failed)
        return {"events": events, "reverted": reverted, "conflicts": conflicts, "unchanged": unchanged}

    def _restore(self, restore: _Restore, current: Loaded, op: Operation) -> Written:
        return self.write(
            restore.noun, restore.target, "Updated", current, restore.fields, None, op,
            extra_data=_revert_of(restore.row), deleted=restore.deleted,
        )  # fmt: skip

    def _restore_together(
        self, restores: list[_Restore], op: Operation
    ) -> list[tuple[_Restore, Loaded, Written]] | tuple[_Restore, ValidationFailed]:
        """Write entities that each take back a unique value another of them holds now: their lookup keys are
        let go first (each write puts its own back), so all are written, or none (the one refused, and why)."""
        ids = [r.target for r in restores]
        written = []
        self.keys_let_go = set(ids)
        try:
            with self._savepoint("revert_together"):
                self.conn.execute(f"DELETE FROM entity_keys WHERE id IN ({','.join('?' * len(ids))})", ids)
                for restore in restores:
                    current = self.load(restore.noun, restore.target)
                    written.append((restore, current, self._restore(restore, current, op)))
        except ValidationFailed as exc:
            return restores[len(written)], exc
        finally:
            self.keys_let_go = set()
        return written

    # ---- shared machinery ---------------------------------------------------------------

    def before_hooks(
        self, noun: Noun, action: str, past: str, entity_id: str | None, patch: dict[str, Any],
        current: dict[str, Any] | None, op: Operation,
    ) -> dict[str, Any]:  # fmt: skip
        hooks = self.env.hooks.matching_before(noun.name, action, past) if self.env.hooks else []
        for fn in hooks:
            ctx = BeforeContext(  # copies: a hook that edits `current` must not edit the entity being written
                noun=noun.name,
                action=action,
                id=entity_id,
                actor=self.actor,
                data=copy.deepcopy(patch),
                current=copy.deepcopy(current),
                reason=op.reason,
                find=self.find_for_hooks,
                dry_run=self.dry_run,
            )
            try:
                replaced = fn(ctx)
            except HookRejected as exc:
                raise ValidationFailed(
                    f"rejected by hook {hook_name(fn)}: {exc}", hint="Change the data so the hook accepts it."
                ) from None
            except (Exception, SystemExit, KeyboardInterrupt) as exc:
                # The operator's bug (also one of our refusals of what the hook did, such as a search it got
                # wrong or a write it must not make: not the agent's request): the details go to the log.
                log.exception("BEFORE hook %s failed; the write was refused", hook_name(fn))
                what = exc.code if isinstance(exc, HeadlesslyError) else type(exc).__name__
                raise HookFailed(
                    f"the server's hook {hook_name(fn)} failed ({what}); nothing was written",
                    hint="This is a fault in the server's hooks, not in the request: report it to the operator "
                    "(the server's log has the details). Retrying will likely fail the same way.",
                ) from None
            if replaced is not None and not isinstance(replaced, dict):
                raise HookFailed(
                    f"the server's hook {hook_name(fn)} returned a {type(replaced).__name__}; nothing was written",
                    hint="This is a fault in the server's hooks: a BEFORE hook returns None or a dict of data.",
                )
            patch = ctx.data if replaced is None else replaced
            if any(k.startswith("$") for k in patch):
                raise HookFailed(
                    f"the server's hook {hook_name(fn)} tried to set a '$' field; nothing was written",
                    hint="This is a fault in the server's hooks: they may change fields, not meta fields.",
                )
        return patch

    @staticmethod
    def hooked(given: dict[str, Any], patch: dict[str, Any], check: Callable[[dict[str, Any]], Checked]) -> Checked:
        """`check(patch)`, where BEFORE hooks made `patch` of the agent's `given` data. When the check refuses
        it, the agent is told its own mistake if `given` is refused too, and otherwise that the hooks are at
        fault: the agent cannot fix data an operator's hook made invalid."""
        try:
            return check(patch)
        except ValidationFailed as exc:
            if patch == given:
                raise
            check(given)
            raise hooks_made_invalid(exc) from None

    @contextmanager
    def hooks_clashes(self, noun: Noun, given: dict[str, Any], patch: dict[str, Any]) -> Iterator[None]:
        """A unique value that another entity holds, set by the BEFORE hooks (`patch`) rather than by the agent
        (`given`, as a write stores it: a hook that only normalizes the agent's value does not take its clash)."""
        try:
            yield
        except UniqueClash as exc:
            field = exc.details["field"]
            if given.get(field, _MISSING) == patch.get(field, _MISSING):
                raise
            mine = self.env.validators[noun.name].normalized({field: given[field]}) if field in given else {}
            if (field, exc.value) in index_keys(noun, mine):
                raise
            raise hooks_made_invalid(exc) from None

    def validate_merge(self, noun: Noun, current: Loaded, patch: dict[str, Any]) -> dict[str, Any]:
        """`current` with the merge patch applied, checked (the fields the patch names)."""
        return self.validate(noun, merge(current.fields, patch), list(patch), kept=current.fields)

    def find_for_hooks(
        self, type: str, filter: Any = None, query: str | None = None, sort: str | None = None,
        limit: int | None = None, include_deleted: bool = False,
    ) -> dict[str, Any]:  # fmt: skip
        """A search inside this transaction, for BEFORE hooks: it sees what this batch wrote so far."""
        from .patterns import refuse_slow_patterns
        from .queries import find  # (queries imports this module)

        with refuse_slow_patterns():
            return find(
                self.conn, self.env.schemas, self.noun(type), filter, query, sort, limit, None, None, include_deleted
            )

    def validate(
        self, noun: Noun, fields: dict[str, Any], changed: list[str] | None, kept: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Check types and formats (all fields, or only `changed` of an already valid entity),
        and that every changed relationship points at a live entity of the right noun (see check_relations)."""
        validator = self.env.validators[noun.name]
        fields = validator.validate(fields) if changed is None else validator.validate_changed(fields, changed)
        self.check_relations(noun, fields, list(fields) if changed is None else changed, kept)
        return fields

    def check_relations(
        self, noun: Noun, fields: dict[str, Any], names: list[str], kept: dict[str, Any] | None = None
    ) -> None:
        """Every relationship among `names` points at a live entity of the right noun, as of now, except the
        links the entity already has (`kept`, its live fields): a write that leaves a link to an entity deleted
        since as it is does not make it, so the rest of the write is not refused for it."""
        for name in names:
            f = noun.fields.get(name)
            value = fields.get(name)
            if f is None or f.relation is None or value is None:
                continue
            had = (kept or {}).get(name)  # (ids only: a value written under an older type may be anything)
            old = {r for r in (had if isinstance(had, list) else [had]) if isinstance(r, str)}
            for ref in value if isinstance(value, list) else [value]:
                if ref in old:
                    continue
                row = self.conn.execute("SELECT type, deleted_at FROM entities WHERE id = ?", (ref,)).fetchone()
                if row is None or row[0] != f.relation:
                    raise ValidationFailed(
                        f"{noun.name}.{name}: {f.relation} {ref} does not exist in this tenant",
                        hint=f'Create the {f.relation} first (in a batch, refer to it as "$ref:N"), or search {f.relation} for an existing id.',
                    )
                if row[1] is not None:
                    raise ValidationFailed(
                        f"{noun.name}.{name}: {f.relation} {ref} was deleted at {row[1]}",
                        hint=f"Point {name} at a live {f.relation}.",
                    )

    def write(
        self,
        noun: Noun,
        entity_id: str,
        past: str,
        current: Loaded | None,
        fields: dict[str, Any],
        created_data: dict[str, Any] | None,
        op: Operation,
        extra_data: dict[str, Any] | None = None,
        deleted: bool = False,
        changes: dict[str, dict[str, Any]] | None = None,
    ) -> Written:
        """Append one event and bring the materialized row to the state right after it.

        `deleted`: whether the entity is deleted after the event. An entity that already was keeps
        its `$deletedAt`/`$deletedBy`; otherwise this event deletes it, at its time, by its actor.
        `changes` may be passed when the caller already has `diff(current.fields, fields)`."""
        ts_us = self.txn.next_ts_us()
        ts = format_us(ts_us)
        old_state = current.state if current else {}
        version = (old_state.get("$version", 0)) + 1
        meta: dict[str, Any] = {
            "$id": entity_id,
            "$type": noun.name,
            "$version": version,
            "$createdAt": old_state.get("$createdAt", ts),
            "$createdBy": old_state.get("$createdBy", self.actor),
            "$updatedAt": ts,
            "$updatedBy": self.actor,
        }
        if deleted and old_state.get("$deletedAt") is not None:
            meta["$deletedAt"], meta["$deletedBy"] = old_state["$deletedAt"], old_state.get("$deletedBy")
        elif deleted:
            meta["$deletedAt"], meta["$deletedBy"] = ts, self.actor
        state = {**meta, **fields}
        if changes is None:
            changes = diff(current.fields if current else {}, fields)
        for key in ("$deletedAt", "$deletedBy"):
            a, b = old_state.get(key), meta.get(key)
            if a != b:
                changes[key] = {"from": a, "to": b}
        if created_data is not None:
            data: dict[str, Any] = dict(created_data)
        else:
            data = rendered(changes)
        if extra_data:
            data = {**extra_data, **data}
        state_text = dumps(state)
        if len(state_text) * 4 > MAX_STATE_BYTES:  # UTF-8 takes at most 4 bytes a character: count only then
            size = len(state_text.encode("utf-8", "surrogatepass"))
            if size > MAX_STATE_BYTES:
                raise LimitExceeded(
                    f"{noun.name} {entity_id if current else '(new)'} would be {size} bytes of JSON (UTF-8); "
                    f"an entity may be at most {MAX_STATE_BYTES}",
                    hint="Store large content elsewhere and keep a url here.",
                )
        self.state_written += len(state_text)
        if self.state_written > MAX_REQUEST_STATE:
            raise LimitExceeded(
                f"this request would write more than {MAX_REQUEST_STATE:,} characters of entity state "
                "(each event keeps its entity's whole state); nothing was written",
                hint="Split the batch into smaller ones, or revert a shorter window (until).",
            )
        event = self.txn.append(
            new_id("evt_"), f"{noun.name}.{past}", noun.name, past, entity_id, self.actor, ts_us, ts, version,
            dumps(data), dumps(changes), state_text, op.reason, self.caused_by,
        )  # fmt: skip
        self._materialize(noun, entity_id, current, state, state_text, changes)
        return Written(state, event.to_dict(data=data, changes=changes))

    def _materialize(
        self,
        noun: Noun,
        entity_id: str,
        current: Loaded | None,
        state: dict[str, Any],
        state_text: str,
        changes: dict[str, Any] | None = None,
    ) -> None:
        """Bring the entity's row, lookup keys and full text to `state`; `changes` (the event's,
        when known) lets an update skip the keys and text it did not touch."""
        try:
            if current is None:
                cur = self.conn.execute(
                    "INSERT INTO entities (id, type, version, created_at, updated_at, deleted_at, state) VALUES (?,?,?,?,?,?,?)",
                    (
                        entity_id,
                        noun.name,
                        state["$version"],
                        state["$createdAt"],
                        state["$updatedAt"],
                        state.get("$deletedAt"),
                        state_text,
                    ),
                )
                rowid = cur.lastrowid
            else:
                rowid = current.rowid
                values = [state["$version"], state["$updatedAt"], state_text]
                deleted_at = state.get("$deletedAt")
                deletion = ""  # set only when it changes: otherwise the count triggers of deleted_at stay idle
                if deleted_at != current.state.get("$deletedAt"):
                    deletion = ", deleted_at = ?"
                    values.append(deleted_at)
                self.conn.execute(
                    f"UPDATE entities SET version = ?, updated_at = ?, state = ?{deletion} WHERE rowid = ?",
                    (*values, rowid),
                )
        except sqlite3.IntegrityError as exc:
            raise StorageError(
                f"could not write {entity_id}: {exc}",
                hint="Nothing was written; `headlessly verify` checks the tenant.",
            ) from None
        rewritten = (
            current is None
            or changes is None
            or any(f.name in changes for f in noun.indexed_fields)
            or ("$deletedAt" in changes)
        ) and self._keys(noun, entity_id, current.state if current else None, state)
        if not rewritten and current is not None and any(state.get(f.name) is not None for f in noun.indexed_fields):
            # The keys list their entity in the default order (updated_at), so they follow every update.
            self.conn.execute("UPDATE entity_keys SET updated_at = ? WHERE id = ?", (state["$updatedAt"], entity_id))
        if noun.text_fields and (current is None or changes is None or any(f in changes for f in noun.text_fields)):
            body = search_body(noun, state)
            if current is None:
                self.conn.execute("INSERT INTO entities_fts (rowid, body) VALUES (?, ?)", (rowid, body))
            elif body != search_body(noun, current.state):
                self.conn.execute("DELETE FROM entities_fts WHERE rowid = ?", (rowid,))
                self.conn.execute("INSERT INTO entities_fts (rowid, body) VALUES (?, ?)", (rowid, body))

    def _keys(self, noun: Noun, entity_id: str, old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
        """Keep `entity_keys` (the lookup rows of indexed fields) equal to the new state; False when
        the rows already list the same keys (only their updated_at is then behind)."""
        let_go = entity_id in self.keys_let_go  # its rows are gone: every key is put back, and checked
        old_keys = index_keys(noun, old) if old is not None and not let_go else set()
        new_keys = index_keys(noun, new)
        live = new.get("$deletedAt") is None
        if not let_go and old_keys == new_keys and (old is None or (old.get("$deletedAt") is None) == live):
            return False
        if live:
            for field_name, value in sorted(
                new_keys - (old_keys if old is not None and old.get("$deletedAt") is None and not let_go else set()),
                key=lambda key: (key[0], repr(key[1])),  # a json# list may mix strings and numbers
            ):
                if noun.fields[field_name].unique:
                    row = self.conn.execute(
                        "SELECT id FROM entity_keys WHERE type = ? AND field = ? AND value = ? AND uniq = 1 AND live = 1 AND id != ?",
                        (noun.name, field_name, value, entity_id),
                    ).fetchone()
                    if row is not None:
                        raise UniqueClash(
                            f"{noun.name}.{field_name} must be unique: {value!r} is already used by {row[0]}",
                            hint=f"Update {row[0]} instead, or use a different {field_name}.",
                            field=field_name,
                            existing=row[0],
                        ).of(value)
        if old is not None:
            self.conn.execute("DELETE FROM entity_keys WHERE id = ?", (entity_id,))
        self.conn.executemany(INSERT_KEY, key_rows(noun, entity_id, new, new_keys))
        return True


# The optional keys each action reads (besides action, idempotencyKey, reason, dryRun); a verb
# takes what update takes. A key given to an action that does not read it is refused, not ignored:
# an agent that sends `ifVersion` with a create, or `id` with a revert, expects it to count.
ACTION_KEYS: dict[str, frozenset[str]] = {
    "create": frozenset({"type", "data"}),
    "update": frozenset({"type", "id", "data", "ifVersion"}),
    "delete": frozenset({"type", "id", "ifVersion"}),
    "rollback": frozenset({"type", "id", "asOf", "toVersion", "ifVersion", "data"}),
    "revert": frozenset({"actor", "since", "until", "force"}),
}
COMMON_KEYS = frozenset({"action", "idempotencyKey", "reason", "dryRun"})


def request_digest(op: Operation) -> str:
    """What an idempotency key stands for: the write asked, whatever its reason says or its key order."""
    asked = op.model_dump(exclude={"idempotencyKey", "dryRun", "reason"}, exclude_defaults=True)
    return hashlib.sha256(json.dumps(asked, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def check_arguments(op: Operation) -> None:
    takes = ACTION_KEYS.get(op.action, ACTION_KEYS["update"])
    given = {k for k in op.model_fields_set if getattr(op, k) not in (None, False, {})}  # null, false: not given
    extra = sorted(given - takes - COMMON_KEYS)
    if extra:
        what = f"the verb {op.action}" if op.action not in ACTION_KEYS else op.action
        keys = ", ".join(repr(k) for k in extra)
        raise ValidationFailed(
            f"{what} does not take {keys}; it takes: {', '.join(sorted(takes | COMMON_KEYS))}",
            hint=f"Remove {keys}."
            + (" A revert covers every entity the actor touched in the window." if op.action == "revert" else ""),
        )


INSERT_KEY = "INSERT INTO entity_keys (type, field, value, id, uniq, live, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)"


def key_rows(
    noun: Noun, entity_id: str, state: dict[str, Any], keys: set[tuple[str, Any]] | None = None
) -> list[tuple[Any, ...]]:
    """The `entity_keys` rows (INSERT_KEY's values) of an entity in `state`; `keys` when already known."""
    live = int(state.get("$deletedAt") is None)
    return [
        (noun.name, f, v, entity_id, int(noun.fields[f].unique), live, state["$updatedAt"])
        for f, v in (index_keys(noun, state) if keys is None else keys)
    ]


def index_keys(noun: Noun, state: dict[str, Any]) -> set[tuple[str, Any]]:
    """`(field, value)` for every value an indexed field of the state holds (`field_values`)."""
    return {(f.name, v) for f in noun.indexed_fields for v in field_values(f, state.get(f.name))}


def field_values(field: Field, value: Any) -> list[Any]:
    """The strings and numbers a stored value holds as the field's current type reads it, which its lookup keys
    list and its filters compare (filters.FilterCompiler._scalar): a list field's elements (a lone value is a list
    of one), a scalar field's value, a json field's value or its list's elements; an email field's text as a write
    stores it (the domain lowercased, as in one written while the field was a string). A value of another shape
    (a list written before the field became a scalar, an object) holds none; nor do a json field's true/false
    (SQLite would keep them as the numbers 1 and 0)."""
    if value is None:
        return []
    items = value if isinstance(value, list) and (field.array or field.type == "json") else [value]
    if field.type == "email":  # (a write stores emails so already; one written before the field was an email not)
        return [normalized_email(v) for v in items if isinstance(v, (str, int, float))]
    return [v for v in items if isinstance(v, (str, int, float)) and not (field.type == "json" and isinstance(v, bool))]


def links_to_check(current: Loaded, fields: dict[str, Any], deleted: bool) -> list[str]:
    """The fields whose relationships a rollback or revert must check: none when it leaves the entity deleted
    (no link of a deleted entity is live), all of them when it brings a deleted entity back (they may point at
    entities deleted since), else those it changes."""
    if deleted:
        return []
    if current.deleted:
        return list(fields)
    return list(diff(current.fields, fields))


def hooks_made_invalid(exc: ValidationFailed) -> HookFailed:
    return HookFailed(
        f"the server's BEFORE hooks made this write invalid ({exc.message}); nothing was written",
        hint="This is a fault in the server's hooks, not in the request: report it to the operator. "
        "Retrying will likely fail the same way.",
    )


def gave_a_delete_data(entity_id: str) -> HookFailed:
    return HookFailed(
        f"a BEFORE hook gave data to a delete of {entity_id}, which writes none; nothing was written",
        hint="This is a fault in the server's hooks: a hook may reject a delete, not change it.",
    )


def kept_links(current: Loaded) -> dict[str, Any] | None:
    """The links a rollback or revert leaves in place need no check, unless it brings a deleted entity back."""
    return None if current.deleted else current.fields


def is_deleted(state: dict[str, Any]) -> bool:
    return state.get("$deletedAt") is not None


def merge(fields: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Merge-patch: keys in `patch` replace, `None` removes."""
    out = dict(fields)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def search_body(noun: Noun, state: dict[str, Any]) -> str:
    parts: list[str] = []
    for name in noun.text_fields:
        value = state.get(name)
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            parts.extend(v for v in value if isinstance(v, str))
    return "\n".join(parts)


def check_id(noun: Noun, raw: object) -> str:
    if not isinstance(raw, str) or not ID_SHAPE.fullmatch(raw):
        raise InvalidId(f"{raw!r} is not an entity id", hint=f"{noun.name} ids look like {noun.prefix}fX9bL5nRd.")
    if not raw.startswith(noun.prefix):
        other = raw.split("_", 1)[0]
        raise InvalidId(
            f"{raw} is not {a_or_an(noun.name)} id (it starts with '{other}_')",
            hint=f"{noun.name} ids start with '{noun.prefix}'.",
        )
    return raw
