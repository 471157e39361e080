"""The effects of the VM operations' steps: what each outcome records, and the bound arguments."""

from datetime import datetime
from uuid import UUID

import msgspec

from aggregates.errors import CapacityError, DomainRuleError, NotFoundError
from aggregates.host import Host
from aggregates.image_store import ImageStore
from aggregates.nic import Nic
from aggregates.offering import ServiceOffering
from aggregates.operation import Operation, OperationState
from aggregates.storage_pool import PrimaryStoragePool
from aggregates.template import Template
from aggregates.vm import VirtualMachine, VmState
from aggregates.volume import Volume, VolumeState
from kernel.cloud.nics import vm_host
from kernel.cloud.storage_pools import Directory
from kernel.cloud.vms import (
    MAX_DEPLOY_HOSTS,
    VmRef,
    choose_pool,
    deploy_plan,
    detach_data_volumes,
    expunge_operation,
    new_root_volume,
    placement_claim_id,
    pool_claim_id,
    pool_path,
    store_directory,
    template_file,
)
from kernel.cloud.volumes import storage_host
from kernel.effects import BaseEffect, Effects, EffectScope, Refusal, StepContext
from kernel.operation_commands import StartOperation
from kernel.steps.hypervisor import (
    DefineDomain,
    DiskSpec,
    DomainDefined,
    NicSpec,
    StartDomain,
    StopDomain,
    UndefineDomain,
)
from kernel.steps.network import libvirt_network_name
from kernel.steps.planner import Placement, PlanPlacement
from kernel.steps.storage import CreateVolume, DeleteVolume, VolumeInfo, VolumeRef

HOST_FULL = "host_full"
POOLS_AGE = 1.0  # seconds a deploy may choose among the pools of an earlier look


def _ref(ctx: StepContext) -> VmRef:
    return ctx.plan_args(VmRef)


def _volume_id(ctx: StepContext) -> UUID:
    volume_id = _ref(ctx).volume_id
    if volume_id is None:
        raise NotFoundError(f"step {ctx.kind} of operation {ctx.operation.id} names no volume")
    return volume_id


def _volume_ref(scope: EffectScope, host: Host, volume: Volume) -> VolumeRef:
    if volume.pool_id is None:
        raise NotFoundError(f"volume {volume.name} has no pool yet")
    pool = scope.peek(volume.pool_id, PrimaryStoragePool)
    return VolumeRef(host_uri=host.uri, pool=pool.pool_name, name=f"{volume.id}.qcow2")


class PlanEffect(BaseEffect):
    """planner.plan: bound with the VM's avoid list; a success claims the host's capacity."""

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        args = ctx.plan_args(PlanPlacement)
        vm = scope.peek(args.vm_id, VirtualMachine)
        return msgspec.structs.replace(args, avoid_hosts=tuple(vm.avoid_hosts))

    def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
        args = ctx.bound_args(PlanPlacement)
        placement = msgspec.json.decode(result, type=Placement)
        vm = scope.get(args.vm_id, VirtualMachine)
        if vm.state not in (VmState.ALLOCATED, VmState.STOPPED):
            raise Refusal(f"vm {vm.name} is {vm.state.value}: it cannot be placed",
                          retryable=False, code="invalid_transition")
        host = scope.get(placement.host_id, Host)
        try:
            host.claim(placement_claim_id(ctx.operation.id), args.vm_id, args.cpu_cores,
                       args.memory_mib)
        except (CapacityError, DomainRuleError) as e:
            # The planner's index was behind: plan again without this host.
            def avoid(lesson: EffectScope, host_id: UUID = host.id, why: str = str(e)) -> None:
                lesson.get(args.vm_id, VirtualMachine).avoid_host(host_id, why)

            raise Refusal(f"{e} (placement refused on {host.name})", retryable=True,
                          code=HOST_FULL, then=avoid) from e
        vm.start(host.id)


class CreateVolumeEffect(BaseEffect):
    """storage.create_volume: from the template's file, on a pool of the VM's host (chosen
    here, and made sure of by the same step); records the volume Ready, attached."""

    def __init__(self, pools: Directory) -> None:
        self.pools = pools

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        ref = _ref(ctx)
        vm = scope.peek(ref.vm_id, VirtualMachine)
        volume = scope.peek(_volume_id(ctx), Volume)
        host = vm_host(scope, vm)
        pool_path_ = None
        if volume.pool_id is None:  # a deploy: choose the pool now
            try:
                pool = choose_pool(scope, host, volume.size_bytes, self.pools.ids(POOLS_AGE))
            except Refusal:  # perhaps a pool added since the last look
                pool = choose_pool(scope, host, volume.size_bytes, self.pools.ids())
            pool_path_ = pool_path(pool)
            target = VolumeRef(host_uri=host.uri, pool=pool.pool_name,
                               name=f"{volume.id}.qcow2")
        else:
            target = _volume_ref(scope, host, volume)
        template_path = None
        if volume.template_id is not None:
            template = scope.peek(volume.template_id, Template)
            if template.image_store_id is None:
                raise NotFoundError(f"template {template.name} is in no image store")
            store = scope.peek(template.image_store_id, ImageStore)
            template_path = f"{store_directory(store)}/{template_file(template)}"
        return CreateVolume(volume=target, capacity_bytes=volume.size_bytes,
                            template_path=template_path, pool_path=pool_path_)

    def _pool_named(self, scope: EffectScope, name: str) -> UUID:
        for max_age in (POOLS_AGE, 0.0):
            for pool_id in self.pools.ids(max_age):
                if scope.peek(pool_id, PrimaryStoragePool).pool_name == name:
                    return pool_id
        raise NotFoundError(f"no primary storage pool {name}")

    def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
        info = msgspec.json.decode(result, type=VolumeInfo)
        ref = _ref(ctx)
        volume = scope.get(_volume_id(ctx), Volume)
        pool_id = volume.pool_id or self._pool_named(scope, info.volume.pool)
        pool = scope.get(pool_id, PrimaryStoragePool)
        if volume.state not in (VolumeState.ALLOCATED, VolumeState.CREATING):
            raise Refusal(f"volume {volume.name} is {volume.state.value}", retryable=False,
                          code="invalid_transition")
        if info.capacity_bytes != volume.size_bytes:  # never record a size it is not
            raise Refusal(f"volume {volume.name} was made {info.capacity_bytes} bytes, not "
                          f"the {volume.size_bytes} recorded", retryable=False,
                          code="size_mismatch")
        try:  # the claim first: it refuses before anything is changed
            pool.claim(pool_claim_id(volume.id), volume.id, volume.size_bytes)
        except CapacityError as e:
            raise Refusal(str(e), retryable=False, code="pool_full") from e
        if volume.state is VolumeState.ALLOCATED:
            volume.create(pool.id)
        volume.created(info.path)
        volume.attach(ref.vm_id, 0)
        volume.attached()
        scope.get(ref.vm_id, VirtualMachine).attach_disk(volume.id, 0)


class DeleteVolumeEffect(BaseEffect):
    """storage.delete_volume (a compensation, or destroy): the volume is gone from its pool."""

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        volume = scope.peek(_volume_id(ctx), Volume)
        # The host whose pool holds it (after a migration, not the VM's new host).
        return DeleteVolume(volume=_volume_ref(scope, storage_host(scope, volume), volume))

    def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
        retire_volume(scope, _volume_id(ctx))


def retire_volume(scope: EffectScope, volume_id: UUID) -> None:
    """The volume's storage is gone: give the pool back and record it Expunged."""
    volume = scope.get(volume_id, Volume)
    if volume.pool_id is not None:
        pool = scope.get(volume.pool_id, PrimaryStoragePool)
        if pool_claim_id(volume.id) in pool.claims:
            pool.release(pool_claim_id(volume.id))
    if volume.vm_id is not None:
        scope.get(volume.vm_id, VirtualMachine).detach_disk(volume.id)
        if volume.state is VolumeState.READY:
            volume.detach()
    if volume.state is VolumeState.CREATING:
        volume.creation_failed("its operation was rolled back")
    if volume.state in (VolumeState.ALLOCATED, VolumeState.READY):
        volume.destroy()
    if volume.state is VolumeState.DESTROY:
        volume.expunge()
    if volume.state is VolumeState.EXPUNGING:
        volume.expunged()


class DefineEffect(BaseEffect):
    """hypervisor.define: the domain from the offering, the VM's disks (and NICs)."""

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        ref = _ref(ctx)
        vm = scope.peek(ref.vm_id, VirtualMachine)
        host = vm_host(scope, vm)
        offering = scope.peek(vm.service_offering_id, ServiceOffering)
        disks = []
        for device_id in sorted(vm.disks):
            volume = scope.peek(vm.disks[device_id], Volume)
            if volume.path is None:
                raise NotFoundError(f"volume {volume.name} has no storage yet")
            disks.append(DiskSpec(path=volume.path, volume_id=volume.id))
        nics = []
        for device_id in sorted(vm.nics):
            nic = scope.peek(vm.nics[device_id], Nic)
            nics.append(NicSpec(mac=nic.mac, network=libvirt_network_name(nic.network_id),
                                nic_id=nic.id))
        return DefineDomain(vm_id=vm.id, name=vm.name, host_uri=host.uri,
                            cpu_cores=offering.cpu_cores, cpu_mhz=offering.cpu_mhz,
                            memory_mib=offering.memory_mib, disks=tuple(disks),
                            nics=tuple(nics), start=_ref(ctx).start_domain)

    def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
        # A domain started for an operation that is stopping (cancelled while this step ran)
        # is undefined by the step's compensation next: the VM never runs, and its deploy or
        # start ends as if the start had not happened (Error, or Stopped), off the host.
        if msgspec.json.decode(result, type=DomainDefined).started \
                and not ctx.operation.stopping:
            scope.get(_ref(ctx).vm_id, VirtualMachine).started()

    def failed(self, scope: EffectScope, ctx: StepContext, error_code: str,
               message: str) -> None:
        vm = scope.get(_ref(ctx).vm_id, VirtualMachine)
        if vm.host_id is not None:
            vm.avoid_host(vm.host_id, f"define failed: {error_code}: {message}")


class UndefineEffect(BaseEffect):
    """hypervisor.undefine: on the VM's host (the one it is on, or was last on)."""

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        vm = scope.peek(_ref(ctx).vm_id, VirtualMachine)
        return UndefineDomain(vm_id=vm.id, host_uri=vm_host(scope, vm).uri)


class StartEffect(BaseEffect):
    """hypervisor.start: the VM runs; a failure makes the planner avoid this host."""

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        vm = scope.peek(_ref(ctx).vm_id, VirtualMachine)
        return StartDomain(vm_id=vm.id, host_uri=vm_host(scope, vm).uri)

    def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
        scope.get(_ref(ctx).vm_id, VirtualMachine).started()

    def failed(self, scope: EffectScope, ctx: StepContext, error_code: str,
               message: str) -> None:
        vm = scope.get(_ref(ctx).vm_id, VirtualMachine)
        if vm.host_id is not None:
            vm.avoid_host(vm.host_id, f"start failed: {error_code}: {message}")


class StopEffect(BaseEffect):
    """hypervisor.stop: the VM is stopped; its claim is given back when the stop op ends."""

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        ref = _ref(ctx)
        vm = scope.peek(ref.vm_id, VirtualMachine)
        return StopDomain(vm_id=vm.id, host_uri=vm_host(scope, vm).uri,
                          force_after_seconds=ref.force_after_seconds)


def why_failed(op: Operation) -> tuple[str, str]:
    """The step kind that stopped the operation and its last error ("", state if none)."""
    step_id = op.failed_step or (op.failure.step_id if op.failure is not None else None)
    if step_id is None:
        return "", op.state.value
    run = op.step(step_id)
    last = run.attempts[-1] if run.attempts else None
    message = f"{last.error_code}: {last.message}" if last is not None else op.state.value
    return f"{run.subsystem}.{run.action}", f"{run.subsystem}.{run.action} {message}"


def operation_ref(op: Operation) -> VmRef:
    """The VM (and root volume) of a VM operation, from its bound steps' plan arguments."""
    for run in op.forward_steps():
        if run.subsystem in ("hypervisor", "storage", "networkelement", "networkguru"):
            # A NicRef names its VM too (VmRef reads only the fields it has).
            return msgspec.json.decode(run.args, type=VmRef)
    raise NotFoundError(f"operation {op.id} ({op.kind}) names no vm")


def release_placement(scope: EffectScope, vm: VirtualMachine) -> None:
    """Give back every capacity claim the VM holds on its host."""
    host_id = vm.host_id or vm.last_host_id
    if host_id is None:
        return
    host = scope.get(host_id, Host)
    for claim_id, (claim_vm, _, _) in list(host.claims.items()):
        if claim_vm == vm.id:
            host.release(claim_id)


class DeployEnded:
    """vm.deploy ended: on failure, free what it took, and retry elsewhere or fail the VM."""

    def finished(self, scope: EffectScope, op: Operation,
                 now: datetime) -> list[StartOperation]:
        ref = operation_ref(op)
        vm_id, volume_id = ref.vm_id, ref.volume_id
        assert volume_id is not None
        vm = scope.get(vm_id, VirtualMachine)
        if op.state is OperationState.SUCCEEDED:
            return []
        release_placement(scope, vm)
        retire_volume(scope, volume_id)
        kind, reason = why_failed(op)
        at_hypervisor = kind.startswith("hypervisor.")
        if at_hypervisor and vm.state is VmState.STARTING \
                and len(vm.avoid_hosts) < MAX_DEPLOY_HOSTS and op.cancel_reason is None:
            if vm.host_id is not None:
                vm.avoid_host(vm.host_id, reason)
            vm.start_failed(reason)
            offering = scope.peek(vm.service_offering_id, ServiceOffering)
            template = scope.peek(vm.template_id, Template)
            old = scope.peek(volume_id, Volume)
            volume = new_root_volume(vm, template, old.size_bytes)
            scope.add(volume)
            return [StartOperation(kind="vm.deploy",
                                   plan=deploy_plan(vm, volume, offering,
                                                    network_ids=ref.network_ids),
                                   entity_ids=(vm.id, volume.id))]
        if vm.state in (VmState.ALLOCATED, VmState.STARTING, VmState.STOPPED):
            vm.fail(f"deploy {op.state.value}: {reason}")
        return []


class StartEnded:
    """vm.start ended: on failure the VM is Stopped again and its claim given back."""

    def finished(self, scope: EffectScope, op: Operation,
                 now: datetime) -> list[StartOperation]:
        vm = scope.get(operation_ref(op).vm_id, VirtualMachine)
        if op.state is not OperationState.SUCCEEDED:
            release_placement(scope, vm)
            if vm.state is VmState.STARTING:
                vm.start_failed(why_failed(op)[1])
        return []


class StopEnded:
    """vm.stop ended: Stopped and off its host, or Running again if the stop failed."""

    def finished(self, scope: EffectScope, op: Operation,
                 now: datetime) -> list[StartOperation]:
        vm = scope.get(operation_ref(op).vm_id, VirtualMachine)
        if op.state is OperationState.SUCCEEDED:
            release_placement(scope, vm)
            vm.stopped()
        elif vm.state is VmState.STOPPING:
            vm.stop_failed(why_failed(op)[1])
        return []


class DestroyEnded:
    """vm.destroy ended: the VM is Destroyed, off its host; its expunge follows, delayed."""

    def finished(self, scope: EffectScope, op: Operation,
                 now: datetime) -> list[StartOperation]:
        ref = operation_ref(op)
        vm = scope.get(ref.vm_id, VirtualMachine)
        if op.state is not OperationState.SUCCEEDED:
            if vm.state is VmState.STOPPING:
                vm.stop_failed(why_failed(op)[1])
            return []
        release_placement(scope, vm)
        if vm.state is VmState.STOPPING:
            vm.stopped()
        vm.destroy()
        if ref.expunge_delay_seconds is None:
            return []
        spec = expunge_operation(scope.uow, vm, ref.expunge_delay_seconds)
        return [] if spec is None else [spec]


class ExpungeEnded:
    """vm.expunge ended: the VM is Expunged (its root disk and addresses are gone, its data
    volumes detached, Ready)."""

    def finished(self, scope: EffectScope, op: Operation,
                 now: datetime) -> list[StartOperation]:
        vm = scope.get(operation_ref(op).vm_id, VirtualMachine)
        if op.state is OperationState.SUCCEEDED and vm.state is VmState.DESTROYED:
            detach_data_volumes(scope, vm)
            vm.expunge()
            vm.expunged()
        return []  # otherwise it stays Destroyed, and may be expunged again


def vm_effects(pools: Directory) -> Effects:
    """The step and operation effects of the VM operations."""
    return Effects(
        steps={
            "planner.plan": PlanEffect(),
            "storage.create_volume": CreateVolumeEffect(pools),
            "storage.delete_volume": DeleteVolumeEffect(),
            "hypervisor.define": DefineEffect(),
            "hypervisor.undefine": UndefineEffect(),
            "hypervisor.start": StartEffect(),
            "hypervisor.stop": StopEffect(),
        },
        operations={"vm.deploy": DeployEnded(), "vm.start": StartEnded(),
                    "vm.stop": StopEnded(), "vm.destroy": DestroyEnded(),
                    "vm.expunge": ExpungeEnded()},
    )
