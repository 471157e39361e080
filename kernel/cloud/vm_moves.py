"""VM reboot and migration as step plans, with their effects.

* `vm.reboot` (a Running VM): hypervisor.reboot on its host. The VM stays Running either way;
  a reboot changes nothing that can be undone.
* `vm.migrate` (a Running VM), to `host_id` or to the host the planner proposes with the VM's
  current host avoided, among the hosts that reach every pool of its volumes:

      [planner.plan ─>] per NIC: networkelement.implement ─> networkelement.prepare (undo:
      release) ─> hypervisor.migrate (undo: migrate back) ─> per NIC: networkelement.release
      on the source (undo: prepare there again)

  The destination's capacity is claimed on its Host aggregate (one claim per operation) and
  the VM is Migrating: when the command is taken if the host is given (a full host refuses the
  command), else in planner.plan's effect (a full host is avoided and planned again). On
  success the VM runs on the destination, its claims on the source are given back and its
  NICs' DHCP/DNS entries are gone from the source; the volumes keep the host whose pool holds
  them (`Volume.locate`). On failure the destination claim and entries are given back and the
  VM runs where it was. The NIC steps before the move are those of a start, bound to the
  destination host (`OnDestination`); the releases after it are bound to the source
  (`OnSource`). In this operation `networkelement.prepare` and `release` each mean one host
  going forward and the other as an undo (`ByPhase`).

Why the source releases are in the plan, and compensate like any step (see `SOURCE_RETRY`):
the operation stays one saga: Succeeded means the VM runs on the destination and the source
holds nothing of it, anything less is rolled back as a whole. A release is idempotent (an
entry or network already gone is success) and fails only while the source's libvirt cannot be
reached, so it is retried for about 40 minutes. If it still fails (or the operation is
cancelled meanwhile), the compensations put back the entries already released on the source,
move the VM back and release the destination's: the VM is never left on a source without its
entries. If the source stays unreachable, moving back fails too and the operation ends Failed
with the VM running on the destination; `MigrateEnded` then settles the claims where the VM
runs. A cleanup operation of its own, started on success, would never undo a completed move,
but it would hold the VM after the migration Succeeded (a `vm.migrate` to a given host sent
then is refused as busy), and whoever waited for the migration would not learn that the
cleanup failed.
"""

from datetime import datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

import msgspec

from aggregates.errors import CapacityError, DomainRuleError, NotFoundError, ValidationError
from aggregates.host import Host
from aggregates.nic import Nic
from aggregates.offering import ServiceOffering
from aggregates.operation import Operation, OperationState
from aggregates.plan import Plan, PlannedStep, RetryPolicy
from aggregates.storage_pool import PrimaryStoragePool
from aggregates.vm import VirtualMachine, VmState
from aggregates.volume import Volume
from kernel.cloud.nics import (
    ELEMENT_RETRY,
    ImplementElementEffect,
    NicRef,
    PrepareNicEffect,
    ReleaseEntriesEffect,
)
from kernel.cloud.vm_effects import HOST_FULL, why_failed
from kernel.cloud.vms import HYPERVISOR_RETRY, PLAN_RETRY, VmAccepted, VmRef, reaches
from kernel.cloud.volumes import bound_step, look, require_idle
from kernel.commands import Command
from kernel.effects import BaseEffect, Effect, Effects, EffectScope, Refusal, StepContext
from kernel.operation_commands import StartOperation
from kernel.steps.hypervisor import Migrated, MigrateDomain, RebootDomain
from kernel.steps.planner import Placement, PlanPlacement
from kernel.unit_of_work import UnitOfWork

# Releasing entries on the source is retried for about 40 minutes (1 s doubling to 5 min,
# 16 attempts) before the migration is rolled back: see the module's docstring.
SOURCE_RETRY = RetryPolicy(max_attempts=16, initial_delay=1.0, max_delay=300.0, jitter=0.2)


class RebootVm(Command, frozen=True, kw_only=True, tag="vm.reboot"):
    """Reboot a Running VM on its host."""

    vm_id: UUID


class MigrateVm(Command, frozen=True, kw_only=True, tag="vm.migrate"):
    """Move a Running VM to another host: `host_id`, or the one the planner proposes."""

    vm_id: UUID
    host_id: UUID | None = None


def migration_claim_id(operation_id: UUID) -> UUID:
    """The destination claim of a migration: one per operation."""
    return uuid5(NAMESPACE_URL, f"cloudkernel:migration:{operation_id}")


def _running_vm(uow: UnitOfWork, vm_id: UUID, what: str) -> VirtualMachine:
    vm: VirtualMachine = look(uow, vm_id, VirtualMachine, "vm")
    if vm.state is not VmState.RUNNING or vm.host_id is None:
        raise DomainRuleError(f"vm {vm.name} is {vm.state.value}: only a Running VM {what}")
    return vm


def reboot_factory(uow: UnitOfWork, command: RebootVm,
                   now: datetime) -> tuple[StartOperation, VmAccepted]:
    """vm.reboot: reboot the domain where it runs."""
    vm = _running_vm(uow, command.vm_id, "reboots")
    step = bound_step("hypervisor", "reboot", VmRef(vm_id=vm.id), retry=HYPERVISOR_RETRY)
    operation_id = uuid4()
    return (StartOperation(kind="vm.reboot", operation_id=operation_id,
                           plan=Plan(steps=(step,)), entity_ids=(vm.id,)),
            VmAccepted(operation_id=operation_id, vm_id=vm.id))


def _pools_of(uow: UnitOfWork, vm: VirtualMachine) -> list[PrimaryStoragePool]:
    pools = []
    for volume_id in vm.disks.values():
        volume: Volume = look(uow, volume_id, Volume, "volume")
        if volume.pool_id is not None:
            pools.append(look(uow, volume.pool_id, PrimaryStoragePool, "storage pool"))
    return pools


def _cluster_scope(vm: VirtualMachine, pools: list[PrimaryStoragePool]) -> UUID | None:
    """The one cluster the VM may move in (None: the zone), from its volumes' pools."""
    if any(p.host_id is not None for p in pools):
        raise DomainRuleError(f"vm {vm.name} has a volume on host-local storage: it cannot "
                              "move to another host")
    clusters = {p.cluster_id for p in pools if p.cluster_id is not None}
    if len(clusters) > 1:
        raise DomainRuleError(f"vm {vm.name} has volumes in {len(clusters)} clusters: no host "
                              "reaches them all")
    return next(iter(clusters), None)


def migrate_factory(uow: UnitOfWork, command: MigrateVm,
                    now: datetime) -> tuple[StartOperation, VmAccepted]:
    """vm.migrate: claim the given host now, or plan one; then move the domain."""
    vm = _running_vm(uow, command.vm_id, "migrates")
    offering: ServiceOffering = look(uow, vm.service_offering_id, ServiceOffering,
                                     "service offering")
    pools = _pools_of(uow, vm)
    cluster_id = _cluster_scope(vm, pools)
    operation_id = uuid4()
    ref = VmRef(vm_id=vm.id)
    steps: list[PlannedStep] = []
    if command.host_id is not None:
        require_idle(uow, vm.id, f"vm {vm.name}")
        host: Host = look(uow, command.host_id, Host, "host")
        if host.id == vm.host_id:
            raise ValidationError(f"host_id: vm {vm.name} already runs on {host.name}")
        if host.zone_id != vm.zone_id or not all(reaches(host, p) for p in pools):
            raise ValidationError(f"host_id: host {host.name} cannot reach the storage of vm "
                                  f"{vm.name}")
        host.claim(migration_claim_id(operation_id), vm.id, offering.cpu_cores,
                   offering.memory_mib)
        vm.migrate(host.id)
    else:
        steps.append(PlannedStep.of(
            PlanPlacement(vm_id=vm.id, account=vm.account, zone_id=vm.zone_id,
                          cpu_cores=offering.cpu_cores, memory_mib=offering.memory_mib,
                          cpu_mhz=offering.cpu_mhz, host_tags=tuple(offering.host_tags),
                          cluster_id=cluster_id),
            retry=PLAN_RETRY, deadline_seconds=30.0))
    planned = tuple(s.step_id for s in steps)
    ready: list[UUID] = list(planned)
    nic_refs = [NicRef(vm_id=vm.id, nic_id=vm.nics[device_id],
                       network_id=look(uow, vm.nics[device_id], Nic, "nic").network_id,
                       device_id=device_id) for device_id in sorted(vm.nics)]
    for nic_ref in nic_refs:  # on the destination
        element = bound_step("networkelement", "implement", nic_ref, depends_on=planned,
                             retry=ELEMENT_RETRY)
        prepare = bound_step("networkelement", "prepare", nic_ref,
                             depends_on=(element.step_id,), retry=ELEMENT_RETRY,
                             undo="networkelement.release")
        steps += [element, prepare]
        ready.append(prepare.step_id)
    move = bound_step("hypervisor", "migrate", ref, retry=HYPERVISOR_RETRY, deadline=600.0,
                      depends_on=tuple(ready), undo="hypervisor.migrate")
    steps.append(move)
    steps += [bound_step("networkelement", "release", nic_ref, depends_on=(move.step_id,),
                         retry=SOURCE_RETRY, undo="networkelement.prepare")
              for nic_ref in nic_refs]  # on the source, once the VM left it
    return (StartOperation(kind="vm.migrate", operation_id=operation_id,
                           plan=Plan(steps=tuple(steps)), entity_ids=(vm.id,)),
            VmAccepted(operation_id=operation_id, vm_id=vm.id))


# --------------------------------------------------------------------------- effects


def _host_uri(scope: EffectScope, host_id: UUID | None, what: str) -> str:
    if host_id is None:
        raise NotFoundError(f"the vm has no {what} host")
    return scope.peek(host_id, Host).uri


class RebootEffect(BaseEffect):
    """hypervisor.reboot: on the VM's host, while it is Running."""

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        vm = scope.peek(ctx.plan_args(VmRef).vm_id, VirtualMachine)
        if vm.state is not VmState.RUNNING:
            raise DomainRuleError(f"vm {vm.name} is {vm.state.value}: only a Running VM "
                                  "reboots")
        return RebootDomain(vm_id=vm.id, host_uri=_host_uri(scope, vm.host_id, "current"))


class OnSource(BaseEffect):
    """A NIC step of vm.migrate on the source host, the one the VM left: its entries released
    there once it moved, or put back (that release undone) before it moves back."""

    def __init__(self, inner: Effect) -> None:
        self.inner = inner

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        bound = self.inner.bind(scope, ctx)
        vm = scope.peek(ctx.plan_args(NicRef).vm_id, VirtualMachine)
        source = vm.last_host_id
        if bound is None or vm.state is not VmState.RUNNING or vm.host_id is None \
                or vm.destination_host_id is not None or source in (None, vm.host_id):
            raise DomainRuleError(f"vm {vm.name} is {vm.state.value}: it left no host")
        return msgspec.structs.replace(bound, host_uri=_host_uri(scope, source, "source"))


class ByPhase(BaseEffect):
    """A step kind of vm.migrate that works on one host going forward and on the other as an
    undo (a prepare on the destination is undone there; a release on the source too)."""

    def __init__(self, *, forward: Effect, undo: Effect) -> None:
        self.forward, self.undo = forward, undo

    def _pick(self, ctx: StepContext) -> Effect:
        return self.undo if ctx.compensating else self.forward

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        """The chosen effect's arguments."""
        return self._pick(ctx).bind(scope, ctx)

    def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
        """The chosen effect's record of a success."""
        self._pick(ctx).succeeded(scope, ctx, result)

    def failed(self, scope: EffectScope, ctx: StepContext, error_code: str,
               message: str) -> None:
        """The chosen effect's record of a failure."""
        self._pick(ctx).failed(scope, ctx, error_code, message)


class OnDestination(BaseEffect):
    """A NIC step of vm.migrate: bound as for a start, but on the destination host (the one
    the VM moves to, or, once moved back, the one it left)."""

    def __init__(self, inner: Effect) -> None:
        self.inner = inner

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        bound = self.inner.bind(scope, ctx)
        vm = scope.peek(ctx.plan_args(NicRef).vm_id, VirtualMachine)
        target = vm.destination_host_id or vm.last_host_id
        if bound is None or vm.host_id is None or target in (None, vm.host_id):
            raise DomainRuleError(f"vm {vm.name} is {vm.state.value}: it is moving to no host")
        return msgspec.structs.replace(bound, host_uri=_host_uri(scope, target, "destination"))

    def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
        """The inner effect's record (a network made on the destination is recorded)."""
        self.inner.succeeded(scope, ctx, result)


class MigratePlanEffect(BaseEffect):
    """planner.plan of vm.migrate: bound with the current host avoided; a success claims the
    destination and the VM is Migrating."""

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        args = ctx.plan_args(PlanPlacement)
        vm = scope.peek(args.vm_id, VirtualMachine)
        if vm.state is not VmState.RUNNING or vm.host_id is None:
            raise DomainRuleError(f"vm {vm.name} is {vm.state.value}: only a Running VM "
                                  "migrates")
        avoid = tuple(dict.fromkeys((*vm.avoid_hosts, vm.host_id)))
        return msgspec.structs.replace(args, avoid_hosts=avoid)

    def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
        args = ctx.bound_args(PlanPlacement)
        placement = msgspec.json.decode(result, type=Placement)
        vm = scope.get(args.vm_id, VirtualMachine)
        host = scope.get(placement.host_id, Host)
        if vm.state is not VmState.RUNNING or host.id == vm.host_id:
            raise DomainRuleError(f"vm {vm.name} is {vm.state.value} on {vm.host_id}: cannot "
                                  f"migrate to {host.name}")
        try:
            host.claim(migration_claim_id(ctx.operation.id), vm.id, args.cpu_cores,
                       args.memory_mib)
        except (CapacityError, DomainRuleError) as e:
            # the planner's index was behind: plan again without this host
            def avoid(lesson: EffectScope, host_id: UUID = host.id, why: str = str(e)) -> None:
                lesson.get(args.vm_id, VirtualMachine).avoid_host(host_id, why)

            raise Refusal(f"{e} (migration refused on {host.name})", retryable=True,
                          code=HOST_FULL, then=avoid) from e
        vm.migrate(host.id)


class MigrateEffect(BaseEffect):
    """hypervisor.migrate: the VM runs on its destination (or, undone, back on its source)."""

    def bind(self, scope: EffectScope, ctx: StepContext) -> msgspec.Struct | None:
        vm = scope.peek(ctx.plan_args(VmRef).vm_id, VirtualMachine)
        if ctx.compensating:  # back from where the forward step put it
            source, target = vm.host_id, vm.last_host_id
        elif vm.state is not VmState.MIGRATING:
            raise DomainRuleError(f"vm {vm.name} is {vm.state.value}, not Migrating")
        else:
            source, target = vm.host_id, vm.destination_host_id
        # a VM migrates only to a host that reaches every pool of its volumes (checked when
        # the target was chosen): the disks are on storage both hosts share
        return MigrateDomain(vm_id=vm.id, source_uri=_host_uri(scope, source, "source"),
                             target_uri=_host_uri(scope, target, "destination"),
                             shared_storage=True)

    def succeeded(self, scope: EffectScope, ctx: StepContext, result: msgspec.Raw) -> None:
        moved = msgspec.json.decode(result, type=Migrated)
        vm = scope.get(ctx.plan_args(VmRef).vm_id, VirtualMachine)
        if ctx.compensating:
            if vm.state is not VmState.RUNNING or vm.last_host_id in (None, vm.host_id):
                raise DomainRuleError(f"vm {vm.name} is {vm.state.value}: cannot record it "
                                      "moved back")
            assert vm.last_host_id is not None
            vm.migrate(vm.last_host_id)
            vm.migrated()
            return
        target = vm.destination_host_id
        if vm.state is not VmState.MIGRATING or target is None or \
                scope.peek(target, Host).uri != moved.host_uri:
            raise DomainRuleError(f"vm {vm.name} is {vm.state.value}: cannot record it moved "
                                  f"to {moved.host_uri}")
        source = vm.host_id
        volumes = [scope.get(v, Volume) for v in vm.disks.values()]
        for volume in volumes:  # a pool the source held stays reached through it
            if volume.host_id is None and source is not None:
                volume.locate(source)
        vm.migrated()


class MigrateEnded:
    """vm.migrate ended: the source claims go if the VM runs on the destination (it succeeded,
    or failed after the move and could not move back), else the destination claim."""

    def finished(self, scope: EffectScope, op: Operation,
                 now: datetime) -> list[StartOperation]:
        ref = next(msgspec.json.decode(r.args, type=VmRef) for r in op.forward_steps()
                   if r.subsystem == "hypervisor")
        vm = scope.get(ref.vm_id, VirtualMachine)
        claim_id = migration_claim_id(op.id)
        moved = vm.state is VmState.RUNNING and vm.host_id is not None \
            and claim_id in scope.peek(vm.host_id, Host).claims
        if op.state is OperationState.SUCCEEDED or moved:
            if vm.last_host_id is not None:
                source = scope.get(vm.last_host_id, Host)
                for other, (claim_vm, _, _) in list(source.claims.items()):
                    if claim_vm == vm.id and other != claim_id:
                        source.release(other)
            return []
        for host_id in {vm.destination_host_id, vm.host_id, vm.last_host_id} - {None}:
            assert host_id is not None
            host = scope.get(host_id, Host)
            if claim_id in host.claims:
                host.release(claim_id)
        if vm.state is VmState.MIGRATING:
            vm.migration_failed(why_failed(op)[1])
        return []


VM_MOVE_COMMANDS: dict[type[Any], Any] = {RebootVm: reboot_factory, MigrateVm: migrate_factory}
VM_MOVE_EFFECTS = Effects(
    steps={"hypervisor.reboot": RebootEffect(), "vm.migrate:planner.plan": MigratePlanEffect(),
           "hypervisor.migrate": MigrateEffect(),
           "vm.migrate:networkelement.implement": OnDestination(ImplementElementEffect()),
           "vm.migrate:networkelement.prepare": ByPhase(
               forward=OnDestination(PrepareNicEffect()), undo=OnSource(PrepareNicEffect())),
           "vm.migrate:networkelement.release": ByPhase(
               forward=OnSource(ReleaseEntriesEffect()),
               undo=OnDestination(ReleaseEntriesEffect()))},
    operations={"vm.migrate": MigrateEnded()},
)
