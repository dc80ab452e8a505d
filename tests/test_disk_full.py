"""A full disk while the server writes: the write fails whole, with a storage_error that says so; reads go on;
once there is room again writes resume without a restart, and the log still verifies.

The writes run in a subprocess (tests/disk_full_child.py) under a lowered file size limit, the edge of the
world a full disk is: see that file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("disk_full_child.py")
CHILD_TIMEOUT = 60.0


def run_child(scenario: str, data_dir: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(CHILD), scenario, str(data_dir)],
        capture_output=True, text=True, timeout=CHILD_TIMEOUT, env=env,
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
