"""An in-memory platform log for plugins that follow the log (the network guru's index)."""

from __future__ import annotations

from typing import Any

from eventsourcing.domain import Aggregate


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
    """A LogSource over an EventLog that may lag behind it (a stale follower)."""

    def __init__(self, log: EventLog, visible: int | None) -> None:
        self.log, self.visible = log, visible

    def read(self, after: int, limit: int) -> list[tuple[int, Any]]:
        """Up to `limit` events after `after`, within the visible prefix."""
        upto = self.log.head if self.visible is None else min(self.visible, self.log.head)
        chunk = self.log.events[after:upto][:limit]
        return [(after + i + 1, event) for i, event in enumerate(chunk)]
