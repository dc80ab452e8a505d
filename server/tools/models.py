"""Structured outputs of the tools (their output schemas) and the text agents read about them."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class FetchOutput(BaseModel):
    """An entity (with `$` meta fields), an event, or schema information."""

    model_config = ConfigDict(extra="allow")


class SearchOutput(BaseModel):
    model_config = ConfigDict(extra="allow")

    results: list[dict[str, Any]] = Field(description="Entities (or events for type Event), one page.")
    total: int = Field(description="How many match (counted up to 10,000 unless kept exactly; see totalIsLowerBound).")
    hasMore: bool = Field(description="True when another page follows: pass `cursor` back to get it.")
    cursor: str | None = Field(description="Opaque cursor for the next page, or null on the last page.")
    totalIsLowerBound: bool | None = Field(
        default=None, description="True when more than 10,000 match and total is only that lower bound."
    )


class DoOutput(BaseModel):
    model_config = ConfigDict(extra="allow")

    entity: dict[str, Any] | None = Field(default=None, description="The entity after the write (null for a revert).")
    events: list[dict[str, Any]] | None = Field(default=None, description="The events appended (none for a no-op).")
    results: list[dict[str, Any]] | None = Field(default=None, description="For a batch: one result per operation.")
    unchanged: Any = Field(
        default=None, description="update: true when nothing changed (no event); revert: the $ids already as they were."
    )
    replayed: bool | None = Field(default=None, description="True when an idempotencyKey replayed the first result.")
    dryRun: bool | None = Field(default=None, description="True for a preview: nothing was written.")
    reverted: list[dict[str, Any]] | None = Field(default=None, description="revert: each entity as it was left.")
    conflicts: list[dict[str, Any]] | None = Field(
        default=None, description="revert: entities left alone (changed after the window; force reverts them)."
    )
    revertOf: dict[str, Any] | None = Field(default=None, description="revert: the actor and window reverted.")


INSTRUCTIONS = """\
headlessly is a typed business database (CRM, billing, projects, support, ...) where every write is an
event in an immutable log.
- Nouns are entity types (Contact, Deal, Organization, ...): fetch {"type": "Schema"} lists them, with
  their fields, enums, relationships and verbs. Entities carry $id, $type, $version and who/when meta.
- Write with `do`: create, update (merge; null removes a field), delete, or a noun's verb such as
  {"action": "qualify", "type": "Contact", "id": "contact_..."}. Pass ifVersion to avoid lost updates,
  reason to say why, dryRun to preview. {"operations": [...]} is one atomic batch ("$ref:N" = entity of op N).
- Every change is an event (search {"type": "Event", "filter": {"target": id}} is the history). Read the
  past with asOf (a time) on fetch and search, or version (a number) on fetch.
- fetch {"type": "Schema", "id": "Contact"} describes one noun (fields, enums, relationships, and what each
  verb sets); without an id it describes every noun, which is large.
- Undo with do rollback {"type", "id", "asOf" | "toVersion"}, or revert everything one actor did since a
  time with do revert {"actor", "since"}. Nothing is ever erased: undo appends new events.
- Errors come back as JSON {"error", "message", "hint"}: read the hint and retry.
"""
