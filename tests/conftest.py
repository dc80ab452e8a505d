"""Shared fixtures: a real store on real SQLite files in tmp_path, with a controllable clock."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from server.schema import SchemaSet, load_schemas
from server.store import Store


class FakeClock:
    """Microseconds that only move when told to (the edge of the world, not our core)."""

    def __init__(self, start_us: int = 1_768_471_200_000_000) -> None:  # 2026-01-15T10:00:00Z
        self.now = start_us

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1_000_000)


@pytest.fixture(scope="session")
def schemas() -> SchemaSet:
    return load_schemas()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, schemas: SchemaSet, clock: FakeClock) -> Iterator[Store]:
    with Store(tmp_path / "data", schemas, clock=clock) as s:
        yield s


@pytest.fixture
def no_pyiceberg_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pyiceberg reads $PYICEBERG_HOME, ~ and the working directory for .pyiceberg.yaml, plus PYICEBERG_*
    variables, and caches what it found when pyiceberg.catalog is imported: none of it may reach lake tests."""
    import pyiceberg.catalog
    from pyiceberg.utils.config import Config

    from server.lake import catalog as cat

    for name in list(os.environ):
        if name.upper().startswith("PYICEBERG_"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)
    monkeypatch.setattr(pyiceberg.catalog, "_ENV_CONFIG", Config())
    assert Config().get_catalog_config(cat.CATALOG) is None


# ---- entity helpers shared by the read and search tests --------------------------------------
# Plain functions: `from conftest import TENANT, AGENT, create, write`.

TENANT = "acme"
AGENT = "agent_mR4nVkTw"


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def us(text: str) -> int:
    """Microseconds since the epoch of an RFC 3339 time (computed here, independently of the store)."""
    return (datetime.fromisoformat(text.replace("Z", "+00:00")) - EPOCH) // timedelta(microseconds=1)


def advance_to(clock: FakeClock, text: str) -> None:
    """Set the fake clock to an RFC 3339 time."""
    clock.now = us(text)


def create(store: Store, noun: str, actor: str = AGENT, **data: Any) -> dict[str, Any]:
    """Create one `noun` in TENANT with `data` as its fields; returns the new entity."""
    return store.do(TENANT, actor, {"action": "create", "type": noun, "data": data})["entity"]


def write(store: Store, action: str, noun: str, entity_id: str, actor: str = AGENT, **data: Any) -> dict[str, Any]:
    """Apply `action` (update, delete, a verb) to one entity in TENANT; returns the whole result (entity, events)."""
    op: dict[str, Any] = {"action": action, "type": noun, "id": entity_id}
    if data:
        op["data"] = data
    return store.do(TENANT, actor, op)


_HOLD_OPEN = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
conn.execute("SELECT count(*) FROM events").fetchone()
print("open", flush=True)
sys.stdin.read()
"""


@contextmanager
def held_open(path: Path) -> Iterator[None]:
    """Another process (like a running server) has the tenant file `path` open inside the block."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_OPEN, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        yield
    finally:
        holder.communicate(input="", timeout=30)


def damage_the_actor_index(path: Path) -> None:
    """Zero the root page of the events' actor index, as a failing disk or a stray write would: the file is
    then damaged where SQLite's own check and every read or write through that index find it."""
    with closing(sqlite3.connect(path)) as conn:
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'events_by_actor'").fetchone()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with open(path, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(bytes(page_size))


def widget_folder(tmp_path: Path, fields: str) -> Path:
    """A schema folder with one noun, Widget: a required name and `fields` (compact notation, as JSON members)."""
    folder = tmp_path / f"schemas-{abs(hash(fields))}"
    folder.mkdir(exist_ok=True)
    (folder / "widgets.json").write_text(f'{{"$domain": "Widgets", "Widget": {{"name": "string!", {fields}}}}}')
    return folder


def widgets(tmp_path: Path, fields: str) -> SchemaSet:
    return load_schemas([widget_folder(tmp_path, fields)])
