"""The MCPServer: `fetch`, `search` and `do`, the resources, and the server instructions.

No `from __future__ import annotations` here: the SDK reads these annotations at run time,
and some of them (the noun enum) are built from the loaded schemas."""

import difflib
import json
import logging
from collections.abc import Callable
from functools import partial
from typing import Annotated, Any, TypeVar

import anyio.to_thread
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, CallToolResult, EmptyResult, SetLevelRequestParams, TextContent, ToolAnnotations
from pydantic import AnyHttpUrl, Field, ValidationError

from ..auth.identity import Caller, LocalIdentity, TokenVerifier, resolve_caller
from ..auth.tokens import TokenStore
from ..config import CALLS_PER_TENANT
from ..errors import Forbidden, HeadlesslyError, InvalidId, InvalidType, NotFound, ValidationFailed, bounded
from ..stdio import AnsweringBadLines
from ..store import Store
from ..store.events import dumps
from ..store.filters import LOGICAL, OPERATORS
from ..store.operations import (
    ActionText,
    ActorText,
    Flag,
    IdText,
    KeyText,
    ReasonText,
    TimeText,
    Version,
    Whole,
)
from .calls import TenantCalls
from .models import INSTRUCTIONS, DoOutput, FetchOutput, SearchOutput

log = logging.getLogger(__name__)
T = TypeVar("T")
READABLE = "headlessly://schema, headlessly://schema/{noun} and headlessly://{noun}/{id}"


SHOWN = 10  # unknown arguments, or argument problems, a refusal names one by one


def error_text(err: HeadlesslyError) -> str:
    return json.dumps(err.to_dict(), ensure_ascii=False)


class HeadlesslyMCP(MCPServer):
    """MCPServer whose argument-validation failures read like every other headlessly error."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._known_arguments: dict[str, frozenset[str]] = {}
        self.calls_in_flight = 0  # tool calls running in worker threads (on the event loop's thread only)

    async def run_stdio_async(self) -> None:
        """The SDK's stdio transport, with each line it cannot read answered (see server/stdio.py)."""
        async with stdio_server() as (read_stream, write_stream):
            low = self._lowlevel_server
            await low.run(
                AnsweringBadLines(read_stream, write_stream), write_stream, low.create_initialization_options()
            )

    async def read_resource(self, uri: Any, context: Any = None) -> Any:
        """As the SDK's, but an address no resource or template matches is refused in our error JSON too,
        naming the addresses that can be read (the SDK says only "Unknown resource")."""
        try:
            return await super().read_resource(uri, context)
        except ResourceNotFoundError as exc:
            if str(exc).startswith("{"):  # ours: already the error JSON
                raise
            refusal = NotFound(
                f"Unknown resource: {uri} (nothing is at that address; the addresses that can be read are {READABLE})",
                hint="An entity is read with its $id, as headlessly://Contact/contact_..., an event as "
                "headlessly://Event/evt_...; an address takes no query (?...) and no further segments.",
            )
            raise ResourceNotFoundError(error_text(refusal)) from None

    async def get_prompt(self, name: str, arguments: dict[str, Any] | None = None, context: Any = None) -> Any:
        """The server has no prompts: a request for one is invalid params (the SDK's answer was an internal
        error, or error code 0, with a traceback in the log)."""
        raise MCPError(
            INVALID_PARAMS, bounded(f"Unknown prompt: {name} (this server offers no prompts: prompts/list is empty)")
        )

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        known = self._known_arguments.get(name)
        if known is None:
            tool = self._tool_manager.get_tool(name)
            if tool is None:
                tools = ", ".join(sorted(t.name for t in self._tool_manager.list_tools()))
                raise ToolError(
                    error_text(
                        NotFound(
                            f"unknown tool {name!r}; the tools are: {tools}",
                            hint=f"Call one of: {tools} (tools/list describes them).",
                        )
                    )
                )
            known = self._known_arguments[name] = frozenset((tool.parameters.get("properties") or {}).keys())
        unknown = sorted(set(arguments or {}) - known) if known is not None else []
        if unknown:
            shown = unknown[:SHOWN]
            more = f" and {len(unknown) - SHOWN:,} more" if len(unknown) > SHOWN else ""
            close = {k: difflib.get_close_matches(k, sorted(known or ()), n=2, cutoff=0.6) for k in shown}
            meant = "; ".join(f"for {k!r} did you mean {' or '.join(c)}?" for k, c in close.items() if c)
            hint = (
                "The tenant and the writing actor come from the connection, never from arguments."
                if "tenant" in unknown
                else f"Remove {', '.join(shown)}{more}" + (f" ({meant})" if meant else "") + "."
            )
            raise ToolError(
                error_text(
                    ValidationFailed(
                        f"{name}: unknown argument(s) {', '.join(repr(k) for k in shown)}{more}; "
                        f"valid arguments: {', '.join(sorted(known or ()))}",
                        hint=hint,
                    )
                )
            )
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            cause = exc.__cause__
            if not isinstance(cause, ValidationError):
                raise
            problems = []
            errors = cause.errors(include_url=False)
            for err in errors[:SHOWN]:
                where = ".".join(str(p) for p in err["loc"]) or "(arguments)"
                problems.append(f"'{where}': {err['msg'].removeprefix('Value error, ')}")
            if len(errors) > SHOWN:
                problems.append(f"and {len(errors) - SHOWN:,} more")
            keys = sorted(known or ())
            raise ToolError(
                error_text(
                    ValidationFailed(
                        f"{name}: invalid arguments: " + "; ".join(problems),
                        hint=f"{name} takes: {', '.join(keys)}. See the tool's input schema for each one's type.",
                    )
                )
            ) from None


def build_server(
    store: Store,
    local: LocalIdentity | None,
    tokens: TokenStore | None = None,
    base_url: str | None = None,
    inline: bool = False,
    calls_per_tenant: int = CALLS_PER_TENANT,
) -> HeadlesslyMCP:
    """The server for one data directory. `local` is the identity of stdio / --no-auth HTTP;
    with `tokens`, every request must bear a token and the token decides the caller.

    `inline` runs the store's work on the event loop instead of a worker thread: for stdio, where
    one client's requests come one after another, it saves a thread hand-off per call. Not when the
    store has hooks: they are the operator's code, and a slow one would hold up the whole session.
    Over HTTP the worker threads let concurrent requests overlap (and writers share a commit); at most
    `calls_per_tenant` of one tenant's run at once, so that no tenant takes them all."""
    nouns = store.schemas.names()
    auth_kwargs: dict[str, Any] = {}
    if tokens is not None:
        auth_kwargs = {
            "token_verifier": TokenVerifier(tokens),
            "auth": AuthSettings(issuer_url=AnyHttpUrl(base_url or "http://127.0.0.1"), resource_server_url=None),
        }
    mcp = HeadlesslyMCP(
        name="headlessly",
        title="headlessly: a typed business database with an immutable event log",
        instructions=INSTRUCTIONS,
        version=_version(),
        # No change notifications are sent (writes may come from other processes on the data dir, and the
        # SDK's bus is process-wide, not per tenant): leaving subscriptions/listen unserved makes the
        # capabilities say so (resources.subscribe and every listChanged false) instead of promising them.
        subscriptions=False,
        **auth_kwargs,
    )

    calls = TenantCalls(calls_per_tenant)

    async def run(ctx: Context | None, fn: Callable[[Caller], T], write: bool = False) -> T:
        """Resolve the caller, refuse writes on read-only connections, run `fn` off the event loop.

        Raises HeadlesslyError for anything the agent can fix."""
        caller = resolve_caller(local, _client_name(ctx))
        if caller is None:  # unreachable behind the auth middleware; kept as a refusal, not a default
            raise Forbidden("no credentials on this connection", hint="Send a bearer token.")
        if write and caller.read_only:
            raise Forbidden(
                f"this connection is read-only (token of {caller.actor} on tenant {caller.tenant})",
                hint="Use a token created without --read-only to write.",
            )
        if inline and not store.hooks:
            return fn(caller)
        mcp.calls_in_flight += 1  # (a stopping server answers these before it ends its streams: listen.py)
        try:
            async with calls.slot(caller.tenant):
                return await anyio.to_thread.run_sync(partial(fn, caller))
        finally:
            mcp.calls_in_flight -= 1

    async def respond(ctx: Context | None, fn: Callable[[Caller], dict[str, Any]], write: bool = False) -> Any:
        """The tool result: structured content plus its JSON text, or a tool error whose text is
        the CONTRACT error JSON. Nothing leaks a traceback."""
        try:
            out = await run(ctx, fn, write)
        except HeadlesslyError as err:
            return _error_result(err.to_dict())
        except Exception:
            log.exception("unexpected failure in a tool call")
            return _error_result({
                "error": "internal_error",
                "message": "the server failed unexpectedly; nothing was written if this was a write",
                "hint": "Retry; if it persists, report it with the server's log.",
            })  # fmt: skip
        return CallToolResult(content=[TextContent(type="text", text=dumps(out))], structured_content=out)

    all_types = [*nouns, "Event", "Schema"]
    TypeArg = Annotated[str, Field(
        description="What to read: a noun (entity type), 'Event' for the event log, or 'Schema' for the nouns' definitions.",
        json_schema_extra={"enum": all_types},
    )]  # fmt: skip
    NounArg = Annotated[str | None, Field(
        description="The noun (entity type) to write. Required for every action except revert.",
        json_schema_extra={"enum": [*nouns, None]},
    )]  # fmt: skip
    AsOf = Annotated[TimeText | None, Field(
        description="Read the past: an RFC 3339 time with offset ('2026-01-16T09:30:00Z') or a date ('2026-01-16' = start of day UTC).",
    )]  # fmt: skip

    @mcp.tool(
        title="Fetch an entity, an event or the schema",
        annotations=ToolAnnotations(
            read_only_hint=True, idempotent_hint=True, destructive_hint=False, open_world_hint=False
        ),
    )
    async def fetch(
        type: TypeArg,
        id: Annotated[
            str | None,
            Field(
                description="The entity's $id ('contact_fX9bL5nRd'), an event id ('evt_...'), or a noun name with type 'Schema'. Omit with 'Schema' to list every noun."
            ),
        ] = None,
        asOf: AsOf = None,
        version: Annotated[
            Version | None, Field(description="Return the state right after this $version (1 = as created).")
        ] = None,
        include: Annotated[
            list[str] | None,
            Field(
                description="Relationships to expand: forward ones ('organization') become the related entity, reverse ones ('deals') a list."
            ),
        ] = None,
        fields: Annotated[list[str] | None, Field(description="Only these fields (plus $id, $type, $version).")] = None,
        ctx: Context | None = None,
    ) -> FetchOutput:
        """Read one entity by type and $id (current, asOf a time, or at a version), one event by id, or the schema.

        Examples: {"type": "Contact", "id": "contact_fX9bL5nRd"}; {"type": "Contact", "id": "contact_fX9bL5nRd",
        "asOf": "2026-01-15T10:00:00Z"}; {"type": "Event", "id": "evt_tR8kJmNxPq"}; {"type": "Schema", "id": "Deal"}.
        A deleted entity is not_found; its message says when and by whom it was deleted."""

        def go(caller: Caller) -> dict[str, Any]:
            if type in ("Schema", "Event"):
                _refuse_unused(
                    type, {"asOf": asOf, "version": version, "include": include, "fields": fields},
                    "an event never changes and is returned whole" if type == "Event" else "the schema is returned whole",
                )  # fmt: skip
            if type == "Schema":
                return store.schema(id)
            if type == "Event":
                if id is None:
                    raise InvalidId(
                        "fetch needs an id: the id of the Event to read",
                        hint='Search {"type": "Event"} to list events.',
                    )
                return store.event(caller.tenant, id)
            if id is None:
                store.noun(type, caller.tenant)
                raise InvalidId(f"fetch needs an id: the $id of the {type} to read", hint=f"Search {type} to find ids.")
            return store.get(caller.tenant, type, id, as_of=asOf, version=version, include=include, fields=fields)

        return await respond(ctx, go)  # type: ignore[no-any-return]

    @mcp.tool(
        title="Search entities or the event log",
        annotations=ToolAnnotations(
            read_only_hint=True, idempotent_hint=True, destructive_hint=False, open_world_hint=False
        ),
    )
    async def search(
        type: TypeArg,
        filter: Annotated[
            dict[str, Any] | None,
            Field(
                description=(
                    "Conditions on fields (the noun's fields and $ meta fields such as $createdAt, $updatedBy). A bare value means $eq. "
                    f"Operators: {', '.join(OPERATORS + LOGICAL)}. Dates and datetimes compare as times; enum fields in their "
                    'declared order (on Deal, {"stage": {"$gte": "Proposal"}} is Proposal or a later stage). '
                    'Examples: {"stage": "Lead"}; {"value": {"$gte": 1000}, "stage": {"$in": ["Proposal", "Negotiation"]}}; '
                    '{"$or": [{"title": {"$regex": "^VP"}}, {"title": {"$exists": false}}]}. '
                    'An email matches as stored (its domain lowercased; for any case use {"$regex": "(?i)^bob@acme\\\\.com$"}). '
                    "For type Event the fields are type (the full 'Contact.Updated', or a glob like 'Deal.*' or '*.Qualified'), "
                    "target, actor, timestamp, version, seq, id, causedBy."
                )
            ),
        ] = None,
        query: Annotated[
            str | None,
            Field(
                description="Full-text search over the noun's text fields: every word must match (prefixes match too)."
            ),
        ] = None,
        sort: Annotated[
            str | None,
            Field(
                description="'field' ascending or '-field' descending, comma-separated ('-value,name'); an enum field sorts "
                "in its declared order. Default '-$updatedAt'; events default 'seq' ('-seq' for newest first)."
            ),
        ] = None,
        limit: Annotated[
            Whole | None,
            Field(
                description="Page size, 1 to 100 (default 25). A page of large entities ends sooner (hasMore, cursor) once it holds about 4 MB."
            ),
        ] = None,
        cursor: Annotated[
            str | None,
            Field(
                description="The cursor of the previous page, unchanged, to get the next page: resend it with the same type, "
                "filter, query, sort, asOf and includeDeleted (only limit may change)."
            ),
        ] = None,
        asOf: AsOf = None,
        includeDeleted: Annotated[
            Flag, Field(description="Also return deleted entities (they carry $deletedAt).")
        ] = False,
        ctx: Context | None = None,
    ) -> SearchOutput:
        """Find entities of a noun by filter, full-text query and sort, page by page; or query the event log with type 'Event'.

        Returns {"results", "total", "hasMore", "cursor"}. With asOf, searches every entity as it was at that time."""

        def go(caller: Caller) -> dict[str, Any]:
            if type == "Event":
                _refuse_unused(
                    type, {"query": query, "asOf": asOf, "includeDeleted": includeDeleted or None},
                    "the log is immutable and complete; filter events by type, target, actor, timestamp, version or seq",
                )  # fmt: skip
                return store.events(caller.tenant, filter, sort, limit, cursor)
            if type == "Schema":
                _refuse_unused(
                    type,
                    {"filter": filter, "query": query, "sort": sort, "asOf": asOf, "includeDeleted": includeDeleted or None},
                    "it lists every noun by name, page by page (limit, cursor); fetch Schema with an id for one noun",
                )  # fmt: skip
                return store.schemas_page(limit, cursor)
            return store.find(caller.tenant, type, filter, query, sort, limit, cursor, asOf, includeDeleted)

        return await respond(ctx, go)  # type: ignore[no-any-return]

    @mcp.tool(
        name="do",
        title="Write: create, update, delete, verbs, rollback, revert",
        annotations=ToolAnnotations(
            read_only_hint=False, idempotent_hint=False, destructive_hint=True, open_world_hint=False
        ),
    )
    async def do_(
        action: Annotated[
            ActionText | None,
            Field(
                description="create, update, delete, rollback, revert, or a verb of the noun (see fetch Schema), e.g. 'qualify'. Omit when passing operations."
            ),
        ] = None,
        type: NounArg = None,
        id: Annotated[
            IdText | None,
            Field(
                description="The entity's $id, for every action but create and revert. In a batch, '$ref:N' is the entity of operation N."
            ),
        ] = None,
        data: Annotated[
            dict[str, Any] | None,
            Field(
                description="Fields to set (create, update, verbs; rollback: over the state it restores). update merges; null removes a field. '$' fields cannot be set."
            ),
        ] = None,
        ifVersion: Annotated[
            Version | None,
            Field(
                description="Only write if the entity is at this $version, else version_conflict (optimistic concurrency).",
            ),
        ] = None,
        asOf: Annotated[
            TimeText | None, Field(description="rollback: the time to go back to (RFC 3339 or a date).")
        ] = None,
        toVersion: Annotated[Version | None, Field(description="rollback: the $version to go back to.")] = None,
        actor: Annotated[
            ActorText | None,
            Field(
                description="revert: the actor whose writes to undo (e.g. 'agent_mR4nVkTw'). It is never who writes: that is always the caller."
            ),
        ] = None,
        since: Annotated[
            TimeText | None, Field(description="revert: start of the window, inclusive (RFC 3339 or a date).")
        ] = None,
        until: Annotated[
            TimeText | None, Field(description="revert: end of the window, inclusive (default: now).")
        ] = None,
        force: Annotated[
            Flag,
            Field(
                description="revert: also revert entities changed after the window (by others, or by this actor after "
                "until); those later changes are undone too."
            ),
        ] = False,
        idempotencyKey: Annotated[
            KeyText | None,
            Field(
                description="Retry-safe key: the same key from the same caller returns the first result and writes nothing new."
            ),
        ] = None,
        reason: Annotated[ReasonText | None, Field(description="Why: stored on the event.")] = None,
        dryRun: Annotated[
            Flag,
            Field(
                description="Validate and show the result and events, write nothing (ids and times shown are provisional)."
            ),
        ] = False,
        operations: Annotated[
            list[dict[str, Any]] | None,
            Field(
                description="An atomic batch: a list of operations (objects with the keys above). All are written or none. "
                "Only dryRun may sit beside it: put reason and idempotencyKey in each operation."
            ),
        ] = None,
        ctx: Context | None = None,
    ) -> DoOutput:
        """Change data. Every write appends events (nothing is overwritten or erased) as the calling actor.

        Examples: {"action": "create", "type": "Contact", "data": {"name": "Alice", "email": "alice@startup.io"}};
        {"action": "qualify", "type": "Contact", "id": "contact_fX9bL5nRd", "reason": "replied"};
        {"action": "rollback", "type": "Contact", "id": "contact_fX9bL5nRd", "toVersion": 1};
        {"action": "revert", "actor": "agent_x", "since": "2026-01-16T00:00:00Z", "dryRun": true};
        {"operations": [{"action": "create", "type": "Organization", "data": {"name": "Acme"}},
        {"action": "create", "type": "Contact", "data": {"name": "Bob", "organization": "$ref:0"}}]}.
        Keys per action (others are refused): create type, data; update and verbs type, id, data, ifVersion; delete
        type, id, ifVersion; rollback type, id, asOf or toVersion, ifVersion, data; revert actor, since, until, force; all
        also reason, idempotencyKey, dryRun. A verb sets the field shown in fetch Schema (verbs.<verb>.sets, often
        none) and applies data in the same event."""
        single = {
            "action": action, "type": type, "id": id, "data": data, "ifVersion": ifVersion, "asOf": asOf,
            "toVersion": toVersion, "actor": actor, "since": since, "until": until, "force": force,
            "idempotencyKey": idempotencyKey, "reason": reason, "dryRun": dryRun,
        }  # fmt: skip
        request: dict[str, Any]
        if operations is not None:
            extra = [k for k, v in single.items() if v not in (None, False) and k != "dryRun"]
            if extra:
                return _error_result(ValidationFailed(  # type: ignore[return-value]
                    f"pass either operations or a single operation, not both (also got {', '.join(extra)})",
                    hint="Move those keys into the objects of operations.",
                ).to_dict())  # fmt: skip
            request = {"operations": operations, "dryRun": dryRun}
        else:
            request = {
                k: v for k, v in single.items() if v is not None and not (v is False and k in ("force", "dryRun"))
            }

        def go(caller: Caller) -> dict[str, Any]:
            return store.do(caller.tenant, caller.actor, request)

        return await respond(ctx, go, write=True)  # type: ignore[no-any-return]

    @mcp.resource(
        "headlessly://schema",
        name="schema",
        mime_type="application/json",
        description="Every noun: fields, enums, relationships, verbs.",
    )
    def schema_all() -> str:
        return json.dumps(store.schema())

    @mcp.resource(
        "headlessly://schema/{noun}",
        name="noun-schema",
        mime_type="application/json",
        description="One noun's definition.",
    )
    def schema_one(noun: str) -> str:
        try:
            return json.dumps(store.schema(noun))
        except HeadlesslyError as err:
            raise ResourceNotFoundError(error_text(err)) from None

    @mcp.resource(
        "headlessly://{noun}/{id}",
        name="entity",
        mime_type="application/json",
        description="The current state of one entity of the caller's tenant (headlessly://Event/{id}: one event).",
    )
    async def entity(noun: str, id: str, ctx: Context) -> str:
        if noun in ("schema", "Schema"):
            return schema_one(id)
        try:
            if noun == "Event":  # as fetch takes it, so that every type the errors list is readable
                state = await run(ctx, lambda caller: store.event(caller.tenant, id))
            else:
                state = await run(ctx, lambda caller: store.get(caller.tenant, noun, id))
        except (NotFound, InvalidType, InvalidId) as err:
            raise ResourceNotFoundError(error_text(err)) from None
        except HeadlesslyError as err:
            raise ResourceError(error_text(err)) from None
        return json.dumps(state)

    async def set_log_level(_ctx: Any, _params: SetLevelRequestParams) -> EmptyResult:
        """logging/setLevel (handshake era) sets which log messages *this client* is sent. The server sends
        clients none, so it is accepted and changes nothing: the operator's --log-level is not a client's
        to change (over HTTP any tenant could otherwise turn on DEBUG and put other tenants' data in the log)."""
        return EmptyResult()

    # MCPServer has no public hook for this (it is deprecated in the 2026-07-28 era); the low-level
    # server's add_request_handler is public API, reached through MCPServer's private attribute.
    mcp._lowlevel_server.add_request_handler("logging/setLevel", SetLevelRequestParams, set_log_level)

    for tool in mcp._tool_manager.list_tools():  # advertise what call_tool enforces: no unknown arguments
        tool.parameters["additionalProperties"] = False
    return mcp


def _refuse_unused(type: str, args: dict[str, Any], why: str) -> None:
    """A validation_error naming the arguments given that `type` has no use for, rather than ignoring them."""
    given = [name for name, value in args.items() if value is not None]
    if given:
        names = " and ".join(", ".join(given).rsplit(", ", 1))
        raise ValidationFailed(
            f"{names} {'does' if len(given) == 1 else 'do'} not apply to {type}: {why}",
            hint=f"Leave out {names}.",
        )


def _error_result(error: dict[str, Any]) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=json.dumps(error, ensure_ascii=False))], is_error=True)


def _client_name(ctx: Context | None) -> str | None:
    if ctx is None:
        return None
    try:
        params = ctx.session.client_params
    except (AttributeError, ValueError, LookupError):
        return None
    info = getattr(params, "client_info", None) if params is not None else None
    return getattr(info, "name", None)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("headlessly")
    except PackageNotFoundError:
        return "0"
