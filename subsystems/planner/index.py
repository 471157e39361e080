"""CapacityIndex: the planner's in-memory view of hosts, claims and VMs, folded from the log.

`apply(event)` folds one platform event. Host events give capacity, state and tags; claims
give usage (with the same arithmetic as `Host.total_*`/`free_*`, so the index agrees with the
aggregates); VM events and claims tell which VM is on which host, which the affinity filters
and the account-aware planners need. Zone, pod and cluster allocation states disable whole
clusters, as CloudStack does.

Placement speed comes from per-cluster summaries: each cluster keeps, over its placeable
hosts, the sums and maxima of free cores and memory, the fastest core and the distinct tag
sets. A planner ranks clusters by their summary and skips any cluster that cannot hold the
VM without looking at its hosts, so one placement costs O(clusters in scope + hosts of the
clusters it opens) instead of O(hosts). A change marks its cluster dirty; summaries are
recomputed at the next placement, so folding a long log stays linear.

Not thread-safe on its own: the plugin serializes folds and placements with one lock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from eventsourcing.utils import get_topic

from aggregates.cluster import Cluster
from aggregates.host import Host, HostResourceState, HostStatus
from aggregates.pod import Pod
from aggregates.vm import VirtualMachine
from aggregates.zone import Zone

__all__ = [
    "INDEX_TOPICS", "AccountTally", "CapacityIndex", "ClusterSlot", "HostSlot", "ZoneSlot",
]

_ENABLED = HostResourceState.ENABLED
_UP = HostStatus.UP
_VM = VirtualMachine


@dataclass(eq=False, slots=True)
class ClusterSlot:
    """A cluster's hosts in registration order and the summary that lets a planner skip it."""

    id: UUID
    zone_id: UUID
    pod_id: UUID
    order: int
    pod_order: int
    hosts: list[HostSlot] = field(default_factory=list)
    usable: bool = True  # neither the cluster, its pod nor its zone is disabled
    placeable: int = 0  # hosts Enabled and Up
    disabled: int = 0  # hosts not Enabled
    down: int = 0  # hosts Enabled but not Up
    free_cpu: int = 0  # sums over placeable hosts
    free_mem: int = 0
    max_free_cpu: int = 0  # extremes over placeable hosts
    max_free_mem: int = 0
    max_mhz: int = 0
    min_free_cpu: int = 0
    min_mhz: int = 0
    tagsets: tuple[frozenset[str], ...] = ()

    def summarize(self, disabled: set[UUID]) -> None:
        """Recompute the summary from the hosts."""
        self.usable = not (self.id in disabled or self.pod_id in disabled
                           or self.zone_id in disabled)
        placeable = [h for h in self.hosts if h.placeable]
        self.placeable = len(placeable)
        self.disabled = sum(h.resource_state is not _ENABLED for h in self.hosts)
        self.down = len(self.hosts) - self.placeable - self.disabled
        self.free_cpu = sum(h.free_cpu for h in placeable)
        self.free_mem = sum(h.free_mem for h in placeable)
        self.max_free_cpu = max((h.free_cpu for h in placeable), default=0)
        self.max_free_mem = max((h.free_mem for h in placeable), default=0)
        self.max_mhz = max((h.cpu_mhz for h in placeable), default=0)
        self.min_free_cpu = min((h.free_cpu for h in placeable), default=0)
        self.min_mhz = min((h.cpu_mhz for h in placeable), default=0)
        self.tagsets = tuple({h.tags for h in placeable})


@dataclass(eq=False, slots=True)
class HostSlot:
    """One host as placement sees it: where it is, its capacity, usage, state and tags."""

    id: UUID
    name: str
    uri: str
    cluster: ClusterSlot
    order: int
    cpu_cores: int
    cpu_mhz: int
    memory_mib: int
    cpu_overprovisioning: float
    memory_overprovisioning: float
    tags: frozenset[str]
    total_cpu: int
    total_mem: int
    free_cpu: int
    free_mem: int
    resource_state: HostResourceState = _ENABLED
    status: HostStatus = _UP
    placeable: bool = True  # Enabled and Up
    claims: dict[UUID, tuple[UUID, int, int]] = field(default_factory=dict)

    @property
    def zone_id(self) -> UUID:
        """The host's zone."""
        return self.cluster.zone_id

    @property
    def pod_id(self) -> UUID:
        """The host's pod."""
        return self.cluster.pod_id

    @property
    def cluster_id(self) -> UUID:
        """The host's cluster."""
        return self.cluster.id

    @property
    def used_cpu(self) -> int:
        """Cores claimed."""
        return self.total_cpu - self.free_cpu

    @property
    def used_mem(self) -> int:
        """MiB claimed."""
        return self.total_mem - self.free_mem


@dataclass(eq=False, slots=True)
class ZoneSlot:
    """A zone's clusters, in registration order, and by pod."""

    id: UUID
    clusters: list[ClusterSlot] = field(default_factory=list)
    pods: dict[UUID, list[ClusterSlot]] = field(default_factory=dict)
    host_count: int = 0


class AccountTally:
    """How many VMs of one account are on each host, cluster and pod."""

    __slots__ = ("cluster", "host", "pod")

    def __init__(self) -> None:
        """No VMs anywhere."""
        self.host: dict[UUID, int] = {}
        self.cluster: dict[UUID, int] = {}
        self.pod: dict[UUID, int] = {}

    def add(self, host: HostSlot, n: int) -> None:
        """Count `n` more VMs (negative: fewer) on the host, its cluster and its pod."""
        for table, key in ((self.host, host.id), (self.cluster, host.cluster.id),
                           (self.pod, host.cluster.pod_id)):
            value = table.get(key, 0) + n
            if value:
                table[key] = value
            else:
                del table[key]


_NO_VMS = AccountTally()


class CapacityIndex:
    """Hosts, their free capacity and the VMs on them, kept current by folding platform events."""

    def __init__(self) -> None:
        """An empty index."""
        self.hosts: dict[UUID, HostSlot] = {}
        self.zones: dict[UUID, ZoneSlot] = {}
        self.clusters: dict[UUID, ClusterSlot] = {}
        self.disabled: set[UUID] = set()  # zone, pod and cluster ids whose allocation is off
        self.events = 0  # events folded
        self._pod_order: dict[UUID, int] = {}
        self._dirty: set[ClusterSlot] = set()
        self._vm_account: dict[UUID, str] = {}
        self._vm_host: dict[UUID, UUID] = {}  # where the VM's own events put it
        self._vm_destination: dict[UUID, UUID] = {}
        self._vm_claims: dict[UUID, dict[UUID, int]] = {}  # vm -> host -> live claims
        self._tallies: dict[str, AccountTally] = {}
        self._handlers: dict[type, Callable[[Any], None]] = {
            Host.Registered: self._registered,
            Host.ResourceStateChanged: self._resource_state_changed,
            Host.StatusChanged: self._status_changed,
            Host.CapacityClaimed: self._claimed,
            Host.CapacityReleased: self._released,
            Cluster.AllocationStateChanged: self._allocation_changed,
            Pod.AllocationStateChanged: self._allocation_changed,
            Zone.AllocationStateChanged: self._allocation_changed,
            _VM.Allocated: self._vm_allocated,
            _VM.StartRequested: self._vm_start_requested,
            _VM.StartFailed: self._vm_left,
            _VM.Stopped: self._vm_left,
            _VM.Destroyed: self._vm_left,
            _VM.ExpungeRequested: self._vm_left,
            _VM.Expunged: self._vm_expunged,
            _VM.MigrationRequested: self._vm_migration_requested,
            _VM.Migrated: self._vm_migrated,
            _VM.MigrationFailed: self._vm_migration_failed,
        }

    # ------------------------------------------------------------------ queries

    def apply_all(self, events: Iterable[Any]) -> None:
        """Fold events in log order."""
        for e in events:
            self.apply(e)

    def apply(self, event: Any) -> bool:
        """Fold one event; False when it says nothing about placement."""
        handler = self._handlers.get(type(event))
        if handler is None:
            return False
        handler(event)
        self.events += 1
        return True

    def refresh(self) -> None:
        """Recompute the summaries of clusters changed since the last placement."""
        if self._dirty:
            for cluster in self._dirty:
                cluster.summarize(self.disabled)
            self._dirty.clear()

    def vm_hosts(self, vm_id: UUID) -> frozenset[UUID]:
        """The hosts a VM holds a place on: its claims, and where its own events put it."""
        claims = self._vm_claims.get(vm_id)
        found = set(claims) if claims else set()
        host = self._vm_host.get(vm_id)
        if host is not None:
            found.add(host)
        return frozenset(found)

    def tally(self, account: str) -> AccountTally:
        """How many VMs of `account` are on each host, cluster and pod."""
        return self._tallies.get(account, _NO_VMS)

    def account_of(self, vm_id: UUID) -> str | None:
        """The account a VM was allocated for, if the index has seen it."""
        return self._vm_account.get(vm_id)

    # ------------------------------------------------------------------ hosts

    def _registered(self, e: Host.Registered) -> None:
        if e.originator_id in self.hosts:
            return
        zone = self.zones.get(e.zone_id)
        if zone is None:
            zone = self.zones[e.zone_id] = ZoneSlot(e.zone_id)
        cluster = self.clusters.get(e.cluster_id)
        if cluster is None:
            pod_order = self._pod_order.setdefault(e.pod_id, len(self._pod_order))
            cluster = ClusterSlot(e.cluster_id, e.zone_id, e.pod_id, len(self.clusters),
                                  pod_order)
            self.clusters[e.cluster_id] = cluster
            zone.clusters.append(cluster)
            zone.pods.setdefault(e.pod_id, []).append(cluster)
        # the same arithmetic as Host.total_cpu_cores / total_memory_mib
        total_cpu = int(e.cpu_cores * e.cpu_overprovisioning)
        total_mem = int(e.memory_mib * e.memory_overprovisioning)
        host = HostSlot(
            id=e.originator_id, name=e.name, uri=e.uri, cluster=cluster, order=len(self.hosts),
            cpu_cores=e.cpu_cores, cpu_mhz=e.cpu_mhz, memory_mib=e.memory_mib,
            cpu_overprovisioning=e.cpu_overprovisioning,
            memory_overprovisioning=e.memory_overprovisioning, tags=frozenset(e.tags),
            total_cpu=total_cpu, total_mem=total_mem, free_cpu=total_cpu, free_mem=total_mem)
        self.hosts[host.id] = host
        cluster.hosts.append(host)
        zone.host_count += 1
        self._dirty.add(cluster)

    def _resource_state_changed(self, e: Host.ResourceStateChanged) -> None:
        host = self.hosts.get(e.originator_id)
        if host is not None:
            host.resource_state = e.state
            self._placeability(host)

    def _status_changed(self, e: Host.StatusChanged) -> None:
        host = self.hosts.get(e.originator_id)
        if host is not None:
            host.status = e.status
            self._placeability(host)

    def _placeability(self, host: HostSlot) -> None:
        host.placeable = host.resource_state is _ENABLED and host.status is _UP
        self._dirty.add(host.cluster)

    def _claimed(self, e: Host.CapacityClaimed) -> None:
        host = self.hosts.get(e.originator_id)
        if host is None or e.claim_id in host.claims:
            return
        host.claims[e.claim_id] = (e.vm_id, e.cpu_cores, e.memory_mib)
        host.free_cpu -= e.cpu_cores
        host.free_mem -= e.memory_mib
        self._dirty.add(host.cluster)
        self._move(e.vm_id, self._add_claim, host.id)

    def _released(self, e: Host.CapacityReleased) -> None:
        host = self.hosts.get(e.originator_id)
        if host is None or e.claim_id not in host.claims:
            return
        vm_id, cpu, mem = host.claims.pop(e.claim_id)
        host.free_cpu += cpu
        host.free_mem += mem
        self._dirty.add(host.cluster)
        self._move(vm_id, self._drop_claim, host.id)

    def _allocation_changed(self, e: Any) -> None:
        if e.state.value == "Enabled":
            self.disabled.discard(e.originator_id)
        else:
            self.disabled.add(e.originator_id)
        # rare (an admin action), so re-summarizing every cluster is fine
        self._dirty.update(self.clusters.values())

    # ------------------------------------------------------------------ vms

    def _move(self, vm_id: UUID, change: Callable[[UUID, UUID], None], host_id: UUID) -> None:
        """Apply a change to where a VM is and keep the account tallies in step."""
        before = self.vm_hosts(vm_id)
        change(vm_id, host_id)
        after = self.vm_hosts(vm_id)
        account = self._vm_account.get(vm_id)
        if account is None or before == after:
            return
        tally = self._tallies.setdefault(account, AccountTally())
        for gone in before - after:
            if gone in self.hosts:
                tally.add(self.hosts[gone], -1)
        for came in after - before:
            if came in self.hosts:
                tally.add(self.hosts[came], 1)
        if not tally.host and not tally.cluster and not tally.pod:
            del self._tallies[account]

    def _add_claim(self, vm_id: UUID, host_id: UUID) -> None:
        per_host = self._vm_claims.setdefault(vm_id, {})
        per_host[host_id] = per_host.get(host_id, 0) + 1

    def _drop_claim(self, vm_id: UUID, host_id: UUID) -> None:
        per_host = self._vm_claims[vm_id]
        if per_host[host_id] == 1:
            del per_host[host_id]
            if not per_host:
                del self._vm_claims[vm_id]
        else:
            per_host[host_id] -= 1

    def _set_host(self, vm_id: UUID, host_id: UUID) -> None:
        self._vm_host[vm_id] = host_id

    def _clear_host(self, vm_id: UUID, _: UUID) -> None:
        self._vm_host.pop(vm_id, None)

    def _vm_allocated(self, e: VirtualMachine.Allocated) -> None:
        vm_id = e.originator_id
        if vm_id in self._vm_account:
            return
        self._vm_account[vm_id] = e.account
        # a VM whose claim was folded before its allocation is tallied now
        for host_id in self.vm_hosts(vm_id):
            if host_id in self.hosts:
                self._tallies.setdefault(e.account, AccountTally()).add(self.hosts[host_id], 1)

    def _vm_start_requested(self, e: VirtualMachine.StartRequested) -> None:
        self._move(e.originator_id, self._set_host, e.host_id)

    def _vm_left(self, e: Any) -> None:
        self._vm_destination.pop(e.originator_id, None)
        self._move(e.originator_id, self._clear_host, e.originator_id)

    def _vm_expunged(self, e: VirtualMachine.Expunged) -> None:
        self._vm_left(e)
        if e.originator_id not in self._vm_claims:
            self._vm_account.pop(e.originator_id, None)

    def _vm_migration_requested(self, e: VirtualMachine.MigrationRequested) -> None:
        self._vm_destination[e.originator_id] = e.destination_host_id

    def _vm_migrated(self, e: VirtualMachine.Migrated) -> None:
        destination = self._vm_destination.pop(e.originator_id, None)
        if destination is not None:
            self._move(e.originator_id, self._set_host, destination)

    def _vm_migration_failed(self, e: VirtualMachine.MigrationFailed) -> None:
        self._vm_destination.pop(e.originator_id, None)


INDEX_TOPICS: tuple[str, ...] = tuple(get_topic(t) for t in CapacityIndex()._handlers)
"""The event topics the index folds; the follower reads only these from the log."""
