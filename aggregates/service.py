"""ServiceRegistration: a service of the Services Directory (end-user API, EC2 API, billing...).

A service registers itself with a name, a version, its endpoints and the NATS subjects it
consumes and publishes. The registration is known by the service's name, so registering again
is idempotent: the same description writes nothing, a changed one records `Updated`. An admin
enables or disables a service; a disabled service keeps running but should refuse its own
clients. Orchestration never depends on a registration: it is a directory entry, not a lock.
"""

from collections.abc import Mapping
from enum import Enum
from typing import Any
from uuid import UUID

from eventsourcing.domain import event

from aggregates.base import PlatformAggregate, natural_id
from aggregates.errors import ValidationError


class ServiceState(Enum):
    """Where a registration stands."""

    ENABLED = "Enabled"
    DISABLED = "Disabled"
    DEREGISTERED = "Deregistered"


class ServiceRegistration(PlatformAggregate):
    """A service in the directory, known by its name."""

    TOPIC = "service_registration"
    KIND = "service"

    class Event(PlatformAggregate.Event):
        """Base of ServiceRegistration events."""

        TOPIC = "service_registration.Event"

    class Registered(Event, PlatformAggregate.Created):
        """A service registered for the first time."""

        TOPIC = "service_registration.Registered"
        name: str
        version: str
        endpoints: dict[str, str]
        consumes: tuple[str, ...]
        publishes: tuple[str, ...]
        description: str

    class Updated(Event):
        """A service registered again with another version, endpoints, subjects or
        description (or after it was deregistered, which registers it anew, enabled)."""

        TOPIC = "service_registration.Updated"
        version: str
        endpoints: dict[str, str]
        consumes: tuple[str, ...]
        publishes: tuple[str, ...]
        description: str

    class Enabled(Event):
        """An admin enabled the service."""

        TOPIC = "service_registration.Enabled"

    class Disabled(Event):
        """An admin disabled the service, saying why."""

        TOPIC = "service_registration.Disabled"
        reason: str

    class Deregistered(Event):
        """The service was removed from the directory (it may register again)."""

        TOPIC = "service_registration.Deregistered"

    @staticmethod
    def create_id(name: str, *_: Any, **__: Any) -> UUID:
        """Registrations are known by the service's name."""
        return natural_id("service", name)  # as kernel.contracts.services.registration_id

    @event(Registered)
    def __init__(self, name: str, version: str, endpoints: dict[str, str],
                 consumes: tuple[str, ...], publishes: tuple[str, ...],
                 description: str) -> None:
        self.name = name
        self._describe(version, endpoints, consumes, publishes, description)
        self.state = ServiceState.ENABLED
        self.disabled_reason = ""

    def _describe(self, version: str, endpoints: dict[str, str], consumes: tuple[str, ...],
                  publishes: tuple[str, ...], description: str) -> None:
        self.service_version, self.endpoints = version, dict(endpoints)
        self.consumes, self.publishes = tuple(consumes), tuple(publishes)
        self.description = description

    @classmethod
    def register(cls, **fields: Any) -> "ServiceRegistration":
        """A new registration of fields checked by the directory's contract
        (`kernel.contracts.services.check_registration`)."""
        return cls(**fields)

    @property
    def enabled(self) -> bool:
        """Whether the admin's switch is on (a deregistered service is not enabled)."""
        return self.state is ServiceState.ENABLED

    def describes(self, fields: Mapping[str, Any]) -> bool:
        """Whether this registration already says exactly what `fields` (checked) says."""
        return self.state is not ServiceState.DEREGISTERED and (
            self.service_version, self.endpoints, self.consumes, self.publishes,
            self.description
        ) == (fields["version"], fields["endpoints"], fields["consumes"],
              fields["publishes"], fields["description"])

    def reregister(self, **fields: Any) -> bool:
        """Register again: record `Updated` if anything changed; returns whether it did."""
        checked = dict(fields)
        if checked["name"] != self.name:
            raise ValidationError(f"name: this registration is {self.name!r}, not "
                                  f"{checked['name']!r}")
        if self.describes(checked):
            return False
        del checked["name"]
        self._updated(**checked)
        return True

    @event(Updated)
    def _updated(self, version: str, endpoints: dict[str, str], consumes: tuple[str, ...],
                 publishes: tuple[str, ...], description: str) -> None:
        self._describe(version, endpoints, consumes, publishes, description)
        if self.state is ServiceState.DEREGISTERED:
            self.state, self.disabled_reason = ServiceState.ENABLED, ""

    def enable(self) -> bool:
        """Switch the service on; returns whether anything changed."""
        self._require({ServiceState.ENABLED, ServiceState.DISABLED}, "enable")
        if self.state is ServiceState.ENABLED:
            return False
        self._enabled()
        return True

    @event(Enabled)
    def _enabled(self) -> None:
        self.state, self.disabled_reason = ServiceState.ENABLED, ""

    def disable(self, reason: str) -> bool:
        """Switch the service off, saying why; returns whether anything changed."""
        self._require({ServiceState.ENABLED, ServiceState.DISABLED}, "disable")
        if self.state is ServiceState.DISABLED:
            return False
        self._disabled(reason.strip())
        return True

    @event(Disabled)
    def _disabled(self, reason: str) -> None:
        self.state, self.disabled_reason = ServiceState.DISABLED, reason

    def deregister(self) -> bool:
        """Remove the service from the directory; returns whether anything changed."""
        if self.state is ServiceState.DEREGISTERED:
            return False
        self._deregistered()
        return True

    @event(Deregistered)
    def _deregistered(self) -> None:
        self.state = ServiceState.DEREGISTERED
