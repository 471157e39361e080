"""The allocation state that zones, pods and clusters share (CloudStack's `allocationstate`)."""

from enum import Enum


class AllocationState(Enum):
    """Whether the admin lets new resources be allocated in the zone, pod or cluster."""

    ENABLED = "Enabled"
    DISABLED = "Disabled"
