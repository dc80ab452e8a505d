"""A full disk while the server writes: the write fails whole, with a storage_error that says so; reads go on;
once there is room again writes resume without a restart, and the log still verifies.

The writes run in a subprocess (tests/disk_full_child.py) under a lowered file size limit, the edge of the
world a full disk is: see that file."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from e2e_helpers import error_of, payload, pipe_transport, stdio_process, verify
from mcp import Client

ROOT = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("disk_full_child.py")
CHILD_TIMEOUT = 60.0


def run_child(scenario: str, data_dir: Path) -> dict[str, Any]:
    """Run a scenario of disk_full_child.py, with no pyiceberg configuration (.pyiceberg.yaml in ~ or the working
    directory, PYICEBERG_* variables) to send its lakehouse elsewhere."""
    home = data_dir.parent / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PYICEBERG_")}
    env |= {"HOME": str(home), "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(CHILD), scenario, str(data_dir)],
        capture_output=True, text=True, timeout=CHILD_TIMEOUT, env=env, cwd=home,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    seen: dict[str, Any] = json.loads(done.stdout)
    return seen


def assert_no_room(outcome: dict[str, Any]) -> None:
    """The agent was told, as a storage_error, that the disk is full and nothing was written."""
    assert "error" in outcome, outcome
    error = outcome["error"]
    assert error["error"] == "storage_error", error
    assert "disk is full" in error["message"] and "nothing was written" in error["message"], error
    assert "damaged" not in error["message"], error
    assert "free disk space" in error["hint"] and "no restart" in error["hint"], error


def assert_verified(report: dict[str, Any]) -> None:
    assert report["ok"] is True and report["problems"] == [], report


def test_a_write_that_finds_the_disk_full_says_so_writes_nothing_and_the_next_one_goes_through(
    tmp_path: Path,
) -> None:
    seen = run_child("single_write", tmp_path / "data")
    assert_no_room(seen["failed"])
    assert seen["names_while_full"] == ["before"], "reads go on while the disk is full"
    assert seen["after_seq"] == 2, "the failed write used no seq"
    assert seen["seqs"] == [1, 2]
    assert_verified(seen["verify"])


def test_every_write_of_a_group_whose_commit_finds_the_disk_full_is_told_so_and_none_is_written(
    tmp_path: Path,
) -> None:
    seen = run_child("group_failing_at_commit", tmp_path / "data")
    for failed in seen["failed"]:
        assert_no_room(failed)
    assert seen["titles_after_failure"] == [None] * 4
    assert all("ok" in later for later in seen["later"]), seen["later"]
    assert seen["seqs"] == list(range(1, 9)), "the four creates, then the four later updates: no gap"
    assert_verified(seen["verify"])


def test_a_group_that_sqlite_undoes_whole_for_lack_of_room_tells_every_write_in_it_so(tmp_path: Path) -> None:
    seen = run_child("group_undone_whole_mid_statement", tmp_path / "data")
    for failed in seen["failed"]:
        assert_no_room(failed)
    assert seen["titles_after_failure"] == [None] * 3
    assert "ok" in seen["later"], seen["later"]
    assert_verified(seen["verify"])


def test_a_batch_and_a_keyed_write_that_find_the_disk_full_are_written_whole_when_sent_again_with_room(
    tmp_path: Path,
) -> None:
    seen = run_child("batch_and_idempotency_key", tmp_path / "data")
    for failed in seen["failed"]:
        assert_no_room(failed)
    assert seen["names_while_full"] == ["before"]
    batch, keyed = seen["later"]
    assert [r["entity"]["name"] for r in batch["ok"]["results"]] == ["b0", "b1", "b2"]
    assert "replayed" not in keyed["ok"], "the failed try kept no idempotency key"
    assert seen["replayed"]["replayed"] is True
    assert seen["replayed"]["entity"]["$id"] == keyed["ok"]["entity"]["$id"]
    assert seen["names"] == ["b0", "b1", "b2", "before", "keyed"]
    assert seen["seqs"] == [1, 2, 3, 4, 5]
    assert_verified(seen["verify"])


def test_a_new_tenant_whose_first_open_finds_the_disk_full_says_so_and_opens_whole_once_there_is_room(
    tmp_path: Path,
) -> None:
    for limit, seen in run_child("first_open", tmp_path / "data").items():
        error = seen["failed"]["error"]
        assert error["error"] == "storage_error" and "cannot be opened: the disk is full" in error["message"], limit
        assert "free disk space" in error["hint"], (limit, error)
        assert "ok" in seen["later"], (limit, seen["later"])
        assert seen["names"] == ["second"], limit
        assert_verified(seen["verify"])


def test_a_background_checkpoint_that_finds_the_disk_full_is_logged_and_a_later_one_catches_up(
    tmp_path: Path,
) -> None:
    seen = run_child("checkpoint", tmp_path / "data")
    assert seen["idle"] is True
    assert any("background checkpoint of tenant acme failed" in line for line in seen["warnings"]), seen["warnings"]
    assert seen["names_while_full"] == ["before"]
    assert seen["grown"] is True, "the later checkpoint copied the pages into the database file"
    assert seen["names"] == ["after", "before"]
    assert_verified(seen["verify"])


def test_a_lake_flush_that_finds_the_disk_full_is_logged_and_the_next_round_sends_every_event_once(
    tmp_path: Path,
) -> None:
    seen = run_child("lake_flush", tmp_path / "data")
    assert seen["failed"] == [True] * 4, "each round with no room failed, saying so in the log"
    assert sum("background flush failed; the next round retries" in line for line in seen["warnings"]) == 4
    assert seen["in_table"] == list(range(1, seen["head"] + 1)), "every event once: none lost, none twice"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_an_agent_over_stdio_is_told_the_disk_is_full_keeps_reading_and_writes_again_once_there_is_room(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    create = {"action": "create", "type": "Contact", "data": {"name": "x" * 3000}}
    with anyio.fail_after(60):
        args = ("--tenant", "acme", "--actor", "agent_disk", "--no-flush")
        async with stdio_process(data_dir, *args) as process, Client(pipe_transport(process)) as client:
            first = payload(await client.call_tool("do", create))["entity"]
            tenants = data_dir / "tenants"
            size = max(p.stat().st_size for p in tenants.iterdir())
            _, hard = resource.prlimit(process.pid, resource.RLIMIT_FSIZE)
            resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (size, hard))  # (CPython ignores SIGXFSZ)
            assert_no_room({"error": error_of(await client.call_tool("do", create))})
            read = payload(await client.call_tool("search", {"type": "Contact"}))
            assert [c["$id"] for c in read["results"]] == [first["$id"]]
            resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (hard, hard))
            second = payload(await client.call_tool("do", create))
            assert second["events"][0]["seq"] == 2
    done = verify(data_dir)
    assert done.returncode == 0, done.stdout + done.stderr
