"""VM reboot and migration in the engine, with scripted subsystem outcomes.

Migration claims the destination before the domain moves; whatever step fails (or a cancel
that moves the VM back), the VM must run on exactly one host and hold a claim on that host
only. Its NICs' DHCP/DNS entries go with it: made on the destination before the move, released
on the source after it, and put back as they were when the move is undone.
"""

from collections.abc import Iterator
from ipaddress import ip_network
from typing import Any
from uuid import UUID, uuid4

import msgspec
import pytest

from aggregates.errors import InvalidTransitionError
from aggregates.host import Host
from aggregates.network import Network
from aggregates.nic import Nic
from aggregates.operation import OperationState
from aggregates.template import Template
from aggregates.vm import VirtualMachine, VmState
from aggregates.volume import Volume
from kernel.bootstrap import SAMPLE_INVENTORY
from kernel.cloud.vm_moves import SOURCE_RETRY, MigrateVm, RebootVm, migration_claim_id
from kernel.cloud.vms import DeployVm, DestroyVm, StopVm
from kernel.commands import CommandService
from kernel.inventory.loader import LoadInventory, handle_load_inventory, load_inventory_file
from kernel.steps.hypervisor import MigrateDomain, RebootDomain
from kernel.steps.network import (
    AllocateNic,
    ElementImplemented,
    ImplementElement,
    NicAllocation,
    NicEntriesReleased,
    NicPrepared,
    NicReleased,
    PrepareNic,
    ReleaseNic,
    ReleaseNicEntries,
)
from kernel.steps.planner import Placement, PlanPlacement
from kernel.store.testing import scratch_application

from ._volume_cloud import VolumeCloud, make_cloud, running_vm
from .test_vm_deploy import GIB


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


@pytest.mark.parametrize("kind", ["stop", "destroy"])
def test_a_stop_cannot_be_cancelled_once_its_power_off_is_sent(cloud: VolumeCloud,
                                                                kind: str) -> None:
    # the domain goes off whatever the cancel says: the VM must end Stopped (Destroyed),
    # never Running again with its domain off (the reconciler found that at quiescence)
    vm = running_vm(cloud)
    command = StopVm(vm_id=vm.id) if kind == "stop" else DestroyVm(vm_id=vm.id)
    accepted = cloud.command(command)
    step = cloud.run_until("hypervisor.stop")
    with pytest.raises(InvalidTransitionError, match=r"hypervisor\.stop ran"):
        cloud.engine.cancel(UUID(accepted["operation_id"]), "no", idempotency_key="c")
    cloud.engine.apply_outcomes([cloud.answer(step)])
    cloud.run()
    assert cloud.op(accepted).state is OperationState.SUCCEEDED
    ended = cloud.get(vm.id)
    assert ended.state is (VmState.STOPPED if kind == "stop" else VmState.EXPUNGED)
    assert vm.id not in cloud.domains


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


# --------------------------------------------------------------------------- NIC entries


class NicCloud(VolumeCloud):
    """The move harness with a guru and a network element: the DHCP/DNS entries each host's
    libvirt network holds, by host URI, as `(mac, ip)`."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.entries: dict[str, set[tuple[str, str]]] = {}
        self.addresses = 10

    def _networkguru_allocate(self, raw: msgspec.Raw) -> NicAllocation:
        a = msgspec.json.decode(raw, type=AllocateNic)
        network: Network = self.get(a.network_id)
        self.addresses += 1
        return NicAllocation(network_id=a.network_id, nic_id=a.nic_id, zone_id=network.zone_id,
                             ip=str(ip_network(network.cidr)[self.addresses]),
                             mac=f"52:54:00:00:00:{self.addresses:02x}")

    def _networkguru_release(self, raw: msgspec.Raw) -> NicReleased:
        r = msgspec.json.decode(raw, type=ReleaseNic)
        return NicReleased(network_id=r.network_id, nic_id=r.nic_id, ip=None, mac=None)

    def _networkelement_implement(self, raw: msgspec.Raw) -> ElementImplemented:
        i = msgspec.json.decode(raw, type=ImplementElement)
        return ElementImplemented(network_id=i.network_id, host_uri=i.host_uri,
                                  libvirt_network="n", bridge="b", created=True)

    def _networkelement_prepare(self, raw: msgspec.Raw) -> NicPrepared:
        p = msgspec.json.decode(raw, type=PrepareNic)
        self.entries.setdefault(p.host_uri, set()).add((p.mac, p.ip))
        return NicPrepared(network_id=p.network_id, host_uri=p.host_uri, libvirt_network="n",
                           mac=p.mac, ip=p.ip, hostname=p.hostname, changed=True)

    def _networkelement_release(self, raw: msgspec.Raw) -> NicEntriesReleased:
        r = msgspec.json.decode(raw, type=ReleaseNicEntries)
        held = self.entries.get(r.host_uri, set())
        changed = (r.mac, r.ip) in held
        held.discard((r.mac, r.ip))
        return NicEntriesReleased(network_id=r.network_id, host_uri=r.host_uri, changed=changed)

    def bound(self, kind: str, since: int = 0) -> list[Any]:
        """The bound arguments of the steps of `kind` ("undo x.y" for compensations)."""
        types = {"networkelement.prepare": PrepareNic,
                 "networkelement.release": ReleaseNicEntries}
        return [msgspec.json.decode(m.args, type=types[kind.removeprefix("undo ")])
                for m, k in zip(self.seen[since:], self.kinds(since), strict=True) if k == kind]


@pytest.fixture
def nic_cloud() -> Iterator[NicCloud]:
    app = scratch_application()
    commands = CommandService(app, {LoadInventory: handle_load_inventory})
    load_inventory_file(commands, SAMPLE_INVENTORY)
    cloud = NicCloud(app)
    template_id = cloud.ids("template.Registered")[0]
    store_id = cloud.ids("image_store.Added")[0]
    template: Template = cloud.get(template_id)
    template.start_download(store_id)
    template.download_completed(2 * GIB)
    app.save(template)
    yield cloud
    app.close()


def nic_vm(cloud: NicCloud, networks: int = 2) -> VirtualMachine:
    """A Running VM with a NIC on each of `networks` implemented networks."""
    template = next(t for t in cloud.ids("template.Registered")
                    if cloud.get(t).state.value == "Ready")
    offering = next(o for o in cloud.ids("service_offering.Created")
                    if cloud.get(o).name == "small")
    zone_id = cloud.get(template).zone_id
    network_ids = []
    for i in range(networks):
        network = Network.create(name=f"guests-{i}", zone_id=zone_id, cidr=f"10.9.{i}.0/24",
                                 gateway=f"10.9.{i}.1")
        network.implement()
        network.implemented(vlan=100 + i)
        cloud.app.save(network)
        network_ids.append(network.id)
    accepted = cloud.command(DeployVm(name="web-1", account="alice", zone_id=zone_id,
                                      service_offering_id=offering, template_id=template,
                                      network_ids=tuple(network_ids)))
    cloud.run()
    vm: VirtualMachine = cloud.get(UUID(accepted["vm_id"]))
    assert vm.state is VmState.RUNNING and len(vm.nics) == networks
    return vm


def nic_entries(cloud: NicCloud, vm: VirtualMachine) -> set[tuple[str, str]]:
    nics: list[Nic] = [cloud.get(n) for n in vm.nics.values()]
    return {(n.mac, n.ip) for n in nics if n.ip is not None}


def test_a_migration_releases_the_nic_entries_on_the_source(nic_cloud: NicCloud) -> None:
    cloud = nic_cloud
    vm = nic_vm(cloud)
    source: Host = cloud.get(vm.host_id)
    entries = nic_entries(cloud, vm)
    assert cloud.entries[source.uri] == entries
    since = len(cloud.seen)
    moved = cloud.command(MigrateVm(vm_id=vm.id))
    cloud.run()
    op = cloud.op(moved)
    assert op.state is OperationState.SUCCEEDED, op.failure
    target: Host = cloud.get(cloud.get(vm.id).host_id)
    # the plan: the releases come after the move, one per NIC, each undone by a prepare
    migrate = next(s for s in op.plan.steps if s.subsystem == "hypervisor")
    after = [s for s in op.plan.steps if migrate.step_id in s.depends_on]
    assert [(s.subsystem, s.action) for s in after] == [("networkelement", "release")] * 2
    assert all(s.compensation is not None and s.compensation.action == "prepare"
               and s.retry == SOURCE_RETRY for s in after)
    assert cloud.kinds(since)[-3:] == ["hypervisor.migrate", "networkelement.release",
                                       "networkelement.release"]
    # prepared on the destination, released on the source
    assert {p.host_uri for p in cloud.bound("networkelement.prepare", since)} == {target.uri}
    released = cloud.bound("networkelement.release", since)
    assert {r.host_uri for r in released} == {source.uri}
    assert {(r.mac, r.ip) for r in released} == entries
    assert cloud.entries[source.uri] == set()
    assert cloud.entries[target.uri] == entries
    runs_only_on(cloud, vm.id, target.id)


def test_the_source_release_is_retried_generously(nic_cloud: NicCloud) -> None:
    cloud = nic_cloud
    vm = nic_vm(cloud, networks=1)
    source: Host = cloud.get(vm.host_id)
    cloud.fail["networkelement.release"], cloud.fail_retryable = 10, True
    moved = cloud.command(MigrateVm(vm_id=vm.id))
    cloud.run()
    op = cloud.op(moved)
    assert op.state is OperationState.SUCCEEDED, op.failure
    [release] = [r for r in op.forward_steps() if r.action == "release"]
    assert len(release.attempts) == 11
    assert cloud.entries[source.uri] == set()


@pytest.mark.parametrize("kind", ["networkelement.prepare", "hypervisor.migrate"])
def test_a_failed_migration_releases_the_destination_entries(nic_cloud: NicCloud,
                                                             kind: str) -> None:
    cloud = nic_cloud
    vm = nic_vm(cloud)
    assert vm.host_id is not None
    source: Host = cloud.get(vm.host_id)
    target: Host = cloud.get(next(h for h in cloud.host_ids if h != source.id))
    entries = nic_entries(cloud, vm)
    since = len(cloud.seen)
    # the first prepare fails after the other succeeded, or the move fails after both
    cloud.fail[kind] = 1
    moved = cloud.command(MigrateVm(vm_id=vm.id, host_id=target.id))
    cloud.run()
    assert cloud.op(moved).state is OperationState.ROLLED_BACK
    undone = cloud.bound("undo networkelement.release", since)
    assert len(undone) == (1 if kind == "networkelement.prepare" else 2)
    assert {r.host_uri for r in undone} == {target.uri}
    assert cloud.entries.get(target.uri, set()) == set()
    assert cloud.entries[source.uri] == entries
    runs_only_on(cloud, vm.id, source.id)


def test_a_cancel_during_the_source_release_puts_everything_back(nic_cloud: NicCloud) -> None:
    cloud = nic_cloud
    vm = nic_vm(cloud)
    assert vm.host_id is not None
    source: Host = cloud.get(vm.host_id)
    entries = nic_entries(cloud, vm)
    moved = cloud.command(MigrateVm(vm_id=vm.id))
    first = cloud.run_until("networkelement.release")  # both are dispatched together
    second = next(m for m in cloud.seen if f"{m.subsystem}.{m.action}"
                  == "networkelement.release" and m is not first)
    cloud.engine.apply_outcomes([cloud.answer(first)])  # one NIC's entries left the source
    cloud.engine.cancel(UUID(moved["operation_id"]), "no", idempotency_key="cancel-release")
    cloud.engine.apply_outcomes([cloud.answer(second)])
    since = len(cloud.seen)
    cloud.run()
    assert cloud.op(moved).state is OperationState.ROLLED_BACK
    assert cloud.kinds(since) == ["undo networkelement.prepare"] * 2 + [
        "undo hypervisor.migrate"] + ["undo networkelement.release"] * 2
    assert {p.host_uri for p in cloud.bound("undo networkelement.prepare", since)} == \
        {source.uri}
    assert cloud.entries[source.uri] == entries
    assert set().union(*(e for uri, e in cloud.entries.items() if uri != source.uri)) == set()
    runs_only_on(cloud, vm.id, source.id)


def test_a_source_that_stays_unreachable_leaves_the_vm_moved(nic_cloud: NicCloud) -> None:
    cloud = nic_cloud
    vm = nic_vm(cloud, networks=1)
    assert vm.host_id is not None
    moved = cloud.command(MigrateVm(vm_id=vm.id))
    release = cloud.run_until("networkelement.release")
    # the source is gone: the release fails for good, and so does moving back
    cloud.fail["networkelement.release"] = 1
    cloud.fail["hypervisor.migrate"] = 99
    cloud.engine.apply_outcomes([cloud.answer(release)])
    cloud.run()
    op = cloud.op(moved)
    assert op.state is OperationState.FAILED
    assert op.failure is not None and op.failure.phase.value == "compensation"
    target = cloud.get(vm.id).host_id
    assert target is not None and target != vm.host_id
    # it runs on the destination, with its entries there, and holds a claim there only
    assert nic_entries(cloud, vm) <= cloud.entries[cloud.get(target).uri]
    runs_only_on(cloud, vm.id, target)
