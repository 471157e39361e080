"""The platform's log as the plugins that follow it read it: `(position, domain event)` pairs.

The planner and the network guru fold the platform's log into indexes of their own, but never
open the store: the process that runs them builds an `ApplicationLog` over the platform
application and injects it (their `subsystems.base.PlatformLog`).
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from kernel.settings import Settings
from kernel.store.application import KernelApplication, PlatformApplication, open_application

__all__ = ["ApplicationLog", "platform_log"]


class ApplicationLog:
    """Reads an application's notification log, mapped to domain events by its own mapper."""

    def __init__(self, app: KernelApplication) -> None:
        """Read `app`'s log; whoever opened `app` closes it."""
        self.app = app

    def head(self) -> int:
        """The newest notification id (0 while the log is empty)."""
        return int(self.app.recorder.max_notification_id() or 0)

    def read(self, after: int, limit: int, *, topics: Sequence[str] = (),
             stop: int | None = None) -> list[tuple[int, Any]]:
        """Up to `limit` events of `topics` (all when empty) after `after`, up to `stop`."""
        notes = self.app.recorder.select_notifications(
            start=after, limit=limit, stop=stop, topics=topics, inclusive_of_start=False)
        return [(note.id, self.app.mapper.to_domain_event(note)) for note in notes]


@contextmanager
def platform_log(settings: Settings) -> Iterator[ApplicationLog]:
    """The platform's log on the configured (migrated) store, open for the `with` block."""
    app = open_application(PlatformApplication, settings)
    try:
        yield ApplicationLog(app)
    finally:
        app.close()
