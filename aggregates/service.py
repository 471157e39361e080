"""ServiceRegistration: a service of the Services Directory (end-user API, EC2 API, billing...).

A service registers itself with a name, a version, its endpoints and the NATS subjects it
consumes and publishes. The registration is known by the service's name, so registering again
is idempotent: the same description writes nothing, a changed one records `Updated`. An admin
enables or disables a service; a disabled service keeps running but should refuse its own
clients. Orchestration never depends on a registration: it is a directory entry, not a lock.
"""

import re
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any
from uuid import UUID

from eventsourcing.domain import event

from aggregates.base import PlatformAggregate, natural_id
from aggregates.errors import ValidationError

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
_ENDPOINT = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_SUBJECT_TOKEN = re.compile(r"^[A-Za-z0-9_$-]+$|^\*$|^>$")
MAX_ENDPOINTS = 16
MAX_SUBJECTS = 64
MAX_TEXT = 500


class ServiceState(Enum):
    """Where a registration stands."""

    ENABLED = "Enabled"
    DISABLED = "Disabled"
    DEREGISTERED = "Deregistered"


def require_service_name(name: object) -> str:
    """A service name: a lowercase letter, then up to 39 lowercase letters, digits or '-'."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValidationError(f"name: a service name is a lowercase letter then up to 39 "
                              f"lowercase letters, digits or '-', got {name!r}")
    return name


def _text(what: str, value: object, *, required: bool, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str) or not value.isprintable() or len(value) > limit \
            or (required and not value.strip()):
        need = "non-empty " if required else ""
        raise ValidationError(f"{what}: {need}printable text of at most {limit} characters, "
                              f"got {str(value)[:60]!r}")
    return value


def _endpoints(value: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(value, Mapping) or len(value) > MAX_ENDPOINTS:
        raise ValidationError(f"endpoints: a map of at most {MAX_ENDPOINTS} names to URLs")
    out: dict[str, str] = {}
    for key, url in value.items():
        if not isinstance(key, str) or not _ENDPOINT.match(key):
            raise ValidationError(f"endpoints: name {key!r} must be a lowercase letter then "
                                  "up to 31 lowercase letters, digits, '_' or '-'")
        if not isinstance(url, str) or "://" not in url or not url.isprintable() \
                or " " in url or len(url) > MAX_TEXT:
            raise ValidationError(f"endpoints.{key}: a URL like http://127.0.0.1:8482/, got "
                                  f"{str(url)[:60]!r}")
        out[key] = url
    return dict(sorted(out.items()))


def _subjects(what: str, value: Sequence[str]) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) > MAX_SUBJECTS:
        raise ValidationError(f"{what}: a list of at most {MAX_SUBJECTS} NATS subjects")
    for subject in value:
        tokens = subject.split(".") if isinstance(subject, str) else [""]
        if not isinstance(subject, str) or len(subject) > 200 \
                or not all(_SUBJECT_TOKEN.match(t) for t in tokens) \
                or ">" in tokens[:-1]:
            raise ValidationError(f"{what}: {str(subject)[:80]!r} is not a NATS subject "
                                  "(dot-separated tokens, '*' or a final '>')")
    return tuple(dict.fromkeys(value))


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
        return natural_id("service", name)

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

    @staticmethod
    def check(*, name: str, version: str, endpoints: Mapping[str, str],
              consumes: Sequence[str] = (), publishes: Sequence[str] = (),
              description: str = "") -> dict[str, Any]:
        """The registration's fields, checked and normalized; ValidationError otherwise."""
        return {"name": require_service_name(name),
                "version": _text("version", version, required=True, limit=64),
                "endpoints": _endpoints(endpoints),
                "consumes": _subjects("consumes", consumes),
                "publishes": _subjects("publishes", publishes),
                "description": _text("description", description, required=False)}

    @classmethod
    def register(cls, **fields: Any) -> "ServiceRegistration":
        """A new registration (see `check` for the fields)."""
        return cls(**cls.check(**fields))

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
        checked = self.check(**fields)
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
        _text("reason", reason, required=True)
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
