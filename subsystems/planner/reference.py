"""The reference planner: a plain linear scan over every host, ranked like the real search.

It is the baseline the bench measures beside `planners.place`, and the oracle the tests
compare it with: both must propose the same host for every request.
"""

from __future__ import annotations

from typing import Any

from kernel.steps.planner import PlanPlacement
from subsystems.planner.index import CapacityIndex, HostSlot
from subsystems.planner.planners import Need, reject_reason, weigher_for

__all__ = ["linear_scan"]


def linear_scan(index: CapacityIndex, args: PlanPlacement) -> HostSlot | None:
    """The best fitting host by scanning all hosts, or None when none fits."""
    index.refresh()
    need = Need.of(index, args)
    weigher = weigher_for(args.planner, index.tally(args.account))
    best: HostSlot | None = None
    best_key: tuple[Any, ...] = ()
    for host in index.hosts.values():
        c = host.cluster
        if c.zone_id != args.zone_id or args.pod_id not in (None, c.pod_id) \
                or args.cluster_id not in (None, c.id):
            continue
        if reject_reason(host, need) is not None:
            continue
        key = (weigher.cluster_key(c), weigher.host_key(host))
        if best is None or key < best_key:
            best, best_key = host, key
    return best
