"""The projection runner: a polling follower of the platform log, exactly once, on both stores.

The library has no subscription for SQLite, so the runner polls `select_notifications` in
pages on both stores. It samples the log head first and reads `(position, head]` with the
model's topics (every topic when the model names none); a page of (position, event) pairs is
decoded and applied in one transaction with its tracking position.
A page shorter than the limit means everything up to the head was read, so the position moves
to the head even when the last events were of other topics (and `lag()` reaches 0).

A restart resumes from the view's `max_tracking_id`. Two runners on one view cannot both
apply a page: the second's tracking insert fails, its transaction rolls back, and it moves on
from the recorded position.
"""

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from queue import Full, Queue
from typing import Any, TypeVar

from eventsourcing.persistence import IntegrityError, Tracking

from kernel.store.application import KernelApplication
from projections.views import RowView

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 5000
T = TypeVar("T")
MAX_BACKOFF = 5.0
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Lag:
    """How far a projection is behind the log: positions, and age of the oldest unapplied event."""

    position: int
    head: int
    positions: int
    seconds: float


@dataclass(frozen=True)
class RebuildReport:
    """What a rebuild replayed, and how fast."""

    events: int
    position: int
    seconds: float

    @property
    def events_per_second(self) -> float:
        """Replayed events per second of wall time."""
        return self.events / self.seconds if self.seconds > 0 else float("inf")


class ProjectionRunner:
    """Follows `app`'s log into `view`, a page per transaction."""

    def __init__(self, app: KernelApplication, view: RowView, *,
                 page_size: int = DEFAULT_PAGE_SIZE, poll_interval: float = 0.05) -> None:
        self.app, self.view = app, view
        self.page_size, self.poll_interval = page_size, poll_interval
        self.topics = view.model.topics()
        self._lock = threading.Lock()  # one page at a time (run loop, rebuild, run_once)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.failures = 0  # pages that failed and were retried
        self.last_failure: Exception | None = None

    # ------------------------------------------------------------------ positions

    @property
    def name(self) -> str:
        """The projection's name."""
        return self.view.model.name

    def position(self) -> int:
        """The last log position applied to the view (0 if none)."""
        return self.view.max_tracking_id(self.app.name) or 0

    def head(self) -> int:
        """The log's last position (0 if empty)."""
        return self.app.recorder.max_notification_id() or 0

    # ------------------------------------------------------------------ applying

    def step(self) -> int:
        """Apply at most one page; the number of log positions it moved (0 if caught up)."""
        with self._lock:
            return self._step()

    def _step(self) -> int:
        head = self.head()
        position = self.position()
        if position >= head:
            return 0
        notifications = self.app.recorder.select_notifications(
            start=position, limit=self.page_size, stop=head, topics=self.topics,
            inclusive_of_start=False)
        full = len(notifications) == self.page_size
        new_position = notifications[-1].id if full else head
        to_domain_event = self.app.mapper.to_domain_event
        page = [(n.id, to_domain_event(n)) for n in notifications]
        try:
            self.view.apply_page(page, Tracking(self.app.name, new_position), expected=position)
        except IntegrityError:
            # Another runner, or a rebuild, moved the position first: nothing changed here.
            log.info("projection %s: position %d moved on before %d was applied", self.name,
                     position, new_position)
            return 0
        return new_position - position

    def run_once(self, progress: Progress | None = None) -> int:
        """Catch up to the head sampled now; the number of log positions applied."""
        with self._lock:
            target = self.head()
            moved = 0
            while True:
                n = self._step()
                moved += n
                position = self.position()
                if progress is not None and n:
                    progress(position, target)
                if n == 0 or position >= target:
                    return moved

    def run_forever(self, stop: threading.Event | None = None) -> None:
        """Follow the log until `stop` (or `self.stop()`) is set."""
        stop = stop or self._stop
        backoff = 0.0
        while not stop.is_set():
            try:
                moved = self.step()
            except Exception as e:
                # The store restarting, a lock held by a rebuild: wait and carry on from the
                # recorded position, which is exactly where the failed page left it.
                self.failures += 1
                self.last_failure = e
                backoff = min(MAX_BACKOFF, max(self.poll_interval, backoff * 2))
                log.warning("projection %s: %s: %s; retrying in %.1f s", self.name,
                            type(e).__name__, e, backoff, exc_info=self.failures == 1)
                stop.wait(backoff)
                continue
            backoff = 0.0
            if moved == 0:
                stop.wait(self.poll_interval)

    def start(self) -> "ProjectionRunner":
        """Follow the log in a daemon thread."""
        self._stop.clear()

        def loop() -> None:
            try:
                self.run_forever()
            except BaseException as e:  # surfaced by stop() and by readers of .error
                self.error = e
                log.exception("projection %s stopped", self.name)

        self._thread = threading.Thread(target=loop, name=f"projection-{self.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and wait for it; re-raise what stopped it, if anything."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.error is not None:
            raise self.error

    def __enter__(self) -> "ProjectionRunner":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ readers

    def lag(self) -> Lag:
        """Positions behind the head, and seconds since the oldest unapplied event was saved."""
        position, head = self.position(), self.head()
        seconds = 0.0
        if head > position:
            oldest = self.app.recorder.select_notifications(
                start=position, limit=1, inclusive_of_start=False)
            if oldest:
                event: Any = self.app.mapper.to_domain_event(oldest[0])
                ts: datetime = event.timestamp
                seconds = max(0.0, (datetime.now(UTC) - ts).total_seconds())
        return Lag(position, head, max(0, head - position), seconds)

    def wait(self, position: int, timeout: float = 5.0) -> None:
        """Block until the view has applied `position`; TimeoutError after `timeout` s."""
        deadline = time.monotonic() + timeout
        interval = 0.002
        while self.position() < position:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"projection {self.name} did not reach position {position} "
                                   f"in {timeout}s (at {self.position()})")
            if self.error is not None:
                raise self.error
            time.sleep(min(interval, remaining))
            interval = min(interval * 2, 0.05)

    def rebuild(self, progress: Progress | None = None) -> RebuildReport:
        """Replay the log from 0 to the head now into the view, replacing it in one transaction.

        Readers see the old rows until the rebuild commits. A runner following the log
        meanwhile (in this process or another) waits for the rebuild, finds the position
        moved on, and carries on from it: nothing is applied twice.
        """
        with self._lock:
            started = time.perf_counter()
            target = self.head()
            reached = 0

            def read() -> Iterator[tuple[list[tuple[int, Any]], Tracking]]:
                position = 0
                to_domain_event = self.app.mapper.to_domain_event
                while position < target:
                    notifications = self.app.recorder.select_notifications(
                        start=position, limit=self.page_size, stop=target,
                        topics=self.topics, inclusive_of_start=False)
                    full = len(notifications) == self.page_size
                    position = notifications[-1].id if full else target
                    yield ([(n.id, to_domain_event(n)) for n in notifications],
                           Tracking(self.app.name, position))

            def pages() -> Iterator[tuple[list[tuple[int, Any]], Tracking]]:
                nonlocal reached
                for page, tracking in _prefetched(read()):
                    yield page, tracking
                    reached = tracking.notification_id
                    if progress is not None:
                        progress(reached, target)

            self.view.replace(self.app.name, pages())
        return RebuildReport(reached, reached, time.perf_counter() - started)


def _prefetched(pages: Iterator[T], depth: int = 2) -> Iterator[T]:
    """`pages`, read ahead in a thread: the log read and decode overlap the view's writes."""
    done = object()
    queue: Queue[Any] = Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for page in pages:
                while not stop.is_set():
                    try:
                        queue.put(page, timeout=0.1)
                        break
                    except Full:
                        continue
                if stop.is_set():
                    return
            queue.put(done)
        except BaseException as e:  # handed to the consumer, raised there
            queue.put(e)

    thread = threading.Thread(target=produce, name="rebuild-read", daemon=True)
    thread.start()
    try:
        while (item := queue.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
