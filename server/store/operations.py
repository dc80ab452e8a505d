"""The write request (`do`) as a typed model, parsed once at the edge of the store."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationError

from ..errors import InvalidActor, ValidationFailed, shown
from ..schema.validation import INT64_MAX, no_nul

ACTOR = re.compile(r"^(agent|user|system)_[A-Za-z0-9_-]{1,64}$")
CRUD_ACTIONS = ("create", "update", "delete", "rollback", "revert")
MAX_BATCH = 1000


def _not_a_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a whole number is needed, not true or false")
    if isinstance(value, float) and value.is_integer():  # 1e308 is whole too (pydantic would not take it)
        return int(value)
    return value


# Arguments at the edge: a number may come as 3 or "3", but `true` is never a version or a page size; a flag
# is `true` or `false`, never "yes" or 1 (pydantic's lax mode would take all of those).
Whole = Annotated[int, BeforeValidator(_not_a_bool)]
# the bounds inside: "minimum"/"maximum" in the schema; past 2**63-1 SQLite could not even look a version up
Version = Annotated[int, Field(ge=1, le=INT64_MAX), BeforeValidator(_not_a_bool)]
Flag = Annotated[bool, Strict()]
# The bounds of an operation's text arguments, shared with the `do` tool's input schema.
ActionText = Annotated[str, Field(min_length=1, max_length=64)]
NounText = Annotated[str, Field(max_length=64)]
IdText = Annotated[str, Field(max_length=100)]
TimeText = Annotated[str, Field(max_length=128)]
ActorText = Annotated[str, Field(max_length=80)]
KeyText = Annotated[str, Field(min_length=1, max_length=200)]
ReasonText = Annotated[str, Field(max_length=2000), AfterValidator(no_nul)]


class Operation(BaseModel):
    """One write. `action` is create, update, delete, rollback, revert or a verb of the noun."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: ActionText
    type: NounText | None = None
    id: IdText | None = None
    data: dict[str, Any] | None = None
    ifVersion: Version | None = None
    asOf: TimeText | None = None
    toVersion: Version | None = None
    actor: ActorText | None = None
    since: TimeText | None = None
    until: TimeText | None = None
    force: Flag = False
    idempotencyKey: KeyText | None = None
    reason: ReasonText | None = None
    dryRun: Flag = False


OPERATION_KEYS = tuple(Operation.model_fields)


def parse_operation(raw: Operation | dict[str, Any], where: str = "") -> Operation:
    if isinstance(raw, Operation):
        return raw
    if not isinstance(raw, dict):
        raise ValidationFailed(
            f"{where}an operation must be an object, got {shown(raw)}",
            hint=f"Keys: {', '.join(OPERATION_KEYS)}.",
        )
    try:
        return Operation.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown key '{key}'")
            elif key == "action" and err["type"] == "missing":
                problems.append("'action' is missing: pass action (with type, id, data ...), or operations for a batch")
            else:
                problems.append(f"'{key}': {err['msg'].removeprefix('Value error, ')}")
        raise ValidationFailed(where + "; ".join(problems), hint=f"Valid keys: {', '.join(OPERATION_KEYS)}.") from None


def check_actor(actor: str) -> str:
    if not isinstance(actor, str) or not ACTOR.fullmatch(actor):
        raise InvalidActor(
            f"invalid actor {actor!r}: actors match {ACTOR.pattern}",
            hint="Use agent_<name>, user_<name> or system_<name> with letters, digits, '_' or '-'.",
        )
    return actor
