"""UnmanagedDomain: a domain found on a host that no VM of the platform accounts for.

CloudStack only logs such a domain. Here it becomes an entity, by policy either Adopted (an
unmanaged VM the platform tracks, whose cpu and memory count against its host) or Quarantined
(powered off and kept for an admin to look at; never deleted). It is known by its host and
libvirt UUID, so a domain seen again is the same entity; one that leaves the host's reports
is Gone, and Back if it returns.
"""

from enum import Enum
from uuid import UUID

from eventsourcing.domain import event

from aggregates.base import PlatformAggregate, natural_id


class Disposition(Enum):
    """What the platform does with an unmanaged domain."""

    ADOPTED = "Adopted"
    QUARANTINED = "Quarantined"


class UnmanagedDomain(PlatformAggregate):
    """A domain on a host that is not one of the platform's VMs."""

    TOPIC = "unmanaged_domain"
    KIND = "unmanaged domain"

    class Event(PlatformAggregate.Event):
        """Base of UnmanagedDomain events."""

        TOPIC = "unmanaged_domain.Event"

    class Discovered(Event, PlatformAggregate.Created):
        """A host reported a domain that no VM accounts for."""

        TOPIC = "unmanaged_domain.Discovered"
        host_id: UUID
        domain_uuid: UUID
        name: str
        power: str
        vcpus: int
        memory_mib: int
        disposition: Disposition

    class PowerObserved(Event):
        """The host reported the domain in another power state."""

        TOPIC = "unmanaged_domain.PowerObserved"
        power: str

    class Gone(Event):
        """The host's reports no longer hold the domain."""

        TOPIC = "unmanaged_domain.Gone"

    class Back(Event):
        """A domain that was gone is reported again."""

        TOPIC = "unmanaged_domain.Back"
        power: str

    @staticmethod
    def create_id(host_id: UUID, domain_uuid: UUID) -> UUID:
        """Known by its host and libvirt UUID."""
        return natural_id("unmanaged_domain", str(host_id), str(domain_uuid))

    @event(Discovered)
    def __init__(self, host_id: UUID, domain_uuid: UUID, name: str, power: str, vcpus: int,
                 memory_mib: int, disposition: Disposition) -> None:
        self.host_id, self.domain_uuid, self.name = host_id, domain_uuid, name
        self.power, self.vcpus, self.memory_mib = power, vcpus, memory_mib
        self.disposition = disposition
        self.present = True

    @classmethod
    def discover(cls, *, host_id: UUID, domain_uuid: UUID, name: str, power: str, vcpus: int,
                 memory_mib: int, disposition: Disposition) -> "UnmanagedDomain":
        """Record a domain no VM accounts for, and what the policy does with it."""
        found: UnmanagedDomain = cls._create(
            cls.Discovered, id=cls.create_id(host_id, domain_uuid), host_id=host_id,
            domain_uuid=domain_uuid, name=name, power=power, vcpus=max(vcpus, 0),
            memory_mib=max(memory_mib, 0), disposition=disposition)
        return found

    @property
    def is_adopted(self) -> bool:
        """Whether the platform tracks it as an unmanaged VM (its capacity is claimed)."""
        return self.disposition is Disposition.ADOPTED

    def observe(self, power: str) -> None:
        """A report holds the domain; records only what changed."""
        if not self.present:
            self._back(power)
        elif power != self.power:
            self._power_observed(power)

    @event(PowerObserved)
    def _power_observed(self, power: str) -> None:
        self.power = power

    @event(Back)
    def _back(self, power: str) -> None:
        self.present, self.power = True, power

    def vanish(self) -> None:
        """The host's report no longer holds it; already gone records nothing."""
        if self.present:
            self._gone()

    @event(Gone)
    def _gone(self) -> None:
        self.present = False
