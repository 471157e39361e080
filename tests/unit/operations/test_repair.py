"""`entity.repair`: a VM or volume stuck by an outside failure forced to a settled state.

The stuck states are built by changing the aggregates directly, as a failure outside the
kernel's operations leaves them (no operation holds the entity). Every allowed repair must
leave the entity and the claims of its hosts and pools consistent (as the operation that
failed would have), be replayed from the store as it was made, and show in the read models;
every refused one must write nothing and say why.
"""

from collections.abc import Callable, Iterator
from typing import Any
from uuid import UUID, uuid4

import msgspec
import pytest

from aggregates.errors import KernelError, NotFoundError, ValidationError
from aggregates.host import Host
from aggregates.offering import ServiceOffering
from aggregates.operation import Operation, OperationState
from aggregates.repair import VM_REPAIRS, VOLUME_REPAIRS, RepairRefusedError
from aggregates.snapshot import Snapshot, SnapshotState
from aggregates.vm import VirtualMachine, VmState
from aggregates.volume import Volume, VolumeState
from kernel.cloud.repair import RepairEntity
from kernel.cloud.vms import StopVm, placement_claim_id, pool_claim_id
from kernel.cloud.volume_moves import DeleteVolumeCommand
from projections.models import VmModel
from projections.storage import VolumeModel

from ._volume_cloud import (
    VolumeCloud,
    create_volume,
    make_cloud,
    pool_of,
    ready_volume,
    running_vm,
)
from .test_vm_deploy import GIB, NOW, deploy

REASON = "libvirt lost the domain after a host crash"


@pytest.fixture
def cloud() -> Iterator[VolumeCloud]:
    made = make_cloud()
    yield made
    made.app.close()


def repair(cloud: VolumeCloud, entity_id: UUID, to: str, reason: str = REASON,
           actor: str = "alice") -> dict[str, Any]:
    out = cloud.engine.execute(RepairEntity(entity_id=entity_id, to_state=to, reason=reason),
                               idempotency_key=f"k-{uuid4()}", actor=actor)
    return msgspec.json.decode(out.result)  # type: ignore[no-any-return]


def refused(cloud: VolumeCloud, entity_id: UUID, to: str, match: str,
            error: type[Exception] = RepairRefusedError, reason: str = REASON) -> None:
    """The repair is refused with `match` in its message, and writes nothing."""
    head = cloud.app.recorder.max_notification_id()
    with pytest.raises(error, match=match):
        repair(cloud, entity_id, to, reason)
    assert cloud.app.recorder.max_notification_id() == head


def vm_claims(cloud: VolumeCloud, vm_id: UUID) -> dict[UUID, int]:
    """Host id -> how many claims the VM holds there."""
    found: dict[UUID, int] = {}
    for host_id in cloud.host_ids:
        count = sum(1 for v, _, _ in cloud.get(host_id).claims.values() if v == vm_id)
        if count:
            found[host_id] = count
    return found


def offering(cloud: VolumeCloud, vm: VirtualMachine) -> ServiceOffering:
    return cloud.get(vm.service_offering_id)  # type: ignore[no-any-return]


def other_host(cloud: VolumeCloud, vm: VirtualMachine) -> Host:
    return next(cloud.get(h) for h in cloud.host_ids if h not in (vm.host_id, vm.last_host_id))


# --------------------------------------------------------------------------- stuck VMs


def stopped_vm(cloud: VolumeCloud) -> VirtualMachine:
    vm = running_vm(cloud)
    cloud.command(StopVm(vm_id=vm.id))
    cloud.run()
    stopped: VirtualMachine = cloud.get(vm.id)
    assert stopped.state is VmState.STOPPED and not vm_claims(cloud, vm.id)
    return stopped


def stuck_starting(cloud: VolumeCloud) -> UUID:
    """Placed and claimed, then nothing: the start never ended."""
    vm = stopped_vm(cloud)
    host = other_host(cloud, vm)
    size = offering(cloud, vm)
    host.claim(placement_claim_id(uuid4()), vm.id, size.cpu_cores, size.memory_mib)
    vm.start(host.id)
    cloud.app.save(vm, host)
    return vm.id


def stuck_stopping(cloud: VolumeCloud) -> UUID:
    vm = running_vm(cloud)
    vm.stop()
    cloud.app.save(vm)
    return vm.id


def stuck_migrating(cloud: VolumeCloud) -> UUID:
    """Claimed on a destination too, then nothing: the migration never ended."""
    vm = running_vm(cloud)
    destination = other_host(cloud, vm)
    size = offering(cloud, vm)
    destination.claim(uuid4(), vm.id, size.cpu_cores, size.memory_mib)
    vm.migrate(destination.id)
    cloud.app.save(vm, destination)
    return vm.id


def in_error(cloud: VolumeCloud) -> UUID:
    """Failed while stopping, on its host, without its claim (as after a failed deploy)."""
    vm_id = stuck_stopping(cloud)
    vm: VirtualMachine = cloud.get(vm_id)
    assert vm.host_id is not None
    host: Host = cloud.get(vm.host_id)
    for claim_id in [c for c, (v, _, _) in host.claims.items() if v == vm_id]:
        host.release(claim_id)
    vm.fail("hypervisor.stop timed out")
    cloud.app.save(vm, host)
    return vm_id


def stuck_expunging(cloud: VolumeCloud) -> UUID:
    vm = stopped_vm(cloud)
    vm.destroy()
    vm.expunge()
    cloud.app.save(vm)
    return vm.id


STUCK: dict[str, Callable[[VolumeCloud], UUID]] = {
    "Starting": stuck_starting, "Stopping": stuck_stopping, "Migrating": stuck_migrating,
    "Error": in_error, "Expunging": stuck_expunging,
}
VM_CASES = [(src, dst) for src, targets in VM_REPAIRS.stuck.items() for dst in targets]


@pytest.mark.parametrize(("source", "target"), VM_CASES,
                         ids=[f"{s}->{t}" for s, t in VM_CASES])
def test_each_vm_repair_settles_the_state_and_the_claims(cloud: VolumeCloud, source: str,
                                                         target: str) -> None:
    vm_id = STUCK[source](cloud)
    before: VirtualMachine = cloud.get(vm_id)
    assert before.state.value == source
    done = repair(cloud, vm_id, target.lower(), actor="alice")
    assert (done["from_state"], done["to_state"], done["reason"]) == (source, target, REASON)
    vm: VirtualMachine = cloud.get(vm_id)  # replayed from the store
    assert vm.state.value == target and vm.destination_host_id is None
    if target == "Running":  # on the host it was on, holding capacity there only
        assert vm.host_id == before.host_id and vm_claims(cloud, vm_id) == {vm.host_id: 1}
        assert vm.last_error == ""
    else:
        assert vm_claims(cloud, vm_id) == {} and vm.last_error == REASON
    if target == "Stopped":
        assert vm.host_id is None and vm.last_host_id == before.host_id
    for host_id in cloud.host_ids:  # used capacity is the sum of the claims
        host: Host = cloud.get(host_id)
        assert host.used_cpu_cores == sum(c for _, c, _ in host.claims.values())


def test_the_event_names_the_actor_and_the_reason_and_the_read_model_follows(
        cloud: VolumeCloud) -> None:
    vm_id = stuck_migrating(cloud)
    destination = cloud.get(vm_id).destination_host_id
    repair(cloud, vm_id, "Running", actor="ops-bob")
    notes = cloud.app.recorder.select_notifications(start=None, limit=10,
                                                    topics=("vm.Repaired",))
    assert len(notes) == 1
    event = cloud.app.mapper.to_domain_event(notes[0])
    assert isinstance(event, VirtualMachine.Repaired)
    assert (event.from_state, event.to_state) == (VmState.MIGRATING, VmState.RUNNING)
    assert (event.reason, event.actor) == (REASON, "ops-bob")
    assert event.causation_id and event.causation_id.startswith("command:entity.repair:")
    # the destination's claim went back in the same transaction, by the same actor
    released = cloud.app.recorder.select_notifications(start=notes[0].id - 5, limit=10,
                                                       topics=("host.CapacityReleased",))
    assert [(n.originator_id, cloud.app.mapper.to_domain_event(n).actor)
            for n in released] == [(destination, "ops-bob")]
    row = fold(VmModel, vm_id, cloud)
    vm: VirtualMachine = cloud.get(vm_id)
    assert (row["state"], row["host_id"], row["destination_host_id"], row["last_error"]) == (
        "Running", vm.host_id, None, "")


def fold(model: Any, entity_id: UUID, cloud: VolumeCloud) -> dict[str, Any]:
    """The read model's row of the entity, folded from its stored events."""
    row = None
    for position, event in enumerate(cloud.app.events.get(entity_id), start=1):
        row = model.fold(row, event, position)
    assert row is not None
    return row


def test_a_vm_repaired_to_stopped_shows_so_in_the_read_model(cloud: VolumeCloud) -> None:
    vm_id = stuck_starting(cloud)
    repair(cloud, vm_id, "Stopped")
    row = fold(VmModel, vm_id, cloud)
    assert (row["state"], row["host_id"], row["last_error"]) == ("Stopped", None, REASON)


def test_a_repaired_vm_starts_again_through_the_ordinary_operation(cloud: VolumeCloud) -> None:
    from kernel.cloud.vms import StartVm

    vm_id = stuck_starting(cloud)
    repair(cloud, vm_id, "Stopped")
    accepted = cloud.command(StartVm(vm_id=vm_id))
    cloud.run()
    assert cloud.op(accepted).state is OperationState.SUCCEEDED
    vm: VirtualMachine = cloud.get(vm_id)
    assert vm.state is VmState.RUNNING and vm_claims(cloud, vm_id) == {vm.host_id: 1}


def test_error_to_running_takes_a_claim_only_where_there_is_room(cloud: VolumeCloud) -> None:
    vm_id = in_error(cloud)
    vm: VirtualMachine = cloud.get(vm_id)
    assert vm.host_id is not None and vm_claims(cloud, vm_id) == {}
    host: Host = cloud.get(vm.host_id)
    host.claim(uuid4(), uuid4(), host.free_cpu_cores, host.free_memory_mib)  # full now
    cloud.app.save(host)
    refused(cloud, vm_id, "Running", f"cannot be Running on host {host.name}.*repair it to "
                                     "Stopped, then vm.start")
    repair(cloud, vm_id, "Stopped")
    assert cloud.get(vm_id).state is VmState.STOPPED


def test_error_to_running_takes_its_claim_back(cloud: VolumeCloud) -> None:
    vm_id = in_error(cloud)
    done = repair(cloud, vm_id, "Running")
    vm: VirtualMachine = cloud.get(vm_id)
    assert vm_claims(cloud, vm_id) == {vm.host_id: 1}
    assert done["also"] and done["also"][0].startswith("claimed ")


# --------------------------------------------------------------------------- VM refusals


def test_refused_while_an_operation_holds_the_vm(cloud: VolumeCloud) -> None:
    accepted = deploy(cloud)
    cloud.run_until("hypervisor.define")  # the deploy runs: the VM is Starting
    vm_id = UUID(accepted["vm_id"])
    assert cloud.get(vm_id).state is VmState.STARTING
    op_id = accepted["operation_id"]
    refused(cloud, vm_id, "Running", f"held by operation {op_id} \\(vm.deploy, Running\\).*"
                                     f"cancel operation {op_id} first")
    refused(cloud, UUID(op_id), "Stopped", "is an operation.*operation.cancel")


def test_a_finished_operation_still_shown_as_owner_does_not_block(cloud: VolumeCloud) -> None:
    from aggregates.entity_queue import EntityQueue
    from aggregates.plan import Plan, PlannedStep
    from kernel.steps.hypervisor import RebootDomain

    vm_id = stuck_stopping(cloud)
    step = PlannedStep.of(RebootDomain(vm_id=vm_id, host_uri="test:///default"))
    op = Operation.accept(kind="vm.reboot", plan=Plan(steps=(step,)), now=NOW,
                          entity_ids=(vm_id,))
    op.start(NOW)
    op.cancel("gone", NOW)
    assert op.is_finished
    queue: EntityQueue = cloud.get(EntityQueue.create_id(vm_id))
    queue.acquire(op.id)  # a stale hold
    cloud.app.save(op, queue)
    done = repair(cloud, vm_id, "Running")
    assert done["also"] == [f"freed from finished operation {op.id}, which still held it"]
    assert not cloud.get(EntityQueue.create_id(vm_id)).is_busy  # the next operation runs


@pytest.mark.parametrize(("build", "to", "match"), [
    (running_vm, "Stopped", "is Running, a settled state.*vm.stop"),
    (stopped_vm, "Running", "is Stopped, a settled state.*vm.start"),
    (stuck_stopping, "Starting", "a repair sets only Running, Stopped, Error; Starting is "
                                 "reached through vm.start"),
    (stuck_stopping, "Expunged", "never removes an entity: only an expunge does"),
    (stuck_stopping, "destroyed", "Destroyed is reached through vm.destroy"),
    (stuck_expunging, "Running", "disks and addresses were being removed.*Error"),
    (stuck_expunging, "Stopped", "disks and addresses were being removed"),
    (in_error, "Error", "is Error already"),
], ids=["running", "stopped", "into-transition", "into-expunged", "into-destroyed",
        "expunging-running", "expunging-stopped", "same"])
def test_vm_refusals_write_nothing(cloud: VolumeCloud, build: Callable[[VolumeCloud], Any],
                                   to: str, match: str) -> None:
    built = build(cloud)
    refused(cloud, built if isinstance(built, UUID) else built.id, to, match)


def test_bad_input_is_refused(cloud: VolumeCloud) -> None:
    vm_id = stuck_stopping(cloud)
    for reason in ("", "   ", "oops"):
        refused(cloud, vm_id, "Running", "reason: say why vm web-1 is repaired, in at least 8",
                ValidationError, reason=reason)
    refused(cloud, vm_id, "Runnin", "'Runnin' is not a vm state; a vm is repaired to one of "
                                    "Running, Stopped, Error", ValidationError)
    refused(cloud, uuid4(), "Running", "no entity", NotFoundError)
    refused(cloud, cloud.host_ids[0], "Running", "is a host: only VMs and volumes")


def test_a_vm_without_a_usable_root_volume_is_not_made_to_run(cloud: VolumeCloud) -> None:
    vm_id = stuck_stopping(cloud)
    vm: VirtualMachine = cloud.get(vm_id)
    root: Volume = cloud.get(vm.root_volume_id)
    target = next(p for p in (cloud.get(i) for i in cloud.ids("storage_pool.Created"))
                  if p.id != root.pool_id)
    root.migrate(target.id)
    cloud.app.save(root)
    refused(cloud, vm_id, "Stopped", f"root volume {root.name} .* is Migrating; repair the "
                                     "volume first")
    repair(cloud, root.id, "Ready")
    repair(cloud, vm_id, "Stopped")


def test_a_vm_on_no_host_cannot_be_running(cloud: VolumeCloud) -> None:
    vm = stopped_vm(cloud)
    vm.fail("deploy failed everywhere")  # Stopped -> Error, on no host
    cloud.app.save(vm)
    refused(cloud, vm.id, "Running", "is on no host: it cannot be Running; repair it to Stopped")


def test_a_vm_whose_deploy_never_made_its_disk_can_only_be_error(cloud: VolumeCloud) -> None:
    accepted = deploy(cloud)
    cloud.run_until("storage.create_volume")
    vm_id, op_id = UUID(accepted["vm_id"]), UUID(accepted["operation_id"])
    cloud.engine.cancel(op_id, "the storage never answered", idempotency_key="cancel-1")
    cloud.run()
    # the cancel settled it (Error, nothing held): nothing is stuck, no disk to run from
    vm: VirtualMachine = cloud.get(vm_id)
    assert vm.state is VmState.ERROR and vm_claims(cloud, vm_id) == {}
    refused(cloud, vm_id, "Stopped", "has no root volume: it cannot be Stopped; vm.destroy")


# --------------------------------------------------------------------------- volumes


def stuck_creating(cloud: VolumeCloud) -> UUID:
    volume = ready_volume(cloud)  # for a pool of the right zone
    pool = pool_of(cloud, volume)
    fresh = Volume.allocate(name="data-stuck", account="alice", zone_id=volume.zone_id,
                            volume_type=volume.volume_type, size_bytes=GIB)
    pool.claim(pool_claim_id(fresh.id), fresh.id, GIB)
    fresh.create(pool.id)
    cloud.app.save(fresh, pool)
    return fresh.id


def stuck_volume_migrating(cloud: VolumeCloud) -> UUID:
    volume = ready_volume(cloud)
    target = next(p for p in (cloud.get(i) for i in cloud.ids("storage_pool.Created"))
                  if p.id != volume.pool_id)
    target.claim(pool_claim_id(volume.id), volume.id, volume.size_bytes)
    volume.migrate(target.id)
    cloud.app.save(volume, target)
    return volume.id


def stuck_resizing(cloud: VolumeCloud) -> UUID:
    volume = ready_volume(cloud)
    pool = pool_of(cloud, volume)
    pool.resize_claim(pool_claim_id(volume.id), volume.size_bytes + GIB)
    volume.resize(volume.size_bytes + GIB)
    cloud.app.save(volume, pool)
    return volume.id


def stuck_snapshotting(cloud: VolumeCloud) -> UUID:
    volume = ready_volume(cloud)
    snapshot = Snapshot.allocate(name="snap-1", account="alice", zone_id=volume.zone_id,
                                 volume_id=volume.id, volume_size_bytes=volume.size_bytes)
    volume.take_snapshot(snapshot.id)
    snapshot.create()
    cloud.app.save(volume, snapshot)
    return volume.id


def stuck_attaching(cloud: VolumeCloud) -> UUID:
    volume = ready_volume(cloud)
    volume.attach(running_vm(cloud).id, 1)
    cloud.app.save(volume)
    return volume.id


def stuck_volume_expunging(cloud: VolumeCloud) -> UUID:
    volume = ready_volume(cloud)
    volume.destroy()
    volume.expunge()
    cloud.app.save(volume)
    return volume.id


VOLUME_STUCK: dict[str, Callable[[VolumeCloud], UUID]] = {
    "Creating": stuck_creating, "Attaching": stuck_attaching,
    "Migrating": stuck_volume_migrating, "Resizing": stuck_resizing,
    "Snapshotting": stuck_snapshotting, "Expunging": stuck_volume_expunging,
}
VOLUME_CASES = [(src, dst) for src, targets in VOLUME_REPAIRS.stuck.items() for dst in targets]


def pool_claims(cloud: VolumeCloud, volume_id: UUID) -> dict[UUID, int]:
    """Pool id -> the bytes the volume holds there."""
    return {pool.id: pool.claims[pool_claim_id(volume_id)][1]
            for pool in (cloud.get(p) for p in cloud.ids("storage_pool.Created"))
            if pool_claim_id(volume_id) in pool.claims}


@pytest.mark.parametrize(("source", "target"), VOLUME_CASES,
                         ids=[f"{s}->{t}" for s, t in VOLUME_CASES])
def test_each_volume_repair_settles_the_state_and_the_claims(
        cloud: VolumeCloud, source: str, target: str) -> None:
    volume_id = VOLUME_STUCK[source](cloud)
    before: Volume = cloud.get(volume_id)
    assert before.state.value == source
    done = repair(cloud, volume_id, target)
    assert (done["from_state"], done["to_state"]) == (source, target)
    volume: Volume = cloud.get(volume_id)  # replayed from the store
    assert volume.state.value == target and volume.last_error == REASON
    assert volume.destination_pool_id is None and volume.requested_size_bytes is None
    assert volume.snapshot_id is None
    claims = pool_claims(cloud, volume_id)
    if source == "Creating":
        assert volume.pool_id is None and claims == {}
    else:  # on the pool it was on, with a claim of its size there only
        assert volume.pool_id == before.pool_id
        assert claims == {volume.pool_id: volume.size_bytes}
    if source == "Resizing":
        assert volume.size_bytes == before.size_bytes
    if source == "Attaching":  # its VM never listed it: detached, as a failed attach
        assert volume.vm_id is None and volume.device_id is None
    if source == "Snapshotting":
        snapshot: Snapshot = cloud.get(before.snapshot_id)
        assert snapshot.state is SnapshotState.ERROR and REASON in snapshot.last_error
    row = fold(VolumeModel, volume_id, cloud)
    assert (row["state"], row["pool_id"], row["vm_id"], row["last_error"]) == (
        target, volume.pool_id, volume.vm_id, REASON)


def test_an_attaching_volume_its_vm_lists_stays_attached(cloud: VolumeCloud) -> None:
    volume_id = stuck_attaching(cloud)
    volume: Volume = cloud.get(volume_id)
    assert volume.vm_id is not None
    vm: VirtualMachine = cloud.get(volume.vm_id)
    vm.attach_disk(volume_id, 1)
    cloud.app.save(vm)
    repair(cloud, volume_id, "Ready")
    volume = cloud.get(volume_id)
    assert (volume.state, volume.vm_id, volume.device_id) == (VolumeState.READY, vm.id, 1)
    assert fold(VolumeModel, volume_id, cloud)["vm_id"] == vm.id


@pytest.mark.parametrize(("build", "to", "match", "error"), [
    (stuck_creating, "Ready", "never learned where its storage is.*Allocated", None),
    (stuck_volume_expunging, "Ready", "storage was being deleted; repair it to Destroy", None),
    (stuck_volume_expunging, "Expunged", "never removes an entity", None),
    (ready_volume, "Allocated", "is Ready, a settled state.*volume.attach", None),
    (stuck_resizing, "Snapshotting", "a repair sets only Allocated, Ready, Destroy; "
                                     "Snapshotting is reached through volume.snapshot", None),
    (stuck_resizing, "Running", "not a volume state; a volume is repaired to one of "
                                "Allocated, Ready, Destroy", ValidationError),
], ids=["creating-ready", "expunging-ready", "into-expunged", "settled", "into-transition",
        "vm-state"])
def test_volume_refusals_write_nothing(cloud: VolumeCloud, build: Callable[[VolumeCloud], Any],
                                       to: str, match: str,
                                       error: type[Exception] | None) -> None:
    built = build(cloud)
    volume_id = built if isinstance(built, UUID) else built.id
    refused(cloud, volume_id, to, match, error or RepairRefusedError)


def attached_to(cloud: VolumeCloud, *, expunged: bool) -> UUID:
    """A Ready data volume attached to a Stopped VM, or to one since expunged while it was
    attached (as `vm.destroy` left it before expunges detached data volumes)."""
    vm, volume = stopped_vm(cloud), ready_volume(cloud)
    volume.attach(vm.id, 1)
    volume.attached()
    vm.attach_disk(volume.id, 1)
    if expunged:
        vm.destroy()
        vm.expunge()
        vm.expunged()
    cloud.app.save(vm, volume)
    return volume.id


def test_a_volume_left_attached_to_an_expunged_vm_is_detached_ready(
        cloud: VolumeCloud) -> None:
    volume_id = attached_to(cloud, expunged=True)
    before: Volume = cloud.get(volume_id)
    assert before.vm_id is not None
    vm_id = before.vm_id
    with pytest.raises(Exception, match="attached to vm"):  # stuck: delete refuses it
        cloud.command(DeleteVolumeCommand(volume_id=volume_id))
    done = repair(cloud, volume_id, "Ready")
    assert (done["from_state"], done["to_state"]) == ("Ready", "Ready")
    assert any("expunged" in line for line in done["also"])
    volume: Volume = cloud.get(volume_id)  # replayed from the store
    assert (volume.state, volume.vm_id, volume.device_id) == (VolumeState.READY, None, None)
    assert volume_id not in cloud.get(vm_id).disks.values()
    assert pool_claims(cloud, volume_id) == {volume.pool_id: volume.size_bytes}
    row = fold(VolumeModel, volume_id, cloud)
    assert (row["state"], row["vm_id"]) == ("Ready", None)
    deleted = cloud.command(DeleteVolumeCommand(volume_id=volume_id))
    cloud.run()
    assert cloud.op(deleted).state is OperationState.SUCCEEDED
    refused(cloud, volume_id, "Ready", "Expunged, a settled state")


def test_a_volume_attached_to_a_vm_that_exists_is_not_repaired(cloud: VolumeCloud) -> None:
    refused(cloud, attached_to(cloud, expunged=False), "Ready", "is Ready, a settled state")
    refused(cloud, attached_to(cloud, expunged=True), "Destroy",
            "which is expunged: repair it to Ready, detached")


def test_refused_while_an_operation_holds_the_volume(cloud: VolumeCloud) -> None:
    accepted = create_volume(cloud)
    cloud.run_until("storage.create_volume")
    volume_id = UUID(accepted["volume_id"])
    assert cloud.get(volume_id).state is VolumeState.CREATING
    refused(cloud, volume_id, "Allocated",
            f"cancel operation {accepted['operation_id']} first", RepairRefusedError)


def test_refusals_are_kernel_errors_with_a_stable_code() -> None:
    assert issubclass(RepairRefusedError, KernelError)
    assert RepairRefusedError("x").to_dict() == {"code": "repair_refused", "message": "x"}


def test_the_rules_name_real_states() -> None:
    for rules, states in ((VM_REPAIRS, VmState), (VOLUME_REPAIRS, VolumeState)):
        values = {s.value for s in states}
        named = {*rules.stuck, *rules.targets, *rules.settled,
                 *(s for pair in rules.refused for s in pair)}
        assert named <= values
        # every state is either stuck (repairable) or settled (with a hint), never both
        assert set(rules.stuck) | set(rules.settled) == values
        assert not set(rules.stuck) & set(rules.settled)
        # every state no repair sets, but Expunged, names the command that reaches it
        assert set(rules.reached_by) == values - set(rules.targets) - {"Expunged"}
