"""Rebuild a tenant's database from the table, and check the table against the log."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, suppress
from pathlib import Path
from typing import Any

from ..config import private_dir
from ..errors import Conflict, StorageError, ValidationFailed
from ..store import Store
from ..store.bulk import EVENT_COLUMNS, EventTuple, bulk_load
from ..store.events import EventRow, misnamed, row_hash
from ..store.filelock import MAKING, TenantLock, lock_path
from ..store.sqlite import damaged
from ..store.tenants import empty_file, empty_file_error, tenant_path
from . import catalog as cat
from .scan import TenantRows

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class TenantExists(Conflict):
    pass


def read_tenant(table: Any, tenant: str, columns: tuple[str, ...] | None = None) -> Any:
    """The tenant's rows (only its partitions are read), sorted by seq, as an Arrow table."""
    import pyiceberg.expressions

    ex: Any = pyiceberg.expressions  # its constructors are typed for bound terms; we pass names
    scan = table.scan(row_filter=ex.EqualTo("tenant", tenant), selected_fields=columns or ("*",))
    return _by_seq(scan.to_arrow())


def _by_seq(rows: Any) -> Any:
    """`rows` sorted by seq. Each flushed file holds a run of consecutive seqs, so putting the files'
    batches in order usually sorts the table without copying it; otherwise it is sorted row by row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    batches = sorted((b for b in rows.to_batches() if b.num_rows), key=lambda b: b.column("seq")[0].as_py())
    ordered = pa.Table.from_batches(batches, schema=rows.schema)
    seq = ordered.column("seq")
    if len(seq) < 2 or pc.all(pc.greater(seq[1:], seq[:-1])).as_py():
        return ordered
    return rows.sort_by("seq")


def restore_tenant(
    store: Store,
    tenant: str,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    indexing: Callable[[], None] | None = None,
) -> int:
    """Rebuild `tenant` from the table into `store`; returns the number of events restored.

    Refuses a tenant that already has events unless `overwrite`, and a tenant open in another process.
    The database is built and checked beside the live file and only then moved into place; the replaced
    file is kept beside it as `<tenant>.db.replaced-<time>`. From the build on, the tenant's lock file is
    held exclusive, so no server can open the file being replaced. A restore that is refused (or fails)
    leaves what was there before it: it removes the data dir, its `tenants/` folder and the tenant's lock
    file when it made them (a folder only while empty), never what it found: also when it is refused because
    another process holds the tenant's lock, whose lock file then is one it did not make (the lock file a
    restore makes is held by it from the moment it is there, so no other process can take it first)."""
    table = cat.existing_table(store.data_dir)  # (opened to read: a catalog without it is not given one)
    if table is None:
        raise ValidationFailed(
            f"there is no events table to restore tenant {tenant!r} from",
            hint="Check the catalog (<data-dir>/lakehouse, or the one pyiceberg's configuration names); "
            "`headlessly flush` (or a running server) makes and fills the table.",
        )
    path = tenant_path(store.data_dir, tenant)
    store.pool.forget(tenant)  # our own connections
    _refuse(path, tenant, overwrite)  # early, before reading the table
    rows = TenantRows(table, tenant)
    total = rows.total
    _refuse_lost_events(rows, tenant, cat.watermark(table, tenant))
    if total == 0:
        held = ", ".join(sorted(cat.watermarks(table))) or "none"
        raise ValidationFailed(
            f"the table has no events for tenant {tenant!r}; its tenants: {held}",
            hint="Check the tenant name and the catalog.",
        )
    made = private_dir(path.parent)  # (the data dir too, when it was not there)
    lock = TenantLock(path, making="restore")  # a lock file it makes is held from the moment it is there
    placed = False
    try:
        if not lock.try_exclusive("restore"):  # (a lock file it made it holds already: this is another's)
            raise _open_elsewhere(tenant, None if lock.try_share() else lock.activity())
        store.pool.forget(tenant)
        _refuse(path, tenant, overwrite)  # again, now that nobody of ours can open it
        _remove_leftovers(path)  # of earlier restores, killed (no other restore can run while we hold the lock)
        building = Path(f"{path}.restoring-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        try:
            restored = bulk_load(
                building,
                store.schemas,
                _event_tuples(rows.batches()),
                store.pool.durability,
                (lambda done: progress(done, total)) if progress else None,
                indexing,
            )
            _refuse(path, tenant, overwrite)  # again: a process that does not take the lock file
            aside = _set_aside(path)
            try:
                building.rename(path)
            except BaseException:
                for moved, original in aside:
                    moved.rename(original)  # the tenant as it was, back in place
                raise
            placed = True
        except BaseException:
            for suffix in ("", "-journal", "-wal", "-shm"):
                Path(f"{building}{suffix}").unlink(missing_ok=True)
            raise
    finally:
        if placed:
            lock.release()
        else:  # refused or failed: also a lock file it made while it looked who held the tenant (who deleted theirs)
            lock.discard()
            _remove_empty(made + lock.folders)
    return restored


def _remove_empty(folders: list[Path]) -> None:
    """Remove these folders, innermost first, each only while it is empty: one another process wrote into
    meanwhile stays, with the folders around it."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            return


def _refuse_lost_events(rows: TenantRows, tenant: str, watermark: tuple[int, str]) -> None:
    """Refuse a table that has lost events it once held: it ends before the tenant's watermark (the last
    event flushed), or its event at the watermark has another hash. Each event would still chain to the one
    before it, so the load's checks alone would restore the truncated log as if it were the whole one."""
    wm_seq, wm_hash = watermark
    if not wm_seq:
        return
    last = rows.last_seq
    hint = (
        "Nothing was restored. The table lost events that were flushed to it: roll it back to an Iceberg "
        "snapshot that still holds them, or keep the tenant's database if it still exists; `headlessly verify` "
        "compares the two."
    )
    if last < wm_seq:
        raise ValidationFailed(
            f"the table holds {rows.total} events of tenant {tenant!r} (up to seq {last}), but its watermark "
            f"records {wm_seq} flushed: the events after seq {last} are missing from the table",
            hint=hint,
        )
    found = rows.hash_at(wm_seq)  # (none: a gap, which the load refuses)
    if found is not None and found != wm_hash:
        raise ValidationFailed(
            f"the table's event at seq {wm_seq} of tenant {tenant!r} has another hash than the watermark records "
            f"for it (the last of the {wm_seq} events flushed)",
            hint=hint,
        )


def _refuse(path: Path, tenant: str, overwrite: bool) -> None:
    """Refuse a tenant that has events (unless `overwrite`) or is open in another process. Reads the file
    only: an empty or damaged one is left as it is (with `overwrite` it is then set aside as any other)."""
    if not path.exists():
        return
    _refuse_open_elsewhere(path, tenant)
    if overwrite:
        return
    aside = "Pass --overwrite to replace it: the current file is set aside as <tenant>.db.replaced-<time>."
    if empty_file(path):  # (connecting to read it would not write it; its events table is simply not there)
        raise empty_file_error(
            tenant, path, f"{aside} (A crash before a new tenant's first write can leave such a file.)"
        )
    try:
        # (read-write, as a server opens it: the last connection to close removes the -wal and -shm it made, which
        # a read-only one cannot; reading a file that is not empty writes nothing into it)
        with closing(sqlite3.connect(path, timeout=10)) as conn:
            (has_events,) = conn.execute("SELECT EXISTS (SELECT 1 FROM events)").fetchone()
    except sqlite3.Error as exc:
        if (damage := damaged(exc, tenant)) is not None:
            raise StorageError(
                damage.message,
                hint=f"{aside} `headlessly verify --tenant {tenant} --data-dir {path.parent.parent}` checks it.",
            ) from None
        raise StorageError(
            f"cannot read tenant {tenant!r} to see whether it has events: {exc}",
            hint=aside,
        ) from None
    if has_events:
        raise TenantExists(
            f"tenant {tenant!r} already has events in {path.parent.parent}",
            hint=(
                "Pass --overwrite to replace it (the current file is kept aside); `headlessly events --from-lake "
                f"--tenant {tenant} --data-dir {path.parent.parent}` lists what the table holds, to compare first."
            ),
        )


def _open_elsewhere(tenant: str, activity: str | None = None) -> TenantExists:
    """The refusal of a restore while another process has the tenant open, or to itself (`activity`)."""
    if activity is not None:
        return TenantExists(
            f"tenant {tenant!r} is {activity}, so it cannot be restored now",
            hint="Nothing was changed. Restore when that has finished.",
        )
    return TenantExists(
        f"tenant {tenant!r} is open in another process (a running `headlessly serve`?)",
        hint="Stop every server and command using this --data-dir, then restore.",
    )


def _refuse_open_elsewhere(path: Path, tenant: str) -> None:
    """Refuse while another process has the tenant's file open, even one that does not take the lock file
    (an older server, the sqlite3 shell): it would go on reading and writing the moved-aside file. In WAL
    mode every open connection holds a shared lock on the file's shared memory, so an exclusive-mode
    transaction succeeds only when nobody else is in."""
    if not path.exists():
        return  # (connecting would create it)
    probe = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        probe.execute("PRAGMA locking_mode = EXCLUSIVE")
        probe.execute("BEGIN EXCLUSIVE")
        probe.execute("ROLLBACK")
    except sqlite3.OperationalError:
        raise _open_elsewhere(tenant) from None
    except sqlite3.DatabaseError as exc:  # the file is damaged: SQLite can say so before it tries the locks
        if damaged(exc, tenant) is None:
            raise
        if _locked_elsewhere(path):
            raise _open_elsewhere(tenant) from None
    finally:
        probe.close()


# The bytes SQLite's unix VFS locks (POSIX advisory locks): in the database file, its pending, reserved and shared
# bytes (from 1 GiB on, whatever the file's size); in the -shm file of WAL mode, its 8 lock slots and the byte
# every open connection holds a shared lock on for as long as it is open.
_DB_LOCK_BYTES = (0x40000000, 512)
_SHM_LOCK_BYTES = (120, 9)


def _locked_elsewhere(path: Path) -> bool:
    """Whether another process holds one of SQLite's locks on the tenant's file or its -shm, told without SQLite
    (which refuses to go as far as its locks in a damaged file). Each lock is taken and let go at once; this
    process has no connection to the file then (closing a file releases every POSIX lock the process holds on
    it). Where there are no POSIX locks (Windows), it cannot be told: False (a file open elsewhere cannot be
    moved aside there)."""
    if fcntl is None:  # pragma: no cover - Windows
        return False
    for file, (start, length) in ((path, _DB_LOCK_BYTES), (Path(f"{path}-shm"), _SHM_LOCK_BYTES)):
        try:
            fd = os.open(file, os.O_RDWR)
        except FileNotFoundError:  # (no -shm: nobody has the file open in WAL mode)
            continue
        except OSError:  # unwritable by this user: who holds it cannot be told, so it is taken as held
            return True
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, length, start)
            fcntl.lockf(fd, fcntl.LOCK_UN, length, start)
        except OSError:
            return True
        finally:
            os.close(fd)
    return False


SQLITE_SIDE_FILES = ("-journal", "-wal", "-shm")


def _remove_leftovers(path: Path) -> None:
    """With the tenant held exclusive: delete the `<tenant>.db.restoring-*` files (and their journals) of
    restores that were killed while building, and the `<tenant>.db-lock.making-*` files of those killed while
    making the lock file (one that a live restore is making meanwhile, it makes again), and fold the
    -wal/-shm files left beside files set aside earlier into those files."""
    prefix = f"{path.name}."
    making = f"{lock_path(path).name}{MAKING}"
    for entry in list(path.parent.iterdir()):
        if entry.name.startswith(making):
            with suppress(OSError):  # best effort, as below
                entry.unlink(missing_ok=True)
        if not entry.name.startswith(prefix):
            continue
        rest = entry.name[len(prefix) :]
        if rest.startswith("restoring-"):
            with suppress(OSError):  # best effort: (where there is no flock) one still open cannot be removed
                entry.unlink(missing_ok=True)
        elif (
            rest.startswith("replaced-")
            and not rest.endswith(SQLITE_SIDE_FILES)
            and any(Path(f"{entry}{suffix}").exists() for suffix in SQLITE_SIDE_FILES)
        ):
            _fold_wal(entry)


def _fold_wal(path: Path) -> None:
    """Checkpoint a database's WAL into it and close it: the last connection to close deletes the -wal and
    -shm files (when another process still has it open, or it cannot be read, they stay)."""
    if not path.exists():
        return
    with suppress(sqlite3.Error), closing(sqlite3.connect(path, timeout=10)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    if not Path(f"{path}-wal").exists():
        Path(f"{path}-shm").unlink(missing_ok=True)  # an index of a WAL that is no more


def _set_aside(path: Path) -> list[tuple[Path, Path]]:
    """Move the tenant's files to `<tenant>.db.replaced-<time>`, its WAL folded into it first (so that only
    that file remains, unless another process holds it open); returns (new, old) paths."""
    _fold_wal(path)
    stamp = base = time.strftime("%Y%m%dT%H%M%S")
    n = 1
    while any(Path(f"{path}.replaced-{stamp}{suffix}").exists() for suffix in ("", "-wal", "-shm")):
        n += 1  # a restore within the same second as the last: rename would replace its set-aside file
        stamp = f"{base}-{n}"
    moved = []
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            target = Path(f"{path}.replaced-{stamp}{suffix}")
            source.rename(target)
            moved.append((target, source))
    return moved


def _event_tuples(batches: Iterable[Any]) -> Iterator[list[EventTuple]]:
    """Record batches of the table as events in EVENT_COLUMNS order, a batch at a time, converted column by
    column."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for batch in batches:
        # format_us's text: Arrow's cast of a timestamp[us] prints `2026-01-16 09:30:00.000000` (8x faster
        # than its strftime); the T and the Z make it ours. A text that differed would fail the hash check.
        text = batch.column("timestamp").cast(pa.timestamp("us")).cast(pa.string())
        derived = {
            "action": pc.replace_substring_regex(batch.column("type"), pattern=r"^[^.]*\.?", replacement=""),
            "ts": pc.binary_join_element_wise(pc.utf8_replace_slice(text, start=10, stop=11, replacement="T"), "Z", ""),
        }
        columns = [derived[name] if name in derived else batch.column(name) for name in EVENT_COLUMNS]
        yield list(zip(*(column.to_pylist() for column in columns), strict=True))


MOST_PROBLEMS = 20


def check_tenant(store: Store, table: Any, tenant: str) -> list[str]:
    """Problems between the table and the log, up to the watermark: gaps, duplicates, rows out of order,
    hashes that differ from the log's, and rows whose content no longer gives their hash (an edited Parquet
    file: the hash column alone can still match the log). One pass over the table in seq order beside the
    log, a batch of each at a time; at most MOST_PROBLEMS of each kind are listed."""
    wm_seq, wm_hash = cat.watermark(table, tenant)
    log = _LogHashes(store, tenant, wm_seq)
    duplicates, disorder, last = 0, False, 0
    missing: list[int] = []
    differ: list[int] = []  # seqs
    altered: list[int] = []
    for chunk in _event_tuples(TenantRows(table, tenant).batches()):
        for values in chunk:
            event = EventRow(*values)
            if event.seq > last:
                missing.extend(range(last + 1, min(event.seq, last + 1 + 5 - len(missing))))
                differ.extend(log.without_row(last, event.seq, MOST_PROBLEMS - len(differ)))
            else:  # every copy of a duplicated row is checked too: any of them may be the forged one
                duplicates += event.seq == last
                disorder = disorder or event.seq < last
            if (
                event.seq >= last  # (the log is read forwards)
                and len(differ) < MOST_PROBLEMS
                and differ[-1:] != [event.seq]
                and log.hash(event.seq) not in (None, event.hash)
            ):
                differ.append(event.seq)
            if (
                len(altered) < MOST_PROBLEMS
                and (row_hash(event) != event.hash or misnamed(event.type, event.entity_type))
                and altered[-1:] != [event.seq]
            ):
                altered.append(event.seq)
            last = max(last, event.seq)
    differ.extend(log.without_row(last, wm_seq + 1, MOST_PROBLEMS - len(differ)))
    problems: list[str] = []
    if duplicates:
        problems.append(f"lake: tenant {tenant} has duplicate rows ({duplicates} extra)")
    if missing:
        problems.append(f"lake: tenant {tenant} has gaps (missing seq {missing}...)")
    if disorder:
        problems.append(f"lake: tenant {tenant} rows out of order")
    if last != wm_seq:
        problems.append(f"lake: tenant {tenant} watermark is seq {wm_seq} but the table holds up to {last}")
    if log.ended is not None:
        problems.append(f"lake: tenant {tenant}: the table goes to seq {wm_seq} but the log ends at {log.ended}")
    problems += [f"lake: tenant {tenant} seq {seq}: the table's hash differs from the log's" for seq in differ]
    if wm_seq and log.hash(wm_seq) not in (None, wm_hash) and not problems:
        problems.append(f"lake: tenant {tenant} watermark hash differs from the log's hash at seq {wm_seq}")
    return problems + [
        f"lake: tenant {tenant} seq {seq}: the table's row was altered (its content does not give its hash, or its entity_type is not its type's noun)"
        for seq in altered
    ]


class _LogHashes:
    """The log's hashes up to seq `until`, read forward 10,000 events at a time."""

    def __init__(self, store: Store, tenant: str, until: int) -> None:
        self.store, self.tenant, self.until = store, tenant, until
        self.hashes: dict[int, str] = {}
        self.read_to = 0  # seq
        self.ended: int | None = None  # where the log ended before `until`

    def hash(self, seq: int) -> str | None:
        """The log's hash at `seq` (seqs asked for only grow); None past `until` or the log's end."""
        if seq > self.until:
            return None
        while seq > self.read_to and self.ended is None:
            self.hashes = {e.seq: e.hash for e in self.store.log(self.tenant, self.read_to, 10_000)}
            if not self.hashes:
                self.ended = self.read_to
                break
            self.read_to = max(self.hashes)
        return self.hashes.get(seq)

    def without_row(self, after: int, before: int, most: int) -> list[int]:
        """Up to `most` of the log's seqs strictly between `after` and `before` (up to `until`): seqs the table
        has no row for."""
        found: list[int] = []
        for seq in range(after + 1, min(before, self.until + 1)):
            if len(found) >= most or self.hash(seq) is None:
                break  # (None: the log ended)
            found.append(seq)
        return found
