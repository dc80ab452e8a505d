"""The `headlessly` command: serve, token, events, verify, flush, restore, reindex, lake maintain."""

from . import audit, serve, tokens, upkeep  # noqa: F401 (each registers its commands on main)
from .common import main

__all__ = ["main"]
