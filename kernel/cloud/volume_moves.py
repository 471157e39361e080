"""Volume delete and migration between primary pools, as step plans with their effects.

* `volume.delete` (a data volume, detached): the volume is Destroyed and, unless `expunge` is
  False, Expunging when the command is taken; storage.delete_volume on the host whose pool
  holds it; success: Expunged and its pool claim given back; failure: back in Destroy with
  its claim (the storage may still be there), and a later delete tries again. A volume never
  created (no path) needs no step: it is Expunged at once. A delete cannot be undone.
* `volume.migrate` (a Ready volume, detached or of a Stopped VM: a cold migration, as
  CloudStack's): the destination pool is claimed and the volume Migrating when the command is
  taken (a full pool refuses it then).

      storage.create_pool (the destination, on the host that will reach the volume there)
      ─> storage.migrate_volume (copy, then delete the source; undo: migrate back)

  Success: the volume is on the destination at its new path, located at the destination
  host, and the source pool's claim is given back; failure: Ready where it was, and the
  destination claim is given back. The destination host is the VM's last host (which must
  reach the pool), else the volume's own host if it reaches the pool, else the first Up host
  by name that does. A Stopped VM has no domain (vm.stop undefines it), and vm.start defines
  it from its volumes' paths, so its next start uses the disk's new path: no domain to edit.
"""

from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec

from aggregates.errors import DomainRuleError, ValidationError
from aggregates.host import Host, HostStatus
from aggregates.operation import Operation, OperationState
from aggregates.storage_pool import PrimaryStoragePool
from aggregates.vm import VirtualMachine, VmState
from aggregates.volume import Volume, VolumeState, VolumeType
from kernel.cloud.storage_pools import directory
from kernel.cloud.vm_effects import why_failed
from kernel.cloud.vms import pool_claim_id, reaches
from kernel.cloud.volume_effects import EnsurePoolEffect
from kernel.cloud.volumes import (
    HOST_TOPIC,
    VolumeAccepted,
    VolumeOp,
    bound_step,
    look,
    need,
    operation_ref,
    plan_ref,
    require_idle,
    start_operation,
    storage_host,
    vm_of,
    volume_file_name,
    volume_of,
    volume_ref,
)
from kernel.commands import Command
from kernel.effects import BaseEffect, Effects, EffectScope, Refusal, StepContext
from kernel.operation_commands import StartOperation
from kernel.steps.storage import DeleteVolume, MigrateVolume, VolumeMigrated, VolumeRef
from kernel.unit_of_work import UnitOfWork

MOVE_DEADLINE = 1800.0  # a migration copies the whole volume


# --------------------------------------------------------------------------- commands


class DeleteVolumeCommand(Command, frozen=True, kw_only=True, tag="volume.delete"):
    """Delete a detached data volume: destroy it and, unless `expunge` is False, remove its
    storage and give its pool claim back."""

    volume_id: UUID
    expunge: bool = True


class MigrateVolumeCommand(Command, frozen=True, kw_only=True, tag="volume.migrate"):
    """Move a Ready volume (detached, or of a Stopped VM) to another primary pool."""

    volume_id: UUID
    pool_id: UUID


class DeleteAccepted(msgspec.Struct, frozen=True, kw_only=True):
    """What a volume.delete did: the operation removing the storage (None: no step was
    needed) and the volume's state after the command."""

    operation_id: UUID | None
    volume_id: UUID
    state: str


class VolumeMove(msgspec.Struct, frozen=True, kw_only=True):
    """Plan arguments of volume.migrate's steps: the destination (`pool_id`, `host_id`, as
    `VolumeOp` names them) and where the volume was."""

    volume_id: UUID
    pool_id: UUID
    host_id: UUID
    source_pool_id: UUID
    source_host_id: UUID
    vm_id: UUID | None = None


# --------------------------------------------------------------------------- delete


def delete_factory(uow: UnitOfWork, command: DeleteVolumeCommand,
                   now: datetime) -> tuple[StartOperation | None, Any]:
    """volume.delete: destroy (and expunge) now; delete the storage if there is any."""
    volume = volume_of(uow, command.volume_id)
    label = f"volume {volume.name}"
    if volume.volume_type is VolumeType.ROOT:
        raise DomainRuleError(f"{label} is a ROOT volume: it is deleted with its VM "
                              "(vm.destroy)")
    if volume.vm_id is not None:
        raise DomainRuleError(f"{label} is attached to vm {volume.vm_id}: detach it first")
    require_idle(uow, volume.id, label)
    if volume.state not in (VolumeState.ALLOCATED, VolumeState.READY, VolumeState.DESTROY):
        raise DomainRuleError(f"{label} is {volume.state.value}: only an Allocated, Ready or "
                              "destroyed volume is deleted")
    if volume.state is not VolumeState.DESTROY:
        volume.destroy()
    if not command.expunge:
        return None, DeleteAccepted(operation_id=None, volume_id=volume.id,
                                    state=volume.state.value)
    volume.expunge()
    if volume.path is None:  # never created: there is no storage to remove
        volume.expunged()
        return None, DeleteAccepted(operation_id=None, volume_id=volume.id,
                                    state=volume.state.value)
    step = bound_step("storage", "delete_volume", VolumeOp(volume_id=volume.id))
    spec, accepted = start_operation("volume.delete", [step], (volume.id,),
                                     volume_id=volume.id)
    return spec, DeleteAccepted(operation_id=accepted.operation_id, volume_id=volume.id,
                                state=volume.state.value)


class DeleteEffect(BaseEffect):
    """storage.delete_volume of volume.delete: the storage is gone; the volume is Expunged
    and its pool claim given back."""

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        volume = scope.peek(need(plan_ref(ctx).volume_id, "volume_id"), Volume)
        if volume.state is not VolumeState.EXPUNGING:
            raise DomainRuleError(f"volume {volume.name} is {volume.state.value}, not "
                                  "Expunging")
        return DeleteVolume(volume=volume_ref(scope, volume))

    def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
        volume = scope.get(need(plan_ref(ctx).volume_id, "volume_id"), Volume)
        if volume.state is not VolumeState.EXPUNGING or volume.pool_id is None:
            raise DomainRuleError(f"volume {volume.name} is {volume.state.value}: cannot "
                                  "record it expunged")
        pool = scope.get(volume.pool_id, PrimaryStoragePool)
        if pool_claim_id(volume.id) in pool.claims:
            pool.release(pool_claim_id(volume.id))
        volume.expunged()


class DeleteEnded:
    """volume.delete ended: a volume whose storage was not removed is back in Destroy, with
    its claim, and says why."""

    def finished(self, scope: EffectScope, op: Operation,
                 now: datetime) -> list[StartOperation]:
        volume = scope.get(need(operation_ref(op).volume_id, "volume_id"), Volume)
        if op.state is not OperationState.SUCCEEDED and volume.state is VolumeState.EXPUNGING:
            volume.expunge_failed(why_failed(op)[1])
        return []


# --------------------------------------------------------------------------- migrate


def _destination_host(uow: UnitOfWork, volume: Volume, source_host: Host,
                      target: PrimaryStoragePool) -> Host:
    """The host that will reach the volume on the destination pool: its VM's (which must
    reach it), else the one that holds it now, else the first Up host by name that does."""
    preferred = [source_host]
    if volume.vm_id is not None:
        vm = vm_of(uow, volume.vm_id)
        host: Host = look(uow, need(vm.host_id or vm.last_host_id, f"host of vm {vm.name}"),
                          Host, "host")
        if not reaches(host, target):
            raise ValidationError(f"pool_id: storage pool {target.name} is not reachable from "
                                  f"host {host.name} of vm {vm.name}")
        preferred.insert(0, host)
    for candidate in preferred:
        if candidate.status is HostStatus.UP and reaches(candidate, target):
            return candidate
    hosts = [h for h in (uow.get(i) for i in directory(uow.app, HOST_TOPIC).ids())
             if h.status is HostStatus.UP and reaches(h, target)]
    if not hosts:
        raise DomainRuleError(f"no Up host reaches storage pool {target.name}")
    return min(hosts, key=lambda h: h.name)  # type: ignore[no-any-return]


def migrate_factory(uow: UnitOfWork, command: MigrateVolumeCommand,
                    now: datetime) -> tuple[StartOperation, VolumeAccepted]:
    """volume.migrate: claim the destination pool now; then copy the volume there."""
    volume = volume_of(uow, command.volume_id)
    label = f"volume {volume.name}"
    target: PrimaryStoragePool = look(uow, command.pool_id, PrimaryStoragePool,
                                      "storage pool")
    require_idle(uow, volume.id, label)
    if volume.state is not VolumeState.READY or volume.pool_id is None or volume.path is None:
        raise DomainRuleError(f"{label} is {volume.state.value}: only a Ready volume migrates")
    if target.id == volume.pool_id:
        raise ValidationError(f"pool_id: {label} is already on storage pool {target.name}")
    if target.zone_id != volume.zone_id:
        raise ValidationError(f"pool_id: storage pool {target.name} is not in the zone of "
                              f"{label}")
    entities: tuple[UUID, ...] = (volume.id,)
    if volume.vm_id is not None:
        vm = vm_of(uow, volume.vm_id)
        if vm.state is not VmState.STOPPED:
            raise DomainRuleError(f"{label} is attached to vm {vm.name}, which is "
                                  f"{vm.state.value}: stop the VM (or detach the volume) "
                                  "before migrating it")
        require_idle(uow, vm.id, f"vm {vm.name}")
        entities = (volume.id, vm.id)
    source: PrimaryStoragePool = look(uow, volume.pool_id, PrimaryStoragePool, "storage pool")
    source_host = storage_host(uow, volume)
    host = _destination_host(uow, volume, source_host, target)
    if (host.uri, target.pool_name) == (source_host.uri, source.pool_name):
        raise ValidationError(f"pool_id: storage pool {target.name} is libvirt pool "
                              f"{source.pool_name} on {host.name}, where {label} is already")
    target.claim(pool_claim_id(volume.id), volume.id, volume.size_bytes)
    volume.migrate(target.id)
    ref = VolumeMove(volume_id=volume.id, pool_id=target.id, host_id=host.id,
                     source_pool_id=source.id, source_host_id=source_host.id,
                     vm_id=volume.vm_id)
    ensure_pool = bound_step("storage", "create_pool", ref)
    move = bound_step("storage", "migrate_volume", ref, depends_on=(ensure_pool.step_id,),
                      deadline=MOVE_DEADLINE, undo="storage.migrate_volume")
    return start_operation("volume.migrate", [ensure_pool, move], entities,
                           volume_id=volume.id, vm_id=volume.vm_id)


def _ref_on(scope: EffectScope, volume: Volume, pool_id: UUID, host_id: UUID) -> VolumeRef:
    pool = scope.peek(pool_id, PrimaryStoragePool)
    return VolumeRef(host_uri=scope.peek(host_id, Host).uri, pool=pool.pool_name,
                     name=volume_file_name(volume))


class MigrateVolumeEffect(BaseEffect):
    """storage.migrate_volume of volume.migrate: the volume is on the destination at its new
    path (or, undone, back where it was)."""

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        move = ctx.plan_args(VolumeMove)
        volume = scope.peek(move.volume_id, Volume)
        source = _ref_on(scope, volume, move.source_pool_id, move.source_host_id)
        target = _ref_on(scope, volume, move.pool_id, move.host_id)
        if ctx.compensating:  # back from where the forward step put it
            if volume.state is not VolumeState.READY or volume.pool_id != move.pool_id:
                raise DomainRuleError(f"volume {volume.name} is {volume.state.value} on "
                                      f"{volume.pool_id}: cannot move it back")
            return MigrateVolume(source=target, target=source)
        if volume.state is not VolumeState.MIGRATING or \
                volume.destination_pool_id != move.pool_id:
            raise DomainRuleError(f"volume {volume.name} is {volume.state.value}, not "
                                  f"Migrating to {move.pool_id}")
        if volume.vm_id is not None:  # vm.destroy changes a Stopped VM at once
            vm = scope.peek(volume.vm_id, VirtualMachine)
            if vm.state is not VmState.STOPPED:
                raise DomainRuleError(f"vm {vm.name} is {vm.state.value}: its volume "
                                      f"{volume.name} moves only while it is Stopped")
        return MigrateVolume(source=source, target=target)

    def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
        move = ctx.plan_args(VolumeMove)
        moved = msgspec.json.decode(result, type=VolumeMigrated)
        expected = ctx.bound_args(MigrateVolume).target
        if moved.volume.volume != expected or not moved.volume.path:
            raise Refusal(f"storage.migrate_volume reported {moved.volume.volume}, asked "
                          f"{expected}", retryable=False, code="wrong_target")
        volume = scope.get(move.volume_id, Volume)
        if ctx.compensating:
            if volume.state is not VolumeState.READY or volume.pool_id != move.pool_id:
                raise DomainRuleError(f"volume {volume.name} is {volume.state.value}: cannot "
                                      "record it moved back")
            volume.migrate(move.source_pool_id)
            volume.migrated(moved.volume.path)
            volume.locate(move.source_host_id)
            return
        if volume.state is not VolumeState.MIGRATING or \
                volume.destination_pool_id != move.pool_id:
            raise DomainRuleError(f"volume {volume.name} is {volume.state.value}: cannot "
                                  f"record it moved to {move.pool_id}")
        volume.migrated(moved.volume.path)
        volume.locate(move.host_id)


class MigrateEnded:
    """volume.migrate ended: the volume is Ready on one pool, which alone keeps a claim."""

    def finished(self, scope: EffectScope, op: Operation,
                 now: datetime) -> list[StartOperation]:
        move = msgspec.json.decode(op.forward_steps()[0].args, type=VolumeMove)
        volume = scope.get(move.volume_id, Volume)
        if volume.state is VolumeState.MIGRATING:
            volume.migration_failed(why_failed(op)[1])
        for pool_id in (move.source_pool_id, move.pool_id):
            if pool_id == volume.pool_id:
                continue
            pool = scope.get(pool_id, PrimaryStoragePool)
            if pool_claim_id(volume.id) in pool.claims:
                pool.release(pool_claim_id(volume.id))
        return []


VOLUME_MOVE_COMMANDS: dict[type[Any], Any] = {
    DeleteVolumeCommand: delete_factory,
    MigrateVolumeCommand: migrate_factory,
}
VOLUME_MOVE_EFFECTS = Effects(
    steps={
        # storage.delete_volume also undoes creates (vm.deploy, volume.create)
        "volume.delete:storage.delete_volume": DeleteEffect(),
        # the destination pool on the destination host, bound as volume.create's
        "volume.migrate:storage.create_pool": EnsurePoolEffect(),
        "volume.migrate:storage.migrate_volume": MigrateVolumeEffect(),
    },
    operations={"volume.delete": DeleteEnded(), "volume.migrate": MigrateEnded()},
)
