"""VlanPool: the guest VLANs of one zone, and which network holds which.

A zone has one pool (`VlanPool.create_id(zone_id)`), a range `first..last` of 802.1Q ids.
The pool owns VLAN uniqueness: a VLAN is held by at most one network, and only inside the
range. The NetworkGuru proposes a VLAN; the kernel records it here, in the same transaction
as `Network.implemented(vlan)`, and a VLAN taken meanwhile is refused, so the step retries.
"""

from uuid import UUID

from eventsourcing.domain import event

from aggregates.base import PlatformAggregate, natural_id
from aggregates.errors import DomainRuleError, ValidationError

MIN_VLAN, MAX_VLAN = 1, 4094


class VlanPool(PlatformAggregate):
    """The VLAN range of a zone and the network that holds each allocated VLAN."""

    TOPIC = "vlan_pool"
    KIND = "vlan pool"

    class Event(PlatformAggregate.Event):
        """Base of VlanPool events."""

        TOPIC = "vlan_pool.Event"

    class Created(Event, PlatformAggregate.Created):
        """The zone's pool was created with its range."""

        TOPIC = "vlan_pool.Created"
        zone_id: UUID
        first: int
        last: int

    class Allocated(Event):
        """A VLAN was given to a network."""

        TOPIC = "vlan_pool.Allocated"
        network_id: UUID
        vlan: int

    class Released(Event):
        """A network gave its VLAN back."""

        TOPIC = "vlan_pool.Released"
        network_id: UUID
        vlan: int

    @staticmethod
    def create_id(zone_id: UUID) -> UUID:
        """One pool per zone."""
        return natural_id("vlan_pool", str(zone_id))

    @event(Created)
    def __init__(self, zone_id: UUID, first: int, last: int) -> None:
        self.zone_id, self.first, self.last = zone_id, first, last
        self.allocations: dict[UUID, int] = {}  # network id -> vlan
        self.holders: dict[int, UUID] = {}  # vlan -> network id

    @classmethod
    def create(cls, *, zone_id: UUID, first: int, last: int) -> "VlanPool":
        """Validate and create a zone's pool: `MIN_VLAN <= first <= last <= MAX_VLAN`."""
        label = f"vlan pool of zone {zone_id}"
        for name, value in (("first", first), ("last", last)):
            _check_vlan(label, name, value)
        if first > last:
            raise ValidationError(f"{label}: first {first} is above last {last}")
        return cls(zone_id, first, last)

    @property
    def size(self) -> int:
        """How many VLANs the range holds."""
        return self.last - self.first + 1

    @property
    def free_count(self) -> int:
        """How many VLANs are still free."""
        return self.size - len(self.holders)

    def vlan_of(self, network_id: UUID) -> int | None:
        """The VLAN a network holds, if any."""
        return self.allocations.get(network_id)

    def is_free(self, vlan: int) -> bool:
        """Whether `vlan` is inside the range and held by no network."""
        return self.first <= vlan <= self.last and vlan not in self.holders

    def allocate(self, network_id: UUID, vlan: int) -> None:
        """Give `vlan` to a network; the same allocation again records nothing."""
        label = f"vlan pool of zone {self.zone_id}"
        _check_vlan(label, "vlan", vlan)
        if not self.first <= vlan <= self.last:
            raise ValidationError(f"{label}: vlan {vlan} is outside {self.first}-{self.last}")
        held = self.allocations.get(network_id)
        if held == vlan:
            return  # a repeated step result: already recorded
        if held is not None:
            raise DomainRuleError(f"{label}: network {network_id} already holds vlan {held}")
        holder = self.holders.get(vlan)
        if holder is not None:
            raise DomainRuleError(f"{label}: vlan {vlan} is held by network {holder}")
        self._allocated(network_id, vlan)

    @event(Allocated)
    def _allocated(self, network_id: UUID, vlan: int) -> None:
        self.allocations[network_id] = vlan
        self.holders[vlan] = network_id

    def release(self, network_id: UUID) -> int:
        """Take back the VLAN a network holds and return it; a network holding none is
        refused."""
        vlan = self.allocations.get(network_id)
        if vlan is None:
            raise DomainRuleError(f"vlan pool of zone {self.zone_id}: network {network_id} "
                                  "holds no vlan")
        self._released(network_id, vlan)
        return vlan

    @event(Released)
    def _released(self, network_id: UUID, vlan: int) -> None:
        del self.allocations[network_id]
        del self.holders[vlan]


def _check_vlan(label: str, name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) \
            or not MIN_VLAN <= value <= MAX_VLAN:
        raise ValidationError(f"{label}: {name} must be an integer {MIN_VLAN}-{MAX_VLAN}, "
                              f"got {value!r}")
