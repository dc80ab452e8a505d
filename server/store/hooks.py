"""BEFORE and AFTER hooks (CONTRACT §10), registered by `Noun.action` or a glob pattern."""

from __future__ import annotations

import fnmatch
import importlib
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .operations import CRUD_ACTIONS

if TYPE_CHECKING:
    from ..schema import SchemaSet

log = logging.getLogger(__name__)


class HookRejected(Exception):
    """Raise from a BEFORE hook to refuse a write; the agent sees the message."""


@dataclass
class BeforeContext:
    """What a BEFORE hook sees. Change `data` in place, or return a new dict to replace it."""

    noun: str
    action: str
    id: str | None
    actor: str
    data: dict[str, Any]
    current: dict[str, Any] | None
    reason: str | None
    # find(type, filter=None, query=None, sort=None, limit=None, include_deleted=False): a search of the
    # tenant as this write sees it (what earlier operations of the same batch wrote included), as `search`.
    find: Callable[..., dict[str, Any]]
    dry_run: bool = False  # a preview (dryRun): nothing will be written, whatever the hook says


@dataclass
class AfterContext:
    """What an AFTER hook sees: the committed event and entity, and `do` to write in reaction.

    Writes made through `do` are recorded with `causedBy` set to this event's id."""

    event: dict[str, Any]
    entity: dict[str, Any] | None
    tenant: str
    actor: str
    do: Callable[[dict[str, Any]], dict[str, Any]]


BeforeHook = Callable[[BeforeContext], dict[str, Any] | None]
AfterHook = Callable[[AfterContext], None]


def _key(noun: str, action: str) -> str:
    return f"{noun}.{action}"


@dataclass
class Hooks:
    """The registry. Patterns match `Noun.action` or `Noun.PastTense`: `Deal.win`, `Deal.Won`, `Deal.*`, `*`."""

    before_hooks: list[tuple[str, BeforeHook]] = field(default_factory=list)
    after_hooks: list[tuple[str, AfterHook]] = field(default_factory=list)

    def before(self, pattern: str) -> Callable[[BeforeHook], BeforeHook]:
        def register(fn: BeforeHook) -> BeforeHook:
            self.before_hooks.append((pattern, fn))
            return fn

        return register

    def after(self, pattern: str) -> Callable[[AfterHook], AfterHook]:
        def register(fn: AfterHook) -> AfterHook:
            self.after_hooks.append((pattern, fn))
            return fn

        return register

    def __bool__(self) -> bool:
        return bool(self.before_hooks or self.after_hooks)

    def matching_before(self, noun: str, action: str, past: str) -> list[BeforeHook]:
        return [fn for pattern, fn in self.before_hooks if _matches(pattern, noun, action, past)]

    def matching_after(self, noun: str, action: str, past: str) -> list[AfterHook]:
        return [fn for pattern, fn in self.after_hooks if _matches(pattern, noun, action, past)]

    def unmatched(self, schemas: SchemaSet) -> list[str]:
        """Patterns that match no `Noun.action` or `Noun.PastTense` of `schemas`: hooks that could never
        run (a typo such as `Contcat.create`, or `contact.create`: names are case-sensitive)."""
        keys = [
            _key(noun.name, word)
            for noun in schemas.nouns.values()
            for word in (
                *CRUD_ACTIONS,
                "Created",
                "Updated",
                "Deleted",
                *noun.verbs,
                *(v.past for v in noun.verbs.values()),
            )
        ]
        patterns = dict.fromkeys(pattern for pattern, _ in (*self.before_hooks, *self.after_hooks))
        return [p for p in patterns if not any(fnmatch.fnmatchcase(key, p) for key in keys)]

    def load_module(self, name: str) -> None:
        """Import `name` and call its `register(hooks)`. A module that is not installed is also looked
        for in the working directory (after everything else, so it never shadows a library)."""
        if name.endswith(".py") or "/" in name or "\\" in name:
            module_name = Path(name).stem
            raise ImportError(
                f"--hooks takes a module name, not a file: {name!r} would be --hooks {module_name} (run from the "
                "folder that holds the file, or put that folder on PYTHONPATH)"
            )
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            here = os.getcwd()
            if exc.name != name.partition(".")[0] or here in sys.path:
                raise
            sys.path.append(here)
            module = importlib.import_module(name)
        register = getattr(module, "register", None)
        if not callable(register):
            raise ImportError(f"hooks module {name!r} has no register(hooks) function")
        register(self)


def _matches(pattern: str, noun: str, action: str, past: str) -> bool:
    return fnmatch.fnmatchcase(_key(noun, action), pattern) or fnmatch.fnmatchcase(_key(noun, past), pattern)


def hook_name(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def run_after(fn: AfterHook, ctx: AfterContext) -> None:
    try:
        fn(ctx)
    except (Exception, SystemExit, KeyboardInterrupt):  # (a hook's sys.exit() must not end the server)
        log.exception("AFTER hook %s failed on event %s; the write stands", hook_name(fn), ctx.event.get("id"))
