"""Host commands: the admin's resource state, and maintenance (`kernel.cloud.maintenance`).

* `host.disable` / `host.enable`: placement leaves the host alone, or uses it again. Neither
  touches a VM. Both refuse a host in a maintenance state: cancel maintenance instead.
* `host.prepare_maintenance`: PrepareForMaintenance now (placement stops using the host); a
  host with no VM is in Maintenance at once, else its Running VMs live-migrate away through
  the planner, and it ends in Maintenance, or in ErrorInMaintenance with the VMs that could
  not move still running on it. Prepare again from ErrorInMaintenance to retry those.
* `host.cancel_maintenance`: from PrepareForMaintenance, Maintenance or ErrorInMaintenance,
  back to Enabled (placement uses it again); migrations that have not started are cancelled,
  running ones end on their own. No VM is stopped.

Every command validates before it changes anything: an unknown host, a state that does not
allow the action (a second prepare while one runs) or a VM that cannot move writes nothing.
"""

from datetime import datetime
from typing import Any, ClassVar
from uuid import UUID, uuid4

import msgspec

from aggregates.host import Host
from kernel.cloud.maintenance import prepare_operation, vms_to_move, withdraw_waiting
from kernel.cloud.volumes import look
from kernel.commands import Command
from kernel.operation_commands import StartOperation
from kernel.unit_of_work import UnitOfWork


class DisableHost(Command, frozen=True, kw_only=True, tag="host.disable"):
    """Keep placement off an Enabled host; the VMs on it keep running there."""

    host_id: UUID
    reason: str = ""


class EnableHost(Command, frozen=True, kw_only=True, tag="host.enable"):
    """Let placement use a Disabled host again."""

    host_id: UUID
    reason: str = ""


class PrepareHostMaintenance(Command, frozen=True, kw_only=True,
                             tag="host.prepare_maintenance"):
    """Move every Running VM off the host (live migration), then put it in Maintenance."""

    host_id: UUID
    reason: str = ""


class CancelHostMaintenance(Command, frozen=True, kw_only=True,
                            tag="host.cancel_maintenance"):
    """Bring a host in (or preparing for) maintenance back to Enabled."""

    waits_for_busy_entities: ClassVar[bool] = False  # it stops the operation holding the host
    host_id: UUID
    reason: str = ""


class HostAccepted(msgspec.Struct, frozen=True, kw_only=True):
    """What a host command did: the host's resource state now, and the operation it started
    (prepare: the VMs it moves; cancel: the migrations it cancelled)."""

    host_id: UUID
    resource_state: str
    operation_id: UUID | None = None
    vm_ids: tuple[UUID, ...] = ()
    cancelled_operation_ids: tuple[UUID, ...] = ()


def _host(uow: UnitOfWork, host_id: UUID) -> Host:
    host: Host = look(uow, host_id, Host, "host")
    return host


def _accepted(host: Host, **more: Any) -> HostAccepted:
    return HostAccepted(host_id=host.id, resource_state=host.resource_state.value, **more)


def disable_factory(uow: UnitOfWork, command: DisableHost,
                    now: datetime) -> tuple[None, HostAccepted]:
    """host.disable: no step, the host's record only."""
    host = _host(uow, command.host_id)
    host.disable(command.reason or "disabled by the admin")
    return None, _accepted(host)


def enable_factory(uow: UnitOfWork, command: EnableHost,
                   now: datetime) -> tuple[None, HostAccepted]:
    """host.enable: no step, the host's record only."""
    host = _host(uow, command.host_id)
    host.enable(command.reason or "enabled by the admin")
    return None, _accepted(host)


def prepare_factory(uow: UnitOfWork, command: PrepareHostMaintenance,
                    now: datetime) -> tuple[StartOperation | None, HostAccepted]:
    """host.prepare_maintenance: PrepareForMaintenance now; Maintenance at once if no VM is on
    the host, else the operation that moves them."""
    host = _host(uow, command.host_id)
    moving = vms_to_move(uow, host, now)
    reason = command.reason or "maintenance asked by the admin"
    if not moving:
        host.start_maintenance(None, reason)
        host.complete_maintenance()
        return None, _accepted(host)
    operation_id = uuid4()
    host.start_maintenance(operation_id, reason)
    return (prepare_operation(host, operation_id),
            _accepted(host, operation_id=operation_id, vm_ids=tuple(vm.id for vm in moving)))


def cancel_factory(uow: UnitOfWork, command: CancelHostMaintenance,
                   now: datetime) -> tuple[None, HostAccepted]:
    """host.cancel_maintenance: Enabled again; migrations not yet started are cancelled."""
    host = _host(uow, command.host_id)
    reason = command.reason or "maintenance cancelled by the admin"
    waiting = list(host.maintenance.migrations)
    host.cancel_maintenance(reason)  # refuses a host in no maintenance state, first
    cancelled = withdraw_waiting(uow, waiting, reason, now)
    return None, _accepted(host, cancelled_operation_ids=tuple(cancelled))


HOST_COMMANDS: dict[type[Any], Any] = {
    DisableHost: disable_factory,
    EnableHost: enable_factory,
    PrepareHostMaintenance: prepare_factory,
    CancelHostMaintenance: cancel_factory,
}
