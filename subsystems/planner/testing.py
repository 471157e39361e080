"""World: real Host and VirtualMachine aggregates and an index folded from their events.

For tests and benchmarks: every change goes through the aggregates' own methods, and their
events are folded into the index (and kept in `log`) as the follower would fold them.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

from aggregates.cluster import Cluster
from aggregates.host import Host, HostResourceState, HostStatus
from aggregates.pod import Pod
from aggregates.vm import VirtualMachine
from aggregates.zone import Zone
from kernel.steps.planner import PlanPlacement
from subsystems.planner.index import CapacityIndex

__all__ = ["ZONE", "World", "cluster_id", "pod_id", "zone_id"]

ZONE = "zone-1"


def zone_id(zone: str = ZONE) -> UUID:
    """The id the Zone aggregate named `zone` has."""
    return Zone.create_id(zone)


def pod_id(pod: str, zone: str = ZONE) -> UUID:
    """The id the Pod aggregate named `pod` in `zone` has."""
    return Pod.create_id(zone_id(zone), pod)


def cluster_id(cluster: str, pod: str = "p1", zone: str = ZONE) -> UUID:
    """The id the Cluster aggregate named `cluster` in `pod` has."""
    return Cluster.create_id(pod_id(pod, zone), cluster)


class World:
    """Aggregates plus the index folded from their events."""

    def __init__(self) -> None:
        """An empty world."""
        self.index = CapacityIndex()
        self.hosts: dict[UUID, Host] = {}
        self.vms: dict[UUID, VirtualMachine] = {}
        self.log: list[Any] = []

    def commit(self, *aggregates: Any) -> None:
        """Fold the aggregates' pending events into the index, in order."""
        for aggregate in aggregates:
            events = aggregate.collect_events()
            self.log.extend(events)
            self.index.apply_all(events)

    def host(self, name: str, *, cluster: str = "c1", pod: str = "p1", zone: str = ZONE,
             cpu_cores: int = 16, memory_mib: int = 65536, cpu_mhz: int = 2400,
             cpu_factor: float = 1.0, memory_factor: float = 1.0,
             tags: tuple[str, ...] = ()) -> Host:
        """Register a host in the named cluster, pod and zone."""
        host = Host.register(
            name=name, uri=f"test:///{name}.xml", zone_id=zone_id(zone),
            pod_id=pod_id(pod, zone), cluster_id=cluster_id(cluster, pod, zone),
            cpu_cores=cpu_cores, cpu_mhz=cpu_mhz, memory_mib=memory_mib,
            cpu_overprovisioning=cpu_factor, memory_overprovisioning=memory_factor, tags=tags)
        self.hosts[host.id] = host
        self.commit(host)
        return host

    def vm(self, account: str = "alice", zone: str = ZONE) -> VirtualMachine:
        """Allocate a VM for an account."""
        vm = VirtualMachine.allocate(name=f"vm-{len(self.vms)}", account=account,
                                     zone_id=zone_id(zone),
                                     service_offering_id=uuid4(), template_id=uuid4())
        self.vms[vm.id] = vm
        self.commit(vm)
        return vm

    def claim(self, host: Host, vm: VirtualMachine | None = None, cpu: int = 1,
              memory: int = 1024) -> UUID:
        """Claim capacity on the host for a VM (a new one of `alice` by default)."""
        vm = vm or self.vm()
        claim_id = uuid4()
        host.claim(claim_id, vm.id, cpu, memory)
        self.commit(host)
        return claim_id

    def place_vm(self, host: Host, account: str = "alice", cpu: int = 1,
                 memory: int = 1024) -> VirtualMachine:
        """Allocate a VM, claim for it on the host and start it there."""
        vm = self.vm(account)
        self.claim(host, vm, cpu, memory)
        vm.start(host.id)
        self.commit(vm)
        return vm

    def release(self, host: Host, claim_id: UUID) -> None:
        """Release a claim."""
        host.release(claim_id)
        self.commit(host)

    def disable(self, host: Host) -> None:
        """Disable the host."""
        host.change_resource_state(HostResourceState.DISABLED)
        self.commit(host)

    def down(self, host: Host) -> None:
        """Report the host Down."""
        host.change_status(HostStatus.DOWN)
        self.commit(host)

    @staticmethod
    def request(**fields: Any) -> PlanPlacement:
        """A plan request in zone-1 for 1 core and 1 GiB unless overridden."""
        values: dict[str, Any] = {"vm_id": uuid4(), "account": "alice",
                                  "zone_id": zone_id(), "cpu_cores": 1,
                                  "memory_mib": 1024}
        values.update(fields)
        return PlanPlacement(**values)
