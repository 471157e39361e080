"""Per-entity serialization: one operation at a time changes an entity, the rest wait in FIFO.

This is CloudStack's per-VM sync queue, for every entity an operation changes. An operation
takes its entities in one fixed order (sorted ids), holding the ones it has while it waits for
the next. No deadlock is possible: an operation waits only on an entity after every entity it
holds, so along any chain "A waits for the holder of e" the waited-on ids strictly increase and
the chain ends at a running operation, which finishes and hands its entities on.

`admit` and `release_all` are the coordinator: pure functions over a mapping of queues by
entity id (queues missing from it are opened and added), so the caller loads the queues,
calls them, and saves every queue in the mapping with the operation, in one transaction.
"""

from collections.abc import Iterable, MutableMapping
from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.domain import event

from aggregates.base import PlatformAggregate, natural_id
from aggregates.errors import DomainRuleError


class EntityBusyError(DomainRuleError):
    """An operation refused to queue behind the operation that holds an entity (HTTP 409)."""

    code = "entity_busy"

    def __init__(self, entity_id: UUID, owner_id: UUID, operation_id: UUID) -> None:
        self.entity_id, self.owner_id, self.operation_id = entity_id, owner_id, operation_id
        super().__init__(f"entity {entity_id} is busy with operation {owner_id}: operation "
                         f"{operation_id} refused to wait")

    def to_dict(self) -> dict[str, Any]:
        """Name the entity and the operation holding it."""
        return {**super().to_dict(), "entity_id": str(self.entity_id),
                "owner_id": str(self.owner_id), "operation_id": str(self.operation_id)}


class QueueMismatchError(DomainRuleError):
    """An operation let go of an entity it neither owns nor waits for: the queue the caller
    holds is not the queue as it is (a stale copy), or the caller is wrong. Never ignored."""

    code = "queue_mismatch"

    def __init__(self, entity_id: UUID, operation_id: UUID, owner: UUID | None) -> None:
        self.entity_id, self.operation_id, self.owner = entity_id, operation_id, owner
        super().__init__(f"operation {operation_id} neither owns nor waits for entity "
                         f"{entity_id} (owner {owner}): this copy of its queue is stale")


class EntityQueue(PlatformAggregate):
    """The sync queue of one entity: its owner operation and the operations waiting, FIFO."""

    TOPIC = "entity_queue"
    KIND = "entity queue"

    class Event(PlatformAggregate.Event):
        """Base of EntityQueue events."""

        TOPIC = "entity_queue.Event"

    class Opened(Event, PlatformAggregate.Created):
        """The entity got its queue (the first time an operation wanted it), free or already
        taken by that operation (one event where there were two)."""

        TOPIC = "entity_queue.Opened"
        entity_id: UUID
        owner: UUID | None = None

    class Acquired(Event):
        """A free entity was taken by an operation."""

        TOPIC = "entity_queue.Acquired"
        operation_id: UUID

    class Enqueued(Event):
        """An operation waits behind the owner and earlier waiters."""

        TOPIC = "entity_queue.Enqueued"
        operation_id: UUID

    class Released(Event):
        """The owner gave the entity up; the first waiter, if any, owns it now."""

        TOPIC = "entity_queue.Released"
        operation_id: UUID
        next_owner: UUID | None

    class Withdrawn(Event):
        """A waiting operation left the queue (it was cancelled)."""

        TOPIC = "entity_queue.Withdrawn"
        operation_id: UUID

    @staticmethod
    def create_id(entity_id: UUID) -> UUID:
        """A queue is known by its entity."""
        return natural_id("entity_queue", str(entity_id))

    @event(Opened)
    def __init__(self, entity_id: UUID, owner: UUID | None = None) -> None:
        self.entity_id = entity_id
        self.owner: UUID | None = owner
        self.waiting: list[UUID] = []

    @classmethod
    def open(cls, entity_id: UUID, owner: UUID | None = None) -> "EntityQueue":
        """The queue of an entity: free, or owned from the start by `owner`."""
        queue: EntityQueue = cls._create(cls.Opened, entity_id=entity_id, owner=owner)
        return queue

    @property
    def is_busy(self) -> bool:
        """Whether an operation holds the entity."""
        return self.owner is not None

    def holds(self, operation_id: UUID) -> bool:
        """Whether the operation owns the entity."""
        return self.owner == operation_id

    def is_waiting(self, operation_id: UUID) -> bool:
        """Whether the operation waits in this queue."""
        return operation_id in self.waiting

    def acquire(self, operation_id: UUID, *, refuse_when_busy: bool = False) -> bool:
        """Own the entity (True) or wait in line (False); asking again changes nothing.
        With `refuse_when_busy`, a busy entity raises EntityBusyError instead of queueing."""
        if self.owner == operation_id:
            return True
        if operation_id in self.waiting:
            return False
        if self.owner is None:
            self._acquired(operation_id)
            return True
        if refuse_when_busy:
            raise EntityBusyError(self.entity_id, self.owner, operation_id)
        self._enqueued(operation_id)
        return False

    @event(Acquired)
    def _acquired(self, operation_id: UUID) -> None:
        self.owner = operation_id

    @event(Enqueued)
    def _enqueued(self, operation_id: UUID) -> None:
        self.waiting.append(operation_id)

    def release(self, operation_id: UUID) -> UUID | None:
        """Let go of the entity, or leave the line; returns the operation that owns it now
        because of this. QueueMismatchError if the operation neither owns nor waits: a
        caller never has a reason to release what it does not have, and a copy of the queue
        that says so is stale (another process changed it)."""
        if self.owner == operation_id:
            next_owner = self.waiting[0] if self.waiting else None
            self._released(operation_id, next_owner)
            return next_owner
        if operation_id in self.waiting:
            self._withdrawn(operation_id)
            return None
        raise QueueMismatchError(self.entity_id, operation_id, self.owner)

    @event(Released)
    def _released(self, operation_id: UUID, next_owner: UUID | None) -> None:
        self.owner = next_owner
        if next_owner is not None:
            self.waiting.pop(0)

    @event(Withdrawn)
    def _withdrawn(self, operation_id: UUID) -> None:
        self.waiting.remove(operation_id)


class Admission(msgspec.Struct, frozen=True, kw_only=True):
    """Where an operation stands after taking its entities in order."""

    operation_id: UUID
    owned: tuple[UUID, ...]
    waiting_on: UUID | None

    @property
    def ready(self) -> bool:
        """Whether it owns every entity it changes and may start."""
        return self.waiting_on is None


Queues = MutableMapping[UUID, EntityQueue]


def admit(queues: Queues, operation_id: UUID, entity_ids: Iterable[UUID], *,
          refuse_when_busy: bool = False) -> Admission:
    """Take the operation's entities in sorted order, stopping at the first busy one.

    Call it when an operation is accepted, and again whenever `release_all` makes it the owner
    of the entity it waited for: it goes on from there. With `refuse_when_busy`, a busy entity
    raises EntityBusyError before any queue changes.
    """
    ordered = sorted(set(entity_ids))
    if refuse_when_busy:
        for entity_id in ordered:
            queue = queues.get(entity_id)
            owner = None if queue is None else queue.owner
            if owner is not None and owner != operation_id:
                raise EntityBusyError(entity_id, owner, operation_id)
    owned: list[UUID] = []
    for entity_id in ordered:
        queue = _queue(queues, entity_id, operation_id)
        if not queue.acquire(operation_id):
            return Admission(operation_id=operation_id, owned=tuple(owned),
                             waiting_on=entity_id)
        owned.append(entity_id)
    return Admission(operation_id=operation_id, owned=tuple(owned), waiting_on=None)


def release_all(queues: Queues, operation_id: UUID, entity_ids: Iterable[UUID], *,
                waiting_on: UUID | None = None) -> tuple[UUID, ...]:
    """Give up every entity of a finished (or cancelled) operation and leave every line.

    An operation that never got all of them (`waiting_on`: the entity it waited for) holds
    those before it and waits for that one; it never reached the ones after. Returns the
    operations that became the owner of one of these entities, in entity order: call `admit`
    again for each (they may now take their next entities, or start).
    """
    promoted: list[UUID] = []
    for entity_id in sorted(set(entity_ids)):
        if waiting_on is not None and entity_id > waiting_on:
            break  # taken in sorted order: it never reached these
        queue = queues.get(entity_id)
        if queue is None:  # every entity it took or waits for has its queue
            raise QueueMismatchError(entity_id, operation_id, None)
        next_owner = queue.release(operation_id)
        if next_owner is not None and next_owner not in promoted:
            promoted.append(next_owner)
    return tuple(promoted)


def _queue(queues: Queues, entity_id: UUID, owner: UUID) -> EntityQueue:
    queue = queues.get(entity_id)
    if queue is None:  # nobody ever wanted the entity: `owner` takes it as the queue opens
        queue = queues[entity_id] = EntityQueue.open(entity_id, owner)
    return queue
