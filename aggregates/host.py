"""Host: a hypervisor known by its libvirt URI, with capacity that placements claim."""

from enum import Enum
from uuid import UUID

from eventsourcing.domain import event

from aggregates.base import PlatformAggregate, natural_id
from aggregates.errors import CapacityError, DomainRuleError, ValidationError


class HostResourceState(Enum):
    """Whether the admin lets placement use the host (CloudStack's resource state)."""

    ENABLED = "Enabled"
    DISABLED = "Disabled"
    PREPARE_FOR_MAINTENANCE = "PrepareForMaintenance"
    MAINTENANCE = "Maintenance"
    ERROR_IN_MAINTENANCE = "ErrorInMaintenance"


class HostStatus(Enum):
    """Whether the host answers (CloudStack's status)."""

    UP = "Up"
    DOWN = "Down"
    DISCONNECTED = "Disconnected"


_RS = HostResourceState
# action -> states it may start from
_RESOURCE_TRANSITIONS: dict[tuple[HostResourceState, HostResourceState], str] = {
    (_RS.ENABLED, _RS.DISABLED): "disable",
    (_RS.DISABLED, _RS.ENABLED): "enable",
    (_RS.ENABLED, _RS.PREPARE_FOR_MAINTENANCE): "prepare for maintenance",
    (_RS.DISABLED, _RS.PREPARE_FOR_MAINTENANCE): "prepare for maintenance",
    (_RS.PREPARE_FOR_MAINTENANCE, _RS.MAINTENANCE): "complete maintenance",
    (_RS.PREPARE_FOR_MAINTENANCE, _RS.ERROR_IN_MAINTENANCE): "fail maintenance",
    (_RS.PREPARE_FOR_MAINTENANCE, _RS.ENABLED): "cancel maintenance",
    (_RS.MAINTENANCE, _RS.ENABLED): "cancel maintenance",
    (_RS.ERROR_IN_MAINTENANCE, _RS.ENABLED): "cancel maintenance",
    (_RS.ERROR_IN_MAINTENANCE, _RS.PREPARE_FOR_MAINTENANCE): "prepare for maintenance",
}


class Host(PlatformAggregate):
    """A hypervisor host. Placements claim cpu and memory; claims never exceed capacity."""

    TOPIC = "host"
    KIND = "host"

    class Event(PlatformAggregate.Event):
        """Base of Host events."""

        TOPIC = "host.Event"

    class Registered(Event, PlatformAggregate.Created):
        """The host was added to a cluster."""

        TOPIC = "host.Registered"
        name: str
        uri: str
        zone_id: UUID
        pod_id: UUID
        cluster_id: UUID
        cpu_cores: int
        cpu_mhz: int
        memory_mib: int
        cpu_overprovisioning: float
        memory_overprovisioning: float
        tags: tuple[str, ...]

    class ResourceStateChanged(Event):
        """The admin (or maintenance) moved the host to a new resource state."""

        TOPIC = "host.ResourceStateChanged"
        state: HostResourceState
        reason: str

    class StatusChanged(Event):
        """The host was observed Up, Down or Disconnected."""

        TOPIC = "host.StatusChanged"
        status: HostStatus
        reason: str

    class CapacityClaimed(Event):
        """A placement took cpu and memory on this host."""

        TOPIC = "host.CapacityClaimed"
        claim_id: UUID
        vm_id: UUID
        cpu_cores: int
        memory_mib: int

    class CapacityReleased(Event):
        """A claim was given back."""

        TOPIC = "host.CapacityReleased"
        claim_id: UUID

    @staticmethod
    def create_id(name: str) -> UUID:
        """Hosts are known by name."""
        return natural_id("host", name)

    @event(Registered)
    def __init__(
        self,
        name: str,
        uri: str,
        zone_id: UUID,
        pod_id: UUID,
        cluster_id: UUID,
        cpu_cores: int,
        cpu_mhz: int,
        memory_mib: int,
        cpu_overprovisioning: float,
        memory_overprovisioning: float,
        tags: tuple[str, ...],
    ) -> None:
        self.name, self.uri = name, uri
        self.zone_id, self.pod_id, self.cluster_id = zone_id, pod_id, cluster_id
        self.cpu_cores, self.cpu_mhz, self.memory_mib = cpu_cores, cpu_mhz, memory_mib
        self.cpu_overprovisioning = cpu_overprovisioning
        self.memory_overprovisioning = memory_overprovisioning
        self.tags = tuple(tags)
        self.resource_state = HostResourceState.ENABLED
        self.status = HostStatus.UP
        self.claims: dict[UUID, tuple[UUID, int, int]] = {}
        self.used_cpu_cores = 0
        self.used_memory_mib = 0

    @classmethod
    def register(
        cls,
        *,
        name: str,
        uri: str,
        zone_id: UUID,
        pod_id: UUID,
        cluster_id: UUID,
        cpu_cores: int,
        cpu_mhz: int,
        memory_mib: int,
        cpu_overprovisioning: float = 1.0,
        memory_overprovisioning: float = 1.0,
        tags: tuple[str, ...] = (),
    ) -> "Host":
        """Validate and register a host."""
        if not name:
            raise ValidationError("host name must not be empty")
        if "://" not in uri and not uri.startswith("test:"):
            raise ValidationError(f"host {name}: uri {uri!r} is not a libvirt URI")
        for field, value in (("cpu_cores", cpu_cores), ("cpu_mhz", cpu_mhz),
                             ("memory_mib", memory_mib)):
            if value <= 0:
                raise ValidationError(f"host {name}: {field} must be positive, got {value}")
        for field, factor in (("cpu_overprovisioning", cpu_overprovisioning),
                              ("memory_overprovisioning", memory_overprovisioning)):
            if factor < 1.0:
                raise ValidationError(f"host {name}: {field} must be >= 1.0, got {factor}")
        return cls(name, uri, zone_id, pod_id, cluster_id, cpu_cores, cpu_mhz, memory_mib,
                   float(cpu_overprovisioning), float(memory_overprovisioning), tuple(tags))

    @property
    def total_cpu_cores(self) -> int:
        """Cores placement may hand out, after over-provisioning."""
        return int(self.cpu_cores * self.cpu_overprovisioning)

    @property
    def total_memory_mib(self) -> int:
        """Memory placement may hand out, after over-provisioning."""
        return int(self.memory_mib * self.memory_overprovisioning)

    @property
    def free_cpu_cores(self) -> int:
        """Cores not yet claimed."""
        return self.total_cpu_cores - self.used_cpu_cores

    @property
    def free_memory_mib(self) -> int:
        """Memory not yet claimed."""
        return self.total_memory_mib - self.used_memory_mib

    def change_resource_state(self, state: HostResourceState, reason: str = "") -> None:
        """Move to a new resource state, if the state machine allows it."""
        if (self.resource_state, state) not in _RESOURCE_TRANSITIONS:
            raise self._refuse(f"move to {state.value}")
        self._resource_state_changed(state, reason)

    @property
    def state(self) -> HostResourceState:
        """The resource state (what `_refuse` reports)."""
        return self.resource_state

    @event(ResourceStateChanged)
    def _resource_state_changed(self, state: HostResourceState, reason: str) -> None:
        self.resource_state = state

    def change_status(self, status: HostStatus, reason: str = "") -> None:
        """Record an observed status; repeating the current one records nothing."""
        if status is not self.status:
            self._status_changed(status, reason)

    @event(StatusChanged)
    def _status_changed(self, status: HostStatus, reason: str) -> None:
        self.status = status

    def claim(self, claim_id: UUID, vm_id: UUID, cpu_cores: int, memory_mib: int) -> None:
        """Take capacity for a VM; refused if the host is not placeable or too full."""
        if claim_id in self.claims:
            raise DomainRuleError(f"host {self.name}: claim {claim_id} already exists")
        if cpu_cores <= 0 or memory_mib <= 0:
            raise ValidationError("a claim needs positive cpu_cores and memory_mib")
        if self.resource_state is not HostResourceState.ENABLED:
            raise self._refuse("accept a placement")
        if self.status is not HostStatus.UP:
            raise DomainRuleError(f"host {self.name} is {self.status.value}: cannot accept "
                                  "a placement")
        if cpu_cores > self.free_cpu_cores or memory_mib > self.free_memory_mib:
            raise CapacityError(
                f"host {self.name}: asked {cpu_cores} cores/{memory_mib} MiB, free "
                f"{self.free_cpu_cores} cores/{self.free_memory_mib} MiB")
        self._capacity_claimed(claim_id, vm_id, cpu_cores, memory_mib)

    @event(CapacityClaimed)
    def _capacity_claimed(self, claim_id: UUID, vm_id: UUID, cpu_cores: int,
                          memory_mib: int) -> None:
        self.claims[claim_id] = (vm_id, cpu_cores, memory_mib)
        self.used_cpu_cores += cpu_cores
        self.used_memory_mib += memory_mib

    def release(self, claim_id: UUID) -> None:
        """Give a claim back; an unknown claim is refused."""
        if claim_id not in self.claims:
            raise DomainRuleError(f"host {self.name}: no claim {claim_id}")
        self._capacity_released(claim_id)

    @event(CapacityReleased)
    def _capacity_released(self, claim_id: UUID) -> None:
        _, cpu, mem = self.claims.pop(claim_id)
        self.used_cpu_cores -= cpu
        self.used_memory_mib -= mem
