"""Cluster: hosts of one hypervisor type in a pod, with the cpu and memory over-provisioning
factors CloudStack users set per cluster.

Clusters are known by pod and name (`Cluster.create_id(pod_id, name)`). A cluster starts
Enabled. The factors here are the ones a host added to the cluster starts with.
"""

from uuid import UUID

from eventsourcing.domain import event

from aggregates.allocation import Allocatable, AllocationState
from aggregates.base import PlatformAggregate, natural_id
from aggregates.validation import require_factor, require_name


class Cluster(Allocatable, PlatformAggregate):
    """A cluster of hosts that share a hypervisor type and primary storage."""

    TOPIC = "cluster"
    KIND = "cluster"

    class Event(PlatformAggregate.Event):
        """Base of Cluster events."""

        TOPIC = "cluster.Event"

    class Added(Event, PlatformAggregate.Created):
        """The cluster was added to a pod."""

        TOPIC = "cluster.Added"
        name: str
        zone_id: UUID
        pod_id: UUID
        hypervisor: str
        cpu_overprovisioning: float
        memory_overprovisioning: float

    class AllocationStateChanged(Event):
        """The admin enabled or disabled allocation in the cluster."""

        TOPIC = "cluster.AllocationStateChanged"
        state: AllocationState

    class OverprovisioningChanged(Event):
        """The admin changed the cluster's over-provisioning factors."""

        TOPIC = "cluster.OverprovisioningChanged"
        cpu_overprovisioning: float
        memory_overprovisioning: float

    @staticmethod
    def create_id(pod_id: UUID, name: str) -> UUID:
        """Clusters are known by pod and name."""
        return natural_id("cluster", str(pod_id), name)

    @event(Added)
    def __init__(self, name: str, zone_id: UUID, pod_id: UUID, hypervisor: str,
                 cpu_overprovisioning: float, memory_overprovisioning: float) -> None:
        self.name, self.zone_id, self.pod_id = name, zone_id, pod_id
        self.hypervisor = hypervisor
        self.cpu_overprovisioning = cpu_overprovisioning
        self.memory_overprovisioning = memory_overprovisioning
        self.allocation_state = AllocationState.ENABLED

    @classmethod
    def add(cls, *, name: str, zone_id: UUID, pod_id: UUID, hypervisor: str = "KVM",
            cpu_overprovisioning: float = 1.0,
            memory_overprovisioning: float = 1.0) -> "Cluster":
        """Validate and add a cluster."""
        require_name("cluster", name)
        label = f"cluster {name}"
        require_name(f"{label}: hypervisor", hypervisor)
        cpu = require_factor(label, "cpu_overprovisioning", cpu_overprovisioning)
        memory = require_factor(label, "memory_overprovisioning", memory_overprovisioning)
        return cls(name, zone_id, pod_id, hypervisor, cpu, memory)

    @event(AllocationStateChanged)
    def _allocation_state_changed(self, state: AllocationState) -> None:
        self.allocation_state = state

    def change_overprovisioning(self, *, cpu_overprovisioning: float | None = None,
                                memory_overprovisioning: float | None = None) -> None:
        """Set new factors (None keeps a factor); setting the current ones records nothing."""
        label = f"cluster {self.name}"
        cpu = self.cpu_overprovisioning if cpu_overprovisioning is None else \
            require_factor(label, "cpu_overprovisioning", cpu_overprovisioning)
        memory = self.memory_overprovisioning if memory_overprovisioning is None else \
            require_factor(label, "memory_overprovisioning", memory_overprovisioning)
        if (cpu, memory) != (self.cpu_overprovisioning, self.memory_overprovisioning):
            self._overprovisioning_changed(cpu, memory)

    @event(OverprovisioningChanged)
    def _overprovisioning_changed(self, cpu_overprovisioning: float,
                                  memory_overprovisioning: float) -> None:
        self.cpu_overprovisioning = cpu_overprovisioning
        self.memory_overprovisioning = memory_overprovisioning
