"""PrimaryStoragePool: a libvirt storage pool where volumes live, with claimable capacity.

Pools are known by zone and name (`PrimaryStoragePool.create_id(zone_id, name)`). A pool
starts Up. Volume placements claim bytes; the claims never exceed the capacity after
over-provisioning and never go negative.
"""

from enum import Enum
from uuid import UUID

from eventsourcing.domain import event

from aggregates.base import PlatformAggregate, natural_id
from aggregates.errors import CapacityError, DomainRuleError, ValidationError
from aggregates.validation import (
    normalize_tags,
    require_factor,
    require_name,
    require_positive,
    require_url,
)


class StorageScope(Enum):
    """Which hosts can reach the pool (CloudStack's storage scope)."""

    ZONE = "ZONE"
    CLUSTER = "CLUSTER"
    HOST = "HOST"


class StoragePoolState(Enum):
    """The pool's state (CloudStack's StoragePoolStatus, trimmed to resting states)."""

    UP = "Up"
    DISABLED = "Disabled"
    PREPARE_FOR_MAINTENANCE = "PrepareForMaintenance"
    MAINTENANCE = "Maintenance"
    ERROR_IN_MAINTENANCE = "ErrorInMaintenance"
    REMOVED = "Removed"


_S = StoragePoolState
# (from, to) -> the action that moves the pool
_TRANSITIONS: dict[tuple[StoragePoolState, StoragePoolState], str] = {
    (_S.UP, _S.DISABLED): "disable",
    (_S.DISABLED, _S.UP): "enable",
    (_S.UP, _S.PREPARE_FOR_MAINTENANCE): "prepare for maintenance",
    (_S.DISABLED, _S.PREPARE_FOR_MAINTENANCE): "prepare for maintenance",
    (_S.ERROR_IN_MAINTENANCE, _S.PREPARE_FOR_MAINTENANCE): "prepare for maintenance",
    (_S.PREPARE_FOR_MAINTENANCE, _S.MAINTENANCE): "complete maintenance",
    (_S.PREPARE_FOR_MAINTENANCE, _S.ERROR_IN_MAINTENANCE): "fail maintenance",
    (_S.PREPARE_FOR_MAINTENANCE, _S.UP): "cancel maintenance",
    (_S.MAINTENANCE, _S.UP): "cancel maintenance",
    (_S.ERROR_IN_MAINTENANCE, _S.UP): "cancel maintenance",
    (_S.MAINTENANCE, _S.REMOVED): "remove",
    (_S.DISABLED, _S.REMOVED): "remove",
}


class PrimaryStoragePool(PlatformAggregate):
    """Primary storage: a libvirt pool (NFS, RBD, local dir...) that holds volumes."""

    TOPIC = "storage_pool"
    KIND = "storage pool"

    class Event(PlatformAggregate.Event):
        """Base of PrimaryStoragePool events."""

        TOPIC = "storage_pool.Event"

    class Created(Event, PlatformAggregate.Created):
        """The pool was added to a zone, cluster or host."""

        TOPIC = "storage_pool.Created"
        name: str
        zone_id: UUID
        scope: StorageScope
        pod_id: UUID | None
        cluster_id: UUID | None
        host_id: UUID | None
        pool_name: str
        uri: str
        capacity_bytes: int
        storage_overprovisioning: float
        tags: tuple[str, ...]

    class StateChanged(Event):
        """The admin (or maintenance) moved the pool to a new state."""

        TOPIC = "storage_pool.StateChanged"
        state: StoragePoolState
        reason: str

    class CapacityClaimed(Event):
        """A volume placement took bytes on this pool."""

        TOPIC = "storage_pool.CapacityClaimed"
        claim_id: UUID
        volume_id: UUID
        size_bytes: int

    class ClaimResized(Event):
        """A claim was changed to a new size (a volume was resized)."""

        TOPIC = "storage_pool.ClaimResized"
        claim_id: UUID
        size_bytes: int

    class CapacityReleased(Event):
        """A claim was given back."""

        TOPIC = "storage_pool.CapacityReleased"
        claim_id: UUID

    @staticmethod
    def create_id(zone_id: UUID, name: str) -> UUID:
        """Pools are known by zone and name."""
        return natural_id("storage_pool", str(zone_id), name)

    @event(Created)
    def __init__(
        self,
        name: str,
        zone_id: UUID,
        scope: StorageScope,
        pod_id: UUID | None,
        cluster_id: UUID | None,
        host_id: UUID | None,
        pool_name: str,
        uri: str,
        capacity_bytes: int,
        storage_overprovisioning: float,
        tags: tuple[str, ...],
    ) -> None:
        self.name, self.zone_id, self.scope = name, zone_id, scope
        self.pod_id, self.cluster_id, self.host_id = pod_id, cluster_id, host_id
        self.pool_name, self.uri = pool_name, uri
        self.capacity_bytes = capacity_bytes
        self.storage_overprovisioning = storage_overprovisioning
        self.tags = tuple(tags)
        self.state = StoragePoolState.UP
        self.claims: dict[UUID, tuple[UUID, int]] = {}
        self.used_bytes = 0

    @classmethod
    def create(
        cls,
        *,
        name: str,
        zone_id: UUID,
        pool_name: str,
        uri: str,
        capacity_bytes: int,
        scope: StorageScope = StorageScope.ZONE,
        pod_id: UUID | None = None,
        cluster_id: UUID | None = None,
        host_id: UUID | None = None,
        storage_overprovisioning: float = 2.0,
        tags: tuple[str, ...] = (),
    ) -> "PrimaryStoragePool":
        """Validate and create a pool; the scope decides which parent ids it needs."""
        require_name("storage pool", name)
        label = f"storage pool {name}"
        require_name(f"{label}: libvirt pool", pool_name)
        require_url(label, "uri", uri)
        require_positive(label, "capacity_bytes", capacity_bytes)
        factor = require_factor(label, "storage_overprovisioning", storage_overprovisioning)
        needs = {
            StorageScope.ZONE: (False, False, False),
            StorageScope.CLUSTER: (True, True, False),
            StorageScope.HOST: (True, True, True),
        }[scope]
        for field, value, needed in zip(("pod_id", "cluster_id", "host_id"),
                                        (pod_id, cluster_id, host_id), needs, strict=True):
            if needed and value is None:
                raise ValidationError(f"{label}: {scope.value} scope needs {field}")
            if not needed and value is not None:
                raise ValidationError(f"{label}: {scope.value} scope takes no {field}")
        return cls(name, zone_id, scope, pod_id, cluster_id, host_id, pool_name, uri,
                   capacity_bytes, factor, normalize_tags(label, tags))

    @property
    def total_bytes(self) -> int:
        """Bytes placement may hand out, after over-provisioning."""
        return int(self.capacity_bytes * self.storage_overprovisioning)

    @property
    def free_bytes(self) -> int:
        """Bytes not yet claimed."""
        return self.total_bytes - self.used_bytes

    def change_state(self, state: StoragePoolState, reason: str = "") -> None:
        """Move to a new state, if the state machine allows it; removal needs no claims."""
        action = _TRANSITIONS.get((self.state, state))
        if action is None:
            raise self._refuse(f"move to {state.value}")
        if state is StoragePoolState.REMOVED and self.claims:
            raise DomainRuleError(f"storage pool {self.name}: {len(self.claims)} volumes "
                                  "still hold claims; cannot remove")
        self._state_changed(state, reason)

    @event(StateChanged)
    def _state_changed(self, state: StoragePoolState, reason: str) -> None:
        self.state = state

    def claim(self, claim_id: UUID, volume_id: UUID, size_bytes: int) -> None:
        """Take bytes for a volume; refused unless the pool is Up and has room."""
        if claim_id in self.claims:
            raise DomainRuleError(f"storage pool {self.name}: claim {claim_id} already exists")
        require_positive(f"storage pool {self.name}", "size_bytes", size_bytes)
        self._require({StoragePoolState.UP}, "accept a volume")
        self._check_room(size_bytes)
        self._capacity_claimed(claim_id, volume_id, size_bytes)

    @event(CapacityClaimed)
    def _capacity_claimed(self, claim_id: UUID, volume_id: UUID, size_bytes: int) -> None:
        self.claims[claim_id] = (volume_id, size_bytes)
        self.used_bytes += size_bytes

    def resize_claim(self, claim_id: UUID, size_bytes: int) -> None:
        """Change a claim's size; growing needs the pool Up and the room."""
        if claim_id not in self.claims:
            raise DomainRuleError(f"storage pool {self.name}: no claim {claim_id}")
        require_positive(f"storage pool {self.name}", "size_bytes", size_bytes)
        growth = size_bytes - self.claims[claim_id][1]
        if growth == 0:
            return
        if growth > 0:
            self._require({StoragePoolState.UP}, "grow a volume")
            self._check_room(growth)
        self._claim_resized(claim_id, size_bytes)

    @event(ClaimResized)
    def _claim_resized(self, claim_id: UUID, size_bytes: int) -> None:
        volume_id, old = self.claims[claim_id]
        self.claims[claim_id] = (volume_id, size_bytes)
        self.used_bytes += size_bytes - old

    def release(self, claim_id: UUID) -> None:
        """Give a claim back; an unknown claim is refused."""
        if claim_id not in self.claims:
            raise DomainRuleError(f"storage pool {self.name}: no claim {claim_id}")
        self._capacity_released(claim_id)

    @event(CapacityReleased)
    def _capacity_released(self, claim_id: UUID) -> None:
        _, size = self.claims.pop(claim_id)
        self.used_bytes -= size

    def _check_room(self, size_bytes: int) -> None:
        if size_bytes > self.free_bytes:
            raise CapacityError(f"storage pool {self.name}: asked {size_bytes} bytes, free "
                                f"{self.free_bytes} of {self.total_bytes}")
