"""The per-tenant event store: an immutable log, its materialized state, and time travel."""

from .hooks import AfterContext, BeforeContext, HookRejected, Hooks
from .operations import Operation
from .service import Store

__all__ = ["AfterContext", "BeforeContext", "HookRejected", "Hooks", "Operation", "Store"]
