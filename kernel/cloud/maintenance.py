"""Host maintenance as an operation: the host's VMs live-migrate away, none is ever stopped.

`host.prepare_maintenance` (see `kernel.cloud.hosts`) moves the host to PrepareForMaintenance
when the command is taken, so placement (the planner, and every claim) leaves it alone from
then on. A host with no VM on it is in Maintenance at once. Otherwise the command starts a
`host.prepare_maintenance` operation on the host:

    hypervisor.report_power on the host  ─(ends)─>  one vm.migrate per Running VM

The report changes nothing: like CloudStack's MaintainCommand, it makes sure the host's
hypervisor answers before anything moves (a host that does not answer ends in
ErrorInMaintenance, its VMs untouched). When it succeeds, the operation's `finished` hook
builds one `vm.migrate` (`kernel.cloud.vm_moves.migrate_factory`, the planner choosing each
destination with this host avoided) per VM Running on the host, records them on the Host
(`EvacuationStarted`), and the engine accepts them all in that same transaction. (An
operation factory returns one operation; follow-ups of an ending operation may be many: that
is why the migrations hang off an operation rather than off the command.)

Every `vm.migrate` that ends is also seen by `MigrationCounted` (after `MigrateEnded` has
settled its claims; `Effects.__or__` runs both hooks): if it was one of the host's, the host
records whether its VM left (`VmEvacuated`) or still runs there (`EvacuationFailed`: a failed
migration leaves the VM running where it was). When none is moving any more the host is in
Maintenance, or in ErrorInMaintenance if anything stayed. Everything comes from the log: the
Host's events name its migrations, so a restarted kernel carries on.

What CloudStack does and this does too:

* Stopped VMs have no domain and hold no place on the host (their `last_host_id` only says
  where they ran); they need no move, and their next start is planned on an Enabled host.
* A VM in a transition on the host (Starting, Stopping, Migrating from or to it) refuses the
  command: prepare again when it settled. One that entered a transition before its migration
  was due is reported, not waited for (ErrorInMaintenance; prepare again).
* A VM whose volumes cannot follow it (host-local storage, volumes in two clusters) refuses
  the command: maintenance never stops a VM to get it off the host.
* Cancel (`host.cancel_maintenance`, at any point) brings the host back to Enabled. Migrations
  that have not started (waiting behind another operation on their VM) are cancelled; those
  already running go on to their end, as the sagas they are: undoing a live migration half
  way moves the VM twice. Either way every VM ends Running, on this host or another one.
"""

from datetime import datetime
from uuid import UUID

from aggregates.entity_queue import EntityQueue
from aggregates.errors import DomainRuleError, KernelError, NotFoundError
from aggregates.host import Host, HostResourceState
from aggregates.operation import Operation, OperationState
from aggregates.plan import Plan, PlannedStep, RetryPolicy
from aggregates.vm import VirtualMachine, VmState
from kernel.cloud.vm_effects import operation_ref, why_failed
from kernel.cloud.vm_moves import MigrateVm, migrate_factory
from kernel.cloud.volumes import Reader, look
from kernel.effects import Effects, EffectScope
from kernel.operation_commands import StartOperation
from kernel.steps.hypervisor import ReportPower
from kernel.unit_of_work import UnitOfWork

PREPARE_KIND = "host.prepare_maintenance"
# The host must answer within about half a minute before its VMs are moved.
REPORT_RETRY = RetryPolicy(max_attempts=3, initial_delay=1.0, max_delay=10.0, jitter=0.2)
_NOT_STARTED = (OperationState.ACCEPTED, OperationState.WAITING)


def vms_on(reader: Reader, host: Host) -> list[VirtualMachine]:
    """The VMs holding a place on the host (starting, running, stopping, or migrating from or
    to it), found through its capacity claims."""
    found = []
    for vm_id in dict.fromkeys(vm_id for vm_id, _, _ in host.claims.values()):
        try:
            vm: VirtualMachine = look(reader, vm_id, VirtualMachine, "vm")
        except NotFoundError:
            continue  # a claim of no VM the kernel knows holds no VM on the host
        if vm.on_host and host.id in (vm.host_id, vm.destination_host_id):
            found.append(vm)
    return found


def vms_to_move(uow: UnitOfWork, host: Host, now: datetime) -> list[VirtualMachine]:
    """The Running VMs maintenance moves away; refused (nothing written) while a VM of the
    host is in a transition, or if one cannot leave it."""
    moving = []
    for vm in vms_on(uow, host):
        if vm.state is not VmState.RUNNING or vm.host_id != host.id:
            raise DomainRuleError(f"vm {vm.name} is {vm.state.value} on host {host.name}: "
                                  "prepare maintenance again when it settled")
        migrate_factory(uow, MigrateVm(vm_id=vm.id), now)  # refuses a VM that cannot move
        moving.append(vm)
    return moving


def prepare_operation(host: Host, operation_id: UUID) -> StartOperation:
    """The host.prepare_maintenance operation: the host answers, then its VMs move."""
    report = PlannedStep.of(ReportPower(host_uri=host.uri), retry=REPORT_RETRY,
                            deadline_seconds=60.0)
    return StartOperation(kind=PREPARE_KIND, operation_id=operation_id,
                          plan=Plan(steps=(report,)), entity_ids=(host.id,))


def withdraw_waiting(uow: UnitOfWork, operation_ids: list[UUID], reason: str,
                     now: datetime) -> list[UUID]:
    """Cancel those of a host's migrations that have not started (each waits in its VM's
    queue and holds nothing, so it leaves the line and nothing needs undoing); the ones
    cancelled. (A started one is left alone: only the engine advances a running saga.)"""
    withdrawn = []
    for operation_id in operation_ids:
        op = uow.find(operation_id)
        if not isinstance(op, Operation) or op.state not in _NOT_STARTED:
            continue
        queues = [uow.find(EntityQueue.create_id(e)) for e in op.entity_ids]
        if any(isinstance(q, EntityQueue) and q.holds(op.id) for q in queues):
            continue  # it took some of its entities already: let it run
        op.cancel(reason, now)
        for queue in queues:
            if isinstance(queue, EntityQueue) and queue.is_waiting(op.id):
                queue.release(op.id)
        withdrawn.append(op.id)
    return withdrawn


# --------------------------------------------------------------------------- effects


def _preparing(scope: EffectScope, host_id: UUID) -> Host | None:
    host = scope.peek(host_id, Host)
    if host.resource_state is not HostResourceState.PREPARE_FOR_MAINTENANCE:
        return None
    return host


class PrepareEnded:
    """host.prepare_maintenance ended: the host answered, so its Running VMs start moving
    (follow-up vm.migrate operations); else it is in ErrorInMaintenance, VMs untouched."""

    def finished(self, scope: EffectScope, op: Operation,
                 now: datetime) -> list[StartOperation]:
        host = _preparing(scope, op.entity_ids[0])
        if host is None or host.maintenance.operation_id != op.id:
            return []  # cancelled (or prepared again) meanwhile
        host = scope.get(host.id, Host)
        if op.state is not OperationState.SUCCEEDED:
            host.evacuation_failed(f"host {host.name} did not answer: {why_failed(op)[1]}")
            host.complete_maintenance()
            return []
        specs: dict[UUID, StartOperation] = {}
        stays: list[tuple[UUID, str]] = []
        for vm in vms_on(scope, host):
            if vm.state is not VmState.RUNNING or vm.host_id != host.id:
                stays.append((vm.id, f"vm {vm.name} was {vm.state.value} when it was due to "
                                     "move"))
                continue
            try:
                spec, _ = migrate_factory(scope.uow, MigrateVm(vm_id=vm.id), now)
            except KernelError as e:
                stays.append((vm.id, f"vm {vm.name} cannot move: {e}"))
                continue
            specs[vm.id] = spec
        host.evacuate({spec.operation_id: vm_id for vm_id, spec in specs.items()
                       if spec.operation_id is not None})  # migrate_factory names each
        for vm_id, reason in stays:
            host.evacuation_failed(reason, vm_id=vm_id)
        if not specs:
            host.complete_maintenance()
        return list(specs.values())


class MigrationCounted:
    """vm.migrate ended (its claims settled by `MigrateEnded` first): if it was one of a
    host's maintenance, the host counts it, and completes its maintenance after the last."""

    def finished(self, scope: EffectScope, op: Operation,
                 now: datetime) -> list[StartOperation]:
        try:
            vm = scope.peek(operation_ref(op).vm_id, VirtualMachine)
        except NotFoundError:
            return []
        for host_id in dict.fromkeys((vm.host_id, vm.last_host_id, vm.destination_host_id)):
            if host_id is None:
                continue
            host = _preparing(scope, host_id)
            if host is not None and op.id in host.maintenance.migrations:
                break
        else:
            return []  # not a maintenance migration, or its maintenance was cancelled
        host = scope.get(host.id, Host)
        if vm.on_host and host.id in (vm.host_id, vm.destination_host_id):
            host.evacuation_failed(f"vm {vm.name} still runs here: {why_failed(op)[1]}",
                                   operation_id=op.id)
        else:
            host.vm_evacuated(op.id)
        if not host.maintenance.migrations:
            host.complete_maintenance()
        return []


MAINTENANCE_EFFECTS = Effects(operations={PREPARE_KIND: PrepareEnded(),
                                          "vm.migrate": MigrationCounted()})
