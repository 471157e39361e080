"""The allocation state that zones, pods and clusters share (CloudStack's `allocationstate`)."""

from enum import Enum
from typing import TYPE_CHECKING


class AllocationState(Enum):
    """Whether the admin lets new resources be allocated in the zone, pod or cluster."""

    ENABLED = "Enabled"
    DISABLED = "Disabled"


class Allocatable:
    """Enable/disable of allocation, shared by Zone, Pod and Cluster.

    Each aggregate keeps its own explicitly-topiced `AllocationStateChanged` event and its
    `@event` method `_allocation_state_changed`; this mixin holds the rules around them.
    """

    allocation_state: AllocationState

    @property
    def state(self) -> AllocationState:
        """The allocation state (what `_refuse` reports)."""
        return self.allocation_state

    @property
    def enabled(self) -> bool:
        """Whether new resources may be allocated here."""
        return self.allocation_state is AllocationState.ENABLED

    def enable(self) -> None:
        """Let new resources be allocated here."""
        self._require({AllocationState.DISABLED}, "enable")
        self._allocation_state_changed(AllocationState.ENABLED)

    def disable(self) -> None:
        """Stop new allocations here; what already runs keeps running."""
        self._require({AllocationState.ENABLED}, "disable")
        self._allocation_state_changed(AllocationState.DISABLED)

    if TYPE_CHECKING:  # supplied by PlatformAggregate and by each aggregate's @event method

        def _require(self, allowed: object, action: str) -> None: ...

        def _allocation_state_changed(self, state: AllocationState) -> None: ...
