"""Rebuild a tenant's database from the table, and check the table against the log."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import HeadlesslyError, ValidationFailed
from ..store import Store
from ..store.events import GENESIS_HASH, EventRow
from ..timeutil import format_us
from . import catalog as cat

CHUNK = 5_000


class TenantExists(HeadlesslyError):
    code = "conflict"


def read_tenant(table: Any, tenant: str, columns: tuple[str, ...] | None = None) -> Any:
    """The tenant's rows (only its partitions are read), sorted by seq, as an Arrow table."""
    import pyiceberg.expressions

    ex: Any = pyiceberg.expressions  # its constructors are typed for bound terms; we pass names
    scan = table.scan(row_filter=ex.EqualTo("tenant", tenant), selected_fields=columns or ("*",))
    return scan.to_arrow().sort_by("seq")


def restore_tenant(
    store: Store, tenant: str, overwrite: bool = False, progress: Callable[[int, int], None] | None = None
) -> int:
    """Rebuild `tenant` from the table into `store`; returns the number of events restored.

    Refuses a tenant that already has events unless `overwrite`; the replaced file is kept beside
    the new one as `<tenant>.db.replaced-<time>`."""
    table = cat.open_table(store.data_dir)
    live = store.pool.exists(tenant) and store.head(tenant)[0] > 0
    if live and not overwrite:
        raise TenantExists(
            f"tenant {tenant!r} already has events in {store.data_dir}",
            hint="Restore into another --data-dir, or pass --overwrite (the current file is kept aside).",
        )
    rows = read_tenant(table, tenant)  # read and check everything before touching the live file
    total = rows.num_rows
    if total == 0:
        raise ValidationFailed(
            f"the table has no events for tenant {tenant!r}", hint="Check the tenant name and the catalog."
        )
    aside = _set_aside(store, tenant, "replaced") if store.pool.exists(tenant) else []
    done = 0
    try:
        for batch in rows.to_batches(max_chunksize=CHUNK):
            store.import_log(tenant, [_row(tenant, r) for r in batch.to_pylist()])
            done += batch.num_rows
            if progress:
                progress(done, total)
    except BaseException:
        _set_aside(store, tenant, "failed")  # the partial rebuild, kept for a look
        for moved, original in aside:
            moved.rename(original)  # and the tenant as it was, back in place
        raise
    return done


def _set_aside(store: Store, tenant: str, label: str) -> list[tuple[Path, Path]]:
    """Move the tenant's files to `<tenant>.db.<label>-<time>`; returns (new, old) paths."""
    from ..store.tenants import tenant_path

    store.pool.forget(tenant)
    path = tenant_path(store.data_dir, tenant)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    moved = []
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            target = Path(f"{path}.{label}-{stamp}{suffix}")
            source.rename(target)
            moved.append((target, source))
    return moved


def _row(tenant: str, r: dict[str, Any]) -> EventRow:
    ts = r["timestamp"]
    us = int(ts.timestamp()) * 1_000_000 + ts.microsecond if hasattr(ts, "timestamp") else int(ts)
    return EventRow(
        seq=r["seq"], id=r["id"], type=r["type"], entity_type=r["entity_type"], action=r["type"].partition(".")[2],
        target=r["target"], actor=r["actor"], ts=format_us(us), version=r["version"], data=r["data"],
        changes=r["changes"], state=r["state"], reason=r["reason"], caused_by=r["caused_by"],
        prev_hash=r["prev_hash"], hash=r["hash"],
    )  # fmt: skip


def check_tenant(store: Store, table: Any, tenant: str) -> list[str]:
    """Problems between the table and the log: gaps, duplicates, hashes that differ, up to the watermark."""
    problems: list[str] = []
    wm_seq, wm_hash = cat.watermark(table, tenant)
    rows = read_tenant(table, tenant, ("seq", "hash", "prev_hash"))
    seqs = rows.column("seq").to_pylist()
    hashes = rows.column("hash").to_pylist()
    if len(set(seqs)) != len(seqs):
        problems.append(f"lake: tenant {tenant} has duplicate rows ({len(seqs) - len(set(seqs))} extra)")
    if seqs != list(range(1, len(seqs) + 1)):
        missing = sorted(set(range(1, (max(seqs) if seqs else 0) + 1)) - set(seqs))[:5]
        problems.append(
            f"lake: tenant {tenant} has gaps (missing seq {missing}...)"
            if missing
            else f"lake: tenant {tenant} rows out of order"
        )
    if (seqs[-1] if seqs else 0) != wm_seq:
        problems.append(
            f"lake: tenant {tenant} watermark is seq {wm_seq} but the table holds up to {seqs[-1] if seqs else 0}"
        )
    log_seq, prev = 0, GENESIS_HASH
    by_seq = dict(zip(seqs, hashes, strict=True))
    while log_seq < wm_seq:
        chunk = store.log(tenant, log_seq, 10_000)
        if not chunk:
            problems.append(f"lake: tenant {tenant}: the table goes to seq {wm_seq} but the log ends at {log_seq}")
            break
        for e in chunk:
            if e.seq > wm_seq:
                break
            if by_seq.get(e.seq) != e.hash:
                problems.append(f"lake: tenant {tenant} seq {e.seq}: the table's hash differs from the log's")
                if len(problems) > 20:
                    return problems
            prev = e.hash
        log_seq = chunk[-1].seq
    if wm_seq and prev != wm_hash and not problems:
        problems.append(f"lake: tenant {tenant} watermark hash differs from the log's hash at seq {wm_seq}")
    return problems
