"""The store's public API: writes, reads and verification for any tenant, safe from many threads."""

from __future__ import annotations

import bisect
import copy
import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import HeadlesslyError, InvalidAsOf, InvalidType, LimitExceeded, ValidationFailed
from ..schema import Noun, SchemaSet, load_schemas
from ..schema.validation import Validators
from ..timeutil import parse_as_of
from . import cursors, queries
from .events import EVENT_ROW_COLUMNS, EventRow
from .hooks import AfterContext, Hooks, run_after
from .mutations import Env, Mutator
from .operations import MAX_BATCH, Operation, check_actor, parse_operation
from .patterns import refuse_slow_patterns
from .sqlite import connect, damage_said, migrate, time_limit
from .tenants import TenantPool, check_tenant
from .undefined import still_held
from .verify import verify_tenant
from .writer import Txn, Writer, read_head, write_inside_a_write

log = logging.getLogger(__name__)
MAX_HOOK_DEPTH = 8
MAX_HOOK_WRITES = 100  # writes AFTER hooks may make in reaction to one request, however they fan out
_NARROW_SEARCH = (
    "Narrow it: longer words in query (a word of one or two letters matches the start of very many words), "
    "a filter on an indexed field, a later asOf, or fewer $regex conditions."
)
_NARROW_EVENTS = "Narrow it: a target, an exact type or actor, or a timestamp or seq range."
_SCHEMA_QUERY = {"type": "Schema"}  # what a Schema search cursor is sealed to: the nouns are not tenant data


class _Budget:
    """The writes AFTER hooks may still make in reaction to one outside request (from any thread)."""

    def __init__(self) -> None:
        self._left = MAX_HOOK_WRITES
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self._left <= 0:
                return False
            self._left -= 1
            return True


@dataclass(frozen=True)
class _HookChain:
    """Where a write stands in the chain of AFTER hooks' writes that one outside request set off: how deep
    (the request itself is 0) and the budget they all share, carried with the write, not by the thread."""

    depth: int
    budget: _Budget


class Store:
    """Every tenant under one data directory, validated against one set of nouns."""

    def __init__(
        self,
        data_dir: Path | str,
        schemas: SchemaSet | None = None,
        *,
        durability: str = "normal",
        hooks: Hooks | None = None,
        clock: Any = None,
        max_open_tenants: int = 64,
        max_readers: int = 4,
        follow_schemas: bool = True,
    ) -> None:
        """`follow_schemas=False` for a store that only reads or flushes tenants a server may have open:
        it never rebuilds lookup keys and full text built for other schemas (see reindex.py)."""
        if durability not in ("normal", "full"):
            raise ValueError(f"durability must be 'normal' or 'full', not {durability!r}")
        self.data_dir = Path(data_dir)
        self.schemas = schemas or load_schemas()
        self.hooks = hooks if hooks is not None else Hooks()
        self.env = Env(self.schemas, Validators(self.schemas.nouns), self.hooks)
        self.pool = TenantPool(
            self.data_dir, self.schemas, durability, clock, max_open_tenants, max_readers, follow_schemas=follow_schemas
        )
        self._dry_in_memory = threading.local()  # .tenant: this thread is dry-running a write to it in memory

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- writes -------------------------------------------------------------------------------

    def do(
        self, tenant: str, actor: str, request: dict[str, Any] | Operation, caused_by: str | None = None
    ) -> dict[str, Any]:
        """One operation, or `{"operations": [...], "dryRun"?}` as one atomic batch."""
        return self._do(tenant, actor, request, caused_by, None)

    def _do(
        self, tenant: str, actor: str, request: dict[str, Any] | Operation, caused_by: str | None,
        chain: _HookChain | None,
    ) -> dict[str, Any]:  # fmt: skip
        check_tenant(tenant)
        check_actor(actor)
        if isinstance(request, dict) and "operations" in request:
            extra = set(request) - {"operations", "dryRun"}
            if extra:
                raise ValidationFailed(
                    f"a batch takes only 'operations' and 'dryRun', not {sorted(extra)}",
                    hint="Put the other keys inside each operation.",
                )
            raw_ops = request["operations"]
            if not isinstance(raw_ops, list) or not raw_ops:
                raise ValidationFailed(
                    "'operations' must be a non-empty list of operations",
                    hint='e.g. {"operations": [{"action": "create", "type": "Contact", "data": {"name": "Ada"}}]}.',
                )
            if len(raw_ops) > MAX_BATCH:
                raise LimitExceeded(
                    f"a batch holds at most {MAX_BATCH} operations, got {len(raw_ops)}",
                    hint="Split it into several batches.",
                )
            dry_run = request.get("dryRun", False)
            if not isinstance(dry_run, bool):
                raise ValidationFailed("'dryRun' must be true or false", hint='Pass "dryRun": true or leave it out.')
            ops = [parse_operation(op, f"operations[{i}]: ") for i, op in enumerate(raw_ops)]
            if any(op.dryRun for op in ops):
                raise ValidationFailed(
                    "dryRun applies to a whole batch: set it beside 'operations', not inside one",
                    hint='e.g. {"operations": [...], "dryRun": true}.',
                )
            results = self._write(tenant, actor, ops, True, dry_run, caused_by, chain)
            out: dict[str, Any] = {"results": results}
            if dry_run:
                out["dryRun"] = True
            return out
        op = parse_operation(request)  # type: ignore[arg-type]
        (result,) = self._write(tenant, actor, [op], False, op.dryRun, caused_by, chain)
        if op.dryRun:
            result["dryRun"] = True
        return result

    def _write(
        self, tenant: str, actor: str, ops: list[Operation], batch: bool, dry_run: bool, caused_by: str | None,
        chain: _HookChain | None,
    ) -> list[dict[str, Any]]:  # fmt: skip
        def write(txn: Txn) -> list[dict[str, Any]]:
            return Mutator(txn, self.env, actor, caused_by, dry_run).run(ops, batch)

        if getattr(self._dry_in_memory, "tenant", None) == tenant:  # (its own writer's check, for the one below)
            raise write_inside_a_write()
        if dry_run and not self.pool.ever_opened(tenant):  # as a read: against an empty tenant, making no file
            outer, self._dry_in_memory.tenant = getattr(self._dry_in_memory, "tenant", None), tenant
            try:
                with self._empty() as conn:
                    return Writer(conn, self.pool.clock).run(write, dry_run=True)
            finally:
                self._dry_in_memory.tenant = outer  # (a hook's dry run of another tenant, inside ours)
        with self.pool.lease(tenant) as t:
            results = t.writer.run(write, dry_run=dry_run)
        if not dry_run and self.hooks.after_hooks:
            chain = chain or _HookChain(0, _Budget())  # a request from outside: the whole budget, for all its ops
            for op, result in zip(ops, results, strict=True):
                if not result.get("replayed"):
                    self._after(tenant, actor, op, result, chain)
        return results

    def _after(self, tenant: str, actor: str, op: Operation, result: dict[str, Any], chain: _HookChain) -> None:
        # The state each event left its entity in: a revert's are under "reverted", one per event.
        states = {s["$id"]: s for s in [result.get("entity"), *result.get("reverted", [])] if s}
        for event in result.get("events", []):
            noun, _, past = event["type"].partition(".")
            hooks = self.hooks.matching_after(noun, op.action, past)
            if not hooks:
                continue
            entity = states.get(event["target"])

            def do(request: dict[str, Any], _event: str = event["id"]) -> dict[str, Any]:
                if chain.depth + 1 > MAX_HOOK_DEPTH:
                    raise LimitExceeded(
                        f"AFTER hooks nest deeper than {MAX_HOOK_DEPTH} writes; stopping here",
                        hint="A hook's write triggers hooks again: make the chain end (check ctx.event before writing).",
                    )
                if not chain.budget.take():
                    raise LimitExceeded(
                        f"AFTER hooks already wrote {MAX_HOOK_WRITES} times in reaction to one request; stopping here",
                        hint="Hooks fan out (each write triggers hooks again): write less per event, or in one batch.",
                    )
                return self._do(tenant, actor, request, _event, _HookChain(chain.depth + 1, chain.budget))

            for fn in hooks:  # copies: what a hook does to them must not change what the caller is told
                ctx = AfterContext(
                    event=copy.deepcopy(event), entity=copy.deepcopy(entity), tenant=tenant, actor=actor, do=do
                )
                run_after(fn, ctx)

    # ---- reads --------------------------------------------------------------------------------

    def noun(self, name: Any, tenant: str | None = None) -> Noun:
        """The noun `name`; refused as unknown, saying what `tenant` still holds of it (a noun removed from the schemas)."""
        if not isinstance(name, str) or name not in self.schemas:
            valid = ", ".join([*self.schemas.names(), "Event", "Schema"])
            held = self._still_held(tenant, name) if tenant is not None and isinstance(name, str) else ""
            raise InvalidType(
                f"unknown type {name!r}{held}; valid types: {valid}",
                hint='fetch {"type": "Schema"} describes every noun.',
            )
        return self.schemas[name]

    def _still_held(self, tenant: str, name: str) -> str:
        """`undefined.still_held` of a tenant that exists; '' when it does not, or cannot be read now (the
        refusal of the type stands either way)."""
        try:
            if not self.pool.exists(tenant):
                return ""
            with self._reading(tenant) as conn:
                return still_held(conn, name)
        except (HeadlesslyError, sqlite3.Error):
            return ""

    def get(self, tenant: str, type: str, id: str, as_of: str | None = None, version: int | None = None,
            include: list[str] | None = None, fields: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
        noun = self.noun(type, tenant)
        with self._reading(tenant, _instant(as_of)) as conn:
            return queries.get_entity(conn, self.schemas, noun, id, as_of, version, include, fields)

    def find(self, tenant: str, type: str, filter: Any = None, query: str | None = None, sort: str | None = None,
             limit: int | None = None, cursor: str | None = None, as_of: str | None = None,
             include_deleted: bool = False) -> dict[str, Any]:  # fmt: skip
        noun = self.noun(type, tenant)
        reading = self._reading(tenant, _instant(as_of))
        with reading as conn, refuse_slow_patterns(), time_limit(conn, "the search", _NARROW_SEARCH):
            return queries.find(conn, self.schemas, noun, filter, query, sort, limit, cursor, as_of, include_deleted)

    def events(self, tenant: str, filter: Any = None, sort: str | None = None, limit: int | None = None,
               cursor: str | None = None) -> dict[str, Any]:  # fmt: skip
        reading = self._reading(tenant, _latest_timestamp(filter))
        with reading as conn, refuse_slow_patterns(), time_limit(conn, "the search", _NARROW_EVENTS):
            return queries.find_events(conn, filter, sort, limit, cursor)

    def event(self, tenant: str, id: str) -> dict[str, Any]:
        with self._reading(tenant) as conn:
            return queries.get_event(conn, id)

    @contextmanager
    def _reading(self, tenant: str, instant: int | None = None) -> Iterator[sqlite3.Connection]:
        """What a read of `tenant` reads, in one read transaction: its database or, for a tenant never opened
        (no file, no lock file), an empty one in memory, so that the read checks its arguments and answers as
        for an empty tenant without making the tenant's file (a write makes it). A tenant with a lock file but
        no database (one being restored, say) is opened as before: the lock decides. A read of a past `instant`
        (µs) first waits for a write in flight that may still add events at it, so it reads the same ever after."""
        if self.pool.ever_opened(tenant):
            with damage_said(tenant), self.pool.lease(tenant) as t:
                if instant is not None:
                    t.writer.settle(instant)
                with t.snapshot() as conn:
                    yield conn
            return
        with self._empty() as conn:
            yield conn

    @contextmanager
    def _empty(self) -> Iterator[sqlite3.Connection]:
        """An empty tenant database in memory, for a tenant never opened."""
        with closing(connect(Path(":memory:"))) as conn:
            migrate(conn)
            yield conn

    def schema(self, name: str | None = None) -> dict[str, Any]:
        if name is None:
            return {"nouns": {n: self.schemas[n].to_dict() for n in self.schemas.names()}}
        if name not in self.schemas:
            valid = ", ".join(self.schemas.names())
            raise InvalidType(
                f"no noun {name!r} to describe; the nouns are: {valid}",
                hint='fetch {"type": "Schema"} describes them all (Event and Schema are built in, not nouns).',
            )
        return self.schemas[name].to_dict()

    def schemas_page(self, limit: int | None = None, cursor: str | None = None) -> dict[str, Any]:
        """`search {"type": "Schema"}`: every noun's definition, by name, page by page."""
        size = queries.check_limit(limit)
        names = self.schemas.names()  # sorted: a page goes on after the last name, whatever was removed since
        start = 0
        if cursor is not None:
            after = cursors.decode(cursor, _SCHEMA_QUERY, key_count=1, max_seq=0).keys[0]
            start = bisect.bisect_right(names, after)
        page = names[start : start + size]
        more = start + size < len(names)
        return {
            "results": [self.schemas[n].to_dict() for n in page],
            "total": len(names),
            "hasMore": more,
            "cursor": cursors.encode(cursors.Cursor([page[-1]], 0), _SCHEMA_QUERY) if more else None,
        }

    def verify(self, tenant: str, progress: Any = None) -> dict[str, Any]:
        with damage_said(tenant), self.pool.lease(tenant, create=False) as t, t.snapshot() as conn:
            report = verify_tenant(conn, progress, self.schemas)
        report["tenant"] = tenant
        return report

    def tenants(self) -> list[str]:
        return self.pool.names()

    # ---- the raw log (for the lakehouse) ------------------------------------------------------

    def log(self, tenant: str, after_seq: int = 0, limit: int = 10_000) -> list[EventRow]:
        """Up to `limit` stored events after `after_seq`, in seq order, exactly as recorded."""
        with damage_said(tenant), self.pool.lease(tenant, create=False) as t, t.reader() as conn:
            rows = conn.execute(
                f"SELECT {EVENT_ROW_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
            ).fetchall()
        return [EventRow(*r) for r in rows]

    def head(self, tenant: str) -> tuple[int, str]:
        """The last seq of the tenant's log and its hash."""
        with damage_said(tenant), self.pool.lease(tenant, create=False) as t, t.reader() as conn:
            head = read_head(conn)
        return head.seq, head.hash


def _instant(as_of: str | None) -> int | None:
    """The instant an asOf reads (µs), or None: none given, or one the read refuses."""
    if as_of is None:
        return None
    try:
        return parse_as_of(as_of)
    except InvalidAsOf:
        return None


def _latest_timestamp(filter: Any) -> int | None:
    """The latest time an events filter names in a `timestamp` condition (µs), or None: the instant a read
    of the log up to a time must wait for (see Writer.settle)."""
    found: list[int] = []
    stack: list[tuple[Any, bool]] = [(filter, False)]  # (not recursive: the filter's depth is checked later)
    while stack:
        node, under = stack.pop()
        if isinstance(node, dict):
            stack.extend((value, under or key == "timestamp") for key, value in node.items())
        elif isinstance(node, list):
            stack.extend((value, under) for value in node)
        elif under and isinstance(node, str):
            with suppress(InvalidAsOf):
                found.append(parse_as_of(node))
    return max(found, default=None)
