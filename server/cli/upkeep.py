"""`headlessly flush`, `restore`, `reindex` and `lake maintain`: upkeep of the logs and the Iceberg table."""

from __future__ import annotations

import sys
from contextlib import suppress
from pathlib import Path

import click

from ..config import OPEN_DAY_FILES, Config
from .common import (
    data_dir_option,
    echo_verify,
    existing_data_dir_option,
    fail,
    finite,
    lake_errors,
    main,
    no_lake_table,
    open_store,
    schemas_option,
    tenant_flag,
    verify_progress,
)


@main.command()
@click.option(
    "--tenant",
    "tenants",
    multiple=True,
    callback=tenant_flag,
    help="Only this tenant (repeatable; default: every tenant).",
)
@existing_data_dir_option
@schemas_option
def flush(tenants: tuple[str, ...], data_dir: Path, schema_dirs: tuple[Path, ...]) -> None:
    """Send every event not yet in the Iceberg table to it, exactly once, with progress."""
    from ..errors import HeadlesslyError, TenantBusy
    from ..lake import catalog as cat
    from ..lake.flusher import Flusher, LakeDiverged

    store = open_store(Config(data_dir=data_dir, schema_dirs=list(schema_dirs)))
    failed: list[str] = []
    problems = ""
    try:
        present = store.tenants()
        names = list(dict.fromkeys(tenants)) or present
        for name in tenants:
            if name not in present:
                fail(f"tenant {name!r} does not exist in {data_dir}")
        flusher = Flusher(store)
        with lake_errors("opening the events table", data_dir):
            flusher.table  # noqa: B018 (opened now, so a catalog that fails is said before any progress)
        backlog, busy = 0, []
        for name in names:
            try:
                backlog += max(0, store.head(name)[0] - cat.watermark(flusher.table, name)[0])
            except TenantBusy:
                busy.append(name)  # waited for once already: not again in the flush
            except HeadlesslyError:
                pass  # unreadable: the flush names it, and still sends the other tenants
        with (
            click.progressbar(length=backlog, label="flushing", file=sys.stderr, show_pos=True) as bar,
            lake_errors("flushing", data_dir),
        ):
            try:
                report = flusher.flush([n for n in names if n not in busy], progress=lambda _t, n: bar.update(n))
            except LakeDiverged as exc:  # some tenants could not be sent: named below, the others were
                report, failed, problems = exc.report, exc.tenants, str(exc)
        busy += report.busy
        for name, n in report.tenants.items():
            click.echo(f"  {name}: {n} events (oldest was {report.lag_seconds[name]:.1f}s old)", err=True)
    finally:
        store.close()
    left_out = [t for t in failed if t not in report.tenants]  # (one flushed up to an altered event was sent)
    click.echo(f"flushed {report.events} events of {len(names) - len(busy) - len(left_out)} tenant(s)")
    if busy:
        click.echo(
            f"headlessly: not flushed: {', '.join(busy)} (being restored, reindexed or rebuilt by another "
            "process); run flush again when that has finished",
            err=True,
        )
    if failed:
        click.echo(f"headlessly: not flushed: {problems}", err=True)
    if busy or failed:
        sys.exit(1)


@main.command()
@click.option("--tenant", required=True, callback=tenant_flag, help="The tenant to rebuild from the table.")
@click.option(
    "--overwrite", is_flag=True, help="Replace a tenant that has events (its file is kept aside as .replaced-<time>)."
)
@data_dir_option
@schemas_option
def restore(tenant: str, overwrite: bool, data_dir: Path, schema_dirs: tuple[Path, ...]) -> None:
    """Rebuild a tenant's database from the Iceberg table (events, hashes and state), then verify it."""
    from ..lake import catalog as cat
    from ..lake.restore import restore_tenant

    store = open_store(Config(data_dir=data_dir, schema_dirs=list(schema_dirs)))
    try:
        with lake_errors("opening the events table", data_dir):
            _refuse_below_a_file(data_dir)
            if cat.existing_table(data_dir) is None:  # (a typo'd data dir: refused with nothing made, not even it)
                fail(no_lake_table(data_dir, " to restore from: `headlessly flush` (or a running server) fills it"))
        label = f"restoring {tenant}"
        lines = not sys.stderr.isatty()  # where a bar cannot be redrawn (a log, CI): a line per tenth of the way
        said = [0]
        with click.progressbar(length=1, label=label, file=sys.stderr, show_percent=True) as bar:
            # One step more than the events: the bar reaches 100% only once entities and indexes are built.
            def progress(done: int, total: int) -> None:
                bar.length = total + 1
                bar.update(done - bar.pos)
                if lines and total and (tenth := 10 * done // total) > said[0]:
                    said[0] = tenth
                    click.echo(f"  {tenant}: {done} of {total} events read", err=True)

            def indexing() -> None:
                bar.label, bar.show_eta = f"{label} (indexing)", False  # the ETA of the events says nothing here
                bar.render_progress()
                if lines:
                    click.echo(f"  {tenant}: writing entities and building indexes", err=True)

            with lake_errors(f"reading tenant {tenant}'s events", data_dir):
                count = restore_tenant(store, tenant, overwrite, progress, indexing)
            bar.update(1)
        report = store.verify(tenant, progress=verify_progress(tenant))
    finally:
        store.close()
    click.echo(f"restored {count} events into tenant {tenant}; verify: {'ok' if report['ok'] else 'FAILED'}")
    echo_verify(report)
    sys.exit(0 if report["ok"] else 1)


def _refuse_below_a_file(path: Path) -> None:
    """Raise the NotADirectoryError that making `path` would meet below a file (the data dir's failure, not
    the lakehouse's), without making it: restore makes a missing data dir only when it has events to write."""
    with suppress(FileNotFoundError):
        path.stat()


@main.command()
@click.option(
    "--tenant", required=True, callback=tenant_flag, help="The tenant whose lookup keys and full text to rebuild."
)
@existing_data_dir_option
@schemas_option
def reindex(tenant: str, data_dir: Path, schema_dirs: tuple[Path, ...]) -> None:
    """Rebuild a tenant's lookup keys and full text from its entities' current states (every noun), e.g. when
    verify reports keys that do not follow from the states. Events and states are not touched. Needs the
    tenant to itself: stop the servers using this --data-dir first."""
    from ..errors import Conflict, TenantBusy
    from ..store.filelock import TenantLock
    from ..store.reindex import reindex_tenant
    from ..store.tenants import tenant_path

    later = "Run reindex when that has finished."
    path = tenant_path(data_dir, tenant)
    if path.exists():  # another restore or reindex has it: refused now (a refusal, as when a server has it open)
        lock = TenantLock(path)
        try:
            if not lock.try_share():
                raise Conflict(f"tenant {tenant!r} is {lock.activity()}", hint=later)
        finally:
            lock.release()
    store = open_store(Config(data_dir=data_dir, schema_dirs=list(schema_dirs)))
    try:
        try:
            with store.pool.lease(tenant, create=False):
                pass  # opened once: an older file is migrated first
        except TenantBusy as exc:  # (one that began just now)
            raise Conflict(exc.message, hint=later) from None
        store.pool.forget(tenant)
        click.echo(f"  {tenant}: rebuilding the lookup keys and full text of every noun...", err=True)
        nouns = reindex_tenant(path, store.schemas)
        report = store.verify(tenant, progress=verify_progress(tenant))
    finally:
        store.close()
    click.echo(
        f"rebuilt the lookup keys and full text of {len(nouns)} nouns in tenant {tenant}; verify: {'ok' if report['ok'] else 'FAILED'}"
    )
    echo_verify(report)
    sys.exit(0 if report["ok"] else 1)


@main.group()
def lake() -> None:
    """Upkeep of the Iceberg table."""


@lake.command("register")
@existing_data_dir_option
def lake_register(data_dir: Path) -> None:
    """Register the events table left in this data dir's warehouse with its local catalog, after the catalog
    (lakehouse/catalog.db) was lost or emptied: from the table's newest metadata file. Then run verify."""
    from ..lake.catalog import register

    with lake_errors("registering the events table", data_dir):
        table, metadata = register(data_dir)
        snapshots = len(table.metadata.snapshots)
    click.echo(f"registered the events table from {metadata} ({snapshots} snapshot(s)); run `headlessly verify` next")


@lake.command("maintain")
@click.option(
    "--retain-days",
    default=7.0,
    show_default=True,
    type=click.FloatRange(min=0, max=36_500),
    callback=finite,
    help="Expire snapshots, and the tags of the table's state before each run, older than this (snapshots an "
    "append superseded go sooner: they hold nothing more).",
)
@click.option("--orphan-hours", default=1.0, show_default=True, type=click.FloatRange(min=0, max=876_000), callback=finite,
              help="Remove unreferenced data and metadata files older than this (younger ones may belong to a commit in flight).")  # fmt: skip
@click.option("--open-day-files", default=OPEN_DAY_FILES, show_default=True, type=click.IntRange(min=2),
              help="Also compact today's files of a tenant once it has this many (one per flush round).")  # fmt: skip
@data_dir_option
def lake_maintain(retain_days: float, orphan_hours: float, open_day_files: int, data_dir: Path) -> None:
    """Compact closed days (and today's files of a tenant once there are --open-day-files of them), expire old
    and superseded snapshots, prune old metadata, remove orphan files."""
    from datetime import timedelta

    from ..lake import catalog as cat
    from ..lake.maintain import maintain

    with lake_errors("maintaining the events table", data_dir):
        table = cat.existing_table(data_dir)
        if table is None:
            fail(no_lake_table(data_dir, ": `headlessly flush` (or a running server) makes and fills it"))
        report = maintain(
            table,
            timedelta(days=retain_days),
            timedelta(hours=orphan_hours),
            progress=lambda t: click.echo(f"  {t}", err=True),
            open_day_files=open_day_files,
        )
    click.echo(
        f"compacted {len(report.days_compacted)} day(s), expired {report.snapshots_expired} snapshot(s) and "
        f"{report.tags_removed} tag(s), removed {report.orphans_removed} orphan data file(s) and "
        f"{report.metadata_removed} unreferenced metadata file(s); data files {report.files_before} -> "
        f"{report.files_after}" + (f"; the table before this run is tag {report.tag}" if report.tag else "")
    )
