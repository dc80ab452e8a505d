"""The server's background flush: a child process that flushes every few seconds, and once more at the end.

The flush (pyarrow conversion, Parquet writing, the Iceberg commit) is CPU work; in the server's own process it
would hold the interpreter lock against the requests. So `serve` starts it as a child process,
`python -P -m server.lake.background` (-P: the working directory cannot shadow the package), one
interval after start-up (start-up stays light). The child reads the
tenants' log files as a WAL reader, never blocking a write. It stops when its stdin closes: the server closes it at
shutdown, and the kernel does when the server dies, so a killed server's last events still reach the table. If the
child exits early the server logs it and starts another, backing off while it keeps failing. A SIGINT or
SIGTERM to the child also ends it after one last flush."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

from ..errors import HeadlesslyError
from ..store import Store
from ..store.tenants import tenant_path

MODULE = "server.lake.background"  # also when run as __main__
log = logging.getLogger(MODULE)


STOP_TIMEOUT = 120.0  # seconds the server waits for the child's last flush at shutdown
MAX_BACKOFF = 300.0  # seconds between restarts of a child that keeps failing
STEADY = 60.0  # a child that ran this long before exiting resets the backoff
FULL_EVERY = 60  # rounds: every so often the child looks at every tenant, changed or not


class BackgroundFlush:
    """The server's side: starts and watches the flush process."""

    def __init__(self, store: Store, interval: float, schema_dirs: list[Path], log_level: str = "info") -> None:
        self.store = store
        self.interval = interval
        # -P: the server's working directory is not on the child's path (a `server.py` there is not us).
        self.command = [sys.executable, "-P", "-m", MODULE, "--data-dir", str(Path(store.data_dir).resolve())]
        self.command += ["--interval", repr(interval), "--log-level", log_level]
        for folder in schema_dirs:
            self.command += ["--schemas", str(Path(folder).resolve())]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._supervise, name="headlessly-flush", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Make the flush process send what is left and wait for it; if there is none, or it did not end
        well, flush here."""
        with self._lock:
            self._stop.set()
            child = self._child
        code: int | None = None
        if child is not None and child.poll() is None:
            _close(child.stdin)
            try:
                code = child.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.error("background flush process still busy after %.0fs; killing it", STOP_TIMEOUT)
                child.kill()
                child.wait()
        if code != 0:
            # As the child would: a store that never rebuilds keys of tenants this server did not open.
            with Store(self.store.data_dir, self.store.schemas, follow_schemas=False) as reading:
                flush_once(reading, None, "final flush")
        self._thread.join()

    def _supervise(self) -> None:
        delay, failures = self.interval, 0
        while not self._stop.wait(delay):
            with self._lock:
                if self._stop.is_set():
                    return
                # stdout is not the child's: over stdio it is the MCP channel. Its logs share our stderr.
                self._child = child = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
            started = time.monotonic()
            code = child.wait()
            if self._stop.is_set():
                return
            failures = 1 if time.monotonic() - started >= STEADY else failures + 1
            delay = min(self.interval * 2 ** (failures - 1), max(self.interval, MAX_BACKOFF))
            # Status 0 is a flush process told to stop (a SIGTERM to the group, the server shutting down too).
            say = log.info if code == 0 else log.error if failures >= 3 else log.warning
            say("background flush process exited with status %s (%d time(s) in a row); starting another in %.1fs",
                code, failures, delay)  # fmt: skip


def _close(stream: IO[bytes] | None) -> None:
    if stream is not None:
        with suppress(OSError):  # already gone with its process
            stream.close()


def flush_once(store: Store, flusher: Any, what: str, tenants: list[str] | None = None) -> tuple[Any, list[str] | None]:
    """One flush round (of `tenants`, default all) that logs instead of raising (the table may be unreachable
    for a while: the next round catches up); returns the Flusher to reuse, which keeps the catalog and table
    loaded, and the tenants it had to leave for later (being restored or rebuilt), or None if it failed."""
    if not store.tenants():
        return flusher, []
    try:
        if flusher is None:
            from .flusher import Flusher

            flusher = Flusher(store)
        from .flusher import LakeDiverged

        try:
            report = flusher.flush(tenants)
        except LakeDiverged as exc:  # the other tenants went; these are left until someone looks
            log.error("%s: not flushed: %s", what, exc)
            report = exc.report
        if report.events:
            log.info("%s: %d events of %d tenant(s) to the lakehouse", what, report.events, len(report.tenants))
    except HeadlesslyError as exc:  # a refusal that says what to do (a copied data dir's lakehouse): no traceback
        log.error("%s refused; the next round retries: %s%s", what, exc.message, f" ({exc.hint})" if exc.hint else "")
        return None, None
    except Exception:
        log.exception("%s failed; the next round retries", what)
        return None, None  # and starts from a fresh catalog and table
    return flusher, report.busy


Signature = tuple[tuple[int, int] | None, ...]


class ChangeWatch:
    """Which tenants' files changed since their last successful flush, so that a round opens only those:
    every commit appends to the tenant's WAL (and a checkpoint rewrites the database file), which moves
    the files' size or modification time."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.flushed: dict[str, Signature] = {}

    def signature(self, tenant: str) -> Signature:
        path = tenant_path(self.store.data_dir, tenant)
        out: list[tuple[int, int] | None] = []
        for name in (path, Path(f"{path}-wal")):
            try:
                st = name.stat()
                out.append((st.st_size, st.st_mtime_ns))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def changed(self) -> dict[str, Signature]:
        """The tenants to flush now, with their signatures as seen before the flush."""
        now = {name: self.signature(name) for name in self.store.tenants()}
        return {name: sig for name, sig in now.items() if self.flushed.get(name) != sig}


def _follow(store: Store, interval: float) -> None:
    """The child's loop: flush the changed tenants now and every `interval` seconds (all of them every
    FULL_EVERY rounds) until stdin closes, then all once more."""
    closed = threading.Event()

    def wait_for_eof() -> None:
        # Raw reads: a daemon thread blocked in sys.stdin's buffered reader makes a signal-ended
        # interpreter abort at exit (it cannot take that reader's lock).
        while os.read(0, 4096):
            pass
        closed.set()

    threading.Thread(target=wait_for_eof, name="headlessly-flush-stdin", daemon=True).start()
    # A SIGTERM (to us alone, or to the whole group by systemd) ends us like the server's shutdown: after
    # the flush in progress and one more. A Ctrl-C in a terminal reaches the whole group too, but it is the
    # server's to act on: it stops us (closing our stdin) as it shuts down, so we ignore it.
    signal.signal(signal.SIGTERM, lambda _sig, _frame: closed.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    flusher, watch, rounds = None, ChangeWatch(store), 0
    while True:
        if rounds % FULL_EVERY == 0:
            watch.flushed.clear()  # e.g. the table was replaced meanwhile: look at every tenant again
        rounds += 1
        due = watch.changed()
        if due:
            flusher, left = flush_once(store, flusher, "background flush", sorted(due))
            if left is not None:
                watch.flushed.update({tenant: sig for tenant, sig in due.items() if tenant not in left})
            # Hold no tenant file between rounds: the server rebuilds a tenant's keys for new schemas
            # only while nobody else has it open (store/reindex.py).
            store.pool.close_idle()
        if closed.wait(interval):
            break
    flush_once(store, flusher, "final flush")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--schemas", type=Path, action="append", default=[])
    parser.add_argument("--interval", type=float, required=True)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    from ..logsetup import log_to_stderr

    log_to_stderr(args.log_level)
    from ..schema import load_schemas

    store = Store(args.data_dir, load_schemas(args.schemas), follow_schemas=False)  # its server rebuilds keys
    try:
        _follow(store, args.interval)
    finally:
        store.close()


if __name__ == "__main__":
    main()
