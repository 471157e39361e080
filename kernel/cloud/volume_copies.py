"""Copies of volumes: snapshots (take, revert) and VM backups (back up, restore).

* `volume.snapshot`: a Snapshot (Creating) and the volume Snapshotting when the command is
  taken; snapshot.create (undo: snapshot.delete) copies the volume beside its pool and records
  the copy and its sha256. A failure leaves the Snapshot in Error and the volume Ready.
* `volume.revert`: snapshot.revert puts the copy back, verified against that sha256 (and the
  result's checksum checked again); a VM that runs on the volume refuses it, when the command
  is taken and again when the step is bound. A revert cannot be undone.
* `vm.backup`: a Backup (BackingUp) of every disk of the VM into `target_dir/<backup_id>/`;
  backup.create (undo: backup.delete). A failure leaves the Backup Failed.
* `vm.restore` (a stopped VM): the Backup is Restoring; backup.restore verifies every file
  against the manifest before and after copying. A failure leaves the Backup BackedUp.
"""

import re
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any
from uuid import UUID

import msgspec

from aggregates.backup import Backup, BackupState
from aggregates.errors import DomainRuleError, NotFoundError, ValidationError
from aggregates.operation import Operation, OperationState
from aggregates.snapshot import Snapshot, SnapshotState
from aggregates.storage_pool import PrimaryStoragePool
from aggregates.vm import VirtualMachine, VmState
from aggregates.volume import Volume, VolumeState
from kernel.cloud.vm_effects import why_failed
from kernel.cloud.vms import pool_path
from kernel.cloud.volumes import (
    VolumeAccepted,
    VolumeOp,
    bound_step,
    look,
    need,
    operation_ref,
    plan_ref,
    require_idle,
    require_vm_not_running,
    start_operation,
    storage_host,
    vm_of,
    volume_of,
    volume_ref,
)
from kernel.commands import Command
from kernel.effects import BaseEffect, Effects, EffectScope, Refusal, StepContext
from kernel.operation_commands import StartOperation
from kernel.steps.backup import (
    BackupCreated,
    BackupRestored,
    BackupVolume,
    CreateBackup,
    DeleteBackup,
    RestoreBackup,
)
from kernel.steps.snapshot import (
    CreateSnapshot,
    DeleteSnapshot,
    RevertSnapshot,
    SnapshotReverted,
    SnapshotTaken,
)
from kernel.unit_of_work import UnitOfWork

COPY_DEADLINE = 1800.0  # snapshots and backups copy whole volumes
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


# --------------------------------------------------------------------------- commands


class SnapshotVolumeCommand(Command, frozen=True, kw_only=True, tag="volume.snapshot"):
    """Take a snapshot of a volume: a verified copy beside its primary pool."""

    volume_id: UUID
    name: str | None = None
    snapshot_id: UUID | None = None


class RevertVolumeCommand(Command, frozen=True, kw_only=True, tag="volume.revert"):
    """Put a snapshot's content back into its volume (not while a VM runs on it)."""

    snapshot_id: UUID


class BackupVmCommand(Command, frozen=True, kw_only=True, tag="vm.backup"):
    """Back up every disk of a VM into `target_dir/<backup_id>/`, with a checksum manifest."""

    vm_id: UUID
    target_dir: str
    name: str | None = None
    backup_id: UUID | None = None


class RestoreVmCommand(Command, frozen=True, kw_only=True, tag="vm.restore"):
    """Copy a backup back onto a stopped VM's volumes (or only `volume_id`), verified."""

    backup_id: UUID
    volume_id: UUID | None = None


def snapshot_directory(pool: PrimaryStoragePool) -> str:
    """Where a pool's volume snapshots are kept: beside the pool's directory, not in it, so
    that the pool never lists them as volumes."""
    return f"{pool_path(pool).rstrip('/')}-snapshots"


# --------------------------------------------------------------------------- plans


def snapshot_factory(uow: UnitOfWork, command: SnapshotVolumeCommand,
                     now: datetime) -> tuple[StartOperation, VolumeAccepted]:
    """volume.snapshot: a Snapshot (Creating), the volume Snapshotting; then copy it."""
    volume = volume_of(uow, command.volume_id)
    require_idle(uow, volume.id, f"volume {volume.name}")
    if volume.pool_id is None or volume.path is None:
        raise DomainRuleError(f"volume {volume.name} has no storage yet")
    if command.snapshot_id is not None and uow.find(command.snapshot_id) is not None:
        raise ValidationError(f"snapshot_id: {command.snapshot_id} already exists")
    snapshot = Snapshot.allocate(name=command.name or f"{volume.name}-{now:%Y%m%d%H%M%S}",
                                 account=volume.account, zone_id=volume.zone_id,
                                 volume_id=volume.id, volume_size_bytes=volume.size_bytes,
                                 id=command.snapshot_id)
    volume.take_snapshot(snapshot.id)
    snapshot.create()
    uow.add(snapshot)
    ref = VolumeOp(volume_id=volume.id, snapshot_id=snapshot.id, pool_id=volume.pool_id)
    step = bound_step("snapshot", "create", ref, deadline=COPY_DEADLINE, undo="snapshot.delete")
    return start_operation("volume.snapshot", [step], (volume.id, snapshot.id),
                           volume_id=volume.id, snapshot_id=snapshot.id)


def revert_factory(uow: UnitOfWork, command: RevertVolumeCommand,
                   now: datetime) -> tuple[StartOperation, VolumeAccepted]:
    """volume.revert: the snapshot's content back into its volume; never under a running VM."""
    snapshot = look(uow, command.snapshot_id, Snapshot, "snapshot")
    if snapshot.state not in (SnapshotState.CREATED_ON_PRIMARY, SnapshotState.BACKED_UP) \
            or snapshot.primary_path is None or snapshot.sha256 is None:
        raise DomainRuleError(f"snapshot {snapshot.name} is {snapshot.state.value}: only a "
                              "taken, checksummed snapshot can be reverted to")
    volume = volume_of(uow, snapshot.volume_id)
    if volume.state is not VolumeState.READY:
        raise DomainRuleError(f"volume {volume.name} is {volume.state.value}, not Ready")
    entities: tuple[UUID, ...] = (volume.id, snapshot.id)
    if volume.vm_id is not None:
        require_vm_not_running(vm_of(uow, volume.vm_id), f"reverting volume {volume.name}")
        entities += (volume.vm_id,)  # a start waits for the revert
    ref = VolumeOp(volume_id=volume.id, snapshot_id=snapshot.id, vm_id=volume.vm_id)
    step = bound_step("snapshot", "revert", ref, deadline=COPY_DEADLINE)
    return start_operation("volume.revert", [step], entities, volume_id=volume.id,
                           snapshot_id=snapshot.id, vm_id=volume.vm_id)


def _disk_volumes(uow: UnitOfWork, vm: VirtualMachine, ids: tuple[UUID, ...]) -> list[Volume]:
    volumes = [volume_of(uow, i) for i in ids]
    for volume in volumes:
        if volume.state is not VolumeState.READY or volume.path is None:
            raise DomainRuleError(f"volume {volume.name} is {volume.state.value}: every "
                                  "volume must be Ready")
        if volume.vm_id != vm.id:
            raise DomainRuleError(f"volume {volume.name} is not a disk of vm {vm.name}")
    return volumes


def backup_factory(uow: UnitOfWork, command: BackupVmCommand,
                   now: datetime) -> tuple[StartOperation, VolumeAccepted]:
    """vm.backup: a Backup (BackingUp) of every disk of the VM; then copy them."""
    vm = vm_of(uow, command.vm_id)
    if vm.state not in (VmState.RUNNING, VmState.STOPPED):
        raise DomainRuleError(f"vm {vm.name} is {vm.state.value}: back up a Running or "
                              "Stopped VM")
    if not PurePosixPath(command.target_dir).is_absolute():
        raise ValidationError(f"target_dir: {command.target_dir!r} is not an absolute path")
    if command.backup_id is not None and uow.find(command.backup_id) is not None:
        raise ValidationError(f"backup_id: {command.backup_id} already exists")
    volume_ids = tuple(vm.disks[d] for d in sorted(vm.disks))
    if not volume_ids:
        raise DomainRuleError(f"vm {vm.name} has no disks")
    _disk_volumes(uow, vm, volume_ids)
    backup = Backup.allocate(name=command.name or f"{vm.name}-{now:%Y%m%d%H%M%S}",
                             account=vm.account, zone_id=vm.zone_id, vm_id=vm.id,
                             volume_ids=volume_ids, id=command.backup_id)
    backup.back_up()
    uow.add(backup)
    ref = VolumeOp(vm_id=vm.id, backup_id=backup.id, volume_ids=volume_ids,
                   target_dir=command.target_dir)
    step = bound_step("backup", "create", ref, deadline=COPY_DEADLINE, undo="backup.delete")
    return start_operation("vm.backup", [step], (vm.id, *volume_ids, backup.id),
                           vm_id=vm.id, backup_id=backup.id)


def restore_factory(uow: UnitOfWork, command: RestoreVmCommand,
                    now: datetime) -> tuple[StartOperation, VolumeAccepted]:
    """vm.restore: the backup is Restoring now; then copy its files back, verified."""
    backup = look(uow, command.backup_id, Backup, "backup")
    require_idle(uow, backup.id, f"backup {backup.name}")
    if backup.state is not BackupState.BACKED_UP or backup.external_id is None:
        raise DomainRuleError(f"backup {backup.name} is {backup.state.value}, not BackedUp")
    vm = vm_of(uow, backup.vm_id)
    require_vm_not_running(vm, f"restoring backup {backup.name}")
    volume_ids = backup.volume_ids if command.volume_id is None else (command.volume_id,)
    backup.restore(command.volume_id)
    _disk_volumes(uow, vm, volume_ids)
    ref = VolumeOp(vm_id=vm.id, backup_id=backup.id, volume_ids=volume_ids,
                   target_dir=str(PurePosixPath(backup.external_id).parent))
    step = bound_step("backup", "restore", ref, deadline=COPY_DEADLINE)
    return start_operation("vm.restore", [step], (vm.id, *volume_ids, backup.id),
                           vm_id=vm.id, backup_id=backup.id)


# --------------------------------------------------------------------------- snapshots


class SnapshotCreateEffect(BaseEffect):
    """snapshot.create: the snapshot exists on primary storage, with its sha256."""

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        ref = plan_ref(ctx)
        snapshot = scope.peek(need(ref.snapshot_id, "snapshot_id"), Snapshot)
        volume = scope.peek(snapshot.volume_id, Volume)
        if snapshot.state is not SnapshotState.CREATING:
            raise DomainRuleError(f"snapshot {snapshot.name} is {snapshot.state.value}")
        pool = scope.peek(need(volume.pool_id, "pool_id"), PrimaryStoragePool)
        return CreateSnapshot(snapshot_id=snapshot.id, volume=volume_ref(scope, volume),
                              directory=snapshot_directory(pool))

    def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
        taken = msgspec.json.decode(result, type=SnapshotTaken)
        snapshot = scope.get(need(plan_ref(ctx).snapshot_id, "snapshot_id"), Snapshot)
        volume = scope.get(snapshot.volume_id, Volume)
        if snapshot.state is not SnapshotState.CREATING or \
                volume.state is not VolumeState.SNAPSHOTTING or not taken.path \
                or not _SHA256.match(taken.sha256):
            raise DomainRuleError(f"snapshot {snapshot.name} is {snapshot.state.value}, "
                                  f"volume {volume.state.value}: cannot record {taken.path!r} "
                                  f"sha256 {taken.sha256!r}")
        snapshot.created(taken.path)
        snapshot.record_checksum(taken.sha256)
        volume.snapshot_taken()


def _snapshot_dir(scope: EffectScope, snapshot: Snapshot) -> str:
    if snapshot.primary_path is not None:
        return str(PurePosixPath(snapshot.primary_path).parent)
    volume = scope.peek(snapshot.volume_id, Volume)
    pool = scope.peek(need(volume.pool_id, "pool_id"), PrimaryStoragePool)
    return snapshot_directory(pool)


def _keeper_uri(scope: EffectScope, volume: Volume) -> str:
    """The host that keeps the volume's snapshots and backups ("" when none is known any
    more)."""
    try:
        return storage_host(scope, volume).uri
    except NotFoundError:
        return ""


class SnapshotDeleteEffect(BaseEffect):
    """snapshot.delete: the snapshot's copy is gone; it is Destroyed."""

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        snapshot = scope.peek(need(plan_ref(ctx).snapshot_id, "snapshot_id"), Snapshot)
        return DeleteSnapshot(snapshot_id=snapshot.id, directory=_snapshot_dir(scope, snapshot),
                              host_uri=_keeper_uri(scope, scope.peek(snapshot.volume_id, Volume)))

    def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
        snapshot = scope.get(need(plan_ref(ctx).snapshot_id, "snapshot_id"), Snapshot)
        if snapshot.state in (SnapshotState.ALLOCATED, SnapshotState.CREATED_ON_PRIMARY,
                              SnapshotState.BACKED_UP, SnapshotState.ERROR):
            snapshot.destroy()


class SnapshotEnded:
    """volume.snapshot ended: on failure the snapshot is in Error and the volume Ready."""

    def finished(self, scope: EffectScope, op: Operation,
                 now: datetime) -> list[StartOperation]:
        if op.state is OperationState.SUCCEEDED:
            return []
        reason = why_failed(op)[1]
        snapshot = scope.get(need(operation_ref(op).snapshot_id, "snapshot_id"), Snapshot)
        if snapshot.state is SnapshotState.CREATING:
            snapshot.fail(reason)
        volume = scope.get(snapshot.volume_id, Volume)
        if volume.state is VolumeState.SNAPSHOTTING:
            volume.snapshot_failed(reason)
        return []


class RevertEffect(BaseEffect):
    """snapshot.revert: the volume holds the snapshot's content again (verified)."""

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        snapshot = scope.peek(need(plan_ref(ctx).snapshot_id, "snapshot_id"), Snapshot)
        volume = scope.peek(snapshot.volume_id, Volume)
        if volume.state is not VolumeState.READY:
            raise DomainRuleError(f"volume {volume.name} is {volume.state.value}, not Ready")
        if volume.vm_id is not None:
            require_vm_not_running(scope.peek(volume.vm_id, VirtualMachine),
                                   f"reverting volume {volume.name}")
        if snapshot.primary_path is None or snapshot.sha256 is None:
            raise DomainRuleError(f"snapshot {snapshot.name} has no checksummed copy")
        return RevertSnapshot(snapshot_id=snapshot.id, volume=volume_ref(scope, volume),
                              directory=_snapshot_dir(scope, snapshot), sha256=snapshot.sha256,
                              vm_id=volume.vm_id)

    def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
        reverted = msgspec.json.decode(result, type=SnapshotReverted)
        snapshot = scope.peek(need(plan_ref(ctx).snapshot_id, "snapshot_id"), Snapshot)
        volume = scope.get(snapshot.volume_id, Volume)
        if reverted.sha256.lower() != snapshot.sha256:
            raise Refusal(f"volume {volume.name} holds sha256 {reverted.sha256}, snapshot "
                          f"{snapshot.name} has {snapshot.sha256}", retryable=False,
                          code="checksum_mismatch")
        volume.reverted(snapshot.id)


# --------------------------------------------------------------------------- backups


def _backup_volumes(scope: EffectScope, ref: VolumeOp) -> tuple[BackupVolume, ...]:
    return tuple(BackupVolume(volume_id=v, volume=volume_ref(scope, scope.peek(v, Volume)))
                 for v in ref.volume_ids)


class BackupCreateEffect(BaseEffect):
    """backup.create: the backup target holds every volume; the Backup is BackedUp."""

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        ref = plan_ref(ctx)
        backup = scope.peek(need(ref.backup_id, "backup_id"), Backup)
        if backup.state is not BackupState.BACKING_UP:
            raise DomainRuleError(f"backup {backup.name} is {backup.state.value}")
        return CreateBackup(backup_id=backup.id, vm_id=backup.vm_id,
                            volumes=_backup_volumes(scope, ref), target_dir=ref.target_dir)

    def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
        ref = plan_ref(ctx)
        created = msgspec.json.decode(result, type=BackupCreated)
        backup = scope.get(need(ref.backup_id, "backup_id"), Backup)
        if {f.volume_id for f in created.files} != set(ref.volume_ids):
            raise Refusal(f"backup {backup.name} holds {len(created.files)} files for "
                          f"{len(ref.volume_ids)} volumes", retryable=False,
                          code="backup_incomplete")
        if backup.state is not BackupState.BACKING_UP:
            raise DomainRuleError(f"backup {backup.name} is {backup.state.value}")
        backup.backed_up(created.path, created.total_bytes)


class BackupDeleteEffect(BaseEffect):
    """backup.delete: the backup's directory is gone; it is Removed."""

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        ref = plan_ref(ctx)
        host_uri = next((_keeper_uri(scope, scope.peek(v, Volume)) for v in ref.volume_ids), "")
        return DeleteBackup(backup_id=need(ref.backup_id, "backup_id"),
                            target_dir=ref.target_dir, host_uri=host_uri)

    def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
        backup = scope.get(need(plan_ref(ctx).backup_id, "backup_id"), Backup)
        if backup.state in (BackupState.ALLOCATED, BackupState.BACKED_UP, BackupState.FAILED):
            backup.remove()


class RestoreEffect(BaseEffect):
    """backup.restore: every volume holds its backed-up content again (verified)."""

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        ref = plan_ref(ctx)
        backup = scope.peek(need(ref.backup_id, "backup_id"), Backup)
        if backup.state is not BackupState.RESTORING:
            raise DomainRuleError(f"backup {backup.name} is {backup.state.value}")
        require_vm_not_running(scope.peek(backup.vm_id, VirtualMachine),
                               f"restoring backup {backup.name}")
        return RestoreBackup(backup_id=backup.id, target_dir=ref.target_dir,
                             volumes=_backup_volumes(scope, ref), vm_id=backup.vm_id)

    def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
        ref = plan_ref(ctx)
        restored = msgspec.json.decode(result, type=BackupRestored)
        backup = scope.get(need(ref.backup_id, "backup_id"), Backup)
        missing = set(ref.volume_ids) - {f.volume_id for f in restored.files}
        if missing:
            raise Refusal(f"backup {backup.name}: {len(missing)} volumes were not restored",
                          retryable=False, code="restore_incomplete")
        if backup.state is not BackupState.RESTORING:
            raise DomainRuleError(f"backup {backup.name} is {backup.state.value}")
        backup.restored()


class BackupEnded:
    """vm.backup ended: a backup that was not taken is Failed."""

    def finished(self, scope: EffectScope, op: Operation,
                 now: datetime) -> list[StartOperation]:
        backup = scope.get(need(operation_ref(op).backup_id, "backup_id"), Backup)
        if op.state is not OperationState.SUCCEEDED and backup.state is BackupState.BACKING_UP:
            backup.backup_failed(why_failed(op)[1])
        return []


class RestoreEnded:
    """vm.restore ended: a failed restore leaves the backup BackedUp, with the reason."""

    def finished(self, scope: EffectScope, op: Operation,
                 now: datetime) -> list[StartOperation]:
        backup = scope.get(need(operation_ref(op).backup_id, "backup_id"), Backup)
        if op.state is not OperationState.SUCCEEDED and backup.state is BackupState.RESTORING:
            backup.restore_failed(why_failed(op)[1])
        return []


COPY_COMMANDS: dict[type[Any], Any] = {
    SnapshotVolumeCommand: snapshot_factory,
    RevertVolumeCommand: revert_factory,
    BackupVmCommand: backup_factory,
    RestoreVmCommand: restore_factory,
}
COPY_EFFECTS = Effects(
    steps={
        "snapshot.create": SnapshotCreateEffect(),
        "snapshot.delete": SnapshotDeleteEffect(),
        "snapshot.revert": RevertEffect(),
        "backup.create": BackupCreateEffect(),
        "backup.delete": BackupDeleteEffect(),
        "backup.restore": RestoreEffect(),
    },
    operations={"volume.snapshot": SnapshotEnded(), "vm.backup": BackupEnded(),
                "vm.restore": RestoreEnded()},
)
