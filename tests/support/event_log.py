"""An in-memory platform log for plugins that follow the log (the network guru's index)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.domain import Aggregate
from eventsourcing.utils import get_topic


class EventLog:
    """Events in log order, appended as aggregates are "saved"; positions start at 1."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def record(self, *aggregates: Aggregate) -> None:
        """Append the aggregates' pending events, as one save would."""
        for aggregate in aggregates:
            self.events.extend(aggregate.collect_events())

    @property
    def head(self) -> int:
        """The position of the last event."""
        return len(self.events)

    def view(self, visible: int | None = None) -> LogView:
        """A reader that sees the log up to `visible` (None: everything, as it grows)."""
        return LogView(self, visible)


class LogView:
    """A PlatformLog over an EventLog that may lag behind it (a stale follower)."""

    def __init__(self, log: EventLog, visible: int | None) -> None:
        self.log, self.visible = log, visible

    def head(self) -> int:
        """The last visible position."""
        return self.log.head if self.visible is None else min(self.visible, self.log.head)

    def read(self, after: int, limit: int, *, topics: Sequence[str] = (),
             stop: int | None = None) -> list[tuple[int, Any]]:
        """Up to `limit` events of `topics` (all when empty) after `after`, within the visible
        prefix and up to `stop`."""
        upto = self.head() if stop is None else min(stop, self.head())
        wanted = frozenset(topics)
        found: list[tuple[int, Any]] = []
        for position in range(after + 1, upto + 1):
            event = self.log.events[position - 1]
            if not wanted or get_topic(type(event)) in wanted:
                found.append((position, event))
                if len(found) == limit:
                    break
        return found
