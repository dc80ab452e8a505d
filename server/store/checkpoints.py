"""WAL checkpoints off the write path: a background thread copies committed pages into the database.

SQLite's automatic checkpoint runs inside the COMMIT of whichever write crosses the threshold, and
that write then pays for copying thousands of pages and two fsyncs. Here the writer only asks for a
checkpoint every `EVERY_COMMITS` commits; one thread per store runs it (PASSIVE: it never blocks the
writer nor readers) on another connection, in parallel with the next writes. The writer keeps
SQLite's own automatic checkpoint at a higher threshold (`sqlite.WAL_AUTOCHECKPOINT`) as a bound:
it finishes what the background pass left and lets the WAL start over from its beginning.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)
EVERY_COMMITS = 128


class Checkpointer:
    """Runs `run(name)` for each requested tenant on one daemon thread, each at most once per request burst."""

    def __init__(self, run: Callable[[str], None]) -> None:
        self._run = run
        self._pending: dict[str, None] = {}
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._running = False

    def request(self, name: str) -> None:
        with self._cv:
            if self._closed:
                return
            self._pending[name] = None
            self._cv.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="headlessly-checkpoints", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                name = next(iter(self._pending))
                del self._pending[name]
                self._running = True
            try:
                self._run(name)
            except Exception:  # a failed pass is retried by the next request, or by SQLite's own bound
                log.warning("background checkpoint of tenant %s failed", name, exc_info=True)
            finally:
                with self._cv:
                    self._running = False
                    self._cv.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every requested checkpoint has run; False if `timeout` seconds passed first."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._pending and not self._running, timeout)

    def close(self) -> None:
        """Stop the thread (a checkpoint in progress finishes first)."""
        with self._cv:
            self._closed = True
            self._pending.clear()
            self._cv.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
