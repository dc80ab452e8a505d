"""A tenant's lock file (`<tenant>.db-lock`, never moved; deleted only by a refused restore that made it, while
holding it exclusive): every process that has the tenant open holds it shared. Whoever must have the tenant to itself holds it exclusive and writes why into it:
`headlessly restore` from its first look at the tenant until the rebuilt file is in place (so no server opens
the file about to be set aside and writes where nobody reads), `headlessly reindex`, and a server rebuilding
the tenant's keys for new schemas.

flock(2) locks belong to one open file, not to the process: two pools of one process exclude each other
just as two processes do. Where there is no flock (Windows) nothing is locked: there a file that is open
cannot be renamed, so a restore fails to set the tenant aside instead.

Whoever takes the lock checks that the path still names the file it holds, and otherwise opens the one there
now: a process that opened the file before a refused restore deleted it then locks the tenant's lock file,
not a deleted one that keeps nobody out."""

from __future__ import annotations

import os
from pathlib import Path

from ..config import private_dir

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

ACTIVITIES = {
    "restore": "being restored (`headlessly restore`)",
    "reindex": "being reindexed (`headlessly reindex`)",
    "rebuild": "having its lookup keys rebuilt for new schemas by another server",
}


def lock_path(db_path: Path) -> Path:
    return Path(f"{db_path}-lock")


class TenantLock:
    """A tenant's lock file, opened; held shared, exclusive or not at all. `release()` closes it."""

    def __init__(self, db_path: Path) -> None:
        self.path = lock_path(db_path)
        self.made = False  # whether this lock created the file (only then may `discard` delete it)
        self._fd: int | None = self._open()

    def _open(self) -> int:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # its folder is gone: removed by a refused restore that made it (restore.py)
            private_dir(self.path.parent)
            return self._open()
        self.made = True
        return fd

    def _take(self, how: int) -> bool:
        assert self._fd is not None, "the lock was released"
        if fcntl is None:  # pragma: no cover - Windows
            return True
        while True:
            try:
                fcntl.flock(self._fd, how | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            if self._still_named():
                return True
            os.close(self._fd)  # a deleted file (a refused restore's): lock the one the path names now
            self._fd = None
            self.made = False
            self._fd = self._open()

    def _still_named(self) -> bool:
        """Whether the lock file's path still names the file this lock has open."""
        assert self._fd is not None
        try:
            named = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(self._fd)
        return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)

    def try_share(self) -> bool:
        """Hold it shared (from exclusive, or from nothing); False while another holds it exclusive."""
        return self._take(fcntl.LOCK_SH if fcntl else 0)

    def try_exclusive(self, reason: str) -> bool:
        """Hold it exclusive, noting `reason` (a key of ACTIVITIES) for those it keeps out; False while
        another holds it at all. From shared this is not atomic: flock(2) drops the shared hold first, so
        on False this holds nothing. Have no connection to the tenant open meanwhile."""
        if not self._take(fcntl.LOCK_EX if fcntl else 0):
            return False
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, reason.encode(), 0)
        return True

    def unlock(self) -> None:
        """Hold nothing (the file stays open)."""
        if fcntl is not None and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def activity(self) -> str:
        """What the exclusive holder noted it is doing, as ACTIVITIES says it (ask after `try_share` failed)."""
        assert self._fd is not None, "the lock was released"
        reason = os.pread(self._fd, 32, 0).decode(errors="replace")
        return ACTIVITIES.get(reason, "being restored or rebuilt by another process")

    def discard(self) -> None:
        """Delete the lock file if this lock made it, then release it. Only while holding it exclusive (so that
        nobody holds it; whoever takes it later opens a new one): for a restore refused before it wrote the
        tenant, which leaves nothing it made behind."""
        if self.made and self._fd is not None and self._still_named():
            self.path.unlink()
        self.release()

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
