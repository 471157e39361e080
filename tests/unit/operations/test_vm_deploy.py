"""VM deploy, start, stop and destroy in the engine, with scripted subsystem outcomes.

The test plays the subsystems: it reads each dispatched step from the log, as a worker would,
checks its bound arguments and answers. A failure injected at each step of a deploy must leave
no capacity claim, pool claim, volume or domain behind.
"""

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import msgspec
import pytest

from aggregates.errors import ValidationError
from aggregates.host import Host
from aggregates.image_store import ImageStore
from aggregates.offering import ServiceOffering
from aggregates.operation import Operation, OperationState
from aggregates.storage_pool import PrimaryStoragePool
from aggregates.template import Template
from aggregates.vm import VirtualMachine, VmState
from aggregates.volume import Volume, VolumeState
from kernel.bootstrap.catalog import CLOUD_COMMANDS, cloud_effects
from kernel.cloud.storage_pools import Directory
from kernel.cloud.vms import DeployVm, DestroyVm, StartVm, StopVm
from kernel.contracts.steps import StepMessage, StepOutcome
from kernel.dispatch_feed import DispatchFeed
from kernel.operations import OperationEngine
from kernel.steps.hypervisor import (
    DefineDomain,
    DomainDefined,
    DomainUndefined,
    PowerChanged,
    StartDomain,
    StopDomain,
    UndefineDomain,
)
from kernel.steps.planner import FilterCounts, Placement, PlanPlacement
from kernel.steps.storage import (
    CreatePool,
    CreateVolume,
    Deleted,
    DeleteVolume,
    PoolInfo,
    VolumeInfo,
)
from kernel.store.application import KernelApplication

NOW = datetime(2026, 1, 1, tzinfo=UTC)
GIB = 1024**3


class Cloud:
    """The engine over the sample inventory, and a fake of every subsystem's answers."""

    def __init__(self, app: KernelApplication) -> None:
        self.app = app
        self.engine = OperationEngine(app, clock=lambda: NOW, effects=cloud_effects(app),
                                      operation_commands=CLOUD_COMMANDS)
        self.feed = DispatchFeed(app)
        self.domains: dict[UUID, str] = {}  # vm id -> host uri where defined
        self.volumes: set[str] = set()
        self.fail: dict[str, int] = {}  # step kind -> how many attempts fail
        self.fail_retryable = False
        self.seen: list[StepMessage] = []
        self.host_ids = [h for h in self.ids("host.Registered")]

    def ids(self, topic: str) -> list[UUID]:
        return [UUID(str(n.originator_id)) for n in self.app.recorder.select_notifications(
            start=None, limit=10_000, topics=(topic,))]

    def get(self, aggregate_id: UUID) -> Any:
        return self.app.repository.get(aggregate_id)

    def command(self, command: Any) -> dict[str, Any]:
        out = self.engine.execute(command, idempotency_key=f"k-{uuid4()}")
        return msgspec.json.decode(out.result)  # type: ignore[no-any-return]

    def answer(self, m: StepMessage) -> StepOutcome:
        kind = f"{m.subsystem}.{m.action}"
        if self.fail.get(kind, 0) > 0:
            self.fail[kind] -= 1
            return StepOutcome(step_id=m.step_id, operation_id=m.operation_id,
                               attempt=m.attempt, subsystem=m.subsystem, ok=False,
                               error_code="injected", message=f"{kind} broke",
                               retryable=self.fail_retryable)
        result: msgspec.Struct
        if kind == "planner.plan":
            args = msgspec.json.decode(m.args, type=PlanPlacement)
            host = next(self.get(h) for h in self.host_ids if h not in args.avoid_hosts
                        and self.get(h).free_cpu_cores >= args.cpu_cores)
            result = Placement(host_id=host.id, host_name=host.name, host_uri=host.uri,
                               cluster_id=host.cluster_id, pod_id=host.pod_id,
                               zone_id=host.zone_id, planner=args.planner, considered=8,
                               examined=1, filtered=FilterCounts())
        elif kind == "storage.create_pool":
            a = msgspec.json.decode(m.args, type=CreatePool)
            result = PoolInfo(host_uri=a.host_uri, pool=a.pool, path=a.path,
                              capacity_bytes=100 * GIB, available_bytes=100 * GIB, created=True)
        elif kind == "storage.create_volume":
            v = msgspec.json.decode(m.args, type=CreateVolume)
            path = f"/pools/{v.volume.pool}/{v.volume.name}"
            self.volumes.add(path)
            result = VolumeInfo(volume=v.volume, path=path, capacity_bytes=v.capacity_bytes,
                                allocation_bytes=0, format="qcow2", created=True)
        elif kind == "storage.delete_volume":
            d = msgspec.json.decode(m.args, type=DeleteVolume)
            path = f"/pools/{d.volume.pool}/{d.volume.name}"
            result = Deleted(existed=path in self.volumes)
            self.volumes.discard(path)
        elif kind == "hypervisor.define":
            dd = msgspec.json.decode(m.args, type=DefineDomain)
            self.domains[dd.vm_id] = dd.host_uri
            result = DomainDefined(vm_id=dd.vm_id, name=dd.name, host_uri=dd.host_uri,
                                   domain_type="test", created=True, started=dd.start)
        elif kind == "hypervisor.undefine":
            u = msgspec.json.decode(m.args, type=UndefineDomain)
            result = DomainUndefined(vm_id=u.vm_id, existed=self.domains.pop(u.vm_id, None)
                                     is not None)
        elif kind == "hypervisor.start":
            s = msgspec.json.decode(m.args, type=StartDomain)
            assert self.domains[s.vm_id] == s.host_uri
            result = PowerChanged(vm_id=s.vm_id, how="started", state="running")
        elif kind == "hypervisor.stop":
            st = msgspec.json.decode(m.args, type=StopDomain)
            result = PowerChanged(vm_id=st.vm_id, how="graceful", state="shutoff")
        else:
            raise AssertionError(f"unexpected step {kind}")
        return StepOutcome(step_id=m.step_id, operation_id=m.operation_id, attempt=m.attempt,
                           subsystem=m.subsystem, ok=True,
                           result=msgspec.Raw(msgspec.json.encode(result)))

    def run(self, limit: int = 100) -> None:
        """Answer dispatched steps until none is left (retries are due at once)."""
        for _ in range(limit):
            messages, position = self.feed.read(self.feed.position())
            self.feed.commit(position)
            if not messages:
                later = self.engine.clock() + timedelta(days=1)  # retries and delays are due
                self.engine.clock = lambda later=later: later  # type: ignore[misc]
                if not self.engine.fire_due_timers():
                    return
                continue
            self.seen.extend(messages)
            self.engine.apply_outcomes([self.answer(m) for m in messages])
        raise AssertionError("steps never settled")

    def claims(self) -> dict[UUID, int]:
        return {h: len(self.get(h).claims) for h in self.host_ids if self.get(h).claims}

    def pool_claims(self) -> int:
        return sum(len(self.get(p).claims) for p in Directory(self.app).ids())


def deploy(cloud: Cloud, name: str = "web-1") -> dict[str, Any]:
    template = next(t for t in cloud.ids("template.Registered")
                    if cloud.get(t).state.value == "Ready")
    offering = next(o for o in cloud.ids("service_offering.Created")
                    if cloud.get(o).name == "small")
    zone = cloud.get(template).zone_id
    return cloud.command(DeployVm(name=name, account="alice", zone_id=zone,
                                  service_offering_id=offering, template_id=template))


def test_a_deploy_runs_every_step_and_records_each_on_the_entities(cloud: Cloud) -> None:
    accepted = deploy(cloud)
    cloud.run()
    vm: VirtualMachine = cloud.get(UUID(accepted["vm_id"]))
    volume: Volume = cloud.get(UUID(accepted["volume_id"]))
    op: Operation = cloud.get(UUID(accepted["operation_id"]))
    assert op.state is OperationState.SUCCEEDED
    assert [f"{m.subsystem}.{m.action}" for m in cloud.seen] == [
        "planner.plan", "storage.create_volume", "hypervisor.define"]
    assert vm.state is VmState.RUNNING and vm.host_id is not None
    host: Host = cloud.get(vm.host_id)
    assert [c[0] for c in host.claims.values()] == [vm.id]
    assert (volume.state, volume.vm_id, vm.root_volume_id) == (VolumeState.READY, vm.id,
                                                               volume.id)
    pool: PrimaryStoragePool = cloud.get(volume.pool_id)
    assert pool.cluster_id == host.cluster_id and len(pool.claims) == 1
    define = msgspec.json.decode(cloud.seen[2].args, type=DefineDomain)
    assert (define.host_uri, define.cpu_cores, define.memory_mib) == (host.uri, 1, 1024)
    assert [d.path for d in define.disks] == [volume.path]
    template: Template = cloud.get(volume.template_id)
    store: ImageStore = cloud.get(template.image_store_id)
    create = msgspec.json.decode(cloud.seen[1].args, type=CreateVolume)
    assert create.pool_path is not None and create.volume.pool == pool.pool_name
    assert create.template_path is not None and str(template.id) in create.template_path
    assert store.name in create.template_path or create.template_path.startswith("/")


@pytest.mark.parametrize("kind", ["planner.plan", "storage.create_volume"])
def test_a_deploy_failing_before_the_hypervisor_leaves_nothing_and_fails_the_vm(
        cloud: Cloud, kind: str) -> None:
    cloud.fail[kind] = 99
    accepted = deploy(cloud)
    cloud.run()
    vm: VirtualMachine = cloud.get(UUID(accepted["vm_id"]))
    volume: Volume = cloud.get(UUID(accepted["volume_id"]))
    assert cloud.get(UUID(accepted["operation_id"])).state in (OperationState.ROLLED_BACK,
                                                              OperationState.FAILED)
    assert vm.state is VmState.ERROR and kind in vm.last_error
    assert cloud.claims() == {} and cloud.pool_claims() == 0
    assert volume.state is VolumeState.EXPUNGED
    assert cloud.domains == {} and cloud.volumes == set()


@pytest.mark.parametrize("kind", ["hypervisor.define"])
def test_a_deploy_failing_at_the_hypervisor_retries_on_another_host(
        cloud: Cloud, kind: str) -> None:
    cloud.fail[kind] = 1  # the first deploy fails there (for good); the next host works
    accepted = deploy(cloud)
    cloud.run()
    vm: VirtualMachine = cloud.get(UUID(accepted["vm_id"]))
    first: Volume = cloud.get(UUID(accepted["volume_id"]))
    assert cloud.get(UUID(accepted["operation_id"])).state is OperationState.ROLLED_BACK
    assert vm.state is VmState.RUNNING
    assert len(vm.avoid_hosts) == 1 and vm.host_id not in vm.avoid_hosts
    assert first.state is VolumeState.EXPUNGED
    assert vm.root_volume_id not in (None, first.id)
    # exactly what the running VM holds, nothing of the failed attempt
    assert cloud.claims() == {vm.host_id: 1} and cloud.pool_claims() == 1
    assert cloud.domains == {vm.id: cloud.get(vm.host_id).uri} and len(cloud.volumes) == 1


def test_a_deploy_that_fails_on_every_host_ends_in_error_with_nothing_left(
        cloud: Cloud) -> None:
    cloud.fail["hypervisor.define"] = 99
    accepted = deploy(cloud)
    cloud.run()
    vm: VirtualMachine = cloud.get(UUID(accepted["vm_id"]))
    assert vm.state is VmState.ERROR and len(vm.avoid_hosts) == 3
    assert cloud.claims() == {} and cloud.pool_claims() == 0
    assert cloud.domains == {} and cloud.volumes == set()


def test_a_refused_claim_plans_again_without_that_host(cloud: Cloud) -> None:
    # Fill the first host behind the planner's back: its proposal is refused by the
    # Host aggregate, and the retry avoids it.
    first: Host = cloud.get(cloud.host_ids[0])
    first.claim(uuid4(), uuid4(), first.free_cpu_cores, 1)
    cloud.app.save(first)
    real_answer = cloud.answer

    def stale_planner(m: StepMessage) -> StepOutcome:
        if m.action == "plan" and m.attempt == 1:
            args = msgspec.json.decode(m.args, type=PlanPlacement)
            result = Placement(host_id=first.id, host_name=first.name, host_uri=first.uri,
                               cluster_id=first.cluster_id, pod_id=first.pod_id,
                               zone_id=first.zone_id, planner=args.planner, considered=8,
                               examined=1, filtered=FilterCounts())
            return StepOutcome(step_id=m.step_id, operation_id=m.operation_id,
                               attempt=m.attempt, subsystem=m.subsystem, ok=True,
                               result=msgspec.Raw(msgspec.json.encode(result)))
        return real_answer(m)

    cloud.answer = stale_planner  # type: ignore[method-assign]
    accepted = deploy(cloud)
    cloud.run()
    vm: VirtualMachine = cloud.get(UUID(accepted["vm_id"]))
    assert vm.state is VmState.RUNNING and vm.host_id != first.id
    assert vm.avoid_hosts == (first.id,)
    second_plan = [m for m in cloud.seen if m.action == "plan"][1]
    assert msgspec.json.decode(second_plan.args, type=PlanPlacement).avoid_hosts == (first.id,)
    assert len(cloud.get(first.id).claims) == 1  # only the claim made behind its back


def test_stop_start_and_destroy(cloud: Cloud) -> None:
    accepted = deploy(cloud)
    cloud.run()
    vm_id = UUID(accepted["vm_id"])
    stop = cloud.command(StopVm(vm_id=vm_id))
    assert cloud.get(vm_id).state is VmState.STOPPING
    cloud.run()
    assert cloud.get(UUID(stop["operation_id"])).state is OperationState.SUCCEEDED
    vm: VirtualMachine = cloud.get(vm_id)
    assert vm.state is VmState.STOPPED and cloud.claims() == {} and cloud.domains == {}

    cloud.command(StartVm(vm_id=vm_id))
    cloud.run()
    vm = cloud.get(vm_id)
    assert vm.state is VmState.RUNNING and cloud.claims() == {vm.host_id: 1}
    assert vm_id in cloud.domains

    cloud.command(DestroyVm(vm_id=vm_id))
    cloud.run()
    vm = cloud.get(vm_id)
    volume: Volume = cloud.get(UUID(accepted["volume_id"]))
    assert vm.state is VmState.EXPUNGED
    assert volume.state is VolumeState.EXPUNGED
    assert cloud.claims() == {} and cloud.pool_claims() == 0
    assert cloud.domains == {} and cloud.volumes == set()


def _cancel_with_define_in_flight(cloud: Cloud, operation_id: UUID) -> None:
    """Answer every step until `hypervisor.define` is dispatched; cancel the operation then,
    and let the define (which started the domain) succeed afterwards."""
    in_flight: list[StepMessage] = []
    while not in_flight:
        messages, position = cloud.feed.read(cloud.feed.position())
        cloud.feed.commit(position)
        assert messages, "hypervisor.define was never dispatched"
        in_flight = [m for m in messages if m.action == "define"]
        cloud.engine.apply_outcomes([cloud.answer(m) for m in messages
                                     if m.action != "define"])
    cloud.engine.cancel(operation_id, "the client changed its mind",
                        idempotency_key=f"c-{uuid4()}")
    cloud.engine.apply_outcomes([cloud.answer(m) for m in in_flight])
    cloud.run()


def test_a_deploy_cancelled_while_its_domain_starts_leaves_no_running_vm(
        cloud: Cloud) -> None:
    # Found by tests/integration/test_split_processes.py: the define succeeded after the
    # cancel and recorded the VM Running; its compensation undefined the domain and the
    # deploy's end released the claim, leaving a VM Running with no domain and no claim.
    accepted = deploy(cloud)
    _cancel_with_define_in_flight(cloud, UUID(accepted["operation_id"]))
    op: Operation = cloud.get(UUID(accepted["operation_id"]))
    vm: VirtualMachine = cloud.get(UUID(accepted["vm_id"]))
    assert op.state is OperationState.ROLLED_BACK
    assert vm.state is VmState.ERROR and len(vm.avoid_hosts) == 0  # not tried elsewhere
    assert cloud.domains == {} and cloud.claims() == {} and cloud.pool_claims() == 0
    assert len(cloud.ids("operation.Accepted")) == 1  # no deploy again elsewhere


def test_a_start_cancelled_while_its_domain_starts_leaves_the_vm_stopped(
        cloud: Cloud) -> None:
    vm_id = UUID(deploy(cloud)["vm_id"])
    cloud.run()
    cloud.command(StopVm(vm_id=vm_id))
    cloud.run()
    start = cloud.command(StartVm(vm_id=vm_id))
    _cancel_with_define_in_flight(cloud, UUID(start["operation_id"]))
    vm: VirtualMachine = cloud.get(vm_id)
    assert cloud.get(UUID(start["operation_id"])).state is OperationState.ROLLED_BACK
    assert vm.state is VmState.STOPPED and vm.host_id is None
    assert cloud.domains == {} and cloud.claims() == {}


def test_bad_deploys_are_refused_and_write_nothing(cloud: Cloud) -> None:
    head = cloud.app.recorder.max_notification_id()
    offering = next(o for o in cloud.ids("service_offering.Created"))
    not_ready = next(t for t in cloud.ids("template.Registered")
                     if cloud.get(t).state.value != "Ready")
    zone = cloud.get(not_ready).zone_id
    cases: list[tuple[Callable[[], Any], str]] = [
        (lambda: cloud.command(DeployVm(name="x", account="a", zone_id=zone,
                                        service_offering_id=offering,
                                        template_id=not_ready)), "not Ready"),
        (lambda: cloud.command(DeployVm(name="x", account="a", zone_id=zone,
                                        service_offering_id=not_ready,
                                        template_id=not_ready)), "service_offering_id"),
        (lambda: cloud.command(StopVm(vm_id=uuid4())), "no entity"),
    ]
    for call, message in cases:
        with pytest.raises(Exception, match=message):
            call()
    assert cloud.app.recorder.max_notification_id() == head
    assert isinstance(cloud.get(offering), ServiceOffering)


def test_destroy_expunges_only_after_the_delay(cloud: Cloud) -> None:
    accepted = deploy(cloud)
    cloud.run()
    vm_id, volume_id = UUID(accepted["vm_id"]), UUID(accepted["volume_id"])
    destroyed_at = cloud.engine.clock()
    cloud.command(DestroyVm(vm_id=vm_id, expunge_delay_seconds=3600))
    # answer what is dispatched now, without letting the clock move
    for _ in range(10):
        messages, position = cloud.feed.read(cloud.feed.position())
        cloud.feed.commit(position)
        if not messages:
            break
        cloud.engine.apply_outcomes([cloud.answer(m) for m in messages])
    assert cloud.engine.fire_due_timers() == 0
    vm: VirtualMachine = cloud.get(vm_id)
    assert vm.state is VmState.DESTROYED and vm.host_id is None
    assert cloud.claims() == {} and cloud.domains == {}
    assert cloud.get(volume_id).state is VolumeState.READY  # kept until the delay passes
    expunge: Operation = cloud.get(cloud.ids("operation.Accepted")[-1])
    assert expunge.kind == "vm.expunge" and expunge.state.value == "Running"
    assert expunge.next_wakeup() == destroyed_at + timedelta(seconds=3600)
    cloud.run()  # the clock jumps a day ahead: the expunge runs
    assert cloud.get(vm_id).state is VmState.EXPUNGED
    assert cloud.get(volume_id).state is VolumeState.EXPUNGED
    assert cloud.pool_claims() == 0 and cloud.volumes == set()


def test_destroying_a_stopped_vm_destroys_it_at_once_and_expunges_it(cloud: Cloud) -> None:
    accepted = deploy(cloud)
    cloud.run()
    vm_id = UUID(accepted["vm_id"])
    cloud.command(StopVm(vm_id=vm_id))
    cloud.run()
    destroyed = cloud.command(DestroyVm(vm_id=vm_id, expunge=False))
    assert destroyed["operation_id"] is None
    vm: VirtualMachine = cloud.get(vm_id)
    assert vm.state is VmState.DESTROYED
    assert cloud.get(UUID(accepted["volume_id"])).state is VolumeState.READY


def deploy_sized(cloud: Cloud, root_size_bytes: int | None) -> dict[str, Any]:
    template = next(t for t in cloud.ids("template.Registered")
                    if cloud.get(t).state.value == "Ready")
    offering = next(o for o in cloud.ids("service_offering.Created")
                    if cloud.get(o).name == "small")
    return cloud.command(DeployVm(name="web-1", account="alice",
                                  zone_id=cloud.get(template).zone_id,
                                  service_offering_id=offering, template_id=template,
                                  root_size_bytes=root_size_bytes))


def test_the_root_disk_is_the_templates_disk_or_the_larger_size_asked_for(
        cloud: Cloud) -> None:
    # The sample template holds a 2 GiB disk. A deploy makes its root disk that size, or
    # larger when asked; the volume is created (bound) at exactly the size recorded.
    for asked, recorded in ((None, 2 * GIB), (5 * GIB, 5 * GIB), (2 * GIB, 2 * GIB)):
        accepted = deploy_sized(cloud, asked)
        cloud.run()
        volume: Volume = cloud.get(UUID(accepted["volume_id"]))
        create = next(msgspec.json.decode(m.args, type=CreateVolume) for m in cloud.seen
                      if m.action == "create_volume" and m.operation_id ==
                      UUID(accepted["operation_id"]))
        assert volume.size_bytes == create.capacity_bytes == recorded
        assert volume.state is VolumeState.READY
    head = cloud.app.recorder.max_notification_id()
    for asked, field in ((GIB, "root_size_bytes: 1073741824 is smaller than the disk of "
                                "template"),
                         (2 * GIB + 1, "root_size_bytes: 2147483649 is not a positive "
                                       "multiple of 512")):
        with pytest.raises(ValidationError, match=field):
            deploy_sized(cloud, asked)
    assert cloud.app.recorder.max_notification_id() == head


def test_a_root_disk_made_at_another_size_than_recorded_is_refused(cloud: Cloud) -> None:
    # A storage plugin that made the disk at the template's size instead of the size asked
    # for: the kernel records no volume Ready at a size it is not.
    answer = cloud.answer

    def template_sized(m: StepMessage) -> StepOutcome:
        outcome = answer(m)
        if m.action == "create_volume":
            info = msgspec.json.decode(outcome.result, type=VolumeInfo)
            outcome = msgspec.structs.replace(outcome, result=msgspec.Raw(msgspec.json.encode(
                msgspec.structs.replace(info, capacity_bytes=2 * GIB))))
        return outcome

    cloud.answer = template_sized  # type: ignore[method-assign]
    accepted = deploy_sized(cloud, 4 * GIB)
    cloud.run()
    op: Operation = cloud.get(UUID(accepted["operation_id"]))
    assert op.state is not OperationState.SUCCEEDED
    assert "size_mismatch" in str(op.step(op.failed_step).attempts[-1].error_code)
    assert cloud.get(UUID(accepted["volume_id"])).state is VolumeState.EXPUNGED
    assert cloud.get(UUID(accepted["vm_id"])).state is VmState.ERROR
