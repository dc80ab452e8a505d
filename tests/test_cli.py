"""The `headlessly` console command, run as a real subprocess: token, events, verify and serve's refusals."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import damage_the_actor_index, widget_folder

from server.schema import SchemaSet, load_schemas
from server.store import Store

TENANT = "acme"
AGENT = "agent_mR4nVkTw"
BOB = "user_bob"


def headlessly_command() -> str:
    beside = Path(sys.executable).parent / "headlessly"
    if beside.exists():
        return str(beside)
    found = shutil.which("headlessly")
    assert found is not None, "the headlessly console script is not installed"
    return found


HEADLESSLY = headlessly_command()


@dataclass
class Run:
    code: int
    out: str
    err: str

    def lines(self) -> list[str]:
        return [line for line in self.out.splitlines() if line.strip()]

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines()]


def run(*args: str | Path, cwd: Path, data_dir: Path | None = None) -> Run:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADLESSLY_")}
    argv = [HEADLESSLY, *map(str, args)]
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir)]
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    return Run(proc.returncode, proc.stdout, proc.stderr)


@dataclass
class History:
    alice: str
    deal: str
    events: list[dict[str, Any]]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def history(data_dir: Path, schemas: SchemaSet, clock: Any) -> History:
    """Five events in tenant acme at known times, written and closed before the CLI opens the files."""
    with Store(data_dir, schemas, clock=clock) as store:  # clock starts at 2026-01-15T10:00:00Z
        alice = store.do(TENANT, AGENT, {"action": "create", "type": "Contact", "data": {"name": "Alice"}})
        clock.advance(3600)
        store.do(TENANT, AGENT, {"action": "qualify", "type": "Contact", "id": alice["entity"]["$id"]})
        clock.advance(86400)  # 2026-01-16T11:00:00Z
        deal = store.do(TENANT, BOB, {"action": "create", "type": "Deal", "data": {"name": "Big", "value": 5000}})
        clock.advance(60)
        store.do(TENANT, BOB, {"action": "win", "type": "Deal", "id": deal["entity"]["$id"]})
        clock.advance(60)
        store.do(TENANT, AGENT, {"action": "update", "type": "Contact", "id": alice["entity"]["$id"], "data": {"title": "CTO"}})  # fmt: skip
        events = store.events(TENANT)["results"]
    return History(alice["entity"]["$id"], deal["entity"]["$id"], events)


# ---- help ---------------------------------------------------------------------------------------


def test_help_lists_the_commands(tmp_path: Path) -> None:
    result = run("--help", cwd=tmp_path)
    assert result.code == 0
    commands = result.out.split("Commands:", 1)[1]
    for command in ("serve", "token", "events", "verify"):
        assert re.search(rf"^\s+{command}\s", commands, re.MULTILINE), command


def test_serve_help_documents_the_transports_and_no_auth(tmp_path: Path) -> None:
    result = run("serve", "--help", cwd=tmp_path)
    assert result.code == 0
    for option in ("--transport", "--host", "--port", "--no-auth", "--data-dir", "--tenant", "--actor", "--schemas"):
        assert option in result.out
    assert "stdio" in result.out and "http" in result.out and "sse" in result.out


# ---- token --------------------------------------------------------------------------------------


def test_token_create_list_and_revoke_round_trip(tmp_path: Path, data_dir: Path) -> None:
    created = run("token", "create", "--tenant", TENANT, "--actor", AGENT, "--note", "laptop", cwd=tmp_path, data_dir=data_dir)  # fmt: skip
    assert created.code == 0, created.err
    (token,) = created.lines()
    match = re.fullmatch(r"hly_([A-Za-z0-9]+)_([A-Za-z0-9_-]+)", token)
    assert match is not None
    token_id, secret = match.groups()
    assert "not shown again" in created.err
    assert secret not in created.err

    reader = run("token", "create", "--tenant", TENANT, "--actor", "agent_reader", "--read-only", cwd=tmp_path, data_dir=data_dir)  # fmt: skip
    assert reader.code == 0, reader.err
    assert "read-only" in reader.err

    listed = run("token", "list", "--json", cwd=tmp_path, data_dir=data_dir)
    assert listed.code == 0, listed.err
    rows = {row["id"]: row for row in listed.json_lines()}
    assert len(rows) == 2
    assert rows[token_id]["tenant"] == TENANT
    assert rows[token_id]["actor"] == AGENT
    assert rows[token_id]["readOnly"] is False
    assert rows[token_id]["note"] == "laptop"
    assert rows[token_id]["revokedAt"] is None
    assert [r["readOnly"] for r in rows.values() if r["id"] != token_id] == [True]
    assert secret not in listed.out

    revoked = run("token", "revoke", token_id, cwd=tmp_path, data_dir=data_dir)
    assert revoked.code == 0, revoked.err
    assert token_id in revoked.out

    after = run("token", "list", "--json", cwd=tmp_path, data_dir=data_dir)
    assert token_id not in {row["id"] for row in after.json_lines()}
    assert len(after.json_lines()) == 1
    everything = {row["id"]: row for row in run("token", "list", "--all", "--json", cwd=tmp_path, data_dir=data_dir).json_lines()}  # fmt: skip
    assert everything[token_id]["revokedAt"] is not None

    assert secret.encode() not in (data_dir / "tokens.db").read_bytes()


def test_token_list_as_a_table_and_per_tenant(tmp_path: Path, data_dir: Path) -> None:
    run("token", "create", "--tenant", "acme", "--actor", AGENT, cwd=tmp_path, data_dir=data_dir)
    run("token", "create", "--tenant", "globex", "--actor", "agent_other", cwd=tmp_path, data_dir=data_dir)
    table = run("token", "list", cwd=tmp_path, data_dir=data_dir)
    assert table.code == 0
    header, *rows = table.lines()
    assert header.split()[:3] == ["id", "tenant", "actor"]
    assert len(rows) == 2
    only_acme = run("token", "list", "--tenant", "acme", "--json", cwd=tmp_path, data_dir=data_dir).json_lines()
    assert [row["tenant"] for row in only_acme] == ["acme"]


def test_token_list_shows_a_note_with_line_breaks_on_one_line(tmp_path: Path, data_dir: Path) -> None:
    note = "ci\nbot\tone\x0bv\u2028w\x85x\x1b[31m"
    run("token", "create", "--tenant", "acme", "--actor", AGENT, "--note", note, cwd=tmp_path, data_dir=data_dir)
    table = run("token", "list", cwd=tmp_path, data_dir=data_dir)
    as_json = run("token", "list", "--json", cwd=tmp_path, data_dir=data_dir).json_lines()
    _header, *rows = table.lines()
    assert len(rows) == 1 and rows[0].endswith("ci\\nbot\\tone\\x0bv\\u2028w\\x85x\\x1b[31m")
    assert as_json[0]["note"] == note


def test_token_revoke_on_a_data_dir_without_tokens_and_create_with_a_bad_actor_make_no_file(
    tmp_path: Path, data_dir: Path
) -> None:
    data_dir.mkdir()
    revoked = run("token", "revoke", "tok_abc", cwd=tmp_path, data_dir=data_dir)
    created = run("token", "create", "--tenant", "acme", "--actor", "bot", cwd=tmp_path, data_dir=tmp_path / "new")
    assert revoked.code == 2 and "no token with id 'tok_abc'" in revoked.err
    assert created.code == 2 and "Invalid value for '--actor': invalid actor 'bot'" in created.err
    assert list(data_dir.iterdir()) == [] and not (tmp_path / "new").exists()


def test_token_list_on_a_data_dir_without_tokens_lists_none_and_makes_no_file(tmp_path: Path, data_dir: Path) -> None:
    data_dir.mkdir()
    table = run("token", "list", cwd=tmp_path, data_dir=data_dir)
    assert table.code == 0 and table.lines()[0].split()[:3] == ["id", "tenant", "actor"] and len(table.lines()) == 1
    assert list(data_dir.iterdir()) == []


def test_a_created_token_is_accepted_by_the_token_store(tmp_path: Path, data_dir: Path) -> None:
    from server.auth.tokens import TokenStore

    created = run("token", "create", "--tenant", TENANT, "--actor", AGENT, "--read-only", cwd=tmp_path, data_dir=data_dir)  # fmt: skip
    tokens = TokenStore(data_dir)
    try:
        info = tokens.verify(created.lines()[0])
    finally:
        tokens.close()
    assert info is not None
    assert (info.tenant, info.actor, info.read_only) == (TENANT, AGENT, True)


def test_a_data_dir_the_server_creates_is_readable_by_its_user_only(tmp_path: Path) -> None:
    data_dir = tmp_path / "new" / "data"
    created = run("token", "create", "--tenant", TENANT, "--actor", AGENT, cwd=tmp_path, data_dir=data_dir)
    assert created.code == 0, created.err
    with Store(data_dir) as store:
        store.do(TENANT, AGENT, {"action": "create", "type": "Contact", "data": {"name": "Alice"}})
    flushed = run("flush", cwd=tmp_path, data_dir=data_dir)
    assert flushed.code == 0, flushed.err
    umask = os.umask(0)
    os.umask(umask)
    for directory in (tmp_path / "new", data_dir, data_dir / "tenants", data_dir / "lakehouse"):
        assert directory.stat().st_mode & 0o777 == 0o700 & ~umask, directory
    assert (data_dir / "tokens.db").stat().st_mode & 0o777 == 0o600 & ~umask
    made_by_flush = [p for p in (data_dir / "lakehouse").rglob("*")]  # catalog, metadata, Parquet: umask 077
    assert made_by_flush and all(p.stat().st_mode & 0o077 == 0 for p in made_by_flush), made_by_flush
    # a data dir the operator made keeps the mode they gave it
    own = tmp_path / "own"
    own.mkdir(mode=0o755)
    own.chmod(0o755)
    assert run("token", "create", "--tenant", TENANT, "--actor", AGENT, cwd=tmp_path, data_dir=own).code == 0
    assert own.stat().st_mode & 0o777 == 0o755


def test_serve_warns_when_other_local_users_may_read_the_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "shared"
    data_dir.mkdir()
    data_dir.chmod(0o755)  # as an older version, or a hand-made mkdir, leaves it
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADLESSLY_")}
    serve = [HEADLESSLY, "serve", "--no-flush", "--data-dir", str(data_dir)]

    def stderr_of_a_session_that_ends_at_once() -> str:
        done = subprocess.run(serve, cwd=tmp_path, env=env, input="", capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stderr

    warned = stderr_of_a_session_that_ends_at_once()
    assert f"readable by other local users: {data_dir} (755)" in warned
    assert f"chmod -R go-rwx {data_dir}" in warned
    data_dir.chmod(0o700)
    assert "readable by other local users" not in stderr_of_a_session_that_ends_at_once()


def test_revoking_an_unknown_token_fails_with_a_message(tmp_path: Path, data_dir: Path) -> None:
    data_dir.mkdir()
    result = run("token", "revoke", "nosuchtoken", cwd=tmp_path, data_dir=data_dir)
    assert result.code != 0
    assert "nosuchtoken" in result.err
    assert "Traceback" not in result.err


def test_a_token_can_be_revoked_by_pasting_the_whole_token_and_its_secret_is_never_echoed(
    tmp_path: Path, data_dir: Path
) -> None:
    (token,) = run("token", "create", "--tenant", TENANT, "--actor", AGENT, cwd=tmp_path, data_dir=data_dir).lines()
    secret = token.split("_", 2)[2]
    revoked = run("token", "revoke", token, cwd=tmp_path, data_dir=data_dir)
    assert revoked.code == 0, revoked.err
    assert secret not in revoked.out + revoked.err
    assert run("token", "list", "--json", cwd=tmp_path, data_dir=data_dir).json_lines() == []
    for pasted in (token, f"Bearer {token}", f"  {token}\n"):
        again = run("token", "revoke", pasted, cwd=tmp_path, data_dir=data_dir)
        assert again.code != 0
        assert "was already revoked, at " in again.err and secret not in again.out + again.err
    (other,) = run("token", "create", "--tenant", TENANT, "--actor", AGENT, cwd=tmp_path, data_dir=data_dir).lines()
    mistyped = other[:-4] + ("AAAA" if not other.endswith("AAAA") else "BBBB")
    refused = run("token", "revoke", mistyped, cwd=tmp_path, data_dir=data_dir)
    assert (
        refused.code == 2
        and "the rest of the token does not match" in refused.err
        and "nothing was revoked" in refused.err
    )
    assert mistyped.split("_", 2)[2] not in refused.out + refused.err
    assert len(run("token", "list", "--json", cwd=tmp_path, data_dir=data_dir).json_lines()) == 1  # still active
    assert run("token", "revoke", f"Bearer {other}", cwd=tmp_path, data_dir=data_dir).code == 0


def test_revoking_a_whole_token_on_a_data_dir_without_tokens_does_not_echo_its_secret(
    tmp_path: Path, data_dir: Path
) -> None:
    data_dir.mkdir()
    token = "hly_0123456789ab_" + "s" * 43
    revoked = run("token", "revoke", token, cwd=tmp_path, data_dir=data_dir)
    assert revoked.code == 2 and "no token with id '0123456789ab'" in revoked.err
    assert "s" * 43 not in revoked.out + revoked.err


@pytest.mark.parametrize(
    ("tenant", "actor"), [("Bad_Tenant", AGENT), ("../etc", AGENT), (TENANT, "alice"), (TENANT, "agent_a b")]
)
def test_token_create_refuses_a_bad_tenant_or_actor(tmp_path: Path, data_dir: Path, tenant: str, actor: str) -> None:
    result = run("token", "create", "--tenant", tenant, "--actor", actor, cwd=tmp_path, data_dir=data_dir)
    assert result.code == 2
    assert result.out == ""
    assert "Traceback" not in result.err
    assert "invalid" in result.err
    listed = run("token", "list", "--all", "--json", cwd=tmp_path, data_dir=data_dir)
    assert listed.json_lines() == []


# ---- events -------------------------------------------------------------------------------------


def test_events_json_prints_every_event_of_the_tenant_in_order(
    tmp_path: Path, data_dir: Path, history: History
) -> None:
    result = run("events", "--tenant", TENANT, "--json", cwd=tmp_path, data_dir=data_dir)
    assert result.code == 0, result.err
    assert result.json_lines() == history.events
    assert [e["seq"] for e in result.json_lines()] == [1, 2, 3, 4, 5]


def test_events_table_shows_one_row_per_event(tmp_path: Path, data_dir: Path, history: History) -> None:
    result = run("events", "--tenant", TENANT, cwd=tmp_path, data_dir=data_dir)
    assert result.code == 0, result.err
    header, *rows = result.lines()
    assert header.split() == ["seq", "timestamp", "type", "target", "v", "actor", "data", "why"]
    assert len(rows) == 5
    assert rows[0].split()[:6] == ["1", "2026-01-15T10:00:00.000000Z", "Contact.Created", history.alice, "1", AGENT]
    assert rows[3].split()[:6] == ["4", "2026-01-16T11:01:00.000000Z", "Deal.Won", history.deal, "2", BOB]


def test_events_table_shows_each_events_reason_and_the_event_that_caused_it(
    tmp_path: Path, data_dir: Path, schemas: SchemaSet
) -> None:
    with Store(data_dir, schemas) as store:
        deal = store.do(TENANT, BOB, {"action": "create", "type": "Deal", "data": {"name": "Big", "value": 5000}})
        won = store.do(TENANT, BOB, {"action": "win", "type": "Deal", "id": deal["entity"]["$id"], "reason": "signed " + "x" * 60})  # fmt: skip
        cause = won["events"][0]["id"]
        store.do(TENANT, AGENT, {"action": "create", "type": "Activity", "data": {"subject": "won"}}, caused_by=cause)
    result = run("events", "--tenant", TENANT, cwd=tmp_path, data_dir=data_dir)
    assert result.code == 0, result.err
    created, winning, caused = result.lines()[1:]
    assert created.endswith("}")  # no reason, no cause: the column is empty
    assert winning.endswith("signed " + "x" * 32 + "…")
    assert caused.endswith(f"caused by {cause}")


def test_events_filter_by_type_glob(tmp_path: Path, data_dir: Path, history: History) -> None:
    deals = run("events", "--tenant", TENANT, "--type", "Deal.*", "--json", cwd=tmp_path, data_dir=data_dir)
    assert [e["type"] for e in deals.json_lines()] == ["Deal.Created", "Deal.Won"]
    qualified = run("events", "--tenant", TENANT, "--type", "*.Qualified", "--json", cwd=tmp_path, data_dir=data_dir)
    assert [e["target"] for e in qualified.json_lines()] == [history.alice]
    exact = run("events", "--tenant", TENANT, "--type", "Contact.Updated", "--json", cwd=tmp_path, data_dir=data_dir)
    assert [e["seq"] for e in exact.json_lines()] == [5]


def test_events_filter_by_actor_and_target(tmp_path: Path, data_dir: Path, history: History) -> None:
    by_bob = run("events", "--tenant", TENANT, "--actor", BOB, "--json", cwd=tmp_path, data_dir=data_dir)
    assert [e["seq"] for e in by_bob.json_lines()] == [3, 4]
    assert {e["actor"] for e in by_bob.json_lines()} == {BOB}
    alice = run("events", "--tenant", TENANT, "--target", history.alice, "--json", cwd=tmp_path, data_dir=data_dir)
    assert [e["version"] for e in alice.json_lines()] == [1, 2, 3]


def test_events_filter_by_time_window(tmp_path: Path, data_dir: Path, history: History) -> None:
    since = run("events", "--tenant", TENANT, "--since", "2026-01-16", "--json", cwd=tmp_path, data_dir=data_dir)
    assert [e["seq"] for e in since.json_lines()] == [3, 4, 5]
    window = run(
        "events", "--tenant", TENANT, "--since", "2026-01-15T10:30:00Z", "--until", "2026-01-16T11:00:00Z", "--json",
        cwd=tmp_path, data_dir=data_dir,
    )  # fmt: skip
    assert [e["seq"] for e in window.json_lines()] == [2, 3]


def test_events_refuses_a_time_it_cannot_read_naming_the_flag(tmp_path: Path, data_dir: Path, history: History) -> None:
    for flag in ("--since", "--until"):
        for lake in ((), ("--from-lake",)):
            bad = run("events", "--tenant", TENANT, flag, "yesterday", *lake, cwd=tmp_path, data_dir=data_dir)
            assert bad.code == 2
            assert f"'{flag}'" in bad.err and "RFC 3339" in bad.err and "Traceback" not in bad.err


def test_events_refuses_an_actor_that_is_not_one_and_a_window_that_ends_before_it_starts(
    tmp_path: Path, data_dir: Path, history: History
) -> None:
    for lake in ((), ("--from-lake",)):
        actor = run("events", "--tenant", TENANT, "--actor", "bot", *lake, cwd=tmp_path, data_dir=data_dir)
        window = run(
            "events", "--tenant", TENANT, "--since", "2026-12-01", "--until", "2026-01-01", *lake,
            cwd=tmp_path, data_dir=data_dir,
        )  # fmt: skip
        assert actor.code == 2 and "'--actor'" in actor.err and "invalid actor 'bot'" in actor.err
        assert window.code == 2 and "--until 2026-01-01 is before --since 2026-12-01" in window.err


def test_events_newest_first_limit_and_filter_json(tmp_path: Path, data_dir: Path, history: History) -> None:
    newest = run("events", "--tenant", TENANT, "--newest-first", "--limit", "2", "--json", cwd=tmp_path, data_dir=data_dir)  # fmt: skip
    assert [e["seq"] for e in newest.json_lines()] == [5, 4]
    later_versions = run(
        "events", "--tenant", TENANT, "--filter", '{"version": {"$gt": 1}}', "--json", cwd=tmp_path, data_dir=data_dir
    )
    assert [e["seq"] for e in later_versions.json_lines()] == [2, 4, 5]


def test_events_flags_and_filter_both_hold_also_on_the_same_field(
    tmp_path: Path, data_dir: Path, history: History
) -> None:
    def seqs(*args: str) -> list[int]:
        result = run("events", "--tenant", TENANT, *args, "--json", cwd=tmp_path, data_dir=data_dir)
        assert result.code == 0, result.err
        return [e["seq"] for e in result.json_lines()]

    assert seqs("--type", "Deal.*", "--filter", '{"type": "Contact.Created"}') == []
    assert seqs("--type", "Deal.*", "--filter", '{"type": "Deal.Won"}') == [4]
    assert seqs("--since", "2026-01-15T10:30:00Z", "--filter", '{"timestamp": {"$lt": "2026-01-16T11:00:30Z"}}') == [
        2,
        3,
    ]
    assert seqs("--actor", BOB, "--filter", '{"actor": "nobody_x"}') == []
    assert seqs("--target", history.alice, "--filter", '{"version": {"$gt": 1}}') == [2, 5]


def test_events_says_on_stderr_when_more_events_match_than_the_limit(
    tmp_path: Path, data_dir: Path, history: History
) -> None:
    cut = run("events", "--tenant", TENANT, "--limit", "2", "--json", cwd=tmp_path, data_dir=data_dir)
    whole = run("events", "--tenant", TENANT, "--limit", "5", "--json", cwd=tmp_path, data_dir=data_dir)
    assert len(cut.json_lines()) == 2
    assert "the first 2 of 5 events; raise --limit" in cut.err
    assert len(whole.json_lines()) == 5 and whole.err == ""


def test_events_of_a_missing_tenant_or_with_a_bad_filter_fail_cleanly(
    tmp_path: Path, data_dir: Path, history: History
) -> None:
    missing = run("events", "--tenant", "nobody", cwd=tmp_path, data_dir=data_dir)
    assert missing.code == 2
    assert "nobody" in missing.err
    bad_json = run("events", "--tenant", TENANT, "--filter", "{not json", cwd=tmp_path, data_dir=data_dir)
    assert bad_json.code == 2
    assert "--filter" in bad_json.err
    bad_field = run("events", "--tenant", TENANT, "--filter", '{"name": "x"}', cwd=tmp_path, data_dir=data_dir)
    assert bad_field.code == 2
    assert "invalid_filter" in bad_field.err
    for result in (missing, bad_json, bad_field):
        assert "Traceback" not in result.err
    assert not (data_dir / "tenants" / "nobody.db").exists()


# ---- verify -------------------------------------------------------------------------------------


def test_verify_exits_0_on_a_healthy_tenant(tmp_path: Path, data_dir: Path, history: History) -> None:
    result = run("verify", "--tenant", TENANT, cwd=tmp_path, data_dir=data_dir)
    assert result.code == 0, result.out + result.err
    assert f"{TENANT}: ok" in result.out
    as_json = run("verify", "--tenant", TENANT, "--json", cwd=tmp_path, data_dir=data_dir)
    assert as_json.code == 0
    (report,) = as_json.json_lines()
    assert report["ok"] is True
    assert report["events"] == 5
    assert report["entities"] == 2
    assert report["problems"] == []


def test_verify_exits_1_after_the_event_log_is_tampered_with(tmp_path: Path, data_dir: Path, history: History) -> None:
    db = data_dir / "tenants" / f"{TENANT}.db"
    conn = sqlite3.connect(db)
    try:
        with pytest.raises(sqlite3.DatabaseError):
            conn.execute("UPDATE events SET actor = 'user_mallory' WHERE seq = 2")
        triggers = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'events'")]  # fmt: skip
        assert triggers
        for name in triggers:
            conn.execute(f'DROP TRIGGER "{name}"')
        conn.execute("UPDATE events SET actor = 'user_mallory' WHERE seq = 2")
        conn.commit()
    finally:
        conn.close()
    result = run("verify", "--tenant", TENANT, cwd=tmp_path, data_dir=data_dir)
    assert result.code == 1, result.out + result.err
    assert "FAILED" in result.out
    as_json = run("verify", "--tenant", TENANT, "--json", cwd=tmp_path, data_dir=data_dir)
    assert as_json.code == 1
    (report,) = as_json.json_lines()
    assert report["ok"] is False
    assert report["problems"]


def test_verify_names_a_damaged_file_and_how_to_rebuild_it_checks_the_other_tenants_and_exits_1(
    tmp_path: Path, data_dir: Path, schemas: SchemaSet, clock: Any
) -> None:
    with Store(data_dir, schemas, clock=clock) as store:
        for tenant in ("acme", "globex"):
            store.do(tenant, AGENT, {"action": "create", "type": "Contact", "data": {"name": "Alice"}})
    damage_the_actor_index(data_dir / "tenants" / "acme.db")

    result = run("verify", cwd=tmp_path, data_dir=data_dir)
    as_json = run("verify", "--json", cwd=tmp_path, data_dir=data_dir)

    assert result.code == 1 and as_json.code == 1
    assert "acme: FAILED: its database file is damaged" in result.out
    assert "there is no lakehouse table to rebuild acme from" in result.out  # (this data dir never flushed)
    assert re.search(r"^globex: ok: 1 events", result.out, re.MULTILINE)
    reports = {r["tenant"]: r for r in as_json.json_lines()}
    assert reports["acme"]["damaged"] is True and reports["acme"]["ok"] is False
    assert reports["globex"]["ok"] is True


def test_verify_without_a_tenant_checks_every_tenant(
    tmp_path: Path, data_dir: Path, schemas: SchemaSet, clock: Any
) -> None:
    with Store(data_dir, schemas, clock=clock) as store:
        for tenant in ("acme", "globex"):
            clock.advance(1)
            store.do(tenant, AGENT, {"action": "create", "type": "Contact", "data": {"name": "Alice"}})
    result = run("verify", "--json", cwd=tmp_path, data_dir=data_dir)
    assert result.code == 0, result.err
    assert sorted(r["tenant"] for r in result.json_lines()) == ["acme", "globex"]
    assert all(r["ok"] for r in result.json_lines())


@pytest.mark.parametrize("reason", ["restore", "reindex"])
def test_reindex_of_a_tenant_another_restore_or_reindex_holds_is_refused_as_a_conflict(
    tmp_path: Path, data_dir: Path, history: History, reason: str
) -> None:
    from server.store.filelock import TenantLock

    lock = TenantLock(data_dir / "tenants" / f"{TENANT}.db")
    try:
        assert lock.try_exclusive(reason)
        refused = run("reindex", "--tenant", TENANT, cwd=tmp_path, data_dir=data_dir)
    finally:
        lock.release()

    assert refused.code == 2 and f"conflict: tenant '{TENANT}' is being {reason}" in refused.err


def test_verify_points_at_reindex_for_broken_lookup_keys_and_reindex_repairs_them(
    tmp_path: Path, data_dir: Path, history: History
) -> None:
    db = data_dir / "tenants" / f"{TENANT}.db"
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("DELETE FROM entity_keys")
        conn.execute("DELETE FROM entities_fts")
        conn.commit()

    broken = run("verify", "--tenant", TENANT, "--no-lake", cwd=tmp_path, data_dir=data_dir)
    repaired = run("reindex", "--tenant", TENANT, cwd=tmp_path, data_dir=data_dir)
    after = run("verify", "--tenant", TENANT, "--no-lake", cwd=tmp_path, data_dir=data_dir)
    missing = run("reindex", "--tenant", "nobody", cwd=tmp_path, data_dir=data_dir)

    assert broken.code == 1 and "full text differs" in broken.out
    assert f"headlessly reindex --tenant {TENANT}" in broken.out
    assert repaired.code == 0, repaired.out + repaired.err
    assert "verify: ok" in repaired.out
    assert f"{TENANT}: rebuilding the lookup keys and full text of every noun..." in repaired.err
    assert after.code == 0 and f"{TENANT}: ok" in after.out
    assert missing.code == 2 and "does not exist" in missing.err


def test_verify_points_at_restore_not_reindex_for_states_the_log_does_not_give(
    tmp_path: Path, data_dir: Path, history: History
) -> None:
    db = data_dir / "tenants" / f"{TENANT}.db"
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("DELETE FROM entities")  # (what reindex rebuilds from: it cannot give them back)
        conn.commit()

    unlooked = run("verify", "--tenant", TENANT, "--no-lake", cwd=tmp_path, data_dir=data_dir)
    looked = run("verify", "--tenant", TENANT, cwd=tmp_path, data_dir=data_dir)

    assert unlooked.code == 1 and "has events but no materialized row" in unlooked.out
    assert f"can be rebuilt from its events in the lakehouse: headlessly restore --tenant {TENANT}" in unlooked.out
    assert "if the log has events not yet flushed, flush them first" in unlooked.out
    assert "headlessly reindex" not in unlooked.out  # (keys rebuilt from the rows left would not mend it)
    assert looked.code == 1 and f"there is no lakehouse table to rebuild {TENANT} from" in looked.out
    assert "headlessly restore" not in looked.out


def test_verify_warns_of_entities_of_nouns_its_schemas_do_not_define_and_still_exits_0(
    tmp_path: Path, data_dir: Path, history: History
) -> None:
    folder = widget_folder(tmp_path, '"color": "string#"')
    with Store(data_dir, load_schemas([folder])) as store:
        for name in ("one", "two"):
            store.do(TENANT, AGENT, {"action": "create", "type": "Widget", "data": {"name": name}})

    without = run("verify", "--tenant", TENANT, "--no-lake", cwd=tmp_path, data_dir=data_dir)
    as_json = run("verify", "--tenant", TENANT, "--no-lake", "--json", cwd=tmp_path, data_dir=data_dir)
    given = run("verify", "--tenant", TENANT, "--no-lake", "--schemas", folder, cwd=tmp_path, data_dir=data_dir)

    assert without.code == 0, without.out + without.err
    assert f"{TENANT}: ok: 7 events" in without.out
    assert (
        "  warning: entities of types these schemas do not define are kept, but no tool reaches them: " in without.out
    )
    assert "Widget (2 live)" in without.out and "give verify the same ones" in without.out
    (report,) = as_json.json_lines()
    assert as_json.code == 0 and report["ok"] is True and report["problems"] == []
    assert report["undefinedTypes"] == {"Widget": {"live": 2, "deleted": 0}}
    assert given.code == 0 and f"{TENANT}: ok" in given.out and "warning" not in given.out


def test_reindex_says_verifys_warning_of_entities_of_nouns_its_schemas_do_not_define(
    tmp_path: Path, data_dir: Path, history: History
) -> None:
    folder = widget_folder(tmp_path, '"color": "string#"')
    with Store(data_dir, load_schemas([folder])) as store:
        store.do(TENANT, AGENT, {"action": "create", "type": "Widget", "data": {"name": "one"}})

    result = run("reindex", "--tenant", TENANT, cwd=tmp_path, data_dir=data_dir)

    assert result.code == 0, result.out + result.err
    assert f"nouns in tenant {TENANT}; verify: ok\n" in result.out
    assert "  warning: entities of types these schemas do not define are kept" in result.out
    assert "Widget (1 live)" in result.out


def test_verify_of_every_tenant_reports_one_being_restored_as_not_checked_checks_the_others_and_exits_1(
    data_dir: Path, schemas: SchemaSet, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from server.cli import main
    from server.store import tenants
    from server.store.filelock import TenantLock

    with Store(data_dir, schemas, clock=clock) as store:
        for tenant in ("acme", "globex"):
            clock.advance(1)
            store.do(tenant, AGENT, {"action": "create", "type": "Contact", "data": {"name": "Alice"}})
    monkeypatch.setattr(tenants, "LOCK_WAIT_SECONDS", 0.0)
    restoring = TenantLock(data_dir / "tenants" / "acme.db")
    assert restoring.try_exclusive("restore")
    try:
        text = CliRunner().invoke(main, ["verify", "--no-lake", "--data-dir", str(data_dir)])
        as_json = CliRunner().invoke(main, ["verify", "--no-lake", "--json", "--data-dir", str(data_dir)])
    finally:
        restoring.release()

    assert text.exit_code == 1 and as_json.exit_code == 1
    assert "acme: NOT CHECKED: tenant 'acme' is being restored" in text.stdout
    assert "globex: ok" in text.stdout
    reports = {r["tenant"]: r for r in map(json.loads, as_json.stdout.splitlines())}
    assert reports["acme"]["ok"] is False and "being restored" in reports["acme"]["notChecked"]
    assert reports["globex"]["ok"] is True


# ---- serve refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.com"])
def test_serve_refuses_no_auth_on_a_non_loopback_host(tmp_path: Path, data_dir: Path, host: str) -> None:
    result = run("serve", "--transport", "http", "--no-auth", "--host", host, "--port", "0", cwd=tmp_path, data_dir=data_dir)  # fmt: skip
    assert result.code == 2
    assert "loopback" in result.err
    assert "Traceback" not in result.err


@pytest.mark.parametrize("transport", ["http", "sse"])
@pytest.mark.parametrize(
    "host", ["999.1.1.1", "not a host", "", "a/b", "ab@cd", "-bad", "a..b", "x?y", "0.0.0.0 ", "fe80::1%eth0"]
)
def test_serve_refuses_a_host_that_is_not_an_address_or_a_name(
    tmp_path: Path, data_dir: Path, host: str, transport: str
) -> None:
    result = run("serve", "--transport", transport, "--host", host, "--port", "0", cwd=tmp_path, data_dir=data_dir)
    assert result.code == 2
    assert f"--host {host!r}" in result.err and (
        "is not an IP address or a host name" in result.err or "zone" in result.err
    )
    assert "Traceback" not in result.err


def test_serve_over_stdio_says_that_the_network_flags_it_was_given_are_ignored(tmp_path: Path, data_dir: Path) -> None:
    served = subprocess.run(
        [HEADLESSLY, "serve", "--no-flush", "--port", "9", "--no-auth", "--data-dir", str(data_dir)],
        cwd=tmp_path, input="", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    plain = subprocess.run(
        [HEADLESSLY, "serve", "--no-flush", "--data-dir", str(data_dir)],
        cwd=tmp_path, input="", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert served.returncode == 0 and plain.returncode == 0
    assert "--port, --no-auth ignored: they apply to --transport http or sse" in served.stderr
    assert "apply to --transport" not in plain.stderr


def test_serve_over_sse_says_that_the_streamable_http_session_flags_are_ignored(tmp_path: Path, data_dir: Path) -> None:
    refused = run(
        "serve",
        "--transport",
        "sse",
        "--sessions-per-token",
        "3",
        "--host",
        "not a host",
        cwd=tmp_path,
        data_dir=data_dir,
    )  # (the bad host ends it before it serves; the warning comes first)
    assert refused.code == 2 and "--sessions-per-token ignored: it applies to --transport http" in refused.err


@pytest.mark.parametrize("tenant", ["Bad_Tenant", "../etc", "-x"])
def test_serve_refuses_a_bad_tenant(tmp_path: Path, data_dir: Path, tenant: str) -> None:
    result = run("serve", f"--tenant={tenant}", cwd=tmp_path, data_dir=data_dir)
    assert result.code == 2
    assert "tenant" in result.err
    assert "Traceback" not in result.err
    assert not (data_dir / "tenants").exists() or not any((data_dir / "tenants").iterdir())


def test_serve_refuses_a_bad_actor(tmp_path: Path, data_dir: Path) -> None:
    result = run("serve", "--actor", "robot", cwd=tmp_path, data_dir=data_dir)
    assert result.code == 2
    assert "actor" in result.err
    assert "Traceback" not in result.err


# ---- bad data dirs and flags ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", [["verify"], ["flush"], ["reindex", "--tenant", TENANT], ["token", "list"], ["token", "revoke", "x"]]
)
def test_a_command_that_reads_a_data_dir_refuses_one_that_does_not_exist_and_does_not_make_it(
    tmp_path: Path, command: list[str]
) -> None:
    typo = tmp_path / "dtaa"
    result = run(*command, cwd=tmp_path, data_dir=typo)
    assert result.code == 2
    assert f"there is no data dir at {typo}" in result.err and "Traceback" not in result.err
    assert not typo.exists()


@pytest.mark.parametrize("command", [["serve"], ["events"], ["verify"], ["token", "list"]])
@pytest.mark.parametrize("given", ["", "afile"])
def test_a_data_dir_that_is_empty_or_a_file_is_refused_as_bad_input(
    tmp_path: Path, command: list[str], given: str
) -> None:
    (tmp_path / "afile").write_text("")
    result = run(*command, "--data-dir", given, cwd=tmp_path)
    assert result.code == 2 and "'--data-dir'" in result.err and "Traceback" not in result.err
    assert ("is empty" if not given else "is a file") in result.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.parametrize(
    "command", [["serve"], ["events"], ["verify"], ["token", "create", "--tenant", "acme", "--actor", AGENT]]
)
def test_a_data_dir_given_with_a_tilde_is_checked_after_the_tilde_is_expanded(
    tmp_path: Path, command: list[str]
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "afile").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADLESSLY_")}
    env |= {"HOME": str(home), "HEADLESSLY_DATA_DIR": "~/afile"}  # (as an mcp.json env block gives it: no shell)
    done = subprocess.run([HEADLESSLY, *command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and f"'{home / 'afile'}' is a file, not a folder" in done.stderr
    assert sorted(p.name for p in home.iterdir()) == ["afile"]


def test_a_data_dir_below_a_file_ends_a_command_with_one_line_and_status_1(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    below = tmp_path / "afile" / "data"
    made = run("token", "create", "--tenant", TENANT, "--actor", AGENT, cwd=tmp_path, data_dir=below)
    served = subprocess.run(
        [HEADLESSLY, "serve", "--no-flush", "--data-dir", str(below)],
        cwd=tmp_path, input="", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert made.code == 1 and "Not a directory" in made.err and "Traceback" not in made.err
    assert served.returncode == 1
    assert f"cannot write in the data dir {below}: Not a directory" in served.stderr
    assert "Traceback" not in served.stderr and "serving" not in served.stderr


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--flush-interval", "nan"], "--flush-interval"),
        (["--flush-interval", "inf"], "--flush-interval"),
        (["--flush-interval", "1", "--no-flush"], "contradict"),
    ],
)
def test_serve_refuses_a_flush_interval_that_is_not_a_finite_number_of_seconds_or_comes_with_no_flush(
    tmp_path: Path, data_dir: Path, flags: list[str], says: str
) -> None:
    result = run("serve", *flags, cwd=tmp_path, data_dir=data_dir)
    assert result.code == 2
    assert says in result.err and "Traceback" not in result.err


@pytest.mark.parametrize(
    "command",
    [
        ["verify", "--tenant", ""], ["token", "list", "--tenant", "../x"], ["flush", "--tenant", "acme", "--tenant", "../x"],
        ["restore", "--tenant", "../x"], ["reindex", "--tenant", "CON"], ["events", "--tenant", "a/b"],
        ["events", "--tenant", "a/b", "--from-lake"], ["token", "create", "--tenant", "X", "--actor", AGENT],
    ],
)  # fmt: skip
def test_a_bad_tenant_name_is_refused_by_every_command_before_it_reads_or_says_anything(
    tmp_path: Path, data_dir: Path, command: list[str]
) -> None:
    data_dir.mkdir()
    result = run(*command, cwd=tmp_path, data_dir=data_dir)
    assert result.code == 2
    assert "Invalid value for '--tenant': invalid tenant name" in result.err and "Traceback" not in result.err
    assert result.out == "" and "restoring" not in result.err
    assert list(data_dir.iterdir()) == []


def test_events_piped_into_a_reader_that_stops_early_ends_quietly_with_the_status_of_a_broken_pipe(
    tmp_path: Path, data_dir: Path, schemas: SchemaSet
) -> None:
    with Store(data_dir, schemas) as store:
        many = [{"action": "create", "type": "Contact", "data": {"name": "x" * 500}} for _ in range(1000)]
        store.do(TENANT, AGENT, {"operations": many})
    argv = [HEADLESSLY, "events", "--tenant", TENANT, "--json", "--limit", "1000", "--data-dir", str(data_dir)]
    with subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.read(100)  # like `| head -c 100`
        proc.stdout.close()
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=60)
    assert code == 128 + signal.SIGPIPE, err  # as a shell reports a writer a closed pipe stopped
    assert err == ""


def test_lake_maintain_refuses_a_period_that_is_not_a_finite_number(tmp_path: Path, data_dir: Path) -> None:
    for flags in (["--retain-days", "nan"], ["--orphan-hours", "inf"]):
        result = run("lake", "maintain", *flags, cwd=tmp_path, data_dir=data_dir)
        assert result.code == 2, result.err
        said = "is not a finite number" if "nan" in flags else "inf is not in the range 0<=x<=876000"
        assert said in result.err and "Traceback" not in result.err


def test_serve_refused_for_its_hooks_leaves_no_data_dir_behind(tmp_path: Path, data_dir: Path) -> None:
    result = run("serve", "--hooks", "no_such_hooks_module", cwd=tmp_path, data_dir=data_dir)
    assert result.code == 2 and "no_such_hooks_module" in result.err
    assert not data_dir.exists()


def test_restore_into_a_data_dir_below_a_file_blames_the_data_dir_not_the_lakehouse(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    result = run("restore", "--tenant", TENANT, cwd=tmp_path, data_dir=tmp_path / "afile" / "data")
    assert result.code == 1
    assert "Not a directory" in result.err and "check the data dir" in result.err
    assert "lakehouse failed" not in result.err and "Traceback" not in result.err


def test_events_from_the_lake_say_on_stderr_when_more_events_are_in_the_table_than_the_limit(
    tmp_path: Path, data_dir: Path, history: History
) -> None:
    assert run("flush", cwd=tmp_path, data_dir=data_dir).code == 0
    cut = run("events", "--tenant", TENANT, "--from-lake", "--json", "--limit", "2", cwd=tmp_path, data_dir=data_dir)
    whole = run("events", "--tenant", TENANT, "--from-lake", "--json", "--limit", "5", cwd=tmp_path, data_dir=data_dir)
    assert [e["seq"] for e in cut.json_lines()] == [1, 2]
    assert "the first 2 events; more are in the table" in cut.err
    assert len(whole.json_lines()) == 5 and "more are in the table" not in whole.err


def test_serve_on_a_port_in_use_says_so_and_exits_1_without_a_traceback(tmp_path: Path, data_dir: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = run("serve", "--transport", "http", "--no-auth", "--no-flush", "--port", port, cwd=tmp_path, data_dir=data_dir)  # fmt: skip
    assert result.code == 1
    assert "address already in use" in result.err and "Traceback" not in result.err


def test_verify_of_one_tenant_whose_file_is_damaged_reports_it_as_every_tenant_with_the_restore_advice(
    tmp_path: Path, data_dir: Path, history: History
) -> None:
    os.truncate(data_dir / "tenants" / f"{TENANT}.db", 2048)

    as_json = run("verify", "--tenant", TENANT, "--json", "--no-lake", cwd=tmp_path, data_dir=data_dir)
    as_text = run("verify", "--tenant", TENANT, "--no-lake", cwd=tmp_path, data_dir=data_dir)
    every = run("verify", "--json", "--no-lake", cwd=tmp_path, data_dir=data_dir)

    assert as_json.code == 1 and as_text.code == 1
    assert json.loads(as_json.out) == json.loads(every.out)
    assert json.loads(as_json.out)["damaged"] is True and json.loads(as_json.out)["ok"] is False
    assert f"{TENANT}: FAILED: the database file of tenant 'acme' is damaged" in as_text.out
    assert f"headlessly restore --tenant {TENANT} --overwrite" in as_text.out


def test_verify_and_events_say_an_emptied_tenant_file_holds_no_database_and_leave_it_empty(
    tmp_path: Path, data_dir: Path, history: History, schemas: SchemaSet
) -> None:
    db = data_dir / "tenants" / f"{TENANT}.db"
    os.truncate(db, 0)

    every = run("verify", "--no-lake", cwd=tmp_path, data_dir=data_dir)
    one = run("verify", "--tenant", TENANT, "--json", "--no-lake", cwd=tmp_path, data_dir=data_dir)
    events = run("events", "--tenant", TENANT, cwd=tmp_path, data_dir=data_dir)

    assert every.code == 1
    assert f"{TENANT}: FAILED: the database file of tenant 'acme' is empty: it holds no database" in every.out
    assert "first write" in every.out and f"headlessly restore --tenant {TENANT} --overwrite" in every.out
    assert one.code == 1 and json.loads(one.out)["empty"] is True and json.loads(one.out)["ok"] is False
    assert events.code == 1 and "is empty: it holds no database" in events.err
    assert db.stat().st_size == 0  # nothing wrote an empty database into it
    with Store(data_dir, schemas) as store:  # a write opens it as a new tenant's, as after a crash before its first
        store.do(TENANT, AGENT, {"action": "create", "type": "Contact", "data": {"name": "Bob"}})
    after = run("verify", "--tenant", TENANT, "--no-lake", cwd=tmp_path, data_dir=data_dir)
    assert after.code == 0 and f"{TENANT}: ok: 1 events" in after.out
