"""Pod: a rack-level group of clusters in a zone, with its management network range.

Pods are known by zone and name (`Pod.create_id(zone_id, name)`). A pod starts Enabled.
`start_ip`..`end_ip` is the range reserved for system VMs and management addresses.
"""

from uuid import UUID

from eventsourcing.domain import event

from aggregates.allocation import Allocatable, AllocationState
from aggregates.base import PlatformAggregate, natural_id
from aggregates.errors import ValidationError
from aggregates.validation import ipv4_address, ipv4_network, require_name


class Pod(Allocatable, PlatformAggregate):
    """A pod: clusters that share a management subnet inside one zone."""

    TOPIC = "pod"
    KIND = "pod"

    class Event(PlatformAggregate.Event):
        """Base of Pod events."""

        TOPIC = "pod.Event"

    class Created(Event, PlatformAggregate.Created):
        """The pod was created in a zone."""

        TOPIC = "pod.Created"
        name: str
        zone_id: UUID
        gateway: str
        cidr: str
        start_ip: str
        end_ip: str

    class AllocationStateChanged(Event):
        """The admin enabled or disabled allocation in the pod."""

        TOPIC = "pod.AllocationStateChanged"
        state: AllocationState

    @staticmethod
    def create_id(zone_id: UUID, name: str) -> UUID:
        """Pods are known by zone and name."""
        return natural_id("pod", str(zone_id), name)

    @event(Created)
    def __init__(self, name: str, zone_id: UUID, gateway: str, cidr: str, start_ip: str,
                 end_ip: str) -> None:
        self.name, self.zone_id = name, zone_id
        self.gateway, self.cidr = gateway, cidr
        self.start_ip, self.end_ip = start_ip, end_ip
        self.allocation_state = AllocationState.ENABLED

    @classmethod
    def create(cls, *, name: str, zone_id: UUID, gateway: str, cidr: str, start_ip: str,
               end_ip: str) -> "Pod":
        """Validate and create a pod: gateway and range inside the CIDR, range not on it."""
        require_name("pod", name)
        label = f"pod {name}"
        network = ipv4_network(label, cidr)
        gw = ipv4_address(label, "gateway", gateway)
        start = ipv4_address(label, "start_ip", start_ip)
        end = ipv4_address(label, "end_ip", end_ip)
        for field, address in (("gateway", gw), ("start_ip", start), ("end_ip", end)):
            if address not in network:
                raise ValidationError(f"{label}: {field} {address} is outside {network}")
        if start > end:
            raise ValidationError(f"{label}: start_ip {start} is after end_ip {end}")
        if start <= gw <= end:
            raise ValidationError(f"{label}: gateway {gw} is inside {start}-{end}")
        return cls(name, zone_id, str(gw), str(network), str(start), str(end))

    @event(AllocationStateChanged)
    def _allocation_state_changed(self, state: AllocationState) -> None:
        self.allocation_state = state
