"""The partitions this kernel holds now, as the engine and the kernel's loops ask about them.

`Ownership` is written by the lease loop (`take`, `drop`) and read by every other loop: the
dispatcher publishes only its partitions' steps, stamped with their epoch; the result applier
applies only its partitions' outcomes; the timers fire only for its partitions' operations;
and each batch the engine saves for them carries a `Fence` (see `kernel.leases`). Partition 0
also carries the kernel's singleton duty: the reconciler of observed hosts runs on its holder.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from uuid import UUID

from kernel.leases import Fence, FencedError, partition_of

__all__ = ["DUTY_PARTITION", "Ownership"]

DUTY_PARTITION = 0


class Ownership:
    """The partitions one kernel holds, with their epochs (thread-safe)."""

    def __init__(self, owner: str, partitions: int) -> None:
        self.owner, self.partitions = owner, partitions
        self._held: dict[int, int] = {}
        self._lock = threading.Lock()

    def held(self) -> dict[int, int]:
        """A copy of partition -> epoch."""
        with self._lock:
            return dict(self._held)

    def take(self, leases: Mapping[int, int]) -> None:
        """Start working these partitions at these epochs."""
        with self._lock:
            self._held.update(leases)

    def drop(self, partitions: Iterable[int]) -> None:
        """Stop working these partitions."""
        with self._lock:
            for p in partitions:
                self._held.pop(p, None)

    def partition(self, operation_id: UUID) -> int:
        """The partition of an operation."""
        return partition_of(operation_id, self.partitions)

    def epoch(self, operation_id: UUID) -> int | None:
        """The epoch this kernel holds the operation's partition at, or None."""
        with self._lock:
            return self._held.get(partition_of(operation_id, self.partitions))

    def holds(self, operation_id: UUID) -> bool:
        """Whether this kernel works the operation's partition."""
        return self.epoch(operation_id) is not None

    def fence(self, operation_ids: Iterable[UUID]) -> Fence:
        """The fence of a batch for these operations (FencedError if one is not held)."""
        wanted = {partition_of(i, self.partitions) for i in operation_ids}
        with self._lock:
            missing = wanted - set(self._held)
            if missing:
                raise FencedError(f"{self.owner} does not hold partitions {sorted(missing)}")
            return Fence(self.owner, {p: self._held[p] for p in wanted})

    def holds_duty(self) -> bool:
        """Whether this kernel runs the singleton duties (it holds partition 0)."""
        with self._lock:
            return DUTY_PARTITION in self._held

    def duty_fence(self) -> Fence:
        """The fence of a batch the singleton duties commit."""
        with self._lock:
            if DUTY_PARTITION not in self._held:
                raise FencedError(f"{self.owner} does not hold partition {DUTY_PARTITION}")
            return Fence(self.owner, {DUTY_PARTITION: self._held[DUTY_PARTITION]})
