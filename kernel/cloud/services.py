"""The Services Directory's commands: register, enable, disable and deregister a service.

`service.register` is what a service sends itself when it starts (through the NATS intake,
signed with its own key, whose actor is `service:<name>`); the same description again writes
nothing. A service's own key may register only its own name. `service.enable`,
`service.disable` and `service.deregister` are an admin's: a service may not send them, and
the intake refuses them to any key that does not allow them. None starts an operation.
"""

from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate

from aggregates.base import current_audit
from aggregates.errors import ForbiddenError, NotFoundError
from aggregates.service import ServiceRegistration
from kernel.commands import Command
from kernel.contracts.services import (
    check_disable_reason,
    check_registration,
    require_service_name,
)
from kernel.store.application import KernelApplication

SERVICE_ACTOR_PREFIX = "service:"


class RegisterService(Command, frozen=True, kw_only=True, tag="service.register"):
    """Register a service in the directory, or describe it anew (same description: no-op)."""

    name: str
    version: str
    endpoints: dict[str, str] = msgspec.field(default_factory=dict)
    consumes: tuple[str, ...] = ()
    publishes: tuple[str, ...] = ()
    description: str = ""


class EnableService(Command, frozen=True, kw_only=True, tag="service.enable"):
    """Switch a registered service on (an admin's command)."""

    name: str


class DisableService(Command, frozen=True, kw_only=True, tag="service.disable"):
    """Switch a registered service off, saying why (an admin's command)."""

    name: str
    reason: str


class DeregisterService(Command, frozen=True, kw_only=True, tag="service.deregister"):
    """Remove a service from the directory (an admin's command)."""

    name: str


class ServiceChanged(msgspec.Struct, frozen=True, kw_only=True):
    """What a service command did: `change` is registered, updated, enabled, disabled,
    deregistered or unchanged; the rest is the registration as it now stands."""

    service_id: UUID
    name: str
    change: str
    state: str
    enabled: bool
    version: str
    aggregate_version: int


def service_id(name: str) -> UUID:
    """The id of the registration of the service with this name."""
    return ServiceRegistration.create_id(name)


def find_service(app: KernelApplication, name: str) -> ServiceRegistration | None:
    """The registration of this service, if it ever registered."""
    try:
        found: object = app.repository.get(service_id(name))
    except AggregateNotFoundError:
        return None
    return found if isinstance(found, ServiceRegistration) else None


def _changed(reg: ServiceRegistration, change: str) -> ServiceChanged:
    return ServiceChanged(service_id=reg.id, name=reg.name, change=change,
                          state=reg.state.value, enabled=reg.enabled,
                          version=reg.service_version, aggregate_version=reg.version)


def _service_actor(action: str, name: str) -> None:
    """Refuse a service's own key what only an admin may do, or another service's name."""
    actor = current_audit().actor
    if not actor.startswith(SERVICE_ACTOR_PREFIX):
        return
    own = actor.removeprefix(SERVICE_ACTOR_PREFIX)
    if action != "register":
        raise ForbiddenError(f"{actor} may not {action} services: that is an admin's command")
    if own != name:
        raise ForbiddenError(f"{actor} may register only its own name {own!r}, not {name!r}")


def _existing(app: KernelApplication, name: str) -> ServiceRegistration:
    require_service_name(name)
    reg = find_service(app, name)
    if reg is None:
        raise NotFoundError(f"no service {name!r} is registered (see `cloudkernel services`)")
    return reg


def handle_register(app: KernelApplication,
                    command: RegisterService) -> tuple[Sequence[Aggregate], ServiceChanged]:
    """service.register: create the registration, update it, or leave it as it is."""
    fields: dict[str, Any] = {f: getattr(command, f) for f in command.__struct_fields__}
    checked = check_registration(**fields)
    _service_actor("register", checked["name"])
    reg = find_service(app, checked["name"])
    if reg is None:
        new = ServiceRegistration(**checked)
        return [new], _changed(new, "registered")
    if reg.reregister(**checked):
        return [reg], _changed(reg, "updated")
    return [], _changed(reg, "unchanged")


def _switch(action: str, change: str,
            act: Callable[[ServiceRegistration, Any], bool]) -> Any:
    """The handler of admin command `service.<action>` on an existing registration: `act`
    changes it (and says whether it did); the result names the change, or "unchanged"."""

    def handle(app: KernelApplication,
               command: Any) -> tuple[Sequence[Aggregate], ServiceChanged]:
        _service_actor(action, command.name)
        reg = _existing(app, command.name)
        if act(reg, command):
            return [reg], _changed(reg, change)
        return [], _changed(reg, "unchanged")

    handle.__doc__ = f"service.{action}: an admin's command"
    return handle


handle_enable = _switch("enable", "enabled", lambda reg, _c: reg.enable())
handle_disable = _switch("disable", "disabled",
                         lambda reg, c: reg.disable(check_disable_reason(c.reason)))
handle_deregister = _switch("deregister", "deregistered", lambda reg, _c: reg.deregister())


SERVICE_HANDLERS: dict[type, Any] = {
    RegisterService: handle_register,
    EnableService: handle_enable,
    DisableService: handle_disable,
    DeregisterService: handle_deregister,
}
