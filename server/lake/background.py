"""The server's background flush: every few seconds, and once more at shutdown.

It runs in its own thread with its own reads of the log (WAL readers never block the writer),
so flushing never holds up a write."""

from __future__ import annotations

import logging
import threading
from typing import Any

from ..store import Store

log = logging.getLogger(__name__)


class BackgroundFlush:
    def __init__(self, store: Store, interval: float) -> None:
        self.store = store
        self.interval = interval
        self._stop = threading.Event()
        self._flusher: Any = None
        self._thread = threading.Thread(target=self._run, name="headlessly-flush", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop and flush once more, so what was written before shutdown reaches the table."""
        self._stop.set()
        self._thread.join()
        self._flush_once()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._flush_once()

    def _flush_once(self) -> None:
        if not self.store.tenants():
            return
        try:
            if self._flusher is None:
                from .flusher import Flusher

                self._flusher = Flusher(self.store)  # kept: the catalog and table are loaded once
            report = self._flusher.flush()
            if report.events:
                log.info("flushed %d events of %d tenant(s) to the lakehouse", report.events, len(report.tenants))
        except Exception:  # the table may be unreachable for a while: the next round catches up
            log.exception("background flush failed; will retry in %.1fs", self.interval)
