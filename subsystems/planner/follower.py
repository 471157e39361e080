"""LogFollower: keeps a CapacityIndex current by reading the platform log after its position.

`catch_up()` reads the log head (`max_notification_id`) and folds the placement-relevant
events up to it, then moves its position to the head itself, so events the index ignores are
never read twice. That is safe because the store hands out notification ids in commit order
(PostgreSQL under the table lock, SQLite under its write lock): once the head is visible,
every lower id is committed. Already at the head, a catch-up costs one small query.

A background thread can poll as well, so that a plan after a quiet spell has little to read.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

from subsystems.planner.index import INDEX_TOPICS, CapacityIndex

__all__ = ["LogFollower", "LogSource"]

log = logging.getLogger(__name__)


class LogSource(Protocol):
    """What the follower needs of an application: its recorder and its mapper."""

    @property
    def recorder(self) -> Any:
        """The application recorder (max_notification_id, select_notifications)."""
        ...

    @property
    def mapper(self) -> Any:
        """The mapper that turns a notification into a domain event."""
        ...


class LogFollower:
    """Folds the platform log into an index, from a position up to the head."""

    def __init__(self, source: LogSource, index: CapacityIndex, *,
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
        recorder, mapper = self.source.recorder, self.source.mapper
        with self.lock:
            head = recorder.max_notification_id() or 0
            read = 0
            while self.position < head:
                notes = recorder.select_notifications(
                    start=self.position, limit=self.page_size, stop=head,
                    topics=INDEX_TOPICS, inclusive_of_start=False)
                for note in notes:
                    self.index.apply(mapper.to_domain_event(note))
                read += len(notes)
                self.position = head if len(notes) < self.page_size else notes[-1].id
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
