"""A tenant's lock file (`<tenant>.db-lock`, never moved): every process that has the tenant open holds it
shared; `headlessly restore` holds it exclusive from its first look at the tenant until the rebuilt file is
in place, so no server can open the file that is about to be set aside (and write where nobody reads), and
a server rebuilding the tenant's keys for new schemas holds it exclusive while it does.

flock(2) locks belong to one open file, not to the process: two pools of one process exclude each other
just as two processes do."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class LockBusy(Exception):
    """The lock is held in a mode that excludes ours."""


class TenantLock:
    """A tenant's lock file, opened; held shared, exclusive or not at all. `release()` closes it."""

    def __init__(self, db_path: Path) -> None:
        self.path = Path(f"{db_path}-lock")
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)

    def _take(self, how: int) -> None:
        assert self._fd is not None, "the lock was released"
        try:
            fcntl.flock(self._fd, how | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockBusy(str(self.path)) from None

    def share(self) -> None:
        """Hold it shared (from exclusive, or from nothing); LockBusy while another holds it exclusive."""
        self._take(fcntl.LOCK_SH)

    def exclusive(self) -> None:
        """Hold it exclusive; LockBusy while another holds it at all."""
        self._take(fcntl.LOCK_EX)

    def try_exclusive(self) -> bool:
        """One try to turn a shared hold exclusive. Not atomic: flock(2) drops the shared hold first, so
        on False this holds nothing (call `share()`). Have no connection to the tenant open meanwhile."""
        try:
            self.exclusive()
            return True
        except LockBusy:
            return False

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
