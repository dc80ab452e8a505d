"""Settings shared by the command line and the server, from flags and the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

ENV_DATA_DIR = "HEADLESSLY_DATA_DIR"
ENV_TENANT = "HEADLESSLY_TENANT"
ENV_ACTOR = "HEADLESSLY_ACTOR"
ENV_DURABILITY = "HEADLESSLY_DURABILITY"
SESSIONS_PER_TOKEN = 100  # streamable-HTTP sessions one token may hold open (the SDK's table holds 10,000)
CALLS_PER_TENANT = 16  # tool calls of one tenant run at once over HTTP/SSE (of anyio's 40 worker threads)
SESSION_IDLE_SECONDS = 1800.0  # how long a session with no request in flight is kept (the SDK's default)
OPEN_DAY_FILES = 100  # files of today (one per flush round with events) that make `lake maintain` compact it


def private_dir(path: Path) -> list[Path]:
    """Make `path` and any missing parents readable by this user only (0700, less any umask): tenant data,
    tokens and the lake are not other local users' to read. A directory that exists keeps its mode. Returns
    the directories this call made, outermost first (not one another process made meanwhile)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    made = []
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            if not directory.is_dir():
                raise
            continue
        made.append(directory)
    return made


def default_data_dir() -> Path:
    return Path(os.environ.get(ENV_DATA_DIR) or "./.headlessly")


@dataclass
class Config:
    data_dir: Path = field(default_factory=default_data_dir)
    durability: str = "normal"
    schema_dirs: list[Path] = field(default_factory=list)
    hook_modules: list[str] = field(default_factory=list)
    tenant: str = "default"
    actor: str | None = None  # None: from the MCP client's name, else agent_anonymous
