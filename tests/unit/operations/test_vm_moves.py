"""VM reboot and migration in the engine, with scripted subsystem outcomes.

Migration claims the destination before the domain moves; whatever step fails (or a cancel
that moves the VM back), the VM must run on exactly one host and hold a claim on that host
only.
"""

from collections.abc import Iterator
from uuid import UUID, uuid4

import msgspec
import pytest

from aggregates.host import Host
from aggregates.operation import OperationState
from aggregates.vm import VirtualMachine, VmState
from aggregates.volume import Volume
from kernel.cloud.vm_moves import MigrateVm, RebootVm, migration_claim_id
from kernel.cloud.vms import StopVm
from kernel.steps.hypervisor import MigrateDomain, RebootDomain
from kernel.steps.planner import Placement, PlanPlacement

from .test_volume_ops import VolumeCloud, make_cloud, running_vm


@pytest.fixture
def cloud() -> Iterator[VolumeCloud]:
    made = make_cloud()
    yield made
    made.app.close()


def claims_of(cloud: VolumeCloud, vm_id: UUID) -> dict[UUID, list[UUID]]:
    """Host id -> the claims the VM holds there."""
    found: dict[UUID, list[UUID]] = {}
    for host_id in cloud.host_ids:
        for claim_id, (claim_vm, _, _) in cloud.get(host_id).claims.items():
            if claim_vm == vm_id:
                found.setdefault(host_id, []).append(claim_id)
    return found


def runs_only_on(cloud: VolumeCloud, vm_id: UUID, host_id: UUID) -> None:
    vm: VirtualMachine = cloud.get(vm_id)
    assert vm.state is VmState.RUNNING and vm.host_id == host_id
    assert vm.destination_host_id is None
    assert cloud.domains[vm_id] == cloud.get(host_id).uri
    assert list(claims_of(cloud, vm_id)) == [host_id]


def test_reboot_keeps_the_vm_running(cloud: VolumeCloud) -> None:
    vm = running_vm(cloud)
    rebooted = cloud.command(RebootVm(vm_id=vm.id))
    cloud.run()
    assert cloud.op(rebooted).state is OperationState.SUCCEEDED and cloud.reboots == 1
    bound = msgspec.json.decode(cloud.seen[-1].args, type=RebootDomain)
    assert bound.host_uri == cloud.get(vm.host_id).uri
    assert vm.host_id is not None
    runs_only_on(cloud, vm.id, vm.host_id)

    cloud.fail["hypervisor.reboot"] = 99
    failed = cloud.command(RebootVm(vm_id=vm.id))
    cloud.run()
    assert cloud.op(failed).state is OperationState.FAILED
    runs_only_on(cloud, vm.id, vm.host_id)

    cloud.command(StopVm(vm_id=vm.id))
    cloud.run()
    with pytest.raises(Exception, match="only a Running VM reboots"):
        cloud.command(RebootVm(vm_id=vm.id))


def test_migrate_to_the_planned_host_moves_claim_domain_and_state(cloud: VolumeCloud) -> None:
    vm = running_vm(cloud)
    source: Host = cloud.get(vm.host_id)
    moved = cloud.command(MigrateVm(vm_id=vm.id))
    cloud.run()
    assert cloud.op(moved).state is OperationState.SUCCEEDED
    assert cloud.kinds()[-2:] == ["planner.plan", "hypervisor.migrate"]
    plan = msgspec.json.decode(cloud.seen[-2].args, type=PlanPlacement)
    assert source.id in plan.avoid_hosts and plan.cluster_id == source.cluster_id
    vm = cloud.get(vm.id)
    assert vm.host_id is not None and vm.host_id != source.id and vm.last_host_id == source.id
    runs_only_on(cloud, vm.id, vm.host_id)
    assert claims_of(cloud, vm.id)[vm.host_id] == [migration_claim_id(UUID(moved["operation_id"]))]
    bound = msgspec.json.decode(cloud.seen[-1].args, type=MigrateDomain)
    assert (bound.source_uri, bound.target_uri) == (source.uri, cloud.get(vm.host_id).uri)
    # the root volume stays reached through the host whose pool holds it
    root: Volume = cloud.get(vm.root_volume_id)
    assert root.host_id == source.id


def test_migrate_to_a_given_host_claims_it_when_the_command_is_taken(
        cloud: VolumeCloud) -> None:
    vm = running_vm(cloud)
    target = cloud.get(cloud.host_ids[2])
    moved = cloud.command(MigrateVm(vm_id=vm.id, host_id=target.id))
    assert cloud.get(vm.id).state is VmState.MIGRATING
    assert migration_claim_id(UUID(moved["operation_id"])) in cloud.get(target.id).claims
    cloud.run()
    assert cloud.kinds()[-1] == "hypervisor.migrate"
    runs_only_on(cloud, vm.id, target.id)


@pytest.mark.parametrize("kind", ["planner.plan", "hypervisor.migrate"])
def test_a_failed_migration_leaves_the_vm_where_it_was(cloud: VolumeCloud, kind: str) -> None:
    vm = running_vm(cloud)
    assert vm.host_id is not None
    cloud.fail[kind] = 99
    moved = cloud.command(MigrateVm(vm_id=vm.id))
    cloud.run()
    assert cloud.op(moved).state is OperationState.FAILED
    runs_only_on(cloud, vm.id, vm.host_id)
    assert kind in cloud.get(vm.id).last_error or kind == "planner.plan"


def test_a_full_given_host_or_the_same_host_is_refused_and_nothing_written(
        cloud: VolumeCloud) -> None:
    vm = running_vm(cloud)
    full: Host = cloud.get(cloud.host_ids[1])
    full.claim(uuid4(), uuid4(), full.free_cpu_cores, 1)
    cloud.app.save(full)
    head = cloud.app.recorder.max_notification_id()
    for host_id, message in ((full.id, "asked"), (vm.host_id, "already runs"),
                             (cloud.host_ids[-1], "cannot reach")):
        with pytest.raises(Exception, match=message):
            cloud.command(MigrateVm(vm_id=vm.id, host_id=host_id))
    assert cloud.app.recorder.max_notification_id() == head
    assert cloud.get(vm.id).state is VmState.RUNNING


def test_a_cancelled_migration_moves_the_vm_back(cloud: VolumeCloud) -> None:
    vm = running_vm(cloud)
    assert vm.host_id is not None
    moved = cloud.command(MigrateVm(vm_id=vm.id, host_id=cloud.host_ids[1]))
    step = cloud.run_until("hypervisor.migrate")
    cloud.engine.cancel(UUID(moved["operation_id"]), "no", idempotency_key="cancel-move")
    cloud.engine.apply_outcomes([cloud.answer(step)])  # it moved all the same
    cloud.run()
    assert cloud.op(moved).state is OperationState.ROLLED_BACK
    assert cloud.kinds()[-1] == "undo hypervisor.migrate"
    runs_only_on(cloud, vm.id, vm.host_id)


def test_a_stale_planner_proposal_is_avoided_and_planned_again(cloud: VolumeCloud) -> None:
    vm = running_vm(cloud)
    second: Host = cloud.get(cloud.host_ids[1])
    second.claim(uuid4(), uuid4(), second.free_cpu_cores, 1)  # behind the planner's back
    cloud.app.save(second)
    planner = cloud._planner_plan
    proposals: list[UUID] = []

    def stale(raw: msgspec.Raw) -> Placement:
        placement = planner(raw)
        if not proposals:  # its index has not seen the claim yet
            placement = msgspec.structs.replace(placement, host_id=second.id,
                                                host_name=second.name, host_uri=second.uri)
        proposals.append(placement.host_id)
        return placement

    cloud._planner_plan = stale  # type: ignore[method-assign]
    moved = cloud.command(MigrateVm(vm_id=vm.id))
    cloud.run()
    assert cloud.op(moved).state is OperationState.SUCCEEDED
    vm_now: VirtualMachine = cloud.get(vm.id)
    assert proposals[0] == second.id and vm_now.host_id not in (second.id, vm.host_id)
    assert second.id in vm_now.avoid_hosts
    assert vm_now.host_id is not None
    runs_only_on(cloud, vm.id, vm_now.host_id)
