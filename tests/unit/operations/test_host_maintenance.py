"""Host maintenance in the engine, with scripted subsystem outcomes.

Whatever happens (a migration that fails, too little room elsewhere, a host that does not
answer, a cancel at any point, a kernel restart), every VM of the host ends Running on exactly
one host with its claim there only, and none is ever stopped.
"""

from collections.abc import Iterator
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

import msgspec
import pytest

from aggregates.errors import DomainRuleError, NotFoundError
from aggregates.host import Host, HostResourceState
from aggregates.operation import Operation, OperationState
from aggregates.vm import VirtualMachine
from kernel.bootstrap.catalog import CLOUD_COMMANDS, cloud_effects
from kernel.cloud.hosts import (
    CancelHostMaintenance,
    DisableHost,
    EnableHost,
    PrepareHostMaintenance,
)
from kernel.cloud.maintenance import PREPARE_KIND
from kernel.cloud.vm_moves import RebootVm
from kernel.cloud.vms import StopVm
from kernel.contracts.steps import StepMessage, StepOutcome
from kernel.effects import AllOf, Effects, EffectScope
from kernel.operation_commands import StartOperation
from kernel.operations import OperationEngine
from kernel.steps.hypervisor import DomainPower, PowerReport, ReportPower
from kernel.steps.planner import FilterCounts, Placement, PlanPlacement

from ._volume_cloud import VolumeCloud, make_cloud
from .test_vm_deploy import deploy
from .test_vm_moves import runs_only_on

RS = HostResourceState


class MaintenanceCloud(VolumeCloud):
    """The move harness with a planner that places only on Enabled hosts with room (else
    `insufficient_capacity`, as the real one), and a hypervisor that reports its domains."""

    def answer(self, m: StepMessage) -> StepOutcome:
        if f"{m.subsystem}.{m.action}" == "planner.plan" and not self.fail.get("planner.plan") \
                and self._fit(msgspec.json.decode(m.args, type=PlanPlacement)) is None:
            return StepOutcome(step_id=m.step_id, operation_id=m.operation_id,
                               attempt=m.attempt, subsystem=m.subsystem, ok=False,
                               error_code="insufficient_capacity", message="no host fits")
        return super().answer(m)

    def _fit(self, args: PlanPlacement) -> Host | None:
        return next((h for h in map(self.get, self.host_ids)
                     if h.id not in args.avoid_hosts and h.resource_state is RS.ENABLED
                     and args.cluster_id in (None, h.cluster_id)
                     and h.free_cpu_cores >= args.cpu_cores
                     and h.free_memory_mib >= args.memory_mib), None)

    def _planner_plan(self, raw: msgspec.Raw) -> Placement:
        args = msgspec.json.decode(raw, type=PlanPlacement)
        host = self._fit(args)
        assert host is not None
        return Placement(host_id=host.id, host_name=host.name, host_uri=host.uri,
                         cluster_id=host.cluster_id, pod_id=host.pod_id, zone_id=host.zone_id,
                         planner=args.planner, considered=8, examined=1,
                         filtered=FilterCounts())

    def _hypervisor_report_power(self, raw: msgspec.Raw) -> PowerReport:
        r = msgspec.json.decode(raw, type=ReportPower)
        return PowerReport(host_uri=r.host_uri, domains=tuple(
            DomainPower(name=str(vm_id), uuid=vm_id, state="running", reason=1,
                        persistent=True) for vm_id, uri in sorted(self.domains.items())
            if uri == r.host_uri))

    def host(self, name: str) -> Host:
        return next(h for h in map(self.get, self.host_ids) if h.name == name)

    def head(self) -> int:
        return self.app.recorder.max_notification_id() or 0


@pytest.fixture
def cloud() -> Iterator[MaintenanceCloud]:
    made = make_cloud()
    cloud = MaintenanceCloud(made.app)
    yield cloud
    made.app.close()


def pinned_vms(cloud: MaintenanceCloud, count: int, host_name: str = "kvm-a1") -> list[UUID]:
    """`count` Running VMs on one host: deployed while every other host is Disabled, which are
    Enabled again afterwards."""
    others = [h for h in cloud.host_ids if cloud.get(h).name != host_name]
    for host_id in others:
        cloud.command(DisableHost(host_id=host_id))
    accepted = [deploy(cloud, f"vm-{i}") for i in range(count)]
    cloud.run()
    for host_id in others:
        cloud.command(EnableHost(host_id=host_id))
    vm_ids = [UUID(a["vm_id"]) for a in accepted]
    host = cloud.host(host_name)
    assert all(cloud.get(v).host_id == host.id for v in vm_ids)
    return vm_ids


def prepare(cloud: MaintenanceCloud, host: Host) -> dict[str, Any]:
    return cloud.command(PrepareHostMaintenance(host_id=host.id))


def migrations(cloud: MaintenanceCloud) -> list[Operation]:
    return [op for op in map(cloud.get, cloud.ids("operation.Accepted"))
            if op.kind == "vm.migrate"]


def every_vm_runs_once(cloud: MaintenanceCloud, vm_ids: list[UUID]) -> dict[UUID, UUID]:
    """Each VM Running on one host, its domain and claim there only; VM id -> host id."""
    where = {}
    for vm_id in vm_ids:
        vm: VirtualMachine = cloud.get(vm_id)
        assert vm.host_id is not None
        runs_only_on(cloud, vm_id, vm.host_id)
        where[vm_id] = vm.host_id
    assert "hypervisor.stop" not in cloud.kinds()
    return where


# --------------------------------------------------------------------------- enable, disable


def test_disable_and_enable_take_the_host_out_of_placement_and_back(
        cloud: MaintenanceCloud) -> None:
    a1 = cloud.host("kvm-a1")
    assert cloud.command(DisableHost(host_id=a1.id))["resource_state"] == "Disabled"
    first = deploy(cloud, "web-1")
    cloud.run()
    assert cloud.get(UUID(first["vm_id"])).host_id != a1.id
    assert cloud.command(EnableHost(host_id=a1.id))["resource_state"] == "Enabled"
    second = deploy(cloud, "web-2")
    cloud.run()
    assert cloud.get(UUID(second["vm_id"])).host_id == a1.id  # first fit again


def test_bad_host_commands_are_refused_and_write_nothing(cloud: MaintenanceCloud) -> None:
    a1, a2 = cloud.host("kvm-a1"), cloud.host("kvm-a2")
    cloud.command(DisableHost(host_id=a2.id))
    prepare(cloud, a1)  # empty: Maintenance at once
    head = cloud.head()
    for command, error, message in (
            (DisableHost(host_id=uuid4()), NotFoundError, "no host"),
            (PrepareHostMaintenance(host_id=uuid4()), NotFoundError, "no host"),
            (EnableHost(host_id=cloud.host("kvm-a3").id), DomainRuleError, "is Enabled"),
            (DisableHost(host_id=a2.id), DomainRuleError, "is Disabled"),
            (EnableHost(host_id=a1.id), DomainRuleError, "cancel maintenance to enable"),
            (DisableHost(host_id=a1.id), DomainRuleError, "cancel maintenance to disable"),
            (PrepareHostMaintenance(host_id=a1.id), DomainRuleError, "is Maintenance"),
            (CancelHostMaintenance(host_id=a2.id), DomainRuleError, "is Disabled")):
        with pytest.raises(error, match=message):
            cloud.command(command)
    assert cloud.head() == head


# --------------------------------------------------------------------------- maintenance


def test_an_empty_host_is_in_maintenance_at_once_and_cancel_brings_it_back(
        cloud: MaintenanceCloud) -> None:
    a1 = cloud.host("kvm-a1")
    idle = deploy(cloud, "idle")  # a VM of the host, stopped: it needs no move
    cloud.run()
    assert cloud.get(UUID(idle["vm_id"])).host_id == a1.id
    cloud.command(StopVm(vm_id=UUID(idle["vm_id"])))
    cloud.run()
    done = prepare(cloud, a1)
    assert done["resource_state"] == "Maintenance" and done["operation_id"] is None
    assert cloud.get(a1.id).resource_state is RS.MAINTENANCE
    assert cloud.dispatched() == []
    placed = deploy(cloud, "web-2")  # placement keeps off it
    cloud.run()
    assert cloud.get(UUID(placed["vm_id"])).host_id != a1.id
    assert cloud.command(CancelHostMaintenance(host_id=a1.id))["resource_state"] == "Enabled"
    again = deploy(cloud, "web-3")
    cloud.run()
    assert cloud.get(UUID(again["vm_id"])).host_id == a1.id


def test_every_vm_live_migrates_away_and_the_host_is_in_maintenance(
        cloud: MaintenanceCloud) -> None:
    vm_ids = pinned_vms(cloud, 12)
    a1 = cloud.host("kvm-a1")
    since = len(cloud.seen)
    accepted = prepare(cloud, a1)
    assert accepted["resource_state"] == "PrepareForMaintenance"
    assert sorted(accepted["vm_ids"]) == sorted(map(str, vm_ids))
    op: Operation = cloud.get(UUID(accepted["operation_id"]))
    assert op.kind == PREPARE_KIND and op.entity_ids == (a1.id,)
    [report] = cloud.dispatched()
    assert msgspec.json.decode(report.args, type=ReportPower).host_uri == a1.uri
    cloud.engine.apply_outcomes([cloud.answer(report)])
    # one migration per VM, all accepted with the report's outcome, in one transaction
    moves = migrations(cloud)
    assert len(moves) == 12
    assert set(cloud.get(a1.id).maintenance.migrations) == {m.id for m in moves}
    assert cloud.get(a1.id).resource_state is RS.PREPARE_FOR_MAINTENANCE
    cloud.run()
    assert {m.state for m in map(cloud.get, (m.id for m in moves))} == \
        {OperationState.SUCCEEDED}
    where = every_vm_runs_once(cloud, vm_ids)
    assert a1.id not in where.values()
    host: Host = cloud.get(a1.id)
    assert host.resource_state is RS.MAINTENANCE and host.claims == {}
    assert host.maintenance.migrations == {} and host.maintenance.errors == ()
    assert cloud.kinds(since).count("hypervisor.migrate") == 12
    # the planner never proposed the host, and placement keeps off it
    for m in cloud.seen[since:]:
        if m.subsystem == "planner":
            assert a1.id in msgspec.json.decode(m.args, type=PlanPlacement).avoid_hosts


def test_a_vm_that_cannot_move_leaves_the_host_in_error_still_running(
        cloud: MaintenanceCloud) -> None:
    vm_ids = pinned_vms(cloud, 5)
    a1 = cloud.host("kvm-a1")
    cloud.fail["hypervisor.migrate"] = 1  # not retryable: that migration fails for good
    prepare(cloud, a1)
    cloud.run()
    where = every_vm_runs_once(cloud, vm_ids)
    stayed = [v for v, h in where.items() if h == a1.id]
    assert len(stayed) == 1
    host: Host = cloud.get(a1.id)
    assert host.resource_state is RS.ERROR_IN_MAINTENANCE
    assert "still runs here" in host.maintenance.errors[0]
    vm: VirtualMachine = cloud.get(stayed[0])
    assert vm.name in host.maintenance.errors[0]
    # prepared again, the one left moves too
    again = prepare(cloud, a1)
    assert again["vm_ids"] == [str(stayed[0])]
    cloud.run()
    assert cloud.get(a1.id).resource_state is RS.MAINTENANCE
    assert a1.id not in every_vm_runs_once(cloud, vm_ids).values()


def test_with_too_little_room_elsewhere_the_host_ends_in_error_and_every_vm_runs(
        cloud: MaintenanceCloud) -> None:
    vm_ids = pinned_vms(cloud, 6)
    a1 = cloud.host("kvm-a1")
    for name in ("kvm-a2", "kvm-a3", "kvm-a4"):  # room for two VMs left in the cluster
        host = cloud.host(name)
        keep = 2 if name == "kvm-a2" else 0
        host.claim(uuid4(), uuid4(), host.free_cpu_cores - keep, 1)
        cloud.app.save(host)
    prepare(cloud, a1)
    cloud.run()
    where = every_vm_runs_once(cloud, vm_ids)
    assert sorted(where.values()).count(a1.id) == 4
    assert list(where.values()).count(cloud.host("kvm-a2").id) == 2
    host: Host = cloud.get(a1.id)
    assert host.resource_state is RS.ERROR_IN_MAINTENANCE
    assert len(host.maintenance.errors) == 4
    assert all("insufficient_capacity" in e for e in host.maintenance.errors)


def test_a_host_that_does_not_answer_ends_in_error_with_its_vms_untouched(
        cloud: MaintenanceCloud) -> None:
    vm_ids = pinned_vms(cloud, 3)
    a1 = cloud.host("kvm-a1")
    cloud.fail["hypervisor.report_power"], cloud.fail_retryable = 3, True
    prepare(cloud, a1)
    cloud.run()
    assert migrations(cloud) == []
    host: Host = cloud.get(a1.id)
    assert host.resource_state is RS.ERROR_IN_MAINTENANCE
    assert "did not answer" in host.maintenance.errors[0]
    assert set(every_vm_runs_once(cloud, vm_ids).values()) == {a1.id}


def test_cancel_mid_way_enables_the_host_and_stops_no_vm(cloud: MaintenanceCloud) -> None:
    vm_ids = pinned_vms(cloud, 4)
    a1 = cloud.host("kvm-a1")
    prepare(cloud, a1)
    step = cloud.run_until("hypervisor.migrate")  # some VMs are on their way
    cancelled = cloud.command(CancelHostMaintenance(host_id=a1.id))
    assert cancelled["resource_state"] == "Enabled"
    assert cancelled["cancelled_operation_ids"] == []  # all had started: they go on
    cloud.engine.apply_outcomes([cloud.answer(step)])
    cloud.run()
    every_vm_runs_once(cloud, vm_ids)
    host: Host = cloud.get(a1.id)
    assert host.resource_state is RS.ENABLED  # the last migration did not complete anything
    assert host.maintenance.migrations == {}
    placed = deploy(cloud, "after")
    cloud.run()
    assert cloud.get(UUID(placed["vm_id"])).host_id == a1.id  # back in placement


def test_cancel_before_the_host_answered_moves_nothing(cloud: MaintenanceCloud) -> None:
    vm_ids = pinned_vms(cloud, 2)
    a1 = cloud.host("kvm-a1")
    prepare(cloud, a1)
    [report] = cloud.dispatched()
    cloud.command(CancelHostMaintenance(host_id=a1.id))
    cloud.engine.apply_outcomes([cloud.answer(report)])
    cloud.run()
    assert migrations(cloud) == []
    assert cloud.get(a1.id).resource_state is RS.ENABLED
    assert set(every_vm_runs_once(cloud, vm_ids).values()) == {a1.id}


def test_cancel_withdraws_a_migration_that_waits_for_its_vm(cloud: MaintenanceCloud) -> None:
    vm_ids = pinned_vms(cloud, 2)
    a1 = cloud.host("kvm-a1")
    busy = cloud.command(RebootVm(vm_id=vm_ids[0]))  # holds the VM until answered
    [reboot] = cloud.dispatched()
    prepare(cloud, a1)
    [report] = cloud.dispatched()
    cloud.engine.apply_outcomes([cloud.answer(report)])
    waiting = next(m for m in migrations(cloud) if cloud.get(m.id).state
                   is OperationState.WAITING)
    cancelled = cloud.command(CancelHostMaintenance(host_id=a1.id))
    assert cancelled["cancelled_operation_ids"] == [str(waiting.id)]
    assert cloud.get(waiting.id).state is OperationState.CANCELLED
    cloud.engine.apply_outcomes([cloud.answer(reboot)])
    cloud.run()
    assert cloud.op(busy).state is OperationState.SUCCEEDED
    where = every_vm_runs_once(cloud, vm_ids)
    assert where[vm_ids[0]] == a1.id and where[vm_ids[1]] != a1.id
    assert cloud.get(a1.id).resource_state is RS.ENABLED


def test_prepare_is_refused_while_a_vm_of_the_host_is_in_a_transition(
        cloud: MaintenanceCloud) -> None:
    a1 = cloud.host("kvm-a1")
    deploy(cloud, "starting")  # planned on a1, not yet running
    cloud.run_until("storage.create_volume")
    head = cloud.head()
    with pytest.raises(DomainRuleError, match="is Starting on host kvm-a1"):
        prepare(cloud, a1)
    assert cloud.head() == head


def test_a_second_prepare_while_one_runs_is_refused(cloud: MaintenanceCloud) -> None:
    pinned_vms(cloud, 2)
    a1 = cloud.host("kvm-a1")
    prepare(cloud, a1)
    head = cloud.head()
    with pytest.raises(DomainRuleError, match="is PrepareForMaintenance"):
        prepare(cloud, a1)
    assert cloud.head() == head


def test_maintenance_goes_on_after_a_kernel_restart(cloud: MaintenanceCloud) -> None:
    vm_ids = pinned_vms(cloud, 4)
    a1 = cloud.host("kvm-a1")
    prepare(cloud, a1)
    step = cloud.run_until("hypervisor.migrate")
    # a new engine over the same log: nothing of the maintenance is kept in memory
    cloud.engine = OperationEngine(cloud.app, clock=lambda: cloud.now,
                                   effects=cloud_effects(cloud.app),
                                   operation_commands=CLOUD_COMMANDS)
    cloud.engine.recover()
    cloud.engine.apply_outcomes([cloud.answer(step)])
    cloud.run()
    assert cloud.get(a1.id).resource_state is RS.MAINTENANCE
    assert a1.id not in every_vm_runs_once(cloud, vm_ids).values()


# --------------------------------------------------------------------------- effects


def test_two_registries_hooking_one_operation_kind_both_run_in_order() -> None:
    ran: list[str] = []

    class Hook:
        def __init__(self, name: str) -> None:
            self.name = name

        def finished(self, scope: EffectScope, op: Operation,
                     now: datetime) -> list[StartOperation]:
            ran.append(self.name)
            return []

    merged = Effects(operations={"k": Hook("a")}) | Effects(operations={"k": Hook("b")}) \
        | Effects(operations={"k": Hook("c"), "other": Hook("d")})
    hook = merged.operations["k"]
    assert isinstance(hook, AllOf) and len(hook.hooks) == 3
    hook.finished(None, None, None)  # type: ignore[arg-type]
    assert ran == ["a", "b", "c"]
    assert not isinstance(merged.operations["other"], AllOf)
