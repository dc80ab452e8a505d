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
not a deleted one that keeps nobody out. A restore makes a missing lock file already held exclusive (under
another name, `<tenant>.db-lock.making-*`, then linked to its own): nobody can open a lock file a restore made
and take it before the restore does, so a refused restore can always delete the one it made."""

from __future__ import annotations

import errno
import os
import secrets
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


MAKING = ".making-"  # a lock file being made held (`<tenant>.db-lock.making-<pid>-<random>`), for a moment


def lock_path(db_path: Path) -> Path:
    return Path(f"{db_path}-lock")


class TenantLock:
    """A tenant's lock file, opened; held shared, exclusive or not at all. `release()` closes it."""

    def __init__(self, db_path: Path, making: str | None = None) -> None:
        """`making`: a reason (a key of ACTIVITIES) to make a missing lock file with, already held exclusive."""
        self.path = lock_path(db_path)
        self.made = False  # whether this lock created the file (only then may `discard` delete it)
        self.folders: list[Path] = []  # folders it made again for its file (a refused restore removed), outermost first
        self._making = making
        self._fd: int | None = self._open()

    def _open(self) -> int:
        while True:
            try:
                fd = self._make()
            except FileExistsError:
                try:
                    return os.open(self.path, os.O_RDWR)
                except FileNotFoundError:  # deleted just now (by a refused restore that made it): make it
                    continue
            except FileNotFoundError:  # its folder is gone: removed by a refused restore that made it (restore.py)
                self.folders += private_dir(self.path.parent)
                continue
            self.made = True
            return fd

    def _make(self) -> int:
        """Create the lock file (FileExistsError when there is one); with `making`, it is held exclusive for
        that reason from the moment it appears: made under a name of its own, locked, then linked to the
        lock file's name. Where there are no hard links (FAT) it is made unheld, and taken after."""
        if self._making is None or fcntl is None:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        making = Path(f"{self.path}{MAKING}{os.getpid()}-{secrets.token_hex(4)}")
        fd = os.open(making, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # (nobody else has opened it)
            os.pwrite(fd, self._making.encode(), 0)
            os.link(making, self.path)  # FileNotFoundError also when a restore removed `making` (restore.py)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):  # no hard links here
                return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            raise
        except BaseException:
            os.close(fd)
            raise
        finally:
            making.unlink(missing_ok=True)
        return fd

    def _flock(self, how: int) -> bool:
        """flock(2) the file as `how` says, without waiting: False while another holds it against that."""
        assert self._fd is not None, "the lock was released"
        if fcntl is None:  # pragma: no cover - Windows
            return True
        try:
            fcntl.flock(self._fd, how | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _take(self, how: int) -> bool:
        if fcntl is None:  # pragma: no cover - Windows
            return True
        while True:
            if not self._flock(how):
                return False
            if self._still_named():
                return True
            assert self._fd is not None
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
        """Delete the lock file if this lock made it, then release it: for a restore refused before it wrote
        the tenant, which leaves nothing it made behind. Only while it holds the file exclusive (taking it
        now if it does not), so that nobody holds it and whoever takes it later opens a new one; a file
        another process holds (one it opened before this lock took it) stays, theirs."""
        if self.made and self._fd is not None and self._flock(fcntl.LOCK_EX if fcntl else 0) and self._still_named():
            self.path.unlink()
        self.release()

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
