"""`headlessly events` and `headlessly verify`: reading and checking the logs from the shell."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ..config import ENV_TENANT, Config
from .common import (
    actor_flag,
    data_dir_option,
    existing_data_dir_option,
    fail,
    lake_errors,
    lake_failure,
    log,
    main,
    missing_catalog,
    no_lake_table,
    open_store,
    print_table,
    schemas_option,
    short,
    tenant_flag,
    time_flag,
    undefined_warning,
    verify_progress,
)


@main.command()
@click.option(
    "--tenant",
    envvar=ENV_TENANT,
    default="default",
    show_default=True,
    callback=tenant_flag,
    help=f"The tenant (env {ENV_TENANT}).",
)
@click.option(
    "--type", "type_", default=None, help="Event type, exact or a glob: Contact.Qualified, Deal.*, *.Deleted."
)
@click.option("--target", default=None, help="An entity's $id: its whole history.")
@click.option("--actor", default=None, callback=actor_flag, help="Only events by this actor.")
@click.option("--since", default=None, callback=time_flag, help="From this time (RFC 3339 or a date), inclusive.")
@click.option("--until", default=None, callback=time_flag, help="Up to this time, inclusive.")
@click.option(
    "--filter",
    "filter_json",
    default=None,
    help='A search filter as JSON, as in the search tool: {"version": {"$gt": 3}}.',
)
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1), help="At most this many events.")
@click.option("--newest-first", is_flag=True, help="Newest first (default: oldest first).")
@click.option(
    "--from-lake",
    is_flag=True,
    help="Read the Iceberg table instead of the live store (flushed events; not with --filter).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON event per line instead of a table.")
@data_dir_option
@schemas_option
def events(tenant: str, type_: str | None, target: str | None, actor: str | None, since: str | None, until: str | None,
           filter_json: str | None, limit: int, newest_first: bool, from_lake: bool, as_json: bool, data_dir: Path,
           schema_dirs: tuple[Path, ...]) -> None:  # fmt: skip
    """Audit from the shell: a tenant's events, filtered as in search."""
    from ..store.tenants import empty_file, empty_file_error, tenant_path
    from ..timeutil import parse_time

    if since and until and parse_time(until) < parse_time(since):
        fail(f"--until {until} is before --since {since}: no event could match; give an until at or after the since")
    if from_lake:
        if filter_json:
            fail("--filter applies to the live store; with --from-lake use --type, --target, --actor, --since, --until")
        from ..lake import catalog as cat
        from ..lake.history import lake_events

        with lake_errors("reading the events table", data_dir):
            table = cat.existing_table(data_dir)
            if table is None:
                fail(no_lake_table(data_dir, ": `headlessly flush` (or a running server) fills it"))
            in_table = cat.watermarks(table)
            if tenant not in in_table:
                fail(
                    f"tenant {tenant!r} has no events in the table; its tenants: {', '.join(sorted(in_table)) or 'none'}"
                )
            found = lake_events(table, tenant, type_, target, actor, since, until, limit + 1, newest_first)
        _print_events(found[:limit], as_json)
        if len(found) > limit:
            click.echo(
                f"(the first {limit:,} {'event' if limit == 1 else 'events'}; more are in the table: raise --limit to see them)",
                err=True,
            )
        return

    flags: dict[str, Any] = {
        key: value for key, value in (("type", type_), ("target", target), ("actor", actor)) if value is not None
    }
    if since or until:
        flags["timestamp"] = {**({"$gte": since} if since else {}), **({"$lte": until} if until else {})}
    flt: Any = flags or None
    if filter_json:
        try:
            given = json.loads(filter_json)
        except json.JSONDecodeError as exc:
            fail(f"--filter is not JSON: {exc}")
        flt = {"$and": [given, flags]} if flags else given  # both hold, also on the same field
    store = open_store(Config(data_dir=data_dir, schema_dirs=list(schema_dirs)))
    rows: list[dict[str, Any]] = []
    try:
        if not store.pool.exists(tenant):
            fail(f"tenant {tenant!r} does not exist in {data_dir}")
        if empty_file(path := tenant_path(data_dir, tenant)):  # (reading it as the server does would write into it)
            error = empty_file_error(tenant, path)
            fail(f"{error.message}; {error.hint}", 1)
        cursor = None
        while len(rows) < limit:
            page = store.events(tenant, flt, "-seq" if newest_first else "seq", min(100, limit - len(rows)), cursor)
            rows.extend(page["results"])
            cursor = page["cursor"]
            if not cursor:
                break
    finally:
        store.close()
    _print_events(rows, as_json)
    if cursor:
        total = f"{page['total']:,}{' or more' if page.get('totalIsLowerBound') else ''}"
        click.echo(f"(the first {len(rows):,} of {total} events; raise --limit to see more)", err=True)


def _print_events(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        for e in rows:
            click.echo(json.dumps(e, ensure_ascii=False))
        return
    print_table(["seq", "timestamp", "type", "target", "v", "actor", "data", "why"],
           [[str(e["seq"]), e["timestamp"], e["type"], e["target"], str(e["version"]), e["actor"], short(e["data"]), _why(e)] for e in rows])  # fmt: skip


def _why(event: dict[str, Any]) -> str:
    """The event's reason (its start, if long) and the event that caused it (an AFTER hook's write)."""
    parts = []
    if reason := event.get("reason"):
        parts.append(reason if len(reason) <= 40 else reason[:39] + "…")
    if event.get("causedBy"):
        parts.append(f"caused by {event['causedBy']}")
    return "; ".join(parts)


def _echo_missing_catalog(file: str, as_json: bool) -> None:
    """verify's line on a configured SQLite catalog whose file is not there: the logs are checked, the table
    is not compared with them."""
    said = f"not compared with the logs: {missing_catalog(file)}"
    if as_json:
        click.echo(json.dumps({"lake": {"ok": True, "notChecked": said, "missingCatalogFile": file}}))
    else:
        click.echo(f"lake: {said}")


def _rebuild(name: str, table: Any, in_table: dict[str, Any], no_table: bool = False) -> str:
    """What can be done about a tenant whose file is damaged, as far as the lakehouse (if read) can tell.
    `no_table`: the lakehouse was looked at and has no events table (nothing was ever flushed to it)."""
    if no_table:
        return f"  there is no lakehouse table to rebuild {name} from (no events were ever flushed from this data dir)"
    if table is not None and name not in in_table:
        return f"  the lakehouse holds no events of {name} to rebuild it from (it was never flushed)"
    return (
        f"  the tenant can be rebuilt from the lakehouse: headlessly restore --tenant {name} --overwrite "
        "(the damaged file is kept aside)"
    )


def _restore(name: str, table: Any, in_table: dict[str, Any], no_table: bool, report: dict[str, Any]) -> str:
    """What can be done about a tenant whose file opens, but whose log or states are not what its events give: a
    restore from the table, which rebuilds only what the table holds, so the events not yet flushed go first."""
    if no_table or (table is not None and name not in in_table):
        return _rebuild(name, table, in_table, no_table)  # (nothing to restore from: said so)
    advice = (
        f"  the tenant can be rebuilt from its events in the lakehouse: headlessly restore --tenant {name} "
        "--overwrite (this file is kept aside)"
    )
    if "lake" not in report:  # (not compared with the table: how far it holds this log is not known here)
        return (
            f"{advice}; a restore rebuilds only what the table holds: if the log has events not yet flushed, "
            f"flush them first (headlessly flush --tenant {name})"
        )
    behind = report["events"] - report["lake"]["watermark"]
    if behind > 0:
        return (
            f"{advice}; but {behind} of its events are not in the table yet: flush them first (headlessly flush "
            f"--tenant {name}), or the restore leaves them only in the file set aside"
        )
    return advice


def _refill(name: str, table: Any, in_table: dict[str, Any]) -> str:
    """What can be done about a tenant whose file is empty (0 bytes), as far as the lakehouse (if read) can tell."""
    if table is not None and name in in_table:
        return (
            f"  it had events: {in_table[name][0]} are in the lakehouse; rebuild it from there: headlessly restore "
            f"--tenant {name} --overwrite (the empty file is kept aside)"
        )
    return (
        "  a crash between making a new tenant's file and its first write leaves such a file (its first write then "
        f"makes the database); if it had events, `headlessly restore --tenant {name} --overwrite` rebuilds it from "
        "the lakehouse, if they were flushed"
    )


@main.command()
@click.option(
    "--tenant", default=None, callback=tenant_flag, help="One tenant (default: every tenant in the data dir)."
)
@click.option("--json", "as_json", is_flag=True, help="The report as JSON.")
@click.option("--no-lake", is_flag=True, help="Skip comparing the Iceberg table with the log.")
@existing_data_dir_option
@schemas_option
def verify(tenant: str | None, as_json: bool, no_lake: bool, data_dir: Path, schema_dirs: tuple[Path, ...]) -> None:
    """Recompute every hash chain, re-derive every entity from its events, and compare the Iceberg
    table with the log (no gaps, no duplicates, same hashes up to the watermark); exit 1 on any problem."""
    from ..errors import DamagedFile, EmptyFile, HeadlesslyError, StorageError, TenantBusy

    store = open_store(Config(data_dir=data_dir, schema_dirs=list(schema_dirs)))
    ok = True
    try:
        here = store.tenants()
        in_table: dict[str, tuple[int, str]] = {}
        table, no_table = None, False
        try:
            if not no_lake:
                from ..lake import catalog as cat

                table = cat.existing_table(data_dir)  # (none: nothing to compare, and none is made)
                in_table = cat.watermarks(table) if table is not None else {}
                if table is None and (file := cat.missing_catalog_file()) is not None:
                    _echo_missing_catalog(file, as_json)  # (not a failure: as with no lakehouse, but said)
                else:
                    no_table = table is None
        except Exception as exc:  # the logs are still checked: say why the table is not
            log.debug("opening the lakehouse failed", exc_info=True)
            table, ok = None, False
            unread = f"the lakehouse could not be read, so it was not compared with the logs: {lake_failure(exc)}"
            click.echo(
                json.dumps({"lake": {"ok": False, "problems": [unread]}}) if as_json else f"lake: NOT CHECKED: {unread}"
            )
        names = [tenant] if tenant is not None else sorted({*here, *in_table})
        if not names:
            click.echo(f"no tenants in {data_dir}", err=True)
        for name in names:
            if name not in here and name in in_table:  # its log is gone: the table is all that is left
                ok = False
                lost = (
                    f"it has {in_table[name][0]} events in the table but no database here; "
                    f"`headlessly restore --tenant {name}` rebuilds it from the table"
                )
                if as_json:
                    click.echo(json.dumps({"tenant": name, "ok": False, "problems": [lost]}))
                else:
                    click.echo(f"{name}: FAILED: {lost}")
                continue
            try:
                report = store.verify(name, progress=verify_progress(name))
            except TenantBusy as exc:  # another tenant's check need not wait for this one
                ok = False
                if as_json:
                    click.echo(json.dumps({"tenant": name, "ok": False, "notChecked": exc.message}))
                else:
                    click.echo(f"{name}: NOT CHECKED: {exc.message}")
                continue
            except HeadlesslyError as exc:
                if tenant is not None and not isinstance(exc, StorageError):  # (a bad --tenant: status 2)
                    fail(exc.message, 2)
                ok = False  # (an unreadable file): said as for every tenant, and the other tenants are still checked
                damage, empty = isinstance(exc, DamagedFile), isinstance(exc, EmptyFile)
                if as_json:
                    said = {"tenant": name, "ok": False, "problems": [exc.message], "damaged": damage}
                    click.echo(json.dumps(said | ({"empty": True} if empty else {})))
                else:
                    click.echo(f"{name}: FAILED: {exc.message}")
                    if damage:
                        click.echo(_rebuild(name, table, in_table, no_table))
                    elif empty:
                        click.echo(_refill(name, table, in_table))
                continue
            if report.get("damaged"):  # nothing more to check in it: the remedy is a restore
                ok = False
                if as_json:
                    click.echo(json.dumps(report))
                    continue
                click.echo(f"{name}: FAILED: its database file is damaged (SQLite's own check); not read further")
                for problem in report["problems"]:
                    click.echo(f"  - {problem}")
                click.echo(_rebuild(name, table, in_table, no_table))
                continue
            lake_problems: list[str] = []
            if table is not None:
                from ..lake import catalog as cat
                from ..lake.restore import check_tenant as check_lake

                try:
                    lake_problems = check_lake(store, table, name)
                    report["lake"] = {"watermark": cat.watermark(table, name)[0]}
                except Exception as exc:  # one tenant's unreadable files: said, and the others still checked
                    log.debug("checking the lakehouse failed", exc_info=True)
                    lake_problems = [f"its events in the table could not be read: {lake_failure(exc)}"]
                report["problems"].extend(lake_problems)
                report["ok"] = report["ok"] and not lake_problems
            ok = ok and report["ok"]
            if as_json:
                click.echo(json.dumps(report))
                continue
            status = "ok" if report["ok"] else "FAILED"
            in_lake = ""
            if "lake" in report:  # the watermark: how far the table is known to hold this log, not a row count
                flushed = report["lake"]["watermark"]
                behind = report["events"] - flushed
                in_lake = f", flushed up to seq {flushed}" + (f" ({behind} not yet)" if behind > 0 else "")
            click.echo(
                f"{name}: {status}: {report['events']} events{in_lake}, {report['entities']} entities, head {report['headHash'][:16]}"
            )
            for problem in report["problems"]:
                click.echo(f"  - {problem}")
            if report.get("builtForOtherSchemas"):
                click.echo(
                    f"  (lookup keys and full text of {', '.join(report['builtForOtherSchemas'])} were built for other "
                    "schemas: not checked; `serve` rebuilds them when it opens the tenant)"
                )
            if report.get("undefinedTypes"):
                click.echo(f"  warning: {undefined_warning(report['undefinedTypes'])}")
            local = [p for p in report["problems"] if p not in lake_problems]  # (a restore reads the table)
            derived = [p for p in local if "lookup key" in p or "full text" in p]
            if len(derived) < len(local):  # the log, the states or the file's own rules: not reindex's to mend
                click.echo(_restore(name, table, in_table, no_table, report))
            elif derived:  # (not with the above: keys rebuilt from a state that is wrong would only agree with it)
                click.echo(
                    f"  lookup keys and full text can be rebuilt from the states: headlessly reindex --tenant {name}"
                )
    finally:
        store.close()
    sys.exit(0 if ok else 1)
