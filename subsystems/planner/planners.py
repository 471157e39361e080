"""The planners CloudStack users know, as filters and a ranking over the capacity index.

**Filters.** A host is turned away for the first of these reasons that holds (the order of
`FilterCounts`): disabled (host not Enabled, or its cluster, pod or zone disabled), down
(status not Up), avoided (refused in an earlier attempt), affinity (not the host every placed
VM of the affinity group is on), anti-affinity (holds a VM of the anti-affinity group), tags
(lacks one of the offering's host tags), cpu (fewer free cores after over-provisioning than
asked, or slower cores than `cpu_mhz`), memory (less free memory after over-provisioning).

**Weighing.** Every planner ranks the hosts that pass by a pair (cluster key, host key) and
proposes the smallest; clusters are compared on the free capacity of their placeable hosts:

- FirstFit: clusters by free cores, then free memory, most first (CloudStack orders clusters
  by capacity, CPU by default); in a cluster, the first fitting host in registration order.
- UserDispersing: pods, then clusters, with the fewest VMs of the account first, then by free
  capacity; in a cluster, the host with the fewest VMs of the account, then the most free
  cores and memory.
- UserConcentratedPod: the pod with the most VMs of the account first (ties: the pod
  registered first, so a new account concentrates too), then clusters by free capacity, and
  the first fitting host, as FirstFit.

The search opens clusters in rank order and skips one whose summary shows no host could fit,
so the first cluster with a fitting host holds the best host: the same answer as a linear
scan over every host (`reference.linear_scan`), which the tests check.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from aggregates.errors import StepFailedError
from aggregates.host import HostResourceState
from kernel.steps.planner import (
    INSUFFICIENT_CAPACITY,
    FilterCounts,
    Placement,
    PlannerName,
    PlanPlacement,
)
from subsystems.planner.index import AccountTally, CapacityIndex, ClusterSlot, HostSlot

__all__ = [
    "REASONS", "Need", "Weigher", "filter_counts", "no_capacity", "place", "reject_reason",
    "scope", "weigher_for",
]

REASONS: tuple[str, ...] = tuple(FilterCounts.__struct_fields__)
DISABLED, DOWN, AVOIDED, AFFINITY, ANTI_AFFINITY, TAGS, CPU, MEMORY = range(len(REASONS))
_ENABLED = HostResourceState.ENABLED
_PHRASES = ("disabled", "down", "avoided after a refused claim", "off the affinity group's host",
            "hold an anti-affinity VM", "tag mismatch", "lack cpu", "lack memory")


@dataclass(frozen=True, slots=True)
class Need:
    """What one request asks of a host, with the VM sets resolved to host sets."""

    cpu: int
    mem: int
    mhz: int
    tags: frozenset[str]
    avoid: frozenset[UUID]
    anti: frozenset[UUID]
    affinity: frozenset[UUID] | None  # None: no affinity VM is placed yet, any host will do

    @classmethod
    def of(cls, index: CapacityIndex, args: PlanPlacement) -> Need:
        """Resolve the request's VM groups to the hosts the index knows them on."""
        affinity: frozenset[UUID] | None = None
        for vm_id in args.affinity_vm_ids:
            on = index.vm_hosts(vm_id)
            if vm_id != args.vm_id and on:
                affinity = on if affinity is None else affinity & on
        anti: set[UUID] = set()
        for vm_id in args.anti_affinity_vm_ids:
            if vm_id != args.vm_id:
                anti |= index.vm_hosts(vm_id)
        return cls(cpu=args.cpu_cores, mem=args.memory_mib, mhz=args.cpu_mhz,
                   tags=frozenset(args.host_tags), avoid=frozenset(args.avoid_hosts),
                   anti=frozenset(anti), affinity=affinity)


def reject_reason(host: HostSlot, need: Need) -> int | None:
    """The index into REASONS of the first filter the host fails, or None if it fits."""
    if not host.placeable or not host.cluster.usable:
        if host.resource_state is not _ENABLED or not host.cluster.usable:
            return DISABLED
        return DOWN
    if host.id in need.avoid:
        return AVOIDED
    if need.affinity is not None and host.id not in need.affinity:
        return AFFINITY
    if host.id in need.anti:
        return ANTI_AFFINITY
    if need.tags and not need.tags <= host.tags:
        return TAGS
    if host.free_cpu < need.cpu or host.cpu_mhz < need.mhz:
        return CPU
    if host.free_mem < need.mem:
        return MEMORY
    return None


@dataclass(frozen=True, slots=True)
class Weigher:
    """A planner's ranking: smaller keys win; `in_order` when the host key is registration
    order, so the first fitting host of a cluster is its best."""

    name: PlannerName
    cluster_key: Callable[[ClusterSlot], tuple[int, ...]]
    host_key: Callable[[HostSlot], tuple[int, ...]]
    in_order: bool


def _by_order(h: HostSlot) -> tuple[int, ...]:
    return (h.order,)


def _by_capacity(c: ClusterSlot) -> tuple[int, ...]:
    return (-c.free_cpu, -c.free_mem, c.order)


def weigher_for(name: PlannerName, tally: AccountTally) -> Weigher:
    """The ranking of planner `name` for an account whose VMs are counted in `tally`."""
    pods, clusters, hosts = tally.pod, tally.cluster, tally.host
    if name == "FirstFit":
        return Weigher(name, _by_capacity, _by_order, True)
    if name == "UserDispersing":
        return Weigher(
            name,
            lambda c: (pods.get(c.pod_id, 0), clusters.get(c.id, 0), -c.free_cpu, -c.free_mem,
                       c.order),
            lambda h: (hosts.get(h.id, 0), -h.free_cpu, -h.free_mem, h.order),
            False)
    if name == "UserConcentratedPod":
        return Weigher(
            name,
            lambda c: (-pods.get(c.pod_id, 0), c.pod_order, -c.free_cpu, -c.free_mem, c.order),
            _by_order, True)
    raise StepFailedError(f"unknown planner {name!r}", retryable=False, code="invalid_request")


def scope(index: CapacityIndex, args: PlanPlacement) -> Sequence[ClusterSlot]:
    """The clusters the request may use: its zone, narrowed to its pod or cluster."""
    zone = index.zones.get(args.zone_id)
    if zone is None:
        return ()
    if args.cluster_id is not None:
        c = index.clusters.get(args.cluster_id)
        if c is None or c.zone_id != args.zone_id or args.pod_id not in (None, c.pod_id):
            return ()
        return (c,)
    if args.pod_id is not None:
        return zone.pods.get(args.pod_id, ())
    return zone.clusters


def place(index: CapacityIndex, args: PlanPlacement) -> Placement:
    """Propose the best host for the request, or raise `insufficient_capacity`."""
    index.refresh()
    need = Need.of(index, args)
    weigher = weigher_for(args.planner, index.tally(args.account))
    clusters = scope(index, args)
    counts = [0] * len(REASONS)
    if need.affinity is not None:
        chosen, examined = _best_among(index, args, need, weigher, counts)
    else:
        chosen, examined = _search(clusters, need, weigher, counts)
    if chosen is None:
        raise no_capacity(index, args, clusters, need)
    if args.cluster_id is None and args.pod_id is None:
        considered = index.zones[args.zone_id].host_count
    else:
        considered = sum(len(c.hosts) for c in clusters)
    return Placement(
        host_id=chosen.id, host_name=chosen.name, host_uri=chosen.uri,
        cluster_id=chosen.cluster.id, pod_id=chosen.cluster.pod_id,
        zone_id=chosen.cluster.zone_id, planner=args.planner, considered=considered,
        examined=examined, filtered=FilterCounts(**dict(zip(REASONS, counts, strict=True))))


def _search(clusters: Sequence[ClusterSlot], need: Need, weigher: Weigher,
            counts: list[int]) -> tuple[HostSlot | None, int]:
    """Open clusters in rank order, skipping those whose summary rules the VM out."""
    cpu, mem, mhz, tags = need.cpu, need.mem, need.mhz, need.tags
    open_ = [c for c in clusters
             if c.usable and c.max_free_cpu >= cpu and c.max_free_mem >= mem
             and c.max_mhz >= mhz and (not tags or any(tags <= ts for ts in c.tagsets))]
    open_.sort(key=weigher.cluster_key)
    examined = 0
    for cluster in open_:
        best: HostSlot | None = None
        best_key: tuple[int, ...] = ()
        for host in cluster.hosts:
            examined += 1
            reason = reject_reason(host, need)
            if reason is not None:
                counts[reason] += 1
                continue
            if weigher.in_order:
                return host, examined
            key = weigher.host_key(host)
            if best is None or key < best_key:
                best, best_key = host, key
        if best is not None:
            return best, examined
    return None, examined


def _best_among(index: CapacityIndex, args: PlanPlacement, need: Need, weigher: Weigher,
                counts: list[int]) -> tuple[HostSlot | None, int]:
    """With affinity the candidates are the group's host(s): rank them directly."""
    best: HostSlot | None = None
    best_key: tuple[Any, ...] = ()
    examined = 0
    for host_id in sorted(need.affinity or ()):
        host = index.hosts.get(host_id)
        if host is None or not _in_scope(host, args):
            continue
        examined += 1
        reason = reject_reason(host, need)
        if reason is not None:
            counts[reason] += 1
            continue
        key = (weigher.cluster_key(host.cluster), weigher.host_key(host))
        if best is None or key < best_key:
            best, best_key = host, key
    return best, examined


def _in_scope(host: HostSlot, args: PlanPlacement) -> bool:
    c = host.cluster
    return c.zone_id == args.zone_id and args.pod_id in (None, c.pod_id) \
        and args.cluster_id in (None, c.id)


def filter_counts(index: CapacityIndex, clusters: Sequence[ClusterSlot],
                  need: Need) -> list[int]:
    """How many hosts in scope each filter turns away, indexed like REASONS.

    A cluster's summary settles its count at once when every host fails for the same reason
    (the cluster disabled, no tag set matching, no host with enough cores...); only the
    others, and clusters holding an avoided or affinity-related host, are counted host by
    host. A refused placement thus costs about what a successful one does.
    """
    counts = [0] * len(REASONS)
    marked = need.avoid | need.anti | (need.affinity or frozenset())
    special = {index.hosts[h].cluster for h in marked if h in index.hosts}
    for c in clusters:
        if not c.usable:
            counts[DISABLED] += len(c.hosts)
            continue
        reason = None if c in special else _whole_cluster_reason(c, need)
        if reason is None:
            for host in c.hosts:
                found = reject_reason(host, need)
                if found is not None:
                    counts[found] += 1
            continue
        counts[DISABLED] += c.disabled
        counts[DOWN] += c.down
        counts[reason] += c.placeable
    return counts


def _whole_cluster_reason(c: ClusterSlot, need: Need) -> int | None:
    """The reason every placeable host of a usable cluster fails, if the summary shows one."""
    if not c.placeable or need.affinity is not None:
        return AFFINITY  # no placeable host to count; or none is the affinity host
    tags = need.tags
    if tags and not any(tags <= ts for ts in c.tagsets):
        return TAGS
    if tags and not all(tags <= ts for ts in c.tagsets):
        return None  # some hosts fail on tags, others maybe later: count one by one
    if c.max_free_cpu < need.cpu or c.max_mhz < need.mhz:
        return CPU
    if c.min_free_cpu >= need.cpu and c.min_mhz >= need.mhz and c.max_free_mem < need.mem:
        return MEMORY
    return None


def no_capacity(index: CapacityIndex, args: PlanPlacement, clusters: Sequence[ClusterSlot],
                need: Need) -> StepFailedError:
    """The permanent failure, saying how many hosts each filter turned away."""
    counts = filter_counts(index, clusters, need)
    total = sum(len(c.hosts) for c in clusters)
    asked = f"{args.cpu_cores} cores"
    if args.cpu_mhz:
        asked += f" at {args.cpu_mhz} MHz"
    asked += f", {args.memory_mib} MiB"
    if args.host_tags:
        asked += f", tags {sorted(args.host_tags)}"
    where = f"zone {args.zone_id}"
    if args.pod_id is not None:
        where += f" pod {args.pod_id}"
    if args.cluster_id is not None:
        where += f" cluster {args.cluster_id}"
    why = ", ".join(f"{n} {phrase}" for n, phrase in zip(counts, _PHRASES, strict=True) if n)
    message = (f"0 of {total} hosts fit vm {args.vm_id} ({asked}; {args.planner} in {where})"
               + (f": {why}" if why else ": no hosts there"))
    return StepFailedError(message, retryable=False, code=INSUFFICIENT_CAPACITY)
