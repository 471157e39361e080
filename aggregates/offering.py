"""ServiceOffering and DiskOffering: the sizes users pick for VMs and data disks.

Offerings are known by name (`create_id(name)`). They start Active; a Retired offering
keeps serving what was built from it but cannot be chosen for anything new.
"""

from enum import Enum
from uuid import UUID

from eventsourcing.domain import event

from aggregates.base import PlatformAggregate, natural_id
from aggregates.errors import DomainRuleError, ValidationError
from aggregates.validation import normalize_tags, require_name, require_positive


class OfferingState(Enum):
    """Whether an offering can be chosen."""

    ACTIVE = "Active"
    RETIRED = "Retired"


class ServiceOffering(PlatformAggregate):
    """A compute offering: cores, speed, memory, host tags and HA."""

    TOPIC = "service_offering"
    KIND = "service offering"

    class Event(PlatformAggregate.Event):
        """Base of ServiceOffering events."""

        TOPIC = "service_offering.Event"

    class Created(Event, PlatformAggregate.Created):
        """The offering was created."""

        TOPIC = "service_offering.Created"
        name: str
        display_text: str
        cpu_cores: int
        cpu_mhz: int
        memory_mib: int
        host_tags: tuple[str, ...]
        storage_tags: tuple[str, ...]
        ha_enabled: bool

    class Retired(Event):
        """The offering can no longer be chosen."""

        TOPIC = "service_offering.Retired"

    @staticmethod
    def create_id(name: str) -> UUID:
        """Service offerings are known by name."""
        return natural_id("service_offering", name)

    @event(Created)
    def __init__(self, name: str, display_text: str, cpu_cores: int, cpu_mhz: int,
                 memory_mib: int, host_tags: tuple[str, ...], storage_tags: tuple[str, ...],
                 ha_enabled: bool) -> None:
        self.name, self.display_text = name, display_text
        self.cpu_cores, self.cpu_mhz, self.memory_mib = cpu_cores, cpu_mhz, memory_mib
        self.host_tags, self.storage_tags = tuple(host_tags), tuple(storage_tags)
        self.ha_enabled = ha_enabled
        self.state = OfferingState.ACTIVE

    @classmethod
    def create(cls, *, name: str, cpu_cores: int, cpu_mhz: int, memory_mib: int,
               display_text: str = "", host_tags: tuple[str, ...] = (),
               storage_tags: tuple[str, ...] = (),
               ha_enabled: bool = False) -> "ServiceOffering":
        """Validate and create a service offering."""
        require_name("service offering", name)
        label = f"service offering {name}"
        for field, value in (("cpu_cores", cpu_cores), ("cpu_mhz", cpu_mhz),
                             ("memory_mib", memory_mib)):
            require_positive(label, field, value)
        return cls(name, display_text or name, cpu_cores, cpu_mhz, memory_mib,
                   normalize_tags(label, host_tags), normalize_tags(label, storage_tags),
                   bool(ha_enabled))

    @property
    def active(self) -> bool:
        """Whether the offering can be chosen for a new VM."""
        return self.state is OfferingState.ACTIVE

    def retire(self) -> None:
        """Stop offering it for new VMs."""
        self._require({OfferingState.ACTIVE}, "retire")
        self._retired()

    @event(Retired)
    def _retired(self) -> None:
        self.state = OfferingState.RETIRED


class DiskOffering(PlatformAggregate):
    """A disk offering: a fixed size, or a size the user chooses (customizable)."""

    TOPIC = "disk_offering"
    KIND = "disk offering"

    class Event(PlatformAggregate.Event):
        """Base of DiskOffering events."""

        TOPIC = "disk_offering.Event"

    class Created(Event, PlatformAggregate.Created):
        """The offering was created."""

        TOPIC = "disk_offering.Created"
        name: str
        display_text: str
        size_bytes: int | None
        customizable: bool
        tags: tuple[str, ...]

    class Retired(Event):
        """The offering can no longer be chosen."""

        TOPIC = "disk_offering.Retired"

    @staticmethod
    def create_id(name: str) -> UUID:
        """Disk offerings are known by name."""
        return natural_id("disk_offering", name)

    @event(Created)
    def __init__(self, name: str, display_text: str, size_bytes: int | None,
                 customizable: bool, tags: tuple[str, ...]) -> None:
        self.name, self.display_text = name, display_text
        self.size_bytes, self.customizable = size_bytes, customizable
        self.tags = tuple(tags)
        self.state = OfferingState.ACTIVE

    @classmethod
    def create(cls, *, name: str, size_bytes: int | None = None, customizable: bool = False,
               display_text: str = "", tags: tuple[str, ...] = ()) -> "DiskOffering":
        """Validate and create a disk offering; a fixed one needs a size."""
        require_name("disk offering", name)
        label = f"disk offering {name}"
        if size_bytes is not None:
            require_positive(label, "size_bytes", size_bytes)
        elif not customizable:
            raise ValidationError(f"{label}: a fixed-size offering needs size_bytes")
        return cls(name, display_text or name, size_bytes, bool(customizable),
                   normalize_tags(label, tags))

    @property
    def active(self) -> bool:
        """Whether the offering can be chosen for a new disk."""
        return self.state is OfferingState.ACTIVE

    def volume_size(self, requested_bytes: int | None = None) -> int:
        """The size of a disk built from this offering, given what the user asked for."""
        label = f"disk offering {self.name}"
        if requested_bytes is None:
            if self.size_bytes is None:
                raise ValidationError(f"{label}: a size is required")
            return self.size_bytes
        require_positive(label, "size_bytes", requested_bytes)
        if not self.customizable and requested_bytes != self.size_bytes:
            raise DomainRuleError(f"{label} is not customizable: size is {self.size_bytes}")
        return requested_bytes

    def retire(self) -> None:
        """Stop offering it for new disks."""
        self._require({OfferingState.ACTIVE}, "retire")
        self._retired()

    @event(Retired)
    def _retired(self) -> None:
        self.state = OfferingState.RETIRED
