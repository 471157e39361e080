"""LogFollower: keeps a CapacityIndex current by reading the platform log after its position.

The log is the `PlatformLog` that the process running the planner injects. `catch_up()` reads
the log head and folds the placement-relevant events up to it, then moves its position to the
head itself, so events the index ignores are never read twice. That is safe because the store
hands out notification ids in commit order (PostgreSQL under the table lock, SQLite under its
write lock): once the head is visible, every lower id is committed. Already at the head, a
catch-up costs one small query.

A background thread can poll as well, so that a plan after a quiet spell has little to read.
"""

from __future__ import annotations

import logging
import threading

from subsystems.base import PlatformLog
from subsystems.planner.index import INDEX_TOPICS, CapacityIndex

__all__ = ["LogFollower"]

log = logging.getLogger(__name__)


class LogFollower:
    """Folds the platform log into an index, from a position up to the head."""

    def __init__(self, source: PlatformLog, index: CapacityIndex, *,
                 lock: threading.RLock | None = None, page_size: int = 1000,
                 position: int = 0) -> None:
        """Follow `source` into `index`; `lock` serializes folds with the index's readers."""
        self.source, self.index, self.page_size = source, index, page_size
        self.lock = lock or threading.RLock()
        self.position = position
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def catch_up(self) -> int:
        """Fold every event committed up to the current head; the number of events read."""
        with self.lock:
            head = self.source.head()
            read = 0
            while self.position < head:
                batch = self.source.read(self.position, self.page_size, topics=INDEX_TOPICS,
                                         stop=head)
                for _, event in batch:
                    self.index.apply(event)
                read += len(batch)
                self.position = head if len(batch) < self.page_size else batch[-1][0]
            return read

    def start(self, interval: float) -> None:
        """Also catch up every `interval` seconds in a daemon thread, until `stop()`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, args=(interval,),
                                        name="planner-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the background thread, if any, and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _poll(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.catch_up()
            except Exception:
                # the next plan catches up itself and reports the store error to the kernel
                log.exception("planner: catching up with the platform log failed")
