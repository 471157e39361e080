"""Host: a hypervisor known by its libvirt URI, with capacity that placements claim."""

import dataclasses
from collections.abc import Mapping
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
# The resource states maintenance owns: only cancelling maintenance leaves them.
MAINTENANCE_STATES = frozenset({_RS.PREPARE_FOR_MAINTENANCE, _RS.MAINTENANCE,
                                _RS.ERROR_IN_MAINTENANCE})
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

    # ------------------------------------------------------------------------------------
    # Admin resource state and maintenance (kernel/cloud/hosts.py, kernel/cloud/maintenance.py)

    class MaintenanceStarted(Event):
        """Maintenance was asked for; `operation_id` is the host.prepare_maintenance
        operation that moves the host's VMs away (None: there was no VM to move)."""

        TOPIC = "host.MaintenanceStarted"
        operation_id: UUID | None

    class EvacuationStarted(Event):
        """The host's Running VMs are moving away: one vm.migrate operation each."""

        TOPIC = "host.EvacuationStarted"
        operation_ids: tuple[UUID, ...]
        vm_ids: tuple[UUID, ...]

    class VmEvacuated(Event):
        """A migration of the evacuation ended with its VM off this host."""

        TOPIC = "host.VmEvacuated"
        operation_id: UUID
        vm_id: UUID

    class EvacuationFailed(Event):
        """Something stays on the host: a VM that could not move (it still runs here), or a
        host that did not answer; `operation_id` is the migration, if there was one."""

        TOPIC = "host.EvacuationFailed"
        reason: str
        vm_id: UUID | None = None
        operation_id: UUID | None = None

    class MaintenanceCancelled(Event):
        """Maintenance was cancelled: the host takes placements again."""

        TOPIC = "host.MaintenanceCancelled"
        reason: str

    @property
    def maintenance(self) -> "Maintenance":
        """Where the current (or last) maintenance stands."""
        return getattr(self, "_maintenance", NO_MAINTENANCE)

    def disable(self, reason: str = "") -> None:
        """Keep placement off the host (an Enabled host only)."""
        self._refuse_in_maintenance("disable")
        self.change_resource_state(_RS.DISABLED, reason)

    def enable(self, reason: str = "") -> None:
        """Let placement use the host again (a Disabled host only)."""
        self._refuse_in_maintenance("enable")
        self.change_resource_state(_RS.ENABLED, reason)

    def _refuse_in_maintenance(self, action: str) -> None:
        if self.resource_state in MAINTENANCE_STATES:
            raise DomainRuleError(f"host {self.name} is {self.resource_state.value}: cancel "
                                  f"maintenance to {action} it")

    def start_maintenance(self, operation_id: UUID | None, reason: str = "") -> None:
        """PrepareForMaintenance: placement stops using the host while its VMs move away."""
        if (self.resource_state, _RS.PREPARE_FOR_MAINTENANCE) not in _RESOURCE_TRANSITIONS:
            raise self._refuse("prepare for maintenance")
        self._resource_state_changed(_RS.PREPARE_FOR_MAINTENANCE, reason)
        self._maintenance_started(operation_id)

    @event(MaintenanceStarted)
    def _maintenance_started(self, operation_id: UUID | None) -> None:
        self._maintenance = Maintenance(operation_id=operation_id)

    def _require_preparing(self, action: str) -> None:
        if self.resource_state is not _RS.PREPARE_FOR_MAINTENANCE:
            raise self._refuse(action)

    def evacuate(self, migrations: Mapping[UUID, UUID]) -> None:
        """Record the migrations (operation id -> VM id) that move the VMs away."""
        self._require_preparing("evacuate")
        if not migrations:
            return
        again = set(migrations) & set(self.maintenance.migrations)
        if again:
            raise DomainRuleError(f"host {self.name}: migrations {sorted(map(str, again))} "
                                  "are already recorded")
        self._evacuation_started(tuple(migrations), tuple(migrations.values()))

    @event(EvacuationStarted)
    def _evacuation_started(self, operation_ids: tuple[UUID, ...],
                            vm_ids: tuple[UUID, ...]) -> None:
        moving = {**self.maintenance.migrations, **dict(zip(operation_ids, vm_ids, strict=True))}
        self._maintenance = dataclasses.replace(self.maintenance, migrations=moving)

    def vm_evacuated(self, operation_id: UUID) -> None:
        """A migration of the evacuation ended with its VM off the host."""
        vm_id = self._migration(operation_id)
        self._vm_evacuated(operation_id, vm_id)

    @event(VmEvacuated)
    def _vm_evacuated(self, operation_id: UUID, vm_id: UUID) -> None:
        self._maintenance = self.maintenance.without(operation_id)

    def evacuation_failed(self, reason: str, vm_id: UUID | None = None,
                          operation_id: UUID | None = None) -> None:
        """Something stays on the host (a VM that could not move, a host that did not
        answer); maintenance will end in ErrorInMaintenance."""
        self._require_preparing("record a failed evacuation")
        if operation_id is not None:
            vm_id = self._migration(operation_id)
        self._evacuation_failed(reason, vm_id, operation_id)

    @event(EvacuationFailed)
    def _evacuation_failed(self, reason: str, vm_id: UUID | None,
                           operation_id: UUID | None) -> None:
        left = self.maintenance.without(operation_id) if operation_id else self.maintenance
        self._maintenance = dataclasses.replace(left, errors=(*left.errors, reason))

    def _migration(self, operation_id: UUID) -> UUID:
        self._require_preparing("end a migration")
        vm_id = self.maintenance.migrations.get(operation_id)
        if vm_id is None:
            raise DomainRuleError(f"host {self.name}: operation {operation_id} is no "
                                  "migration of its maintenance")
        return vm_id

    def complete_maintenance(self) -> None:
        """Nothing is moving any more: Maintenance if every VM left, else
        ErrorInMaintenance (the VMs that stayed still run here)."""
        self._require_preparing("complete maintenance")
        if self.maintenance.migrations:
            raise DomainRuleError(f"host {self.name}: {len(self.maintenance.migrations)} "
                                  "migrations are still running")
        errors = self.maintenance.errors
        if errors:
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            self._resource_state_changed(_RS.ERROR_IN_MAINTENANCE, errors[0] + more)
        else:
            self._resource_state_changed(_RS.MAINTENANCE, "every VM moved away")

    def cancel_maintenance(self, reason: str = "") -> None:
        """Back to Enabled from any maintenance state; migrations still running end on
        their own and are no longer the host's concern."""
        if self.resource_state not in MAINTENANCE_STATES:
            raise self._refuse("cancel maintenance")
        self._resource_state_changed(_RS.ENABLED, reason or "maintenance cancelled")
        self._maintenance_cancelled(reason)

    @event(MaintenanceCancelled)
    def _maintenance_cancelled(self, reason: str) -> None:
        self._maintenance = NO_MAINTENANCE


@dataclasses.dataclass(frozen=True)
class Maintenance:
    """A host's maintenance: its operation, the migrations still moving VMs away
    (operation id -> VM id) and why anything stays. Replaced, never changed in place."""

    operation_id: UUID | None = None
    migrations: Mapping[UUID, UUID] = dataclasses.field(default_factory=dict)
    errors: tuple[str, ...] = ()

    def without(self, operation_id: UUID) -> "Maintenance":
        """The same, with this migration ended."""
        left = {k: v for k, v in self.migrations.items() if k != operation_id}
        return dataclasses.replace(self, migrations=left)


NO_MAINTENANCE = Maintenance()
