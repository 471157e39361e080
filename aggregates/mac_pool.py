"""MacPool: the MAC addresses of one zone's NICs, each held by at most one NIC.

A zone has one pool (`MacPool.create_id(zone_id)`): MACs only need to be unique within the
layer-2 domains of a zone. Only locally administered unicast MACs are accepted (the first
octet has bit 1 set and bit 0 clear: `02:..`, `52:54:00:..`, ...), so a guest MAC can never
clash with a vendor's burnt-in address. The NetworkGuru proposes a MAC; the kernel records it
here, and a MAC taken meanwhile is refused, so the step retries with a fresh proposal.
"""

import re
from uuid import UUID

from eventsourcing.domain import event

from aggregates.base import PlatformAggregate, natural_id
from aggregates.errors import DomainRuleError, ValidationError

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def normalize_guest_mac(label: str, mac: str) -> str:
    """The MAC in lower case; ValidationError unless it is locally administered unicast."""
    normalized = mac.lower() if isinstance(mac, str) else ""
    if not _MAC.match(normalized):
        raise ValidationError(f"{label}: {mac!r} is not a MAC address (xx:xx:xx:xx:xx:xx)")
    if int(normalized[:2], 16) & 0b11 != 0b10:
        raise ValidationError(f"{label}: {mac!r} is not a locally administered unicast MAC")
    return normalized


class MacPool(PlatformAggregate):
    """The guest MACs of a zone and the NIC that holds each."""

    TOPIC = "mac_pool"
    KIND = "mac pool"

    class Event(PlatformAggregate.Event):
        """Base of MacPool events."""

        TOPIC = "mac_pool.Event"

    class Created(Event, PlatformAggregate.Created):
        """The zone's pool was created."""

        TOPIC = "mac_pool.Created"
        zone_id: UUID

    class Allocated(Event):
        """A MAC was given to a NIC."""

        TOPIC = "mac_pool.Allocated"
        nic_id: UUID
        mac: str

    class Released(Event):
        """A NIC gave its MAC back (the NIC was removed)."""

        TOPIC = "mac_pool.Released"
        nic_id: UUID
        mac: str

    @staticmethod
    def create_id(zone_id: UUID) -> UUID:
        """One pool per zone."""
        return natural_id("mac_pool", str(zone_id))

    @event(Created)
    def __init__(self, zone_id: UUID) -> None:
        self.zone_id = zone_id
        self.allocations: dict[UUID, str] = {}  # nic id -> mac
        self.holders: dict[str, UUID] = {}  # mac -> nic id

    @classmethod
    def create(cls, *, zone_id: UUID) -> "MacPool":
        """Create a zone's pool."""
        return cls(zone_id)

    def mac_of(self, nic_id: UUID) -> str | None:
        """The MAC a NIC holds, if any."""
        return self.allocations.get(nic_id)

    def holder_of(self, mac: str) -> UUID | None:
        """The NIC that holds `mac`, if any."""
        return self.holders.get(mac.lower())

    def allocate(self, nic_id: UUID, mac: str) -> str:
        """Give `mac` to a NIC and return it normalized; the same allocation again records
        nothing."""
        label = f"mac pool of zone {self.zone_id}"
        normalized = normalize_guest_mac(label, mac)
        held = self.allocations.get(nic_id)
        if held == normalized:
            return normalized  # a repeated step result: already recorded
        if held is not None:
            raise DomainRuleError(f"{label}: nic {nic_id} already holds {held}")
        holder = self.holders.get(normalized)
        if holder is not None:
            raise DomainRuleError(f"{label}: {normalized} is held by nic {holder}")
        self._allocated(nic_id, normalized)
        return normalized

    @event(Allocated)
    def _allocated(self, nic_id: UUID, mac: str) -> None:
        self.allocations[nic_id] = mac
        self.holders[mac] = nic_id

    def release(self, nic_id: UUID) -> str:
        """Take back the MAC a NIC holds and return it; a NIC holding none is refused."""
        mac = self.allocations.get(nic_id)
        if mac is None:
            raise DomainRuleError(f"mac pool of zone {self.zone_id}: nic {nic_id} holds no MAC")
        self._released(nic_id, mac)
        return mac

    @event(Released)
    def _released(self, nic_id: UUID, mac: str) -> None:
        del self.allocations[nic_id]
        del self.holders[mac]
