"""The reconciler against scripted reports: drift is recorded and handled by policy, silent
hosts go Disconnected then Down, and HA restarts only after a fence that succeeded."""

from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import msgspec
import pytest

from aggregates.host import Host, HostStatus
from aggregates.operation import Operation
from aggregates.unmanaged import Disposition, UnmanagedDomain
from aggregates.vm import PowerState, VirtualMachine, VmState
from kernel.cloud.vms import DeployVm, StopVm
from kernel.contracts.steps import StepMessage, StepOutcome
from kernel.reality.reconciler import RealityPolicy, Reconciler
from kernel.steps.hypervisor import DomainPower, FenceHost, HostFenced, PowerReport

from ..operations.conftest import cloud as deploy_cloud  # noqa: F401
from ..operations.test_vm_deploy import NOW, Cloud

POLICY = RealityPolicy(interval=1.0, disconnected_after=2, down_after=4, missing_after=2)


class RealityCloud(Cloud):
    """The scripted cloud, plus fencing and a clock the reconciler shares."""

    def __init__(self, base: Cloud) -> None:
        super().__init__(base.app)
        self.now = NOW
        self.fenced: list[str] = []
        self.fence_fails = False

    def answer(self, m: StepMessage) -> StepOutcome:
        if f"{m.subsystem}.{m.action}" != "hypervisor.fence":
            return super().answer(m)
        args = msgspec.json.decode(m.args, type=FenceHost)
        if self.fence_fails:
            return StepOutcome(step_id=m.step_id, operation_id=m.operation_id,
                               attempt=m.attempt, subsystem=m.subsystem, ok=False,
                               error_code="unreachable", message="no route", retryable=False)
        self.fenced.append(args.host_uri)
        result = HostFenced(host_uri=args.host_uri, powered_off=())
        return StepOutcome(step_id=m.step_id, operation_id=m.operation_id, attempt=m.attempt,
                           subsystem=m.subsystem, ok=True,
                           result=msgspec.Raw(msgspec.json.encode(result)))

    def reconciler(self, **policy: Any) -> Reconciler:
        return Reconciler(self.engine, replace(POLICY, **policy), clock=lambda: self.now)

    def deploy(self, name: str, offering: str = "small") -> VirtualMachine:
        template = next(t for t in self.ids("template.Registered")
                        if self.get(t).state.value == "Ready")
        offering_id = next(o for o in self.ids("service_offering.Created")
                           if self.get(o).name == offering)
        out = self.command(DeployVm(name=name, account="alice", zone_id=self.get(template).zone_id,
                                    service_offering_id=offering_id, template_id=template))
        self.run()
        vm: VirtualMachine = self.get(UUID(out["vm_id"]))
        assert vm.state is VmState.RUNNING
        return vm

    def report(self, uri: str, **states: str) -> PowerReport:
        """What the host runs as the scripted hypervisor has it; `states` by VM name override
        (the state "gone" drops the domain)."""
        domains = []
        for vm_id, where in self.domains.items():
            vm = self.get(vm_id)
            state = states.get(vm.name, "running")
            if where == uri and state != "gone":
                domains.append(DomainPower(name=vm.name, uuid=vm_id, state=state, reason=1,
                                           persistent=True, vcpus=1, memory_mib=1024))
        return PowerReport(host_uri=uri, domains=tuple(domains), observed_at=self.now)

    def ops(self, kind: str) -> list[Operation]:
        return [op for op in (self.get(i) for i in self.ids("operation.Accepted"))
                if op.kind == kind]

    def host_of(self, vm: VirtualMachine) -> Host:
        assert vm.host_id is not None
        host: Host = self.get(vm.host_id)
        return host


@pytest.fixture
def cloud(deploy_cloud: Cloud) -> Iterator[RealityCloud]:  # noqa: F811
    yield RealityCloud(deploy_cloud)


def test_a_vm_stopped_out_of_band_is_adopted_stopped_and_its_definition_removed(
        cloud: RealityCloud) -> None:
    vm = cloud.deploy("web-1")
    host = cloud.host_of(vm)
    reconciler = cloud.reconciler()
    reconciler.observe([cloud.report(host.uri)])  # as wanted: nothing changes but the power
    assert cloud.get(vm.id).power_state is PowerState.ON
    reconciler.observe([cloud.report(host.uri, **{"web-1": "shutoff"})])
    vm = cloud.get(vm.id)
    assert (vm.state, vm.power_state, vm.host_id) == (VmState.STOPPED, PowerState.OFF, None)
    assert cloud.get(host.id).claims == {}
    cloud.run()
    assert [op.state.value for op in cloud.ops("vm.clean_definition")] == ["Succeeded"]
    assert vm.id not in cloud.domains  # no second copy can be started there
    assert "found shut off" in vm.last_error


def test_a_vm_stopped_out_of_band_is_restarted_in_place_by_policy(cloud: RealityCloud) -> None:
    vm = cloud.deploy("web-1")
    host = cloud.host_of(vm)
    cloud.reconciler(on_stopped_out_of_band="restart").observe(
        [cloud.report(host.uri, **{"web-1": "shutoff"})])
    cloud.run()
    [op] = cloud.ops("vm.power_on")
    assert op.state.value == "Succeeded"
    assert [f"{m.subsystem}.{m.action}" for m in cloud.seen[-1:]] == ["hypervisor.start"]
    vm = cloud.get(vm.id)
    assert (vm.state, vm.host_id) == (VmState.RUNNING, host.id)  # never left its host


def test_a_stopped_vm_found_running_is_adopted_with_its_capacity_or_stopped(
        cloud: RealityCloud) -> None:
    a, b = cloud.deploy("web-1"), cloud.deploy("web-2")
    for vm in (a, b):
        cloud.command(StopVm(vm_id=vm.id))
    cloud.run()
    elsewhere: Host = cloud.get(cloud.host_ids[-1])
    cloud.domains[a.id] = cloud.domains[b.id] = elsewhere.uri  # started behind our back
    cloud.reconciler().observe([cloud.report(elsewhere.uri, **{"web-2": "gone"})])
    adopted = cloud.get(a.id)
    assert (adopted.state, adopted.host_id, adopted.power_state) == \
        (VmState.RUNNING, elsewhere.id, PowerState.ON)
    assert [c[0] for c in cloud.get(elsewhere.id).claims.values()] == [a.id]
    cloud.reconciler(on_unexpected_running="stop").observe(
        [cloud.report(elsewhere.uri, **{"web-1": "running"})])
    assert cloud.get(b.id).state is VmState.STOPPED
    cloud.run()
    [op] = cloud.ops("vm.enforce_stop")
    assert op.state.value == "Succeeded" and b.id not in cloud.domains
    assert cloud.get(b.id).state is VmState.STOPPED  # it stays what the kernel wants


@pytest.mark.parametrize("policy", ["quarantine", "adopt"])
def test_an_unknown_domain_becomes_an_entity_never_just_a_log_line(
        cloud: RealityCloud, policy: str) -> None:
    host: Host = cloud.get(cloud.host_ids[0])
    stranger = DomainPower(name="mystery", uuid=uuid4(), state="running", reason=1,
                           persistent=True, vcpus=2, memory_mib=2048)
    reconciler = cloud.reconciler(on_unknown_domain=policy)
    reconciler.observe([msgspec.structs.replace(cloud.report(host.uri), domains=(stranger,))])
    found: UnmanagedDomain = cloud.get(UnmanagedDomain.create_id(host.id, stranger.uuid))
    assert (found.name, found.vcpus, found.memory_mib, found.present) == ("mystery", 2, 2048, True)
    claims = cloud.get(host.id).claims
    if policy == "adopt":
        assert found.disposition is Disposition.ADOPTED
        assert claims[found.id] == (found.id, 2, 2048)
        assert cloud.ops("domain.quarantine") == []
    else:
        assert found.disposition is Disposition.QUARANTINED and found.id not in claims
        [op] = cloud.ops("domain.quarantine")
        cloud.run()
        assert cloud.get(op.id).state.value == "Succeeded"
    # seen again: nothing new; then gone: recorded, and its capacity given back
    version = cloud.get(found.id).version
    reconciler.observe([msgspec.structs.replace(cloud.report(host.uri), domains=(stranger,))])
    assert cloud.get(found.id).version == version
    reconciler.observe([cloud.report(host.uri)])
    assert cloud.get(found.id).present is False
    assert found.id not in cloud.get(host.id).claims


@pytest.mark.parametrize("offering", ["small", "large-ha"])
def test_a_vm_missing_from_its_hosts_reports_is_power_report_missing_then_handled(
        cloud: RealityCloud, offering: str) -> None:
    vm = cloud.deploy("web-1", offering)
    host = cloud.host_of(vm)
    del cloud.domains[vm.id]  # undefined behind the kernel's back
    reconciler = cloud.reconciler(missing_after=2)
    reconciler.observe([cloud.report(host.uri)])
    assert cloud.get(vm.id).state is VmState.RUNNING  # one report may be a race
    reconciler.observe([cloud.report(host.uri)])
    vm = cloud.get(vm.id)
    assert (vm.state, vm.power_state) == (VmState.STOPPED, PowerState.REPORT_MISSING)
    assert cloud.get(host.id).claims == {}
    cloud.run()
    starts = cloud.ops("vm.start")
    if offering == "large-ha":  # its host reported without it: it runs nowhere, so HA starts it
        assert [op.state.value for op in starts] == ["Succeeded"]
        assert cloud.get(vm.id).state is VmState.RUNNING
    else:
        assert starts == [] and cloud.get(vm.id).state is VmState.STOPPED


def test_a_vm_an_operation_holds_is_observed_but_not_acted_on(cloud: RealityCloud) -> None:
    vm = cloud.deploy("web-1")
    host = cloud.host_of(vm)
    cloud.command(StopVm(vm_id=vm.id))  # dispatched, not yet answered
    cloud.reconciler().observe([cloud.report(host.uri, **{"web-1": "shutoff"})])
    assert cloud.get(vm.id).state is VmState.STOPPING
    assert cloud.ops("vm.clean_definition") == []


def _silence(cloud: RealityCloud, reconciler: Reconciler, seconds: float) -> None:
    cloud.now += timedelta(seconds=seconds)
    reconciler.tick()


@pytest.mark.parametrize("ha", [False, True])
def test_a_silent_host_goes_disconnected_then_down_and_ha_waits_for_the_fence(
        cloud: RealityCloud, ha: bool) -> None:
    vm = cloud.deploy("web-1", "large-ha" if ha else "small")
    host = cloud.host_of(vm)
    reconciler = cloud.reconciler()
    others = [cloud.get(h).uri for h in cloud.host_ids if h != host.id]
    reconciler.observe([cloud.report(u) for u in [host.uri, *others]])
    _silence(cloud, reconciler, 1.5)
    assert cloud.get(host.id).status is HostStatus.UP
    cloud.now += timedelta(seconds=1)
    reconciler.observe([cloud.report(u) for u in others])  # everyone else still reports
    reconciler.tick()
    assert cloud.get(host.id).status is HostStatus.DISCONNECTED
    assert {cloud.get(h).status for h in cloud.host_ids if h != host.id} == {HostStatus.UP}
    cloud.now += timedelta(seconds=2)
    reconciler.observe([cloud.report(u) for u in others])
    reconciler.tick()
    assert cloud.get(host.id).status is HostStatus.DOWN
    assert cloud.get(vm.id).power_state is PowerState.UNKNOWN
    assert cloud.get(vm.id).state is VmState.RUNNING  # nothing is certain yet
    cloud.run()
    if not ha:
        assert cloud.fenced == [] and cloud.ops("host.fence") == []
        assert cloud.get(vm.id).host_id == host.id
        return
    assert cloud.fenced == [host.uri]
    moved = cloud.get(vm.id)
    assert moved.state is VmState.RUNNING and moved.host_id not in (None, host.id)
    assert "fenced" in cloud.get(vm.id).last_error or moved.last_error == ""
    assert all(c[0] != vm.id for c in cloud.get(host.id).claims.values())
    reconciler.observe([cloud.report(host.uri)])  # back: Up again
    assert cloud.get(host.id).status is HostStatus.UP


def test_a_fence_that_fails_restarts_nothing_until_the_host_reports_again(
        cloud: RealityCloud) -> None:
    vm = cloud.deploy("web-1", "large-ha")
    host = cloud.host_of(vm)
    reconciler = cloud.reconciler()
    others = [cloud.get(h).uri for h in cloud.host_ids if h != host.id]
    cloud.fence_fails = True
    cloud.now += timedelta(seconds=5)
    reconciler.observe([cloud.report(u) for u in others])
    reconciler.tick()
    cloud.run()
    [fence] = cloud.ops("host.fence")
    assert fence.state.value == "Failed"
    assert (cloud.get(vm.id).state, cloud.get(vm.id).host_id) == (VmState.RUNNING, host.id)
    assert cloud.ops("vm.start") == []  # it may still run there: no second copy
    # the host reports again, without the VM: now it is certain, and HA starts it elsewhere
    del cloud.domains[vm.id]
    for _ in range(2):
        reconciler.observe([cloud.report(host.uri)])
    cloud.run()
    assert cloud.get(host.id).status is HostStatus.UP
    assert cloud.get(vm.id).state is VmState.RUNNING
    assert [op.state.value for op in cloud.ops("vm.start")] == ["Succeeded"]


def test_time_is_taken_from_the_reconcilers_clock(cloud: RealityCloud) -> None:
    reconciler = cloud.reconciler()
    assert reconciler.tick() == 0  # every host is within its grace time at start
    assert isinstance(cloud.now, datetime)


def test_the_vms_read_model_follows_what_drift_did(cloud: RealityCloud, tmp_path: Any) -> None:
    from kernel.settings import Settings
    from projections.catalog import MODELS
    from projections.runner import ProjectionRunner
    from projections.views import open_view

    vm = cloud.deploy("web-1")
    host = cloud.host_of(vm)
    reconciler = cloud.reconciler()
    reconciler.observe([cloud.report(host.uri, **{"web-1": "shutoff"})])  # adopted stopped
    cloud.run()
    elsewhere: Host = cloud.get(next(h for h in cloud.host_ids if h != host.id))
    cloud.domains[vm.id] = elsewhere.uri
    reconciler.observe([cloud.report(elsewhere.uri)])  # adopted running there
    view = open_view(MODELS["vms"], Settings(data_dir=tmp_path, store="sqlite"),
                     create_table=True)
    try:
        ProjectionRunner(cloud.app, view).run_once()
        row = view.get(vm.id)
        assert row is not None
        vm = cloud.get(vm.id)
        assert (row["state"], row["host_id"], row["power_state"]) == \
            (vm.state.value, vm.host_id, vm.power_state.value) == \
            ("Running", elsewhere.id, "PowerOn")
    finally:
        view.close()


@pytest.mark.parametrize("offering", ["small", "large-ha"])
def test_a_vm_that_moved_behind_our_back_is_followed_never_started_twice(
        cloud: RealityCloud, offering: str) -> None:
    vm = cloud.deploy("web-1", offering)
    source = cloud.host_of(vm)
    target: Host = cloud.get(next(h for h in cloud.host_ids if h != source.id))
    cloud.domains[vm.id] = target.uri  # migrated out of band
    reconciler = cloud.reconciler(missing_after=2)
    for _ in range(2):
        reconciler.observe([cloud.report(target.uri), cloud.report(source.uri)])
    cloud.run()
    moved = cloud.get(vm.id)
    assert (moved.state, moved.host_id, moved.power_state) == \
        (VmState.RUNNING, target.id, PowerState.ON)
    assert [c[0] for c in cloud.get(target.id).claims.values()] == [vm.id]
    assert cloud.get(source.id).claims == {}
    assert cloud.ops("vm.start") == [] and cloud.ops("vm.enforce_stop") == []


def test_a_report_taken_before_a_stop_ended_never_adopts_the_stopped_vm(
        cloud: RealityCloud) -> None:
    """Found by the split-process test: a report taken while a VM ran, applied after its
    vm.stop ended, adopted it Running again with a claim and no domain."""
    vm = cloud.deploy("web-1")
    host = cloud.host_of(vm)
    reconciler = cloud.reconciler()
    reconciler.observe([cloud.report(host.uri)])  # the reconciler has seen it Running
    stale = cloud.report(host.uri)  # taken now, applied only after the stop below
    cloud.command(StopVm(vm_id=vm.id))
    cloud.run()
    assert cloud.get(vm.id).state is VmState.STOPPED and vm.id not in cloud.domains
    reconciler.observe([stale])
    after = cloud.get(vm.id)
    assert (after.state, after.host_id) == (VmState.STOPPED, None)
    assert cloud.get(host.id).claims == {}
    assert cloud.ops("vm.enforce_stop") == []  # nothing acted on the stale sight
    # a report taken after the stop shows what is true; one that shows it running
    # again (started behind our back) is acted on as before
    reconciler.observe([cloud.report(host.uri)])
    assert cloud.get(vm.id).state is VmState.STOPPED
    cloud.domains[vm.id] = host.uri
    reconciler.observe([cloud.report(host.uri)])
    assert cloud.get(vm.id).state is VmState.RUNNING  # adopted, with its claim
    assert [c[0] for c in cloud.get(host.id).claims.values()] == [vm.id]
