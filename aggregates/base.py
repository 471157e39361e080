"""The base of every platform aggregate: explicit topics and audit metadata on every event.

Every event records who caused it (`actor`), the operation it belongs to (`correlation_id`)
and the command or event that caused it (`causation_id`). Command handlers set these once
with `audit_context(...)`; the aggregate methods never pass them around.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ClassVar
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

from eventsourcing.domain import Aggregate

from aggregates.errors import InvalidTransitionError

SYSTEM_ACTOR = "system"


@dataclass(frozen=True)
class AuditContext:
    """Who is acting, in which operation, and because of what."""

    actor: str = SYSTEM_ACTOR
    correlation_id: UUID | None = None
    causation_id: str | None = None


_NO_AUDIT = AuditContext()
_audit: ContextVar[AuditContext] = ContextVar("cloudkernel_audit", default=_NO_AUDIT)


def current_audit() -> AuditContext:
    """The audit context that new events are stamped with."""
    return _audit.get()


@contextmanager
def audit_context(
    actor: str = SYSTEM_ACTOR,
    correlation_id: UUID | None = None,
    causation_id: str | None = None,
) -> Iterator[AuditContext]:
    """Stamp every event triggered inside the block with this actor and these ids."""
    ctx = AuditContext(actor, correlation_id, causation_id)
    token = _audit.set(ctx)
    try:
        yield ctx
    finally:
        _audit.reset(token)


def natural_id(kind: str, *key: str) -> UUID:
    """A deterministic id for an entity known by a natural key (inventory is idempotent by it)."""
    return uuid5(NAMESPACE_URL, "cloudkernel:" + kind + ":" + "/".join(key))


class PlatformAggregate(Aggregate):
    """Base class of all platform entities.

    A concrete aggregate declares `TOPIC = "<key>"`, an `Event` subclass with
    `TOPIC = "<key>.Event"`, and gives each event class its own explicit topic
    `"<key>.<EventName>"`, so that moving or renaming a module never breaks stored events.
    """

    KIND: ClassVar[str] = "entity"

    class Event(Aggregate.Event):
        """Base event: carries the audit metadata."""

        actor: str
        correlation_id: UUID | None
        causation_id: str | None

    class Created(Event, Aggregate.Created):
        """Base created event."""

        def __init_subclass__(cls, **kwargs: Any) -> None:
            # eventsourcing copies this class into every concrete aggregate as `<Agg>.Created`,
            # which would inherit and steal the "<key>.Event" topic of the aggregate's base
            # event; give such a copy its own "<key>.Created" topic instead.
            super().__init_subclass__(**kwargs)
            inherited = getattr(cls, "TOPIC", None)
            if "TOPIC" not in cls.__dict__ and isinstance(inherited, str) \
                    and inherited.endswith(".Event"):
                cls.TOPIC = inherited.removesuffix("Event") + cls.__name__  # type: ignore[attr-defined]

    @staticmethod
    def create_id(*_: Any, **__: Any) -> UUID:
        """Random ids, unless an aggregate is known by a natural key."""
        return uuid4()

    def trigger_event(self, event_class: type[Any], **kwargs: Any) -> None:
        """Stamp the event with the current audit context, then apply it."""
        _stamp(kwargs)
        super().trigger_event(event_class, **kwargs)

    @classmethod
    def _create(cls, event_class: type[Any], **kwargs: Any) -> Any:
        _stamp(kwargs)
        return super()._create(event_class, **kwargs)

    def _refuse(self, action: str) -> InvalidTransitionError:
        """The error for an action the current state does not allow."""
        label = getattr(self, "name", None)
        shown = f"{label} ({self.id})" if label else str(self.id)
        return InvalidTransitionError(self.KIND, shown, getattr(self, "state", None), action)

    def _require(self, allowed: object, action: str) -> None:
        """Raise InvalidTransitionError unless `self.state` is in `allowed`."""
        if self.state not in allowed:  # type: ignore[attr-defined, operator]
            raise self._refuse(action)


def _stamp(kwargs: dict[str, Any]) -> None:
    ctx = _audit.get()
    kwargs.setdefault("actor", ctx.actor)
    kwargs.setdefault("correlation_id", ctx.correlation_id)
    kwargs.setdefault("causation_id", ctx.causation_id)
