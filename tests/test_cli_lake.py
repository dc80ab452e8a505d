"""The lakehouse from the shell: flush, events --from-lake, verify against the table, restore."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from server.schema import SchemaSet
from server.store import Store

HEADLESSLY = str(Path(sys.executable).parent / "headlessly")
TENANT = "acme"


def run(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real console script, isolated from any pyiceberg configuration of this machine (but `env`'s)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYICEBERG_", "HEADLESSLY_"))} | (env or {})
    env["HOME"] = str(tmp_path)
    return subprocess.run([HEADLESSLY, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def data_dir(tmp_path: Path, schemas: SchemaSet) -> Path:
    d = tmp_path / "data"
    with Store(d, schemas) as store:
        deal = store.do(TENANT, "agent_a", {"action": "create", "type": "Deal", "data": {"name": "Big", "value": 5}})
        store.do(TENANT, "agent_b", {"action": "win", "type": "Deal", "id": deal["entity"]["$id"], "reason": "signed"})
        store.do(TENANT, "agent_a", {"action": "create", "type": "Contact", "data": {"name": "Alice"}})
    return d


def test_flush_sends_every_event_once_and_a_second_flush_sends_nothing(tmp_path: Path, data_dir: Path) -> None:
    first = run(tmp_path, "flush", "--data-dir", str(data_dir))
    second = run(tmp_path, "flush", "--data-dir", str(data_dir))

    assert first.returncode == 0, first.stderr
    assert "flushed 3 events of 1 tenant(s)" in first.stdout
    assert "flushed 0 events of 1 tenant(s)" in second.stdout
    assert (data_dir / "lakehouse" / "catalog.db").exists()


@pytest.mark.usefixtures("no_pyiceberg_config")
def test_flush_sends_several_tenants_in_one_commit_and_reports_each(tmp_path: Path, data_dir: Path) -> None:
    from server.lake import catalog as cat

    with Store(data_dir) as store:
        store.do("beta", "agent_a", {"action": "create", "type": "Contact", "data": {"name": "Bob"}})
    flushed = run(tmp_path, "flush", "--data-dir", str(data_dir))
    lake = run(tmp_path, "events", "--tenant", "beta", "--json", "--from-lake", "--data-dir", str(data_dir))

    assert flushed.returncode == 0, flushed.stderr
    assert "flushed 4 events of 2 tenant(s)" in flushed.stdout
    assert "  acme: 3 events" in flushed.stderr and "  beta: 1 events" in flushed.stderr
    assert [json.loads(x)["data"]["name"] for x in lake.stdout.splitlines()] == ["Bob"]
    assert len(cat.events_table(cat.load(data_dir)).metadata.snapshots) == 1


@pytest.mark.usefixtures("no_pyiceberg_config")
def test_lake_maintain_says_what_it_did_and_names_the_tag_of_the_table_before_it(
    tmp_path: Path, data_dir: Path, schemas: SchemaSet
) -> None:
    from server.lake import catalog as cat

    run(tmp_path, "flush", "--data-dir", str(data_dir))
    with Store(data_dir, schemas) as store:
        store.do(TENANT, "agent_a", {"action": "create", "type": "Contact", "data": {"name": "Bob"}})
    run(tmp_path, "flush", "--data-dir", str(data_dir))  # today's second file
    before = cat.events_table(cat.load(data_dir)).metadata.current_snapshot_id

    maintained = run(tmp_path, "lake", "maintain", "--open-day-files", "2", "--data-dir", str(data_dir))

    assert maintained.returncode == 0, maintained.stderr
    assert "compacted 1 day(s), expired 1 snapshot(s) and 0 tag(s)" in maintained.stdout
    tag = maintained.stdout.split("; the table before this run is tag ")[1].strip()
    assert tag.startswith("headlessly-maintain-") and f"tagged the table's state before this run {tag}" in (
        maintained.stderr
    )
    assert cat.events_table(cat.load(data_dir)).metadata.refs[tag].snapshot_id == before


def test_events_from_the_lake_match_the_live_log(tmp_path: Path, data_dir: Path) -> None:
    run(tmp_path, "flush", "--data-dir", str(data_dir))
    live = run(tmp_path, "events", "--tenant", TENANT, "--json", "--data-dir", str(data_dir))
    lake = run(tmp_path, "events", "--tenant", TENANT, "--json", "--from-lake", "--data-dir", str(data_dir))
    won = run(
        tmp_path, "events", "--tenant", TENANT, "--json", "--from-lake", "--type", "*.Won", "--data-dir", str(data_dir)
    )

    assert lake.returncode == 0, lake.stderr
    assert [json.loads(x) for x in lake.stdout.splitlines()] == [json.loads(x) for x in live.stdout.splitlines()]
    (event,) = [json.loads(x) for x in won.stdout.splitlines()]
    assert (event["type"], event["actor"], event["reason"]) == ("Deal.Won", "agent_b", "signed")


def test_events_from_the_lake_take_since_and_until_as_the_live_log_does(tmp_path: Path, data_dir: Path) -> None:
    run(tmp_path, "flush", "--data-dir", str(data_dir))
    live = [
        json.loads(x)
        for x in run(tmp_path, "events", "--tenant", TENANT, "--json", "--data-dir", str(data_dir)).stdout.splitlines()
    ]
    second = live[1]["timestamp"]  # ...Z; the same instant with an offset for until
    window = ("--since", second, "--until", second.replace("Z", "+00:00"))
    lake = run(tmp_path, "events", "--tenant", TENANT, "--json", "--from-lake", *window, "--data-dir", str(data_dir))
    from_day = run(
        tmp_path,
        "events",
        "--tenant",
        TENANT,
        "--json",
        "--from-lake",
        "--since",
        second[:10],
        "--data-dir",
        str(data_dir),
    )

    assert lake.returncode == 0, lake.stderr
    assert [json.loads(x) for x in lake.stdout.splitlines()] == [live[1]]
    assert [json.loads(x) for x in from_day.stdout.splitlines()] == live
    just_after = second[:-1] + "0001Z"  # 0.1 µs past the second event: the live log starts at the third
    for source in ((), ("--from-lake",)):
        after = run(
            tmp_path,
            "events",
            "--tenant",
            TENANT,
            "--json",
            *source,
            "--since",
            just_after,
            "--data-dir",
            str(data_dir),
        )
        assert [json.loads(x) for x in after.stdout.splitlines()] == live[2:], source


def test_events_from_the_lake_refuse_a_bad_tenant_and_name_one_that_is_not_in_the_table(
    tmp_path: Path, data_dir: Path
) -> None:
    nowhere = tmp_path / "nowhere"
    no_lake = run(tmp_path, "events", "--tenant", TENANT, "--from-lake", "--data-dir", str(nowhere))
    run(tmp_path, "flush", "--data-dir", str(data_dir))
    bad = run(tmp_path, "events", "--tenant", "../../etc", "--from-lake", "--data-dir", str(data_dir))
    missing = run(tmp_path, "events", "--tenant", "nope", "--from-lake", "--data-dir", str(data_dir))

    assert no_lake.returncode == 2 and "no lakehouse" in no_lake.stderr
    assert not nowhere.exists()
    assert bad.returncode == 2 and "invalid tenant name" in bad.stderr
    assert missing.returncode == 2
    assert "'nope' has no events in the table; its tenants: acme" in missing.stderr


@pytest.mark.parametrize("name", ["c#-app", "a%62", "why?", "pct%20x"])
def test_the_lakehouse_stays_in_a_data_dir_whose_path_has_url_characters(
    tmp_path: Path, data_dir: Path, name: str
) -> None:
    odd = tmp_path / name / "data"
    odd.parent.mkdir()
    data_dir.rename(odd)
    twin = tmp_path / "ab" / "data"  # what a%62 would decode to: it must not receive the events
    before = set(os.listdir(tmp_path))
    flushed = run(tmp_path, "flush", "--data-dir", str(odd))
    maintained = run(tmp_path, "lake", "maintain", "--retain-days", "0", "--orphan-hours", "0", "--data-dir", str(odd))
    verified = run(tmp_path, "verify", "--data-dir", str(odd))
    lake = run(tmp_path, "events", "--tenant", TENANT, "--json", "--from-lake", "--data-dir", str(odd))

    assert flushed.returncode == 0, flushed.stderr
    assert maintained.returncode == 0, maintained.stderr
    assert verified.returncode == 0 and "3 events, flushed up to seq 3, " in verified.stdout, (
        verified.stdout + verified.stderr
    )
    assert len(lake.stdout.splitlines()) == 3
    assert set(os.listdir(tmp_path)) == before  # nothing written beside it (c#-app used to leave a "c")
    assert (odd / "lakehouse" / "catalog.db").is_file() and not twin.exists()


def test_verify_compares_the_table_with_the_log(tmp_path: Path, data_dir: Path) -> None:
    flushed = run(tmp_path, "flush", "--data-dir", str(data_dir))
    healthy = run(tmp_path, "verify", "--data-dir", str(data_dir))
    with closing(sqlite3.connect(data_dir / "tenants" / f"{TENANT}.db")) as conn, conn:
        (logged,) = conn.execute("SELECT hash FROM events WHERE seq = 2").fetchone()
        # Always another hash: hashes are random, and one in 16 already starts with "f".
        altered = ("e" if logged.startswith("f") else "f") + logged[1:]
        conn.execute("DROP TRIGGER events_refuse_update")
        conn.execute("UPDATE events SET hash = ? WHERE seq = 2", (altered,))
    broken = run(tmp_path, "verify", "--data-dir", str(data_dir))

    assert flushed.returncode == 0, flushed.stderr
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "3 events, flushed up to seq 3, " in healthy.stdout
    assert broken.returncode == 1
    assert "the table's hash differs from the log's" in broken.stdout


def test_flush_names_a_tenant_it_cannot_read_exits_1_and_still_flushes_the_others(
    tmp_path: Path, data_dir: Path
) -> None:
    (data_dir / "tenants" / "broken.db").write_text("not a database")
    flushed = run(tmp_path, "flush", "--data-dir", str(data_dir))
    missing = run(tmp_path, "flush", "--tenant", "nope", "--data-dir", str(data_dir))
    lake = run(tmp_path, "events", "--tenant", TENANT, "--json", "--from-lake", "--data-dir", str(data_dir))

    assert flushed.returncode == 1
    assert "flushed 3 events of 1 tenant(s)" in flushed.stdout
    assert "not flushed: tenant broken:" in flushed.stderr and "Traceback" not in flushed.stderr
    assert len(lake.stdout.splitlines()) == 3
    assert missing.returncode == 2 and "'nope' does not exist" in missing.stderr
    checked = run(tmp_path, "verify", "--data-dir", str(data_dir))
    assert checked.returncode == 1
    assert "broken: FAILED: the database file of tenant 'broken' is damaged: file is not a database" in checked.stdout
    assert "the lakehouse holds no events of broken to rebuild it from" in checked.stdout
    assert "acme: ok:" in checked.stdout


def test_flush_passes_over_an_empty_tenant_file_without_events_in_the_table_and_names_one_that_had_some(
    tmp_path: Path, data_dir: Path
) -> None:
    (data_dir / "tenants" / "fresh.db").touch()  # as a crash before a new tenant's first commit leaves it
    first = run(tmp_path, "flush", "--data-dir", str(data_dir))
    (data_dir / "tenants" / f"{TENANT}.db").write_bytes(b"")  # its 3 events are in the table
    second = run(tmp_path, "flush", "--data-dir", str(data_dir))

    assert first.returncode == 0, first.stderr
    assert "flushed 3 events of 2 tenant(s)" in first.stdout and "fresh" not in first.stderr
    assert second.returncode == 1
    assert f"not flushed: tenant {TENANT}:" in second.stderr and "is empty: it holds no database" in second.stderr
    assert "fresh" not in second.stderr
    assert (data_dir / "tenants" / "fresh.db").stat().st_size == 0


def test_verify_says_to_flush_before_the_restore_it_names_for_a_wrong_state_when_events_are_not_in_the_table_yet(
    tmp_path: Path, data_dir: Path
) -> None:
    assert run(tmp_path, "flush", "--data-dir", str(data_dir)).returncode == 0
    with Store(data_dir) as store:
        store.do(TENANT, "agent_a", {"action": "create", "type": "Contact", "data": {"name": "Late"}})
    with closing(sqlite3.connect(data_dir / "tenants" / f"{TENANT}.db")) as conn:
        conn.execute("UPDATE entities SET state = replace(state, '\"Alice\"', '\"Mallory\"')")
        conn.commit()

    checked = run(tmp_path, "verify", "--data-dir", str(data_dir))

    assert checked.returncode == 1
    assert "the materialized state differs from the replay of its events" in checked.stdout
    assert f"headlessly restore --tenant {TENANT} --overwrite" in checked.stdout
    assert "but 1 of its events are not in the table yet: flush them first" in checked.stdout
    assert "headlessly reindex" not in checked.stdout and "damaged" not in checked.stdout


def test_verify_fails_for_a_tenant_in_the_table_whose_database_is_gone(tmp_path: Path, data_dir: Path) -> None:
    run(tmp_path, "flush", "--data-dir", str(data_dir))
    for path in (data_dir / "tenants").glob(f"{TENANT}.db*"):
        path.unlink()
    lost = run(tmp_path, "verify", "--data-dir", str(data_dir))
    named = run(tmp_path, "verify", "--tenant", TENANT, "--json", "--data-dir", str(data_dir))

    assert lost.returncode == 1
    assert "acme: FAILED: it has 3 events in the table but no database here" in lost.stdout
    assert "headlessly restore --tenant acme" in lost.stdout
    assert named.returncode == 1
    assert json.loads(named.stdout)["ok"] is False


@pytest.mark.usefixtures("no_pyiceberg_config")
def test_verify_fails_for_a_table_row_edited_with_its_hash_left_as_it_was(tmp_path: Path, data_dir: Path) -> None:
    import pyarrow as pa
    import pyiceberg.expressions as ex

    from server.lake import catalog as cat
    from server.lake.restore import read_tenant

    run(tmp_path, "flush", "--data-dir", str(data_dir))
    table = cat.events_table(cat.load(data_dir))
    rows = read_tenant(table, TENANT)
    actors = rows.column("actor").to_pylist()
    actors[1] = "agent_mallory"  # seq 2 said to be someone else's; its hash (and the log) untouched
    at = rows.schema.get_field_index("actor")
    forged = rows.set_column(at, rows.schema.field(at), pa.array(actors, type=rows.schema.field(at).type))
    table.overwrite(forged, overwrite_filter=ex.EqualTo("tenant", TENANT))
    checked = run(tmp_path, "verify", "--data-dir", str(data_dir))

    assert checked.returncode == 1
    assert "seq 2: the table's row was altered" in checked.stdout


def test_restore_rebuilds_a_lost_tenant_and_refuses_a_live_one(tmp_path: Path, data_dir: Path) -> None:
    run(tmp_path, "flush", "--data-dir", str(data_dir))
    before = run(tmp_path, "events", "--tenant", TENANT, "--json", "--data-dir", str(data_dir)).stdout
    refused = run(tmp_path, "restore", "--tenant", TENANT, "--data-dir", str(data_dir))
    for path in (data_dir / "tenants").glob(f"{TENANT}.db*"):
        path.unlink()
    restored = run(tmp_path, "restore", "--tenant", TENANT, "--data-dir", str(data_dir))
    after = run(tmp_path, "events", "--tenant", TENANT, "--json", "--data-dir", str(data_dir)).stdout

    assert refused.returncode == 2
    assert "conflict" in refused.stderr and "--overwrite" in refused.stderr
    assert f"events --from-lake --tenant {TENANT} --data-dir {data_dir}" in refused.stderr
    assert restored.returncode == 0, restored.stderr
    assert "restored 3 events into tenant acme; verify: ok" in restored.stdout
    assert after == before


def test_the_restore_verify_advises_for_a_truncated_file_rebuilds_the_tenant(tmp_path: Path, data_dir: Path) -> None:
    run(tmp_path, "flush", "--data-dir", str(data_dir))
    before = run(tmp_path, "events", "--tenant", TENANT, "--json", "--data-dir", str(data_dir)).stdout
    os.truncate(data_dir / "tenants" / f"{TENANT}.db", 20_000)
    checked = run(tmp_path, "verify", "--data-dir", str(data_dir))
    refused = run(tmp_path, "restore", "--tenant", TENANT, "--data-dir", str(data_dir))
    restored = run(tmp_path, "restore", "--tenant", TENANT, "--overwrite", "--data-dir", str(data_dir))
    after = run(tmp_path, "events", "--tenant", TENANT, "--json", "--data-dir", str(data_dir)).stdout

    assert f"headlessly restore --tenant {TENANT} --overwrite" in checked.stdout
    assert refused.returncode == 1 and "is damaged" in refused.stderr and "--overwrite" in refused.stderr
    assert restored.returncode == 0, restored.stderr
    assert "restored 3 events into tenant acme; verify: ok" in restored.stdout
    assert after == before
    assert len(list((data_dir / "tenants").glob(f"{TENANT}.db.replaced-*"))) == 1


def test_restore_into_a_log_says_how_far_it_got_in_lines(tmp_path: Path, data_dir: Path) -> None:
    """Where a progress bar cannot be redrawn (stderr is a file or pipe), restore still shows progress."""
    run(tmp_path, "flush", "--data-dir", str(data_dir))
    for path in (data_dir / "tenants").glob(f"{TENANT}.db*"):
        path.unlink()
    restored = run(tmp_path, "restore", "--tenant", TENANT, "--data-dir", str(data_dir))

    assert restored.returncode == 0, restored.stderr
    assert f"  {TENANT}: 3 of 3 events read" in restored.stderr
    assert f"  {TENANT}: writing entities and building indexes" in restored.stderr


def test_serve_flushes_at_shutdown(tmp_path: Path, data_dir: Path) -> None:
    """stdio server with a long interval: closing its stdin ends it, and it flushes on the way out."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYICEBERG_", "HEADLESSLY_"))}
    env["HOME"] = str(tmp_path)
    proc = subprocess.run(
        [HEADLESSLY, "serve", "--data-dir", str(data_dir), "--tenant", TENANT, "--flush-interval", "3600"],
        cwd=tmp_path, env=env, input="", capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lake = run(tmp_path, "events", "--tenant", TENANT, "--json", "--from-lake", "--data-dir", str(data_dir))

    assert proc.returncode == 0, proc.stderr
    assert len(lake.stdout.splitlines()) == 3


@pytest.mark.usefixtures("no_pyiceberg_config")
def test_flush_leaves_a_tenant_being_restored_names_it_and_exits_1(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from server.cli import main
    from server.store import tenants
    from server.store.filelock import TenantLock
    from server.store.tenants import tenant_path

    with Store(data_dir) as store:
        store.do("beta", "agent_a", {"action": "create", "type": "Contact", "data": {"name": "Bob"}})
    monkeypatch.setattr(tenants, "LOCK_WAIT_SECONDS", 0.0)
    tries: list[str] = []
    share = TenantLock.try_share

    def counted(lock: TenantLock) -> bool:
        tries.append(lock.path.name)
        return share(lock)

    monkeypatch.setattr(TenantLock, "try_share", counted)
    restoring = TenantLock(tenant_path(data_dir, TENANT))
    assert restoring.try_exclusive("restore")
    try:
        busy = CliRunner().invoke(main, ["flush", "--data-dir", str(data_dir)])
    finally:
        restoring.release()
    tries_while_busy = tries.count(f"{TENANT}.db-lock")
    later = CliRunner().invoke(main, ["flush", "--data-dir", str(data_dir)])

    assert busy.exit_code == 1, busy.output
    assert "flushed 1 events of 1 tenant(s)" in busy.stdout
    assert f"not flushed: {TENANT}" in busy.stderr and "being restored" in busy.stderr
    assert tries_while_busy == 1  # waited for once, not again by the flush
    assert later.exit_code == 0 and "flushed 3 events of 2 tenant(s)" in later.stdout


def test_a_damaged_catalog_ends_each_lake_command_with_one_line_and_verify_still_checks_the_logs(
    tmp_path: Path, data_dir: Path
) -> None:
    assert run(tmp_path, "flush", "--data-dir", str(data_dir)).returncode == 0
    (data_dir / "lakehouse" / "catalog.db").write_bytes(b"this is not a catalog" * 100)

    results = {
        "flush": run(tmp_path, "flush", "--data-dir", str(data_dir)),
        "events": run(tmp_path, "events", "--tenant", TENANT, "--from-lake", "--data-dir", str(data_dir)),
        "maintain": run(tmp_path, "lake", "maintain", "--data-dir", str(data_dir)),
        "restore": run(tmp_path, "restore", "--tenant", "beta", "--data-dir", str(data_dir)),
        "overwrite": run(tmp_path, "restore", "--tenant", TENANT, "--overwrite", "--data-dir", str(data_dir)),
    }
    checked = run(tmp_path, "verify", "--data-dir", str(data_dir))

    for name, result in results.items():
        assert result.returncode == 1, (name, result.stderr)
        assert "the lakehouse failed while" in result.stderr and "check the catalog" in result.stderr, name
        assert "Traceback" not in result.stderr, name
    assert checked.returncode == 1 and "Traceback" not in checked.stderr
    assert "lake: NOT CHECKED: the lakehouse could not be read" in checked.stdout
    assert "acme: ok: 3 events" in checked.stdout


def test_events_from_a_lake_whose_data_file_is_cut_short_fail_as_the_lakehouse_exit_1(
    tmp_path: Path, data_dir: Path
) -> None:
    assert run(tmp_path, "flush", "--data-dir", str(data_dir)).returncode == 0
    (data_file,) = (data_dir / "lakehouse" / "warehouse").rglob("*.parquet")
    data_file.write_bytes(data_file.read_bytes()[:100])

    listed = run(tmp_path, "events", "--tenant", TENANT, "--from-lake", "--data-dir", str(data_dir))

    assert listed.returncode == 1, listed.stderr  # a failing lakehouse, not bad input (2)
    assert "the lakehouse failed while reading" in listed.stderr and "Traceback" not in listed.stderr


@pytest.mark.parametrize("loss", ["deleted", "emptied"])
def test_a_lost_catalog_is_refused_by_every_lake_command_until_lake_register_brings_its_table_back(
    tmp_path: Path, data_dir: Path, loss: str
) -> None:
    """Going on would have started a new table beside the old one, and maintain would have removed the old
    one's files as orphans: the tenants' history, perhaps their last copy."""
    assert run(tmp_path, "flush", "--data-dir", str(data_dir)).returncode == 0
    catalog = data_dir / "lakehouse" / "catalog.db"
    catalog.unlink() if loss == "deleted" else catalog.write_bytes(b"")
    warehouse = data_dir / "lakehouse" / "warehouse"
    before = sorted(p for p in warehouse.rglob("*") if p.is_file())

    results = {
        "flush": run(tmp_path, "flush", "--data-dir", str(data_dir)),
        "maintain": run(tmp_path, "lake", "maintain", "--orphan-hours", "0", "--data-dir", str(data_dir)),
        "events": run(tmp_path, "events", "--tenant", TENANT, "--from-lake", "--data-dir", str(data_dir)),
        "restore": run(tmp_path, "restore", "--tenant", TENANT, "--overwrite", "--data-dir", str(data_dir)),
    }
    unchecked = run(tmp_path, "verify", "--data-dir", str(data_dir))
    after = sorted(p for p in warehouse.rglob("*") if p.is_file())
    catalog_made = catalog.exists()
    registered = run(tmp_path, "lake", "register", "--data-dir", str(data_dir))
    again = run(tmp_path, "lake", "register", "--data-dir", str(data_dir))
    checked = run(tmp_path, "verify", "--data-dir", str(data_dir))

    for name, result in results.items():
        assert result.returncode == 1, (name, result.stdout, result.stderr)
        assert "has no events table, but its warehouse holds one" in result.stderr, name
        assert "headlessly lake register" in result.stderr, name
    assert unchecked.returncode == 1 and "lake: NOT CHECKED" in unchecked.stdout
    assert after == before
    assert catalog_made == (loss == "emptied")  # no empty catalog was made in its place
    assert registered.returncode == 0 and "registered the events table from" in registered.stdout
    assert again.returncode == 1 and "already has the events table" in again.stderr
    assert checked.returncode == 0 and "acme: ok: 3 events, flushed up to seq 3," in checked.stdout


def test_verify_says_how_far_each_tenant_is_flushed_and_how_many_events_are_not_yet(
    tmp_path: Path, data_dir: Path, schemas: SchemaSet
) -> None:
    assert run(tmp_path, "flush", "--data-dir", str(data_dir)).returncode == 0
    with Store(data_dir, schemas) as store:
        store.do(TENANT, "agent_a", {"action": "create", "type": "Contact", "data": {"name": "Later"}})
        store.do("beta", "agent_a", {"action": "create", "type": "Contact", "data": {"name": "Never flushed"}})
    checked = run(tmp_path, "verify", "--data-dir", str(data_dir))

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "acme: ok: 4 events, flushed up to seq 3 (1 not yet), " in checked.stdout
    assert "beta: ok: 1 events, flushed up to seq 0 (1 not yet), " in checked.stdout


def flushed_copy(tmp_path: Path, data_dir: Path) -> Path:
    """The data dir flushed, then copied whole (its catalog still names the original's table)."""
    assert run(tmp_path, "flush", "--data-dir", str(data_dir)).returncode == 0
    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    return copy


def test_every_lake_command_on_a_copied_data_dir_refuses_the_originals_table_in_one_line_and_writes_nothing(
    tmp_path: Path, data_dir: Path
) -> None:
    copy = flushed_copy(tmp_path, data_dir)
    lake = data_dir / "lakehouse"
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in lake.rglob("*") if p.is_file()}

    results = {
        "flush": run(tmp_path, "flush", "--data-dir", str(copy)),
        "maintain": run(
            tmp_path, "lake", "maintain", "--retain-days", "0", "--orphan-hours", "0", "--data-dir", str(copy)
        ),
        "events": run(tmp_path, "events", "--tenant", TENANT, "--from-lake", "--data-dir", str(copy)),
        "restore": run(tmp_path, "restore", "--tenant", TENANT, "--overwrite", "--data-dir", str(copy)),
    }
    checked = run(tmp_path, "verify", "--data-dir", str(copy))

    refusal = (
        f"the lakehouse catalog of this data dir ({copy.resolve() / 'lakehouse' / 'catalog.db'}) "
        f"points at a table in {lake.resolve() / 'warehouse'}"
    )
    for name, result in results.items():
        assert result.returncode != 0, (name, result.stdout)
        assert refusal in result.stderr and "nothing was written" in result.stderr, (name, result.stderr)
        said = [line for line in result.stderr.splitlines() if line.startswith("headlessly:")]
        assert len(said) == 1 and "Traceback" not in result.stderr, (name, result.stderr)  # (restore: its bar first)
    assert checked.returncode == 1 and "lake: NOT CHECKED" in checked.stdout and refusal in checked.stdout
    assert "acme: ok: 3 events" in checked.stdout  # its logs are still checked
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in lake.rglob("*") if p.is_file()} == before
    original = run(tmp_path, "verify", "--data-dir", str(data_dir))
    assert original.returncode == 0 and "acme: ok: 3 events, flushed up to seq 3" in original.stdout


@pytest.mark.usefixtures("no_pyiceberg_config")
def test_lake_register_on_a_copied_data_dir_refuses_the_originals_table_and_registers_nothing(
    tmp_path: Path, data_dir: Path
) -> None:
    copy = flushed_copy(tmp_path, data_dir)
    (copy / "lakehouse" / "catalog.db").unlink()  # the lost-catalog hint says: lake register

    registered = run(tmp_path, "lake", "register", "--data-dir", str(copy))

    assert registered.returncode == 1
    assert f"was written in {(data_dir / 'lakehouse' / 'warehouse').resolve()}" in registered.stderr
    assert "copied or moved; nothing was registered" in registered.stderr
    assert not (copy / "lakehouse" / "catalog.db").exists()  # refused before a catalog was made
    again = run(tmp_path, "lake", "register", "--data-dir", str(copy))  # nothing was registered the first time
    assert again.returncode == 1 and "nothing was registered" in again.stderr


@pytest.mark.usefixtures("no_pyiceberg_config")
@pytest.mark.parametrize("lakehouse", ["none", "an empty warehouse"])
def test_lake_register_with_no_table_in_the_warehouse_refuses_and_makes_nothing(
    tmp_path: Path, data_dir: Path, lakehouse: str
) -> None:
    if lakehouse == "an empty warehouse":
        (data_dir / "lakehouse" / "warehouse").mkdir(parents=True)
    before = sorted(data_dir.rglob("*"))

    registered = run(tmp_path, "lake", "register", "--data-dir", str(data_dir))

    assert registered.returncode == 1, registered.stdout + registered.stderr
    warehouse = data_dir / "lakehouse" / "warehouse"
    assert f"no events table in {warehouse} to register; nothing was changed" in registered.stderr
    assert sorted(data_dir.rglob("*")) == before  # no lakehouse/, warehouse/ nor catalog.db


def test_flush_counts_a_tenant_it_sent_up_to_an_altered_event_among_those_flushed(
    tmp_path: Path, data_dir: Path
) -> None:
    with Store(data_dir) as store:
        store.do("beta", "agent_a", {"action": "create", "type": "Contact", "data": {"name": "Bob"}})
    with closing(sqlite3.connect(data_dir / "tenants" / f"{TENANT}.db", isolation_level=None)) as conn:
        (guard,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'events_refuse_update'").fetchone()
        conn.execute("DROP TRIGGER events_refuse_update")
        conn.execute("UPDATE events SET data = json_set(data, '$.name', 'forged') WHERE seq = 3")
        conn.execute(guard)

    flushed = run(tmp_path, "flush", "--data-dir", str(data_dir))

    assert flushed.returncode == 1 and "seq 3" in flushed.stderr
    assert "flushed 3 events of 2 tenant(s)" in flushed.stdout  # acme's first two, and beta's one


def test_restore_on_a_data_dir_without_a_lakehouse_says_so_and_makes_none(tmp_path: Path, data_dir: Path) -> None:
    restored = run(tmp_path, "restore", "--tenant", TENANT, "--overwrite", "--data-dir", str(data_dir))

    assert restored.returncode == 2
    assert f"no lakehouse in {data_dir} to restore from" in restored.stderr
    assert not (data_dir / "lakehouse").exists()


@pytest.mark.parametrize(
    ("flag", "value"), [("--retain-days", "1000000"), ("--retain-days", "3e9"), ("--orphan-hours", "100000000")]
)
def test_lake_maintain_refuses_an_age_beyond_the_calendar_before_doing_anything(
    tmp_path: Path, data_dir: Path, flag: str, value: str
) -> None:
    assert run(tmp_path, "flush", "--data-dir", str(data_dir)).returncode == 0

    maintained = run(tmp_path, "lake", "maintain", flag, value, "--data-dir", str(data_dir))

    assert maintained.returncode == 2 and flag in maintained.stderr
    assert "expired" not in maintained.stdout + maintained.stderr


def test_restore_into_a_fresh_data_dir_reads_a_catalog_named_in_pyiceberg_yaml(tmp_path: Path, data_dir: Path) -> None:
    """The disaster-recovery path: a new machine whose .pyiceberg.yaml names the catalog the lost one used."""
    from server.lake.catalog import catalog_properties

    assert run(tmp_path, "flush", "--data-dir", str(data_dir)).returncode == 0
    props = catalog_properties(data_dir)
    (tmp_path / ".pyiceberg.yaml").write_text(  # (HOME is tmp_path in run)
        "catalog:\n  headlessly:\n" + "".join(f"    {k}: '{v}'\n" for k, v in props.items())
    )
    fresh = tmp_path / "fresh"

    restored = run(tmp_path, "restore", "--tenant", TENANT, "--data-dir", str(fresh))

    assert restored.returncode == 0, restored.stderr
    assert "restored 3 events into tenant acme; verify: ok" in restored.stdout
    assert not (fresh / "lakehouse").exists()  # the catalog named in the yaml was read, no local one made


def test_restore_refused_for_a_missing_data_dir_without_a_lakehouse_leaves_no_folder_behind(tmp_path: Path) -> None:
    """A mistyped --data-dir: the refusal makes nothing, and the folder that was there stays as it was."""
    typo = tmp_path / "typo"
    typo.mkdir()
    missing = typo / "data" / "dir"

    restored = run(tmp_path, "restore", "--tenant", TENANT, "--data-dir", str(missing))

    assert restored.returncode == 2
    assert f"no lakehouse in {missing} to restore from" in restored.stderr
    assert list(typo.iterdir()) == []


def test_restore_of_a_tenant_a_configured_catalog_lacks_leaves_no_data_dir_behind(
    tmp_path: Path, data_dir: Path
) -> None:
    from server.lake.catalog import catalog_properties

    assert run(tmp_path, "flush", "--data-dir", str(data_dir)).returncode == 0
    env = pyiceberg_configuration(tmp_path, catalog_properties(data_dir), "pyiceberg_yaml")
    fresh = tmp_path / "fresh"

    restored = run(tmp_path, "restore", "--tenant", "nobody", "--data-dir", str(fresh), env=env)

    assert restored.returncode == 2 and "the table has no events for tenant 'nobody'" in restored.stderr
    assert f"its tenants: {TENANT}" in restored.stderr  # (as events --from-lake names them)
    assert not fresh.exists()


@pytest.mark.usefixtures("no_pyiceberg_config")
@pytest.mark.parametrize("target", ["missing", "an empty folder"])
def test_restore_refused_for_an_altered_event_leaves_the_data_dir_as_it_found_it(
    tmp_path: Path, data_dir: Path, target: str
) -> None:
    import pyarrow as pa
    import pyiceberg.expressions as ex

    from server.lake import catalog as cat
    from server.lake.restore import read_tenant

    assert run(tmp_path, "flush", "--data-dir", str(data_dir)).returncode == 0
    table = cat.events_table(cat.load(data_dir))
    rows = read_tenant(table, TENANT)
    actors = rows.column("actor").to_pylist()
    actors[1] = "agent_mallory"  # seq 2 said to be someone else's: its hash no longer follows
    at = rows.schema.get_field_index("actor")
    forged = rows.set_column(at, rows.schema.field(at), pa.array(actors, type=rows.schema.field(at).type))
    table.overwrite(forged, overwrite_filter=ex.EqualTo("tenant", TENANT))
    env = pyiceberg_configuration(tmp_path, cat.catalog_properties(data_dir), "environment")
    fresh = tmp_path / "fresh"
    if target == "an empty folder":
        fresh.mkdir()

    restored = run(tmp_path, "restore", "--tenant", TENANT, "--data-dir", str(fresh), env=env)

    assert restored.returncode == 2, restored.stdout + restored.stderr
    assert "(seq 2) was altered" in restored.stderr and "Traceback" not in restored.stderr
    assert (list(fresh.iterdir()) == []) if target == "an empty folder" else not fresh.exists()


def pyiceberg_configuration(tmp_path: Path, properties: dict[str, str], way: str) -> dict[str, str]:
    """Name pyiceberg's catalog `headlessly` in .pyiceberg.yaml (HOME is tmp_path in run) or in environment
    variables; returns the environment to run with."""
    if way == "pyiceberg_yaml":
        yaml = "".join(f"    {k}: '{v}'\n" for k, v in properties.items())
        (tmp_path / ".pyiceberg.yaml").write_text("catalog:\n  headlessly:\n" + yaml)
        return {}
    return {f"PYICEBERG_CATALOG__HEADLESSLY__{k.upper()}": v for k, v in properties.items()}


def an_empty_catalog(lake: Path) -> Any:
    """A SQL catalog on SQLite under `lake`, with its own tables but no namespace or table (one nothing was
    flushed to yet, or another tool's)."""
    from pyiceberg.catalog.sql import SqlCatalog

    from server.lake.catalog import catalog_properties

    (lake / "lakehouse" / "warehouse").mkdir(parents=True)
    return SqlCatalog("headlessly", **catalog_properties(lake))


@pytest.mark.parametrize("way", ["pyiceberg_yaml", "environment"])
def test_verify_with_a_configured_catalog_without_the_events_table_compares_nothing_and_creates_nothing(
    tmp_path: Path, data_dir: Path, way: str
) -> None:
    from server.lake.catalog import catalog_properties

    shared = tmp_path / "shared"
    catalog = an_empty_catalog(shared)
    env = pyiceberg_configuration(tmp_path, catalog_properties(shared), way)

    checked = run(tmp_path, "verify", "--data-dir", str(data_dir), env=env)

    assert catalog.list_namespaces() == []
    assert not (data_dir / "lakehouse").exists()
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "acme: ok: 3 events, 2 entities, head " in checked.stdout  # as with no lakehouse: no "flushed up to"


def test_verify_with_a_configured_sqlite_catalog_whose_file_is_not_there_makes_no_catalog(
    tmp_path: Path, data_dir: Path
) -> None:
    from server.lake.catalog import catalog_properties

    shared = tmp_path / "shared"
    (shared / "lakehouse" / "warehouse").mkdir(parents=True)
    env = pyiceberg_configuration(tmp_path, catalog_properties(shared), "pyiceberg_yaml")

    checked = run(tmp_path, "verify", "--data-dir", str(data_dir), env=env)

    assert not (shared / "lakehouse" / "catalog.db").exists()
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "acme: ok: 3 events, 2 entities, head " in checked.stdout


@pytest.mark.parametrize("way", ["pyiceberg_yaml", "environment"])
def test_events_from_the_lake_restore_and_maintain_refuse_a_configured_catalog_without_the_events_table_and_create_none(
    tmp_path: Path, data_dir: Path, way: str
) -> None:
    from server.lake.catalog import catalog_properties

    shared = tmp_path / "shared"
    catalog = an_empty_catalog(shared)
    env = pyiceberg_configuration(tmp_path, catalog_properties(shared), way)
    fresh = tmp_path / "fresh"

    results = {
        "events": run(tmp_path, "events", "--tenant", TENANT, "--from-lake", "--data-dir", str(data_dir), env=env),
        "restore": run(tmp_path, "restore", "--tenant", TENANT, "--data-dir", str(fresh), env=env),
        "maintain": run(tmp_path, "lake", "maintain", "--data-dir", str(data_dir), env=env),
    }

    assert catalog.list_namespaces() == []
    assert not fresh.exists() and not (data_dir / "lakehouse").exists()
    for name, result in results.items():
        assert result.returncode == 2, (name, result.stdout, result.stderr)
        assert "no events table in the catalog `headlessly` that pyiceberg's configuration names" in result.stderr
        assert "`headlessly flush`" in result.stderr and "Traceback" not in result.stderr, name


def test_verify_events_from_the_lake_and_restore_leave_a_local_catalog_without_the_events_table_without_one(
    tmp_path: Path, data_dir: Path
) -> None:
    catalog = an_empty_catalog(data_dir)  # as `lake register` with nothing to register leaves it

    checked = run(tmp_path, "verify", "--data-dir", str(data_dir))
    listed = run(tmp_path, "events", "--tenant", TENANT, "--from-lake", "--data-dir", str(data_dir))
    restored = run(tmp_path, "restore", "--tenant", "beta", "--data-dir", str(data_dir))

    assert catalog.list_namespaces() == []
    assert checked.returncode == 0 and "acme: ok: 3 events, 2 entities, head " in checked.stdout
    assert listed.returncode == 2 and f"no lakehouse in {data_dir}: `headlessly flush`" in listed.stderr
    assert restored.returncode == 2 and f"no lakehouse in {data_dir} to restore from" in restored.stderr


@pytest.mark.parametrize("way", ["pyiceberg_yaml", "environment"])
def test_verify_names_a_configured_sqlite_catalog_file_that_is_not_there_and_still_checks_the_logs(
    tmp_path: Path, data_dir: Path, way: str
) -> None:
    from server.lake.catalog import catalog_properties

    mistyped = tmp_path / "shraed"  # the folder exists, the catalog file in it does not
    (mistyped / "lakehouse").mkdir(parents=True)
    env = pyiceberg_configuration(tmp_path, catalog_properties(mistyped), way)
    file = (mistyped / "lakehouse" / "catalog.db").resolve()

    checked = run(tmp_path, "verify", "--data-dir", str(data_dir), env=env)
    as_json = run(tmp_path, "verify", "--json", "--data-dir", str(data_dir), env=env)

    assert checked.returncode == 0, checked.stdout + checked.stderr
    said = (
        f"lake: not compared with the logs: the catalog file {file} that pyiceberg's configuration names is not there"
    )
    assert said in checked.stdout and "PYICEBERG_CATALOG__HEADLESSLY__URI" in checked.stdout
    assert "acme: ok: 3 events, 2 entities, head " in checked.stdout
    assert as_json.returncode == 0, as_json.stdout + as_json.stderr
    lake, acme = (json.loads(line) for line in as_json.stdout.splitlines())
    assert lake["lake"]["missingCatalogFile"] == str(file) and lake["lake"]["ok"] is True
    assert str(file) in lake["lake"]["notChecked"]
    assert acme["tenant"] == TENANT and acme["ok"] is True and "lake" not in acme
    assert not file.exists()


def test_events_from_the_lake_restore_and_maintain_name_a_configured_sqlite_catalog_file_that_is_not_there(
    tmp_path: Path, data_dir: Path
) -> None:
    from server.lake.catalog import catalog_properties

    mistyped = tmp_path / "shraed"
    env = pyiceberg_configuration(tmp_path, catalog_properties(mistyped), "environment")
    file = (mistyped / "lakehouse" / "catalog.db").resolve()
    fresh = tmp_path / "fresh"

    results = {
        "events": run(tmp_path, "events", "--tenant", TENANT, "--from-lake", "--data-dir", str(data_dir), env=env),
        "restore": run(tmp_path, "restore", "--tenant", TENANT, "--data-dir", str(fresh), env=env),
        "maintain": run(tmp_path, "lake", "maintain", "--data-dir", str(data_dir), env=env),
    }

    for name, result in results.items():
        assert result.returncode == 2, (name, result.stdout, result.stderr)
        assert f"the catalog file {file} that pyiceberg's configuration names is not there" in result.stderr, name
        assert "no events table in the catalog" not in result.stderr and "Traceback" not in result.stderr, name
    assert not mistyped.exists() and not fresh.exists()
