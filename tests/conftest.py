"""Shared fixtures: a real store on real SQLite files in tmp_path, with a controllable clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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
