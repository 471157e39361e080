"""What the reconciler does to reality, as ordinary operations (it never touches a host itself).

* `vm.power_on`: a VM stopped behind the kernel's back, with the `restart` policy:
  hypervisor.start on its host. The VM stays Running; the next report shows it on.
* `vm.enforce_stop`: a VM found running that should be stopped, with the `stop` policy:
  hypervisor.stop (forced after a grace time), then hypervisor.undefine, on that host.
* `vm.clean_definition`: the definition a stopped VM left on a host (adopted as stopped, or
  stopped out of band): hypervisor.undefine there, so that no second copy can be started.
* `domain.quarantine`: an unknown domain with the `quarantine` policy: powered off, kept.
* `host.fence`: a Down host whose HA VMs must run elsewhere: every domain powered off
  (hypervisor.fence). Only when it succeeded is it certain that the VMs run nowhere: then they
  are Stopped out of band, their claims given back, and the HA ones started through the
  planner (vm.start). A fence that fails changes nothing: the host's next report decides.

Each step's arguments are complete in the plan, so the steps' ordinary effects (which bind
from the VM's state) are replaced by plain ones for these kinds.
"""

from datetime import datetime
from typing import cast
from uuid import UUID

from aggregates.entity_queue import EntityQueue
from aggregates.errors import NotFoundError
from aggregates.host import Host
from aggregates.operation import Operation, OperationState
from aggregates.plan import Plan, PlannedStep, RetryPolicy
from aggregates.vm import PowerState, VirtualMachine, VmState
from kernel.cloud.vm_effects import release_placement
from kernel.cloud.vms import StartVm, start_factory
from kernel.effects import BaseEffect, Effects, EffectScope
from kernel.operation_commands import StartOperation
from kernel.steps.hypervisor import FenceHost, StartDomain, StopDomain, UndefineDomain
from kernel.unit_of_work import UnitOfWork

ACTION_RETRY = RetryPolicy(max_attempts=3, initial_delay=0.5, max_delay=5.0, jitter=0.2)
FENCE_RETRY = RetryPolicy(max_attempts=3, initial_delay=1.0, max_delay=10.0, jitter=0.2)
STOP_GRACE_SECONDS = 30.0


def _operation(kind: str, steps: list[PlannedStep], entity_id: UUID) -> StartOperation:
    return StartOperation(kind=kind, plan=Plan(steps=tuple(steps)), entity_ids=(entity_id,))


def power_on(vm_id: UUID, host_uri: str) -> StartOperation:
    """Start a VM's domain again where it is."""
    return _operation("vm.power_on", [PlannedStep.of(
        StartDomain(vm_id=vm_id, host_uri=host_uri), retry=ACTION_RETRY)], vm_id)


def enforce_stop(vm_id: UUID, host_uri: str) -> StartOperation:
    """Stop and undefine a domain that should not run there."""
    stop = PlannedStep.of(StopDomain(vm_id=vm_id, host_uri=host_uri,
                                     force_after_seconds=STOP_GRACE_SECONDS),
                          retry=ACTION_RETRY, deadline_seconds=STOP_GRACE_SECONDS + 60)
    undefine = PlannedStep.of(UndefineDomain(vm_id=vm_id, host_uri=host_uri),
                              depends_on=(stop.step_id,), retry=ACTION_RETRY)
    return _operation("vm.enforce_stop", [stop, undefine], vm_id)


def clean_definition(vm_id: UUID, host_uri: str) -> StartOperation:
    """Remove a stopped VM's leftover definition from a host."""
    return _operation("vm.clean_definition", [PlannedStep.of(
        UndefineDomain(vm_id=vm_id, host_uri=host_uri), retry=ACTION_RETRY)], vm_id)


def quarantine(entity_id: UUID, domain_uuid: UUID, host_uri: str) -> StartOperation:
    """Power off an unknown domain and keep it."""
    return _operation("domain.quarantine", [PlannedStep.of(
        StopDomain(vm_id=domain_uuid, host_uri=host_uri, force_after_seconds=STOP_GRACE_SECONDS),
        retry=ACTION_RETRY, deadline_seconds=STOP_GRACE_SECONDS + 60)], entity_id)


def fence(host: Host) -> StartOperation:
    """Make sure nothing runs on a Down host any more."""
    return _operation("host.fence", [PlannedStep.of(
        FenceHost(host_uri=host.uri), retry=FENCE_RETRY, deadline_seconds=120.0)], host.id)


def is_idle(scope: EffectScope, entity_id: UUID) -> bool:
    """Whether no operation holds the entity (its state is settled, not in flight)."""
    try:
        queue: object = scope.peek(EntityQueue.create_id(entity_id))
    except NotFoundError:
        return True
    return not (isinstance(queue, EntityQueue) and queue.is_busy)


def running_elsewhere(vm: VirtualMachine, host_id: UUID) -> UUID | None:
    """The host other than `host_id` a report last saw the VM running on, if any."""
    if vm.power_state is PowerState.ON and vm.power_host_id not in (None, host_id):
        return vm.power_host_id
    return None


def restart_elsewhere(scope: EffectScope, vm: VirtualMachine, reason: str, now: datetime, *,
                      start: bool) -> list[StartOperation]:
    """A Running VM that certainly runs nowhere: Stopped, its claims given back, and (with
    `start`) started again through the planner."""
    release_placement(scope, vm)
    vm.stopped_out_of_band(reason)
    if not start:
        return []
    # the scope reads as a unit of work does (get by id): the start plan is built the same way
    spec, _accepted = start_factory(cast(UnitOfWork, scope), StartVm(vm_id=vm.id), now)
    return [spec]


class FenceEnded:
    """host.fence ended: if it succeeded, the host's VMs are stopped, and the HA ones start
    elsewhere; if not, nothing changes."""

    def finished(self, scope: EffectScope, op: Operation,
                 now: datetime) -> list[StartOperation]:
        if op.state is not OperationState.SUCCEEDED:
            return []
        host = scope.get(op.entity_ids[0], Host)
        follow_ups: list[StartOperation] = []
        for vm_id in dict.fromkeys(vm for vm, _cpu, _mem in host.claims.values()):
            vm: object = scope.peek(vm_id)
            if not isinstance(vm, VirtualMachine) or vm.state is not VmState.RUNNING \
                    or vm.host_id != host.id or not is_idle(scope, vm.id) \
                    or running_elsewhere(vm, host.id) is not None:
                continue  # busy, or seen running on another host: the reports settle it
            follow_ups += restart_elsewhere(scope, scope.get(vm.id, VirtualMachine),
                                            f"host {host.name} is down and was fenced", now,
                                            start=vm.ha_enabled)
        return follow_ups


_PLAIN = BaseEffect()
REALITY_EFFECTS = Effects(
    steps={"vm.power_on:hypervisor.start": _PLAIN, "vm.enforce_stop:hypervisor.stop": _PLAIN,
           "vm.enforce_stop:hypervisor.undefine": _PLAIN,
           "vm.clean_definition:hypervisor.undefine": _PLAIN,
           "domain.quarantine:hypervisor.stop": _PLAIN, "host.fence:hypervisor.fence": _PLAIN},
    operations={"host.fence": FenceEnded()})
