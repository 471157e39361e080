"""An operation accepted while its entities were busy is planned when it gets them, on the
entities as they are then (issue: two starts of one Stopped VM left it Running on no host's
claims, because the second start, planned on the Stopped VM, failed and released the claim the
first one took)."""

from uuid import UUID

import msgspec

from aggregates.host import Host
from aggregates.operation import Operation, OperationState
from aggregates.vm import VirtualMachine, VmState
from kernel.cloud.vms import DestroyVm, StartVm, StopVm

from .test_vm_deploy import Cloud, deploy


def _stopped_vm(cloud: Cloud) -> UUID:
    vm_id = UUID(deploy(cloud)["vm_id"])
    cloud.run()
    cloud.command(StopVm(vm_id=vm_id))
    cloud.run()
    assert cloud.get(vm_id).state is VmState.STOPPED and cloud.claims() == {}
    return vm_id


def _op(cloud: Cloud, accepted: dict[str, str]) -> Operation:
    op: Operation = cloud.get(UUID(accepted["operation_id"]))
    return op


def test_a_second_start_that_waited_succeeds_with_nothing_to_run_and_keeps_the_claim(
        cloud: Cloud) -> None:
    vm_id = _stopped_vm(cloud)
    first = cloud.command(StartVm(vm_id=vm_id))
    second = cloud.command(StartVm(vm_id=vm_id))  # the VM is busy: it waits, unplanned
    assert _op(cloud, second).state is OperationState.WAITING
    assert _op(cloud, second).planned_on_admission
    steps_before = len(cloud.seen)
    cloud.run()
    vm: VirtualMachine = cloud.get(vm_id)
    assert _op(cloud, first).state is OperationState.SUCCEEDED
    done = _op(cloud, second)
    assert done.state is OperationState.SUCCEEDED and done.started_at is None
    assert "Running already" in done.note
    assert vm.state is VmState.RUNNING and vm.host_id is not None
    host: Host = cloud.get(vm.host_id)
    assert [c[0] for c in host.claims.values()] == [vm_id]  # the first start's claim stays
    # only the first start ran steps
    ran = [m for m in cloud.seen[steps_before:] if m.operation_id == done.id]
    assert ran == []


def test_a_start_that_waited_behind_a_destroy_is_refused_and_undoes_nothing(
        cloud: Cloud) -> None:
    vm_id = _stopped_vm(cloud)
    start = cloud.command(StartVm(vm_id=vm_id))
    destroy = cloud.command(DestroyVm(vm_id=vm_id, expunge=False))  # waits; planned later
    late = cloud.command(StartVm(vm_id=vm_id))  # waits behind both
    cloud.run()
    assert _op(cloud, start).state is OperationState.SUCCEEDED
    # planned when its turn came: the VM was Running then, so it stopped it first
    assert _op(cloud, destroy).state is OperationState.SUCCEEDED
    refused = _op(cloud, late)
    assert refused.state is OperationState.FAILED and refused.started_at is None
    assert refused.failure is not None and refused.failure.step_id is None
    assert "no longer applies" in refused.failure.message
    assert "Destroyed" in refused.failure.message
    assert cloud.get(vm_id).state is VmState.DESTROYED
    assert cloud.claims() == {}


def test_a_waiting_command_is_accepted_with_its_command_and_replanned(cloud: Cloud) -> None:
    vm_id = _stopped_vm(cloud)
    cloud.command(StartVm(vm_id=vm_id))
    waiting = cloud.command(DestroyVm(vm_id=vm_id, expunge=False))
    op = _op(cloud, waiting)
    assert op.command is not None and op.command.actor == "system"
    cloud.run()
    op = _op(cloud, waiting)
    assert op.state is OperationState.SUCCEEDED and op.started_at is not None
    assert [s.action for s in op.plan.steps] == ["stop", "undefine"]  # planned on Running
    assert cloud.get(vm_id).state is VmState.DESTROYED and cloud.claims() == {}


def test_a_batch_of_commands_with_one_for_a_busy_vm_queues_it_and_runs_the_others(
        cloud: Cloud) -> None:
    """Commands that arrive together are saved in one transaction; one whose entities are
    busy is run on its own (it is queued with its command), the others as a batch would."""
    from kernel.command_lane import Request

    busy_vm = _stopped_vm(cloud)
    free_vm = UUID(deploy(cloud, "web-2")["vm_id"])
    cloud.run()
    cloud.command(StartVm(vm_id=busy_vm))  # holds busy_vm until its steps are answered
    batch = [Request(StartVm(vm_id=busy_vm), "b-1", "alice"),
             Request(StopVm(vm_id=free_vm), "b-2", "alice")]
    cloud.engine._run_requests(batch)
    ops = []
    for request in batch:
        assert request.finished and request._error is None, request._error
        assert request._outcome is not None
        ops.append(cloud.get(UUID(msgspec.json.decode(request._outcome.result)["operation_id"])))
    queued, stopping = ops
    assert queued.planned_on_admission and queued.state is OperationState.WAITING
    assert queued.command is not None and queued.command.actor == "alice"
    assert stopping.command is None and stopping.state is OperationState.RUNNING
    cloud.run()
    assert queued.id and cloud.get(queued.id).state is OperationState.SUCCEEDED
    assert "Running already" in cloud.get(queued.id).note
    assert cloud.get(free_vm).state is VmState.STOPPED
