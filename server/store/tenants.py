"""Tenants: name checks, file paths, and a bounded pool of open tenant databases."""

from __future__ import annotations

import functools
import itertools
import logging
import re
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from time import monotonic, sleep

from ..config import private_dir
from ..errors import EmptyFile, InvalidTenant, LimitExceeded, NotFound, StorageError, TenantBusy
from ..schema import SchemaSet
from .checkpoints import Checkpointer
from .filelock import TenantLock, lock_path
from .reindex import open_elsewhere, rebuild_alone, stale
from .sqlite import connect, damaged, migrate, out_of_space
from .undefined import warn_undefined
from .writer import Settled, Writer

log = logging.getLogger(__name__)

TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
LOCK_WAIT_SECONDS = 10.0  # how long an open waits for a restore, reindex or rebuild elsewhere to end
POLL_SECONDS = 0.05
_DEVICE_NAMES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


def check_tenant(name: object) -> str:
    """The tenant name, or InvalidTenant before anything touches the file system."""
    if not isinstance(name, str) or not TENANT_NAME.fullmatch(name) or name in _DEVICE_NAMES:
        shown = repr(name)[:80]
        raise InvalidTenant(
            f"invalid tenant name {shown}: tenant names match {TENANT_NAME.pattern} and are not a reserved device name",
            hint="Use lowercase letters, digits and '-', starting with a letter or digit, at most 63 characters.",
        )
    return name


def empty_file(path: Path) -> bool:
    """Whether the tenant's file is there but holds no database: 0 bytes, and no WAL with a commit in it."""
    try:
        if path.stat().st_size:
            return False
    except FileNotFoundError:
        return False
    try:
        return Path(f"{path}-wal").stat().st_size == 0
    except FileNotFoundError:
        return True


def empty_file_error(name: str, path: Path, hint: str | None = None) -> EmptyFile:
    """The refusal to read (or check) a tenant whose file is empty, which opening would turn into an empty
    database: a write to the tenant opens it as a new one. `hint`: what the refusing command advises instead."""
    return EmptyFile(
        f"the database file of tenant {name!r} is empty: it holds no database ({path})",
        hint=hint
        or "Nothing was read or written. A crash between making a new tenant's file and its first write leaves "
        "such a file (the tenant's first write then makes its database); a tenant that had events lost them: "
        f"`headlessly restore --tenant {name} --overwrite` rebuilds it from the lakehouse (the empty file is set "
        "aside).",
    )


def tenant_path(data_dir: Path, name: str) -> Path:
    return data_dir / "tenants" / f"{check_tenant(name)}.db"


class Tenant:
    """One open tenant database: its writer connection and a small pool of reader connections."""

    def __init__(
        self,
        name: str,
        path: Path,
        schemas: SchemaSet,
        durability: str,
        clock: Callable[[], int],
        max_readers: int,
        checkpoint_due: Callable[[], None] | None = None,
        follow_schemas: bool = True,
        settled: Settled | None = None,
    ) -> None:
        self.name = name
        self.path = path
        private_dir(path.parent)
        self._durability = durability
        self._lock = TenantLock(path)
        conn: sqlite3.Connection | None = None
        try:
            deadline = monotonic() + LOCK_WAIT_SECONDS  # one limit for the whole open
            self._share(deadline)
            conn = connect(path, durability)
            migrate(conn)
            if follow_schemas and stale(conn, schemas):
                conn.close()
                conn = None  # nothing open while the lock is taken exclusive
                self._rebuild(schemas, deadline)
                conn = connect(path, durability)
                if stale(conn, schemas):  # re-indexed for other schemas between our rebuild and now
                    raise StorageError(
                        f"tenant {name!r} is being re-indexed for other schemas by another process",
                        hint="Run every server on this --data-dir with the same --schemas.",
                    )
            if follow_schemas:  # (a serving store: not the flush child, which reopens tenants every round)
                warn_undefined(conn, name, schemas)
            self.writer = Writer(conn, clock, checkpoint_due, tenant=name, settled=settled)
        except BaseException:
            if conn is not None:
                conn.close()
            self._lock.release()
            raise
        self._readers: list[sqlite3.Connection] = []
        self._reader_count = 0
        self._max_readers = max_readers
        self._cv = threading.Condition()
        self._closed = False  # (a read still under way then closes its connection instead of keeping it)
        self.leases = 0

    def _share(self, deadline: float) -> None:
        """Hold the lock shared, waiting until `deadline` while another process has the tenant to itself."""
        while not self._lock.try_share():
            if monotonic() >= deadline:
                raise self._busy()
            sleep(POLL_SECONDS)  # flock(2) has no wait with a timeout

    def _rebuild(self, schemas: SchemaSet, deadline: float) -> None:
        """Rebuild the keys and full text built for other schemas, holding the tenant alone: wait for the
        other processes of ours to let go (a flush child closes idle tenants after each round), or for one
        of them to have rebuilt it for these same schemas. Holds nothing while it waits, so that two
        servers opening the tenant at once do not keep each other out; ends holding the lock shared."""
        self._lock.unlock()
        while not self._lock.try_exclusive("rebuild"):
            if self._lock.try_share():
                if not self._stale(schemas):
                    return
                self._lock.unlock()
                if monotonic() >= deadline:
                    raise open_elsewhere(self.name, "was indexed for other schemas and ")
            elif monotonic() >= deadline:
                raise self._busy()
            sleep(POLL_SECONDS)
        try:
            rebuilt = rebuild_alone(self.path, schemas)
        finally:
            shared = self._lock.try_share()  # from exclusive: a downgrade
        if not shared:  # (flock(2) does not promise that nobody comes between)
            raise self._busy()
        if rebuilt:  # (none when another process rebuilt it for these schemas just before)
            log.info(
                "tenant %s: rebuilt what the schemas changed (lookup keys, full text or both) of %s",
                self.name,
                ", ".join(rebuilt),
            )

    def _busy(self) -> TenantBusy:
        return TenantBusy(
            f"tenant {self.name!r} is {self._lock.activity()}, so it cannot be opened now",
            hint="Nothing was read or written. Retry when that has finished.",
        )

    def _stale(self, schemas: SchemaSet) -> bool:
        with closing(connect(self.path, self._durability)) as conn:
            return bool(stale(conn, schemas))

    @contextmanager
    def reader(self) -> Iterator[sqlite3.Connection]:
        """A reader connection (WAL: readers never block the writer nor each other)."""
        with self._cv:
            while not self._readers and self._reader_count >= self._max_readers and not self._closed:
                self._cv.wait()
            if self._closed:  # (a read that waited, for a reader or for a write, while the server shut down)
                raise StorageError(
                    f"tenant {self.name!r} was closed while this read waited (the server is shutting down); "
                    "nothing was read",
                    hint="Retry once the server is up again.",
                )
            if self._readers:
                conn = self._readers.pop()
            else:
                conn = connect(self.path, self._durability)
                self._reader_count += 1
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            with self._cv:
                if self._closed:
                    conn.close()
                else:
                    self._readers.append(conn)
                self._cv.notify()

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A reader inside one read transaction: every statement sees the same state."""
        with self.reader() as conn:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute(
                        "ROLLBACK"
                    )  # (a read keeps nothing; after SQLite finds the file damaged, COMMIT fails too)

    def checkpoint(self) -> None:
        """Copy committed WAL pages into the database file without blocking anyone (PASSIVE)."""
        with self.reader() as conn:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    def close(self) -> None:
        try:
            self.writer.close()
            with self._cv:
                self._closed = True
                for conn in self._readers:
                    conn.close()
                self._readers.clear()
                self._cv.notify_all()
        finally:
            self._lock.release()


class TenantPool:
    """At most `max_open` tenants open at once; idle ones are closed, least recently used first."""

    def __init__(
        self,
        data_dir: Path,
        schemas: SchemaSet,
        durability: str = "normal",
        clock: Callable[[], int] | None = None,
        max_open: int = 64,
        max_readers: int = 4,
        wait_seconds: float = 30.0,
        follow_schemas: bool = True,
    ) -> None:
        from ..timeutil import now_us

        self.data_dir = Path(data_dir)
        self.schemas = schemas
        self.durability = durability
        self.clock = clock or now_us
        self.max_open = max_open
        self.max_readers = max_readers
        self.wait_seconds = wait_seconds
        self.follow_schemas = follow_schemas  # rebuild keys and full text built for other schemas (see reindex.py)
        self._open: OrderedDict[str, Tenant] = OrderedDict()
        self._opening: dict[str, int] = {}  # names being opened (outside the lock) -> that open's number
        self._opens = itertools.count(1)
        self._busy: dict[str, tuple[int, TenantBusy]] = {}  # the last open of a name refused as busy
        self._settled: dict[str, Settled] = {}  # per tenant, across its closes and reopens (see Writer.settle)
        self._closing: dict[str, Tenant] | None = None  # once close() began: the tenants it closes (see close)
        self._closed = threading.Event()  # set once close() has closed them all
        self._cv = threading.Condition()
        self.checkpoints = Checkpointer(self._checkpoint)

    def exists(self, name: str) -> bool:
        return tenant_path(self.data_dir, name).exists()

    def ever_opened(self, name: str) -> bool:
        """Whether the tenant is open here, or has a file or a lock file (so was opened, here or elsewhere).
        Open ones answer from memory: this is asked on every read."""
        if isinstance(name, str) and name in self._open:  # (lock-free: one closing meanwhile keeps its files)
            return True
        path = tenant_path(self.data_dir, name)  # (which checks the name)
        return path.exists() or lock_path(path).exists()

    def names(self) -> list[str]:
        folder = self.data_dir / "tenants"
        if not folder.is_dir():
            return []
        return sorted(p.stem for p in folder.glob("*.db") if TENANT_NAME.fullmatch(p.stem))

    def lease(self, name: str, create: bool = True) -> _Lease:
        """`with pool.lease(name) as tenant:` the tenant stays open (not evicted) inside the block."""
        return _Lease(self, name, create)

    def _release(self, tenant: Tenant) -> None:
        with self._cv:
            tenant.leases -= 1
            if tenant.leases == 0:
                self._cv.notify_all()

    def _acquire(self, name: str, create: bool) -> Tenant:
        with self._cv:
            waited_for, deadline = 0, None
            while True:  # every wait lets go of the lock: look again at this tenant after each one
                # Another thread may be opening this tenant (migrations, a rebuild): wait for it, not for the pool.
                while name in self._opening:  # on every request: a plain loop, no predicate to build
                    waited_for = self._opening[name]
                    self._cv.wait()
                refused = self._busy.get(name)
                if waited_for and refused is not None and refused[0] == waited_for:
                    # The open we waited for found the tenant held by a restore (or the like) until its deadline:
                    # so is ours. Waiting again in turn would make each caller wait the whole limit once more.
                    raise TenantBusy(refused[1].message, hint=refused[1].hint)
                if self._closing is not None:
                    return self._lease_closing(name)
                tenant = self._open.get(name)
                if tenant is not None:
                    self._open.move_to_end(name)
                    tenant.leases += 1
                    return tenant
                path = tenant_path(self.data_dir, name)
                if not create and not path.exists():
                    raise NotFound(
                        f"tenant {name!r} does not exist in {self.data_dir}",
                        hint="Check --data-dir and the tenant name.",
                    )
                if not create and empty_file(path):  # (opening it would write a new, empty database into it)
                    raise empty_file_error(name, path)
                if self._make_room():
                    break
                deadline = deadline or time.monotonic() + self.wait_seconds
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LimitExceeded(
                        f"all {self.max_open} open tenants are busy",
                        hint="Retry shortly, or raise the open-tenant limit.",
                    )
                self._cv.wait(left)
            attempt = self._opening[name] = next(self._opens)
        # Opened outside the pool's lock: a long first open (a migration, a rebuild for new schemas)
        # holds up only the callers of this tenant.
        opened: Tenant | None = None
        try:
            opened = Tenant(
                name, path, self.schemas, self.durability, self.clock, self.max_readers,
                functools.partial(self.checkpoints.request, name), self.follow_schemas,
                self._settled.setdefault(name, Settled()),
            )  # fmt: skip
        except TenantBusy as exc:
            with self._cv:
                self._busy[name] = (attempt, exc)
            raise
        except (sqlite3.Error, OSError) as exc:  # OSError: making its folder or its lock file
            if (damage := damaged(exc, name) or out_of_space(exc, name, opening=True)) is not None:
                raise damage from None
            raise StorageError(
                f"cannot open tenant {name!r} in {path.parent}: {exc}",
                hint="Nothing was written. Check the data dir's permissions and the free disk space, then retry.",
            ) from None
        finally:
            with self._cv:  # no longer opening and (when it opened) open, in one step: nobody opens it twice
                del self._opening[name]
                if opened is not None:
                    self._busy.pop(name, None)
                    opened.leases += 1
                    self._open[name] = opened
                self._cv.notify_all()
        return opened

    def _make_room(self) -> bool:
        while len(self._open) + len(self._opening) >= self.max_open:
            idle = next((n for n, t in self._open.items() if t.leases == 0), None)
            if idle is None:
                return False
            self._open.pop(idle).close()
        return True

    def forget(self, name: str) -> None:
        """Close a tenant's connections (waiting for it to be idle), e.g. before its file is moved."""
        with self._cv:
            self._cv.wait_for(
                lambda: name not in self._opening and (name not in self._open or self._open[name].leases == 0)
            )
            tenant = self._open.pop(name, None)
        if tenant is not None:
            tenant.close()

    def close_idle(self) -> None:
        """Close every open tenant nobody holds a lease on (they reopen on next use)."""
        with self._cv:
            idle = [name for name, t in self._open.items() if t.leases == 0]
            closing = [self._open.pop(name) for name in idle]
        for tenant in closing:
            tenant.close()

    def _checkpoint(self, name: str) -> None:
        """Checkpoint a tenant if it is still open (leased meanwhile, so it is not closed under us)."""
        with self._cv:
            tenant = self._open.get(name)
            if tenant is None:
                return
            tenant.leases += 1
        try:
            tenant.checkpoint()
        finally:
            with self._cv:
                tenant.leases -= 1
                self._cv.notify_all()

    def close(self) -> None:
        """Close every tenant, each once its write in flight has committed, and open none from now on.

        The tenants are closed outside the pool's lock: a write group finishing meanwhile may still need the
        pool (a BEFORE hook reading its own tenant through the store), and would otherwise wait for good."""
        self.checkpoints.close()
        closing: dict[str, Tenant] | None = None  # (None: another thread closes them)
        with self._cv:
            if self._closing is None:
                self._closing = {}  # from here on, no tenant is opened (see _acquire)
                self._cv.notify_all()  # (callers waiting for room are refused now, not at their deadline)
                self._cv.wait_for(lambda: not self._opening)  # (an open under way ends in self._open)
                closing = self._closing = dict(self._open)
                self._open = OrderedDict()
        if closing is None:  # returning before the other thread has closed them would say they are closed
            self._closed.wait()
            return
        try:
            for tenant in closing.values():
                tenant.close()
        finally:
            self._closed.set()

    def _lease_closing(self, name: str) -> Tenant:
        """A lease while the pool closes: on a tenant it is closing (whose write in flight may read it), or none."""
        assert self._closing is not None
        tenant = self._closing.get(name) or self._open.get(name)  # (the latter while close waits for opens)
        if tenant is None:
            raise StorageError(
                f"tenant {name!r} cannot be opened: the server is shutting down; nothing was read or written",
                hint="Retry once the server is up again.",
            )
        tenant.leases += 1
        return tenant


class _Lease:
    """The context manager of `TenantPool.lease` (a class: this is on every request's path)."""

    __slots__ = ("_create", "_name", "_pool", "_tenant")

    def __init__(self, pool: TenantPool, name: str, create: bool) -> None:
        self._pool, self._name, self._create = pool, name, create

    def __enter__(self) -> Tenant:
        self._tenant = self._pool._acquire(self._name, self._create)
        return self._tenant

    def __exit__(self, *exc: object) -> None:
        self._pool._release(self._tenant)
