"""Settings shared by the command line and the server, from flags and the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

ENV_DATA_DIR = "HEADLESSLY_DATA_DIR"
ENV_TENANT = "HEADLESSLY_TENANT"
ENV_ACTOR = "HEADLESSLY_ACTOR"
ENV_DURABILITY = "HEADLESSLY_DURABILITY"


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
