"""The effects of volume create, attach, detach and resize: bound arguments, and what each
outcome records.

A step effect checks everything it needs before it changes anything (the engine's rule), and
the `*Ended` hooks settle what a failed operation left half-way: states back, claims released.
"""

from datetime import datetime

import msgspec

from aggregates.errors import DomainRuleError, NotFoundError
from aggregates.host import Host
from aggregates.operation import Operation, OperationState
from aggregates.storage_pool import PrimaryStoragePool
from aggregates.vm import VirtualMachine, VmState
from aggregates.volume import Volume, VolumeState
from kernel.cloud.vm_effects import retire_volume, why_failed
from kernel.cloud.vms import pool_claim_id, pool_path
from kernel.cloud.volumes import (
    VolumeOp,
    need,
    next_device,
    operation_ref,
    plan_ref,
    volume_file_name,
    volume_ref,
)
from kernel.effects import BaseEffect, Effects, EffectScope, Refusal, StepContext
from kernel.operation_commands import StartOperation
from kernel.steps.hypervisor import AttachDisk, DetachDisk, DiskSpec
from kernel.steps.storage import (
    CreatePool,
    CreateVolume,
    DeleteVolume,
    ResizeVolume,
    VolumeInfo,
    VolumeRef,
    VolumeResized,
)

# --------------------------------------------------------------------------- create


class EnsurePoolEffect(BaseEffect):
    """storage.create_pool of volume.create: the chosen pool exists on the chosen host."""

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        ref = plan_ref(ctx)
        host = scope.peek(need(ref.host_id, "host_id"), Host)
        pool = scope.peek(need(ref.pool_id, "pool_id"), PrimaryStoragePool)
        return CreatePool(host_uri=host.uri, pool=pool.pool_name, path=pool_path(pool))


def _planned_ref(scope: EffectScope, ref: VolumeOp, volume: Volume) -> VolumeRef:
    host = scope.peek(need(ref.host_id, "host_id"), Host)
    pool = scope.peek(need(ref.pool_id, "pool_id"), PrimaryStoragePool)
    return VolumeRef(host_uri=host.uri, pool=pool.pool_name, name=volume_file_name(volume))


class CreateDataVolumeEffect(BaseEffect):
    """storage.create_volume of volume.create: a blank volume; records it Ready, and where."""

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        ref = plan_ref(ctx)
        volume = scope.peek(need(ref.volume_id, "volume_id"), Volume)
        if volume.state is not VolumeState.CREATING:
            raise DomainRuleError(f"volume {volume.name} is {volume.state.value}, not Creating")
        return CreateVolume(volume=_planned_ref(scope, ref, volume),
                            capacity_bytes=volume.size_bytes)

    def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
        ref = plan_ref(ctx)
        info = msgspec.json.decode(result, type=VolumeInfo)
        volume = scope.get(need(ref.volume_id, "volume_id"), Volume)
        if volume.state is not VolumeState.CREATING or not info.path:
            raise DomainRuleError(f"volume {volume.name} is {volume.state.value}: cannot "
                                  f"record it created at {info.path!r}")
        volume.created(info.path)
        volume.locate(need(ref.host_id, "host_id"))


class DeleteDataVolumeEffect(BaseEffect):
    """storage.delete_volume undoing a create: the storage is gone, the volume Expunged."""

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        ref = plan_ref(ctx)
        volume = scope.peek(need(ref.volume_id, "volume_id"), Volume)
        return DeleteVolume(volume=_planned_ref(scope, ref, volume))

    def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
        retire_volume(scope, need(plan_ref(ctx).volume_id, "volume_id"))


class CreateEnded:
    """volume.create ended: a volume never made is Expunged and its claim given back; one
    made whose delete did not run stays (Destroy), with its claim, for an expunge to find."""

    def finished(self, scope: EffectScope, op: Operation,
                 now: datetime) -> list[StartOperation]:
        if op.state is OperationState.SUCCEEDED:
            return []
        volume = scope.get(need(operation_ref(op).volume_id, "volume_id"), Volume)
        if volume.state is VolumeState.CREATING:
            assert volume.pool_id is not None
            pool = scope.get(volume.pool_id, PrimaryStoragePool)
            if pool_claim_id(volume.id) in pool.claims:  # while the volume still names it
                pool.release(pool_claim_id(volume.id))
            volume.creation_failed(why_failed(op)[1])
            retire_volume(scope, volume.id)
        elif volume.state is VolumeState.READY and volume.vm_id is None:
            volume.destroy()
        return []


# --------------------------------------------------------------------------- attach, detach


def _disk(volume: Volume) -> DiskSpec:
    if volume.path is None:
        raise NotFoundError(f"volume {volume.name} has no storage yet")
    return DiskSpec(path=volume.path, volume_id=volume.id)


def _vm_host(scope: EffectScope, vm: VirtualMachine) -> Host:
    host_id = vm.host_id or vm.last_host_id
    if host_id is None:
        raise NotFoundError(f"vm {vm.name} is on no host")
    return scope.peek(host_id, Host)


class AttachDiskEffect(BaseEffect):
    """hypervisor.attach_disk: the volume becomes a disk of the VM, at its first free slot."""

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        ref = plan_ref(ctx)
        vm = scope.peek(need(ref.vm_id, "vm_id"), VirtualMachine)
        volume = scope.peek(need(ref.volume_id, "volume_id"), Volume)
        if not ctx.compensating:
            if vm.state is not VmState.RUNNING or vm.host_id is None:
                raise DomainRuleError(f"vm {vm.name} is {vm.state.value}: a volume attaches "
                                      "to a Running VM")
            if volume.state is not VolumeState.READY or volume.vm_id not in (None, vm.id):
                raise DomainRuleError(f"volume {volume.name} is {volume.state.value}, "
                                      f"attached to {volume.vm_id}: it cannot attach")
        return AttachDisk(vm_id=vm.id, host_uri=_vm_host(scope, vm).uri, disk=_disk(volume))

    def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
        ref = plan_ref(ctx)
        vm = scope.get(need(ref.vm_id, "vm_id"), VirtualMachine)
        volume = scope.get(need(ref.volume_id, "volume_id"), Volume)
        if volume.vm_id == vm.id and volume.id in vm.disks.values():
            return
        if volume.state is not VolumeState.READY or volume.vm_id is not None \
                or volume.id in vm.disks.values():
            raise DomainRuleError(f"volume {volume.name} is {volume.state.value}, attached "
                                  f"to {volume.vm_id}: cannot record it attached to {vm.name}")
        device = next_device(vm)
        volume.attach(vm.id, device)
        volume.attached()
        vm.attach_disk(volume.id, device)


class DetachDiskEffect(BaseEffect):
    """hypervisor.detach_disk: the volume is no longer a disk of the VM."""

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        ref = plan_ref(ctx)
        vm = scope.peek(need(ref.vm_id, "vm_id"), VirtualMachine)
        volume = scope.peek(need(ref.volume_id, "volume_id"), Volume)
        if not ctx.compensating and volume.vm_id != vm.id:
            raise DomainRuleError(f"volume {volume.name} is not attached to vm {vm.name}")
        return DetachDisk(vm_id=vm.id, host_uri=_vm_host(scope, vm).uri, disk=_disk(volume))

    def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
        ref = plan_ref(ctx)
        vm = scope.get(need(ref.vm_id, "vm_id"), VirtualMachine)
        volume = scope.get(need(ref.volume_id, "volume_id"), Volume)
        if volume.vm_id == vm.id:
            if volume.state is not VolumeState.READY:
                raise DomainRuleError(f"volume {volume.name} is {volume.state.value}: cannot "
                                      "record it detached")
            volume.detach()
        vm.detach_disk(volume.id)


# --------------------------------------------------------------------------- resize


class ResizeEffect(BaseEffect):
    """storage.resize_volume: the volume has its new size."""

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        volume = scope.peek(need(plan_ref(ctx).volume_id, "volume_id"), Volume)
        if volume.state is not VolumeState.RESIZING or volume.requested_size_bytes is None:
            raise DomainRuleError(f"volume {volume.name} is {volume.state.value}, not Resizing")
        return ResizeVolume(volume=volume_ref(scope, volume),
                            capacity_bytes=volume.requested_size_bytes)

    def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
        resized = msgspec.json.decode(result, type=VolumeResized)
        volume = scope.get(need(plan_ref(ctx).volume_id, "volume_id"), Volume)
        if volume.state is not VolumeState.RESIZING:
            raise DomainRuleError(f"volume {volume.name} is {volume.state.value}, not Resizing")
        if resized.capacity_bytes < (volume.requested_size_bytes or 0):
            raise Refusal(f"volume {volume.name} is {resized.capacity_bytes} bytes, asked "
                          f"{volume.requested_size_bytes}", retryable=False,
                          code="resize_short")
        volume.resized()


class ResizeEnded:
    """volume.resize ended: on failure the size and the pool claim are as before."""

    def finished(self, scope: EffectScope, op: Operation,
                 now: datetime) -> list[StartOperation]:
        volume = scope.get(need(operation_ref(op).volume_id, "volume_id"), Volume)
        if op.state is OperationState.SUCCEEDED or volume.state is not VolumeState.RESIZING:
            return []
        if volume.pool_id is not None:
            pool = scope.get(volume.pool_id, PrimaryStoragePool)
            if pool_claim_id(volume.id) in pool.claims:
                pool.resize_claim(pool_claim_id(volume.id), volume.size_bytes)
        volume.resize_failed(why_failed(op)[1])
        return []


VOLUME_EFFECTS = Effects(
    steps={
        # volume.create has its own meaning for the storage steps deploy uses too
        "volume.create:storage.create_pool": EnsurePoolEffect(),
        "volume.create:storage.create_volume": CreateDataVolumeEffect(),
        "volume.create:storage.delete_volume": DeleteDataVolumeEffect(),
        "hypervisor.attach_disk": AttachDiskEffect(),
        "hypervisor.detach_disk": DetachDiskEffect(),
        "storage.resize_volume": ResizeEffect(),
    },
    operations={"volume.create": CreateEnded(), "volume.resize": ResizeEnded()},
)
