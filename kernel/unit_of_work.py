"""The unit of work of a batch: the aggregates it reads and changes, saved together or not at
all, and the entity queues it admits operations through."""

import copy
from collections.abc import Iterator, MutableMapping
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate

from aggregates.entity_queue import EntityQueue
from aggregates.errors import NotFoundError
from aggregates.operation import Operation
from kernel.store.application import KernelApplication


class UnitOfWork:
    """The aggregates one batch reads and changes; saved together, or not at all."""

    def __init__(self, app: KernelApplication, cache: MutableMapping[UUID, Aggregate],
                 shared: MutableMapping[UUID, Aggregate] | None = None):
        self.app, self.cache = app, cache
        self.shared = shared  # the engine's saved aggregates, for `read`
        self.touched: dict[UUID, Aggregate] = {}
        # In a batch of commands: the ids the current command touched (see `begin_command`).
        self._command_ids: set[UUID] | None = None
        # Ids this work just made up (random, never seen): their entity queues cannot exist,
        # so admission does not look them up in the store.
        self.fresh: set[UUID] = set()
        # The operation planned again when its turn came (`OperationEngine._replan`): what it
        # holds is its own, and a factory's "is it busy?" must not count its holds as another's.
        self.planning: UUID | None = None

    def get(self, aggregate_id: UUID) -> Any:
        """The aggregate, from memory or the store; NotFoundError if it does not exist."""
        agg = self.touched.get(aggregate_id) or self.cache.get(aggregate_id)
        if agg is None:
            agg = self._load(aggregate_id)
        self.touched[aggregate_id] = agg
        if self._command_ids is not None:
            self._command_ids.add(aggregate_id)
        return agg

    def read(self, aggregate_id: UUID) -> Any:
        """An aggregate this work only reads (an offering, a template): the engine's saved
        copy if it has one, else the store's; never to be changed."""
        agg = self.touched.get(aggregate_id)
        if agg is None and self.shared is not None:
            agg = self.shared.get(aggregate_id)
        if agg is None:
            agg = self._load(aggregate_id)
            if self.shared is not None:
                self.shared[aggregate_id] = agg
        return agg

    def _load(self, aggregate_id: UUID) -> Any:
        try:
            return self.app.repository.get(aggregate_id)
        except AggregateNotFoundError:
            raise NotFoundError(f"no entity {aggregate_id}") from None

    def find(self, aggregate_id: UUID) -> Any | None:
        """The aggregate, or None if it does not exist."""
        try:
            return self.get(aggregate_id)
        except NotFoundError:
            return None

    def add(self, aggregate: Aggregate) -> None:
        """A new aggregate to save with the batch."""
        self.touched[aggregate.id] = aggregate
        if self._command_ids is not None:
            self._command_ids.add(aggregate.id)

    def begin_command(self) -> None:
        """A command of a batch starts: from now on `changed` names only what it touches,
        so a batch of n commands does not look at every aggregate n times."""
        self._command_ids = set()

    def changed(self) -> list[Aggregate]:
        """Aggregates with events to save (of the current command, in a batch of them)."""
        if self._command_ids is not None:
            return [a for i in self._command_ids if (a := self.touched[i]).pending_events]
        return [a for a in self.touched.values() if a.pending_events]

    def created(self) -> set[UUID]:
        """Ids of the aggregates this work made (not in the store yet), and of `fresh`."""
        return {agg_id for agg_id, agg in self.touched.items()
                if agg.pending_events and agg.pending_events[0].originator_version == 1
                } | self.fresh

    def operations(self) -> Iterator[Operation]:
        """Every operation the batch touched."""
        return (a for a in self.touched.values() if isinstance(a, Operation))


class TrialUnitOfWork(UnitOfWork):
    """A unit of work to try a change on without touching `base`: each aggregate it gets is a
    copy of the base's (or the store's), and nothing it does is saved."""

    def __init__(self, base: UnitOfWork):
        super().__init__(base.app, {}, shared=base.shared)
        self.base = base
        self.fresh = set(base.fresh)
        self.planning = base.planning

    def get(self, aggregate_id: UUID) -> Any:
        """A copy of the aggregate as the base has it (NotFoundError if it does not exist)."""
        agg = self.touched.get(aggregate_id)
        if agg is None:
            found = self.base.touched.get(aggregate_id) or self.base.cache.get(aggregate_id)
            agg = copy.deepcopy(found) if found is not None else self._load(aggregate_id)
            self.touched[aggregate_id] = agg
        return agg


class EntityQueues(MutableMapping[UUID, EntityQueue]):
    """Entity queues by entity id, loaded and created through a unit of work."""

    def __init__(self, uow: UnitOfWork):
        self.uow = uow

    def __getitem__(self, entity_id: UUID) -> EntityQueue:
        if entity_id in self.uow.fresh:
            raise KeyError(entity_id)  # a new random id: no queue can exist for it yet
        queue = self.uow.find(EntityQueue.create_id(entity_id))
        if queue is None:
            raise KeyError(entity_id)
        return queue  # type: ignore[no-any-return]

    def __setitem__(self, entity_id: UUID, queue: EntityQueue) -> None:
        self.uow.add(queue)

    def __delitem__(self, entity_id: UUID) -> None:
        raise NotImplementedError

    def __iter__(self) -> Iterator[UUID]:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError
