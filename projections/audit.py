"""The audit index: one row per event in the log, of every topic, keyed by its log position.

It answers "what happened to this entity", "what did this operation cause" and "what did this
actor do", in log order: rows are ordered by position and each filter's index is
(filter, position). The events themselves stay in the log; a row points at one.
"""

from typing import Any, ClassVar

from eventsourcing.utils import get_topic

from projections.models import INT_T, TEXT_T, TS_T, UUID_T, Column, Handler, Row, RowModel


class AuditModel(RowModel):
    """Every event's position, entity, version, topic, time, actor and correlation ids."""

    name = "audit"
    key = "position"
    columns = (
        Column("position", INT_T, nullable=False),
        Column("originator_id", UUID_T, nullable=False),
        Column("originator_version", INT_T, nullable=False),
        Column("topic", TEXT_T, nullable=False),
        Column("timestamp", TS_T, nullable=False),
        Column("actor", TEXT_T),
        Column("correlation_id", UUID_T),
        Column("causation_id", TEXT_T),
    )
    filters = ("originator_id", "correlation_id", "actor")
    handlers: ClassVar[dict[type[Any], Handler]] = {}

    @classmethod
    def topics(cls) -> tuple[str, ...]:
        """Every topic: the index covers the whole log."""
        return ()

    @classmethod
    def row_key(cls, event: Any, position: int) -> Any:
        """The event's log position."""
        return position

    @classmethod
    def fold(cls, row: Row | None, event: Any, position: int) -> Row | None:
        """The row of the event at this position (the same row however often it is folded)."""
        # getattr: audit fields are on every platform event, but an event of another
        # aggregate family must still be indexed rather than stop the projection.
        return {
            "position": position,
            "originator_id": event.originator_id,
            "originator_version": event.originator_version,
            "topic": get_topic(type(event)),
            "timestamp": event.timestamp,
            "actor": getattr(event, "actor", None),
            "correlation_id": getattr(event, "correlation_id", None),
            "causation_id": getattr(event, "causation_id", None),
        }
