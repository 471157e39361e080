"""Step contract of the deployment planner: `planner.plan` proposes a host for a VM.

The planner only proposes. The kernel records the placement as a capacity claim on the Host
aggregate (`Host.claim`), which refuses an over-commit; on a refusal the kernel plans again
with the refused host in `avoid_hosts`. No fitting host fails the step for good with the code
`insufficient_capacity` and a message that says why each host was filtered out.
"""

from typing import Annotated, Literal
from uuid import UUID

import msgspec

__all__ = [
    "INSUFFICIENT_CAPACITY",
    "PLANNERS",
    "FilterCounts",
    "Placement",
    "PlanPlacement",
    "PlannerName",
]

PlannerName = Literal["FirstFit", "UserDispersing", "UserConcentratedPod"]
PLANNERS: tuple[PlannerName, ...] = ("FirstFit", "UserDispersing", "UserConcentratedPod")
INSUFFICIENT_CAPACITY = "insufficient_capacity"

Positive = Annotated[int, msgspec.Meta(gt=0)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]


class PlanPlacement(msgspec.Struct, frozen=True, kw_only=True, tag="planner.plan"):
    """Find a host for a VM of this size in the zone (optionally one pod or cluster)."""

    vm_id: UUID
    account: str
    zone_id: UUID
    cpu_cores: Positive
    memory_mib: Positive
    cpu_mhz: NonNegative = 0  # minimum speed per core; 0 accepts any host
    host_tags: tuple[str, ...] = ()  # the offering's tags: a host must carry every one
    planner: PlannerName = "FirstFit"
    avoid_hosts: tuple[UUID, ...] = ()  # hosts an earlier attempt was refused on
    affinity_vm_ids: tuple[UUID, ...] = ()  # place on the host these VMs are on
    anti_affinity_vm_ids: tuple[UUID, ...] = ()  # never on a host these VMs are on
    pod_id: UUID | None = None
    cluster_id: UUID | None = None


class FilterCounts(msgspec.Struct, frozen=True, kw_only=True):
    """How many hosts each filter turned away (a host counts once, for its first reason)."""

    disabled: int = 0  # host not Enabled, or its cluster, pod or zone disabled
    down: int = 0  # host status not Up
    avoided: int = 0  # in avoid_hosts
    affinity: int = 0  # not the host of the affinity group's VMs
    anti_affinity: int = 0  # holds a VM of the anti-affinity group
    tags: int = 0  # lacks one of the offering's host tags
    cpu: int = 0  # too few free cores (after over-provisioning) or too slow cores
    memory: int = 0  # too little free memory (after over-provisioning)


class Placement(msgspec.Struct, frozen=True, kw_only=True):
    """The proposed host, where it is, and what the planner looked at to choose it.

    `considered` counts the hosts in scope (the zone, or the requested pod or cluster);
    `examined` the hosts checked one by one (the rest were ruled out a cluster at a time);
    `filtered` the reasons the examined hosts were turned away.
    """

    host_id: UUID
    host_name: str
    host_uri: str
    cluster_id: UUID
    pod_id: UUID
    zone_id: UUID
    planner: PlannerName
    considered: int
    examined: int
    filtered: FilterCounts
