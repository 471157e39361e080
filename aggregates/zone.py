"""Zone: the top of the physical hierarchy, with its network model and DNS servers.

Zones are known by name (`Zone.create_id(name)`), so creating the same zone twice is refused
by the store. A zone starts Enabled.
"""

from enum import Enum
from uuid import UUID

from eventsourcing.domain import event

from aggregates.allocation import Allocatable, AllocationState
from aggregates.base import PlatformAggregate, natural_id
from aggregates.errors import ValidationError
from aggregates.validation import ipv4_address, ipv4_network, require_name


class NetworkType(Enum):
    """How guest networks are built in the zone (CloudStack's zone network type)."""

    ADVANCED = "Advanced"
    BASIC = "Basic"


class Zone(Allocatable, PlatformAggregate):
    """A data center zone: the unit of placement, networks and storage."""

    TOPIC = "zone"
    KIND = "zone"

    class Event(PlatformAggregate.Event):
        """Base of Zone events."""

        TOPIC = "zone.Event"

    class Created(Event, PlatformAggregate.Created):
        """The zone was created."""

        TOPIC = "zone.Created"
        name: str
        network_type: NetworkType
        dns_servers: tuple[str, ...]
        internal_dns_servers: tuple[str, ...]
        network_domain: str
        guest_cidr: str | None
        local_storage_enabled: bool

    class AllocationStateChanged(Event):
        """The admin enabled or disabled allocation in the zone."""

        TOPIC = "zone.AllocationStateChanged"
        state: AllocationState

    class DnsChanged(Event):
        """The zone's DNS servers were changed."""

        TOPIC = "zone.DnsChanged"
        dns_servers: tuple[str, ...]
        internal_dns_servers: tuple[str, ...]

    @staticmethod
    def create_id(name: str) -> UUID:
        """Zones are known by name."""
        return natural_id("zone", name)

    @event(Created)
    def __init__(
        self,
        name: str,
        network_type: NetworkType,
        dns_servers: tuple[str, ...],
        internal_dns_servers: tuple[str, ...],
        network_domain: str,
        guest_cidr: str | None,
        local_storage_enabled: bool,
    ) -> None:
        self.name, self.network_type = name, network_type
        self.dns_servers = tuple(dns_servers)
        self.internal_dns_servers = tuple(internal_dns_servers)
        self.network_domain, self.guest_cidr = network_domain, guest_cidr
        self.local_storage_enabled = local_storage_enabled
        self.allocation_state = AllocationState.ENABLED

    @classmethod
    def create(
        cls,
        *,
        name: str,
        network_type: NetworkType = NetworkType.ADVANCED,
        dns_servers: tuple[str, ...] = (),
        internal_dns_servers: tuple[str, ...] = (),
        network_domain: str = "",
        guest_cidr: str | None = None,
        local_storage_enabled: bool = False,
    ) -> "Zone":
        """Validate and create a zone."""
        require_name("zone", name)
        label = f"zone {name}"
        dns, internal = _dns(label, dns_servers, internal_dns_servers)
        if guest_cidr is not None:
            if network_type is not NetworkType.ADVANCED:
                raise ValidationError(f"{label}: only Advanced zones have a guest CIDR")
            guest_cidr = str(ipv4_network(label, guest_cidr))
        return cls(name, network_type, dns, internal, network_domain, guest_cidr,
                   bool(local_storage_enabled))

    @event(AllocationStateChanged)
    def _allocation_state_changed(self, state: AllocationState) -> None:
        self.allocation_state = state

    def change_dns(self, dns_servers: tuple[str, ...],
                   internal_dns_servers: tuple[str, ...]) -> None:
        """Replace the guest and internal DNS servers; the same servers record nothing."""
        dns, internal = _dns(f"zone {self.name}", dns_servers, internal_dns_servers)
        if (dns, internal) != (self.dns_servers, self.internal_dns_servers):
            self._dns_changed(dns, internal)

    @event(DnsChanged)
    def _dns_changed(self, dns_servers: tuple[str, ...],
                     internal_dns_servers: tuple[str, ...]) -> None:
        self.dns_servers = tuple(dns_servers)
        self.internal_dns_servers = tuple(internal_dns_servers)


def _dns(label: str, dns_servers: tuple[str, ...],
         internal_dns_servers: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    dns = tuple(str(ipv4_address(label, "dns server", s)) for s in dns_servers)
    internal = tuple(str(ipv4_address(label, "internal dns server", s))
                     for s in internal_dns_servers)
    return dns, internal
