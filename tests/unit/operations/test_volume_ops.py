"""Volume operations in the engine (create, attach, detach, resize, snapshot, revert, backup,
restore), with scripted subsystem outcomes.

The test plays the subsystems as `test_vm_deploy` does, and keeps what they hold (volume
files, disks in domains, snapshot and backup files), so that a failure injected at each step,
or a cancel that compensates a step that succeeded, is checked to leave no claim, file, disk,
snapshot or backup behind, and the entities in their resting states.
"""

import hashlib
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from uuid import UUID

import msgspec
import pytest

from aggregates.backup import Backup, BackupState
from aggregates.offering import DiskOffering
from aggregates.operation import Operation, OperationState
from aggregates.snapshot import Snapshot, SnapshotState
from aggregates.storage_pool import PrimaryStoragePool
from aggregates.template import Template
from aggregates.vm import VirtualMachine, VmState
from aggregates.volume import Volume, VolumeState
from kernel.bootstrap import SAMPLE_INVENTORY
from kernel.cloud.vms import StopVm, pool_claim_id
from kernel.cloud.volume_copies import (
    BackupVmCommand,
    RestoreVmCommand,
    RevertVolumeCommand,
    SnapshotVolumeCommand,
)
from kernel.cloud.volumes import (
    AttachVolumeCommand,
    CreateVolumeCommand,
    DetachVolumeCommand,
    ResizeVolumeCommand,
)
from kernel.commands import CommandService
from kernel.contracts import StepMessage, StepOutcome
from kernel.inventory.loader import LoadInventory, handle_load_inventory, load_inventory_file
from kernel.steps.backup import (
    BackupCreated,
    BackupDeleted,
    BackupFile,
    BackupRestored,
    CreateBackup,
    DeleteBackup,
    RestoreBackup,
)
from kernel.steps.hypervisor import (
    AttachDisk,
    DetachDisk,
    DiskChanged,
    Migrated,
    MigrateDomain,
    PowerChanged,
    RebootDomain,
)
from kernel.steps.planner import FilterCounts, Placement, PlanPlacement
from kernel.steps.snapshot import (
    CreateSnapshot,
    DeleteSnapshot,
    RevertSnapshot,
    SnapshotDeleted,
    SnapshotReverted,
    SnapshotTaken,
)
from kernel.steps.storage import ResizeVolume, VolumeResized
from kernel.store.testing import scratch_application

from .test_vm_deploy import GIB, NOW, Cloud, deploy


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class VolumeCloud(Cloud):
    """The deploy harness, answering the volume, snapshot, backup and move steps too."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.disks: dict[UUID, set[str]] = {}  # vm id -> files attached to its domain
        self.sizes: dict[str, int] = {}  # volume file -> size after a resize
        self.snapshots: dict[UUID, str] = {}  # snapshot id -> sha256 of its file
        self.backups: dict[UUID, tuple[UUID, ...]] = {}  # backup id -> volumes in it
        self.reverted: list[UUID] = []
        self.restored: list[UUID] = []
        self.reboots = 0
        self.now = NOW
        self.engine.clock = lambda: self.now

    def get(self, aggregate_id: UUID | None) -> Any:
        assert aggregate_id is not None
        return super().get(aggregate_id)

    def answer(self, m: StepMessage) -> StepOutcome:
        kind = f"{m.subsystem}.{m.action}"
        handler = getattr(self, "_" + kind.replace(".", "_"), None)
        if self.fail.get(kind, 0) > 0 or handler is None:
            return super().answer(m)  # injected failures, and the deploy's steps
        result = handler(m.args)
        return StepOutcome(step_id=m.step_id, operation_id=m.operation_id, attempt=m.attempt,
                           subsystem=m.subsystem, ok=True,
                           result=msgspec.Raw(msgspec.json.encode(result)))

    def _planner_plan(self, raw: msgspec.Raw) -> Placement:
        args = msgspec.json.decode(raw, type=PlanPlacement)
        host = next(self.get(h) for h in self.host_ids if h not in args.avoid_hosts
                    and args.cluster_id in (None, self.get(h).cluster_id)
                    and self.get(h).free_cpu_cores >= args.cpu_cores)
        return Placement(host_id=host.id, host_name=host.name, host_uri=host.uri,
                         cluster_id=host.cluster_id, pod_id=host.pod_id, zone_id=host.zone_id,
                         planner=args.planner, considered=8, examined=1,
                         filtered=FilterCounts())

    def _hypervisor_attach_disk(self, raw: msgspec.Raw) -> DiskChanged:
        a = msgspec.json.decode(raw, type=AttachDisk)
        assert self.domains[a.vm_id] == a.host_uri and a.disk.path in self.volumes
        self.disks.setdefault(a.vm_id, set()).add(a.disk.path)
        return DiskChanged(vm_id=a.vm_id, path=a.disk.path, target="vdb", how="device",
                           live=True)

    def _hypervisor_detach_disk(self, raw: msgspec.Raw) -> DiskChanged:
        d = msgspec.json.decode(raw, type=DetachDisk)
        self.disks.get(d.vm_id, set()).discard(d.disk.path)
        return DiskChanged(vm_id=d.vm_id, path=d.disk.path, target="vdb", how="device",
                           live=d.vm_id in self.domains)

    def _hypervisor_reboot(self, raw: msgspec.Raw) -> PowerChanged:
        r = msgspec.json.decode(raw, type=RebootDomain)
        assert self.domains[r.vm_id] == r.host_uri
        self.reboots += 1
        return PowerChanged(vm_id=r.vm_id, how="rebooted", state="running")

    def _hypervisor_migrate(self, raw: msgspec.Raw) -> Migrated:
        g = msgspec.json.decode(raw, type=MigrateDomain)
        assert self.domains[g.vm_id] == g.source_uri != g.target_uri
        self.domains[g.vm_id] = g.target_uri
        return Migrated(vm_id=g.vm_id, host_uri=g.target_uri, how="live", state="running")

    def _storage_resize_volume(self, raw: msgspec.Raw) -> VolumeResized:
        r = msgspec.json.decode(raw, type=ResizeVolume)
        path = f"/pools/{r.volume.pool}/{r.volume.name}"
        assert path in self.volumes
        self.sizes[path] = r.capacity_bytes
        return VolumeResized(volume=r.volume, capacity_bytes=r.capacity_bytes, how="resize")

    def _snapshot_create(self, raw: msgspec.Raw) -> SnapshotTaken:
        c = msgspec.json.decode(raw, type=CreateSnapshot)
        assert f"/pools/{c.volume.pool}/{c.volume.name}" in self.volumes
        self.snapshots[c.snapshot_id] = _sha(f"{c.volume.name}@{c.snapshot_id}")
        return SnapshotTaken(snapshot_id=c.snapshot_id, path=f"{c.directory}/{c.snapshot_id}"
                             ".snap", size_bytes=4096, sha256=self.snapshots[c.snapshot_id],
                             created=True)

    def _snapshot_delete(self, raw: msgspec.Raw) -> SnapshotDeleted:
        d = msgspec.json.decode(raw, type=DeleteSnapshot)
        existed = self.snapshots.pop(d.snapshot_id, None) is not None
        return SnapshotDeleted(snapshot_id=d.snapshot_id, existed=existed)

    def _snapshot_revert(self, raw: msgspec.Raw) -> SnapshotReverted:
        r = msgspec.json.decode(raw, type=RevertSnapshot)
        assert self.snapshots[r.snapshot_id] == r.sha256
        assert r.vm_id is None or r.vm_id not in self.domains  # never under a running VM
        self.reverted.append(r.snapshot_id)
        return SnapshotReverted(snapshot_id=r.snapshot_id, path=f"/pools/{r.volume.pool}/"
                                f"{r.volume.name}", sha256=r.sha256, copied=True)

    def _backup_create(self, raw: msgspec.Raw) -> BackupCreated:
        c = msgspec.json.decode(raw, type=CreateBackup)
        self.backups[c.backup_id] = tuple(v.volume_id for v in c.volumes)
        files = tuple(BackupFile(volume_id=v.volume_id, file=f"{v.volume_id}.img",
                                 size_bytes=4096, sha256=_sha(v.volume.name)) for v in c.volumes)
        return BackupCreated(backup_id=c.backup_id, path=f"{c.target_dir}/{c.backup_id}",
                             files=files, total_bytes=4096 * len(files), created=True)

    def _backup_delete(self, raw: msgspec.Raw) -> BackupDeleted:
        d = msgspec.json.decode(raw, type=DeleteBackup)
        existed = self.backups.pop(d.backup_id, None) is not None
        return BackupDeleted(backup_id=d.backup_id, existed=existed)

    def _backup_restore(self, raw: msgspec.Raw) -> BackupRestored:
        r = msgspec.json.decode(raw, type=RestoreBackup)
        assert r.vm_id not in self.domains and r.backup_id in self.backups
        self.restored.extend(v.volume_id for v in r.volumes)
        files = tuple(BackupFile(volume_id=v.volume_id, file=f"{v.volume_id}.img",
                                 size_bytes=4096, sha256=_sha(v.volume.name)) for v in r.volumes)
        return BackupRestored(backup_id=r.backup_id, files=files, copied=len(files))

    # ------------------------------------------------------------------ driving

    def run(self, limit: int = 100) -> None:
        """Answer dispatched steps until none is left; time moves on an hour whenever
        nothing is dispatched, so that every retry comes due."""
        for _ in range(limit):
            messages = self.dispatched()
            if not messages:
                self.now += timedelta(hours=1)
                if not self.engine.fire_due_timers():
                    return
                continue
            self.engine.apply_outcomes([self.answer(m) for m in messages])
        raise AssertionError("steps never settled")

    def dispatched(self) -> list[StepMessage]:
        """The steps dispatched since the last look, unanswered."""
        messages, position = self.feed.read(self.feed.position())
        self.feed.commit(position)
        self.seen.extend(messages)
        return messages

    def run_until(self, kind: str) -> StepMessage:
        """Answer every step until one of `kind` is dispatched; return it unanswered."""
        for _ in range(50):
            messages = self.dispatched()
            found = [m for m in messages if f"{m.subsystem}.{m.action}" == kind]
            others = [self.answer(m) for m in messages if m not in found]
            if others:
                self.engine.apply_outcomes(others)
            if found:
                return found[0]
        raise AssertionError(f"{kind} was never dispatched")

    def kinds(self, since: int = 0) -> list[str]:
        return [("undo " if m.compensation else "") + f"{m.subsystem}.{m.action}"
                for m in self.seen[since:]]

    def op(self, accepted: dict[str, Any]) -> Operation:
        return self.get(UUID(accepted["operation_id"]))  # type: ignore[no-any-return]


def make_cloud() -> VolumeCloud:
    """The sample inventory with a Ready template, under the volume harness."""
    app = scratch_application()
    commands = CommandService(app, {LoadInventory: handle_load_inventory})
    load_inventory_file(commands, SAMPLE_INVENTORY)
    template_id = next(UUID(str(n.originator_id)) for n in app.recorder.select_notifications(
        start=None, limit=1000, topics=("template.Registered",)))
    store_id = next(UUID(str(n.originator_id)) for n in app.recorder.select_notifications(
        start=None, limit=1000, topics=("image_store.Added",)))
    template: Template = app.repository.get(template_id)
    template.start_download(store_id)
    template.download_completed(2 * GIB)
    app.save(template)
    return VolumeCloud(app)


@pytest.fixture
def cloud() -> Iterator[VolumeCloud]:
    made = make_cloud()
    yield made
    made.app.close()


def running_vm(cloud: VolumeCloud, name: str = "web-1") -> VirtualMachine:
    accepted = deploy(cloud, name)
    cloud.run()
    vm: VirtualMachine = cloud.get(UUID(accepted["vm_id"]))
    assert vm.state is VmState.RUNNING
    return vm


def offering_20g(cloud: VolumeCloud) -> DiskOffering:
    return next(cloud.get(o) for o in cloud.ids("disk_offering.Created")
                if cloud.get(o).name == "data-20g")


def create_volume(cloud: VolumeCloud, vm: VirtualMachine | None = None,
                  name: str = "data-1") -> dict[str, Any]:
    return cloud.command(CreateVolumeCommand(
        name=name, account="alice", zone_id=offering_zone(cloud),
        disk_offering_id=offering_20g(cloud).id, vm_id=None if vm is None else vm.id))


def offering_zone(cloud: VolumeCloud) -> UUID:
    return UUID(str(cloud.ids("zone.Created")[0]))


def pool_of(cloud: VolumeCloud, volume: Volume) -> PrimaryStoragePool:
    assert volume.pool_id is not None
    return cloud.get(volume.pool_id)  # type: ignore[no-any-return]


def ready_volume(cloud: VolumeCloud) -> Volume:
    accepted = create_volume(cloud)
    cloud.run()
    assert cloud.op(accepted).state is OperationState.SUCCEEDED
    return cloud.get(UUID(accepted["volume_id"]))  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- create


def test_a_data_volume_is_created_on_the_first_pool_and_a_host_that_reaches_it(
        cloud: VolumeCloud) -> None:
    accepted = create_volume(cloud)
    volume: Volume = cloud.get(UUID(accepted["volume_id"]))
    pool = pool_of(cloud, volume)
    # the pool is claimed and the volume Creating as soon as the command is taken
    assert volume.state is VolumeState.CREATING and volume.size_bytes == 20 * GIB
    assert pool.claims[pool_claim_id(volume.id)] == (volume.id, 20 * GIB)
    cloud.run()
    volume = cloud.get(volume.id)
    assert cloud.kinds() == ["storage.create_pool", "storage.create_volume"]
    assert cloud.op(accepted).state is OperationState.SUCCEEDED
    assert volume.state is VolumeState.READY and volume.vm_id is None
    host = cloud.get(volume.host_id)
    assert host.name == "kvm-a1" and pool.name == "primary-a" and host.cluster_id == \
        pool.cluster_id
    assert volume.path in cloud.volumes


@pytest.mark.parametrize("kind", ["storage.create_pool", "storage.create_volume",
                                  "hypervisor.attach_disk"])
def test_a_create_failing_at_any_step_leaves_no_claim_file_or_disk(
        cloud: VolumeCloud, kind: str) -> None:
    vm = running_vm(cloud)
    claims, files = cloud.pool_claims(), set(cloud.volumes)
    cloud.fail[kind] = 99
    accepted = create_volume(cloud, vm)
    cloud.run()
    volume: Volume = cloud.get(UUID(accepted["volume_id"]))
    op = cloud.op(accepted)
    assert op.state in (OperationState.FAILED, OperationState.ROLLED_BACK)
    assert volume.state is VolumeState.EXPUNGED and volume.vm_id is None
    assert cloud.pool_claims() == claims and cloud.volumes == files
    assert cloud.get(vm.id).disks == vm.disks and not cloud.disks.get(vm.id)
    if kind == "hypervisor.attach_disk":  # the volume made was deleted again
        assert cloud.kinds()[-1] == "undo storage.delete_volume"
    else:
        assert kind in volume.last_error


def test_create_for_a_vm_creates_on_its_host_and_attaches(cloud: VolumeCloud) -> None:
    vm = running_vm(cloud)
    accepted = create_volume(cloud, vm)
    cloud.run()
    volume: Volume = cloud.get(UUID(accepted["volume_id"]))
    vm = cloud.get(vm.id)
    assert cloud.op(accepted).state is OperationState.SUCCEEDED
    assert (volume.vm_id, volume.device_id, volume.host_id) == (vm.id, 1, vm.host_id)
    assert vm.disks == {0: vm.root_volume_id, 1: volume.id}
    assert cloud.disks[vm.id] == {volume.path}


def test_a_cancelled_create_undoes_the_attach_and_the_volume(cloud: VolumeCloud) -> None:
    vm = running_vm(cloud)
    claims = cloud.pool_claims()
    accepted = create_volume(cloud, vm)
    attach = cloud.run_until("hypervisor.attach_disk")
    cloud.engine.cancel(UUID(accepted["operation_id"]), "changed my mind",
                        idempotency_key="cancel-create")
    cloud.engine.apply_outcomes([cloud.answer(attach)])  # it attached all the same
    cloud.run()
    volume: Volume = cloud.get(UUID(accepted["volume_id"]))
    assert cloud.op(accepted).state is OperationState.ROLLED_BACK
    assert cloud.kinds()[-2:] == ["undo hypervisor.detach_disk", "undo storage.delete_volume"]
    assert volume.state is VolumeState.EXPUNGED and volume.vm_id is None
    assert cloud.get(vm.id).disks == {0: vm.root_volume_id} and cloud.disks[vm.id] == set()
    assert cloud.pool_claims() == claims


def test_bad_creates_are_refused_and_write_nothing(cloud: VolumeCloud) -> None:
    head = cloud.app.recorder.max_notification_id()
    zone = offering_zone(cloud)
    with pytest.raises(Exception, match="size"):
        cloud.command(CreateVolumeCommand(name="d", account="a", zone_id=zone))
    with pytest.raises(Exception, match="free"):
        cloud.command(CreateVolumeCommand(name="d", account="a", zone_id=zone,
                                          size_bytes=10**6 * GIB))
    assert cloud.app.recorder.max_notification_id() == head


# --------------------------------------------------------------------------- attach, detach


def test_attach_then_detach(cloud: VolumeCloud) -> None:
    vm, volume = running_vm(cloud), ready_volume(cloud)
    attached = cloud.command(AttachVolumeCommand(volume_id=volume.id, vm_id=vm.id))
    cloud.run()
    assert cloud.op(attached).state is OperationState.SUCCEEDED
    bound = msgspec.json.decode(cloud.seen[-1].args, type=AttachDisk)
    assert bound.host_uri == cloud.get(vm.host_id).uri and bound.disk.path == volume.path
    assert cloud.get(vm.id).disks[1] == volume.id and cloud.get(volume.id).vm_id == vm.id
    with pytest.raises(Exception, match="detached volume attaches"):
        cloud.command(AttachVolumeCommand(volume_id=volume.id, vm_id=vm.id))

    detached = cloud.command(DetachVolumeCommand(volume_id=volume.id))
    cloud.run()
    assert cloud.op(detached).state is OperationState.SUCCEEDED
    assert cloud.get(vm.id).disks == {0: vm.root_volume_id} and cloud.disks[vm.id] == set()
    volume = cloud.get(volume.id)
    assert (volume.state, volume.vm_id, volume.device_id) == (VolumeState.READY, None, None)
    assert vm.root_volume_id is not None
    with pytest.raises(Exception, match="ROOT"):
        cloud.command(DetachVolumeCommand(volume_id=vm.root_volume_id))


def test_a_failed_attach_or_detach_changes_nothing(cloud: VolumeCloud) -> None:
    vm, volume = running_vm(cloud), ready_volume(cloud)
    cloud.fail["hypervisor.attach_disk"] = 99
    failed = cloud.command(AttachVolumeCommand(volume_id=volume.id, vm_id=vm.id))
    cloud.run()
    assert cloud.op(failed).state is OperationState.FAILED
    assert cloud.get(volume.id).vm_id is None and cloud.get(vm.id).disks == vm.disks
    cloud.fail.clear()
    cloud.command(AttachVolumeCommand(volume_id=volume.id, vm_id=vm.id))
    cloud.run()
    cloud.fail["hypervisor.detach_disk"] = 99
    failed = cloud.command(DetachVolumeCommand(volume_id=volume.id))
    cloud.run()
    assert cloud.op(failed).state is OperationState.FAILED
    assert cloud.get(volume.id).vm_id == vm.id and cloud.get(vm.id).disks[1] == volume.id
    assert cloud.disks[vm.id] == {volume.path}


def test_a_cancelled_detach_attaches_the_volume_again(cloud: VolumeCloud) -> None:
    vm, volume = running_vm(cloud), ready_volume(cloud)
    cloud.command(AttachVolumeCommand(volume_id=volume.id, vm_id=vm.id))
    cloud.run()
    detached = cloud.command(DetachVolumeCommand(volume_id=volume.id))
    step = cloud.run_until("hypervisor.detach_disk")
    cloud.engine.cancel(UUID(detached["operation_id"]), "no", idempotency_key="cancel-detach")
    cloud.engine.apply_outcomes([cloud.answer(step)])
    cloud.run()
    assert cloud.op(detached).state is OperationState.ROLLED_BACK
    assert cloud.get(volume.id).vm_id == vm.id and volume.id in cloud.get(vm.id).disks.values()
    assert cloud.disks[vm.id] == {volume.path}


def test_a_stopped_vm_loses_the_disk_from_its_record(cloud: VolumeCloud) -> None:
    vm, volume = running_vm(cloud), ready_volume(cloud)
    cloud.command(AttachVolumeCommand(volume_id=volume.id, vm_id=vm.id))
    cloud.run()
    cloud.command(StopVm(vm_id=vm.id))
    cloud.run()
    with pytest.raises(Exception, match="Running VM"):
        cloud.command(AttachVolumeCommand(volume_id=ready_volume(cloud).id, vm_id=vm.id))
    cloud.command(DetachVolumeCommand(volume_id=volume.id))
    cloud.run()
    assert cloud.get(vm.id).disks == {0: vm.root_volume_id}
    assert cloud.get(volume.id).vm_id is None


# --------------------------------------------------------------------------- resize


def test_resize_grows_the_volume_and_its_claim(cloud: VolumeCloud) -> None:
    volume = ready_volume(cloud)
    resized = cloud.command(ResizeVolumeCommand(volume_id=volume.id, size_bytes=30 * GIB))
    assert cloud.get(volume.id).state is VolumeState.RESIZING
    assert pool_of(cloud, volume).claims[pool_claim_id(volume.id)][1] == 30 * GIB
    cloud.run()
    assert cloud.op(resized).state is OperationState.SUCCEEDED
    volume = cloud.get(volume.id)
    assert (volume.state, volume.size_bytes) == (VolumeState.READY, 30 * GIB)
    assert cloud.sizes[volume.path] == 30 * GIB
    head = cloud.app.recorder.max_notification_id()
    for size, message in ((10 * GIB, "only grows"), (10**6 * GIB, "free")):
        with pytest.raises(Exception, match=message):
            cloud.command(ResizeVolumeCommand(volume_id=volume.id, size_bytes=size))
    assert cloud.app.recorder.max_notification_id() == head


def test_a_failed_resize_gives_the_claim_back(cloud: VolumeCloud) -> None:
    volume = ready_volume(cloud)
    cloud.fail["storage.resize_volume"] = 99
    resized = cloud.command(ResizeVolumeCommand(volume_id=volume.id, size_bytes=30 * GIB))
    cloud.run()
    assert cloud.op(resized).state is OperationState.FAILED
    volume = cloud.get(volume.id)
    assert (volume.state, volume.size_bytes) == (VolumeState.READY, 20 * GIB)
    assert "storage.resize_volume" in volume.last_error
    assert pool_of(cloud, volume).claims[pool_claim_id(volume.id)][1] == 20 * GIB


# --------------------------------------------------------------------------- snapshots


def test_snapshot_then_revert_on_a_stopped_vm(cloud: VolumeCloud) -> None:
    vm = running_vm(cloud)
    assert vm.root_volume_id is not None
    taken = cloud.command(SnapshotVolumeCommand(volume_id=vm.root_volume_id))
    snapshot_id = UUID(taken["snapshot_id"])
    assert cloud.get(vm.root_volume_id).state is VolumeState.SNAPSHOTTING
    cloud.run()
    snapshot: Snapshot = cloud.get(snapshot_id)
    assert snapshot.state is SnapshotState.CREATED_ON_PRIMARY
    assert snapshot.sha256 == cloud.snapshots[snapshot_id]
    assert snapshot.primary_path == f"/var/lib/cloudkernel/primary-a-snapshots/{snapshot_id}.snap"
    assert cloud.get(vm.root_volume_id).state is VolumeState.READY

    with pytest.raises(Exception, match="Running: stop it before reverting"):
        cloud.command(RevertVolumeCommand(snapshot_id=snapshot_id))
    cloud.command(StopVm(vm_id=vm.id))
    cloud.run()
    reverted = cloud.command(RevertVolumeCommand(snapshot_id=snapshot_id))
    cloud.run()
    assert cloud.op(reverted).state is OperationState.SUCCEEDED
    assert cloud.reverted == [snapshot_id]
    topics = [n.topic for n in cloud.app.recorder.select_notifications(
        start=None, limit=100_000, topics=("volume.Reverted",))]
    assert topics == ["volume.Reverted"]


def test_a_failed_snapshot_leaves_no_file_and_the_volume_ready(cloud: VolumeCloud) -> None:
    volume = ready_volume(cloud)
    cloud.fail["snapshot.create"] = 99
    taken = cloud.command(SnapshotVolumeCommand(volume_id=volume.id, name="before"))
    cloud.run()
    snapshot: Snapshot = cloud.get(UUID(taken["snapshot_id"]))
    assert cloud.op(taken).state is OperationState.FAILED
    assert snapshot.state is SnapshotState.ERROR and "snapshot.create" in snapshot.last_error
    assert cloud.get(volume.id).state is VolumeState.READY and cloud.snapshots == {}


def test_a_cancelled_snapshot_is_deleted_again(cloud: VolumeCloud) -> None:
    volume = ready_volume(cloud)
    taken = cloud.command(SnapshotVolumeCommand(volume_id=volume.id))
    step = cloud.run_until("snapshot.create")
    cloud.engine.cancel(UUID(taken["operation_id"]), "no", idempotency_key="cancel-snap")
    cloud.engine.apply_outcomes([cloud.answer(step)])
    cloud.run()
    assert cloud.op(taken).state is OperationState.ROLLED_BACK
    assert cloud.get(UUID(taken["snapshot_id"])).state is SnapshotState.DESTROYED
    assert cloud.snapshots == {} and cloud.get(volume.id).state is VolumeState.READY


def test_a_failed_revert_changes_nothing(cloud: VolumeCloud) -> None:
    volume = ready_volume(cloud)
    taken = cloud.command(SnapshotVolumeCommand(volume_id=volume.id))
    cloud.run()
    cloud.fail["snapshot.revert"] = 99
    reverted = cloud.command(RevertVolumeCommand(snapshot_id=UUID(taken["snapshot_id"])))
    cloud.run()
    assert cloud.op(reverted).state is OperationState.FAILED
    assert cloud.get(volume.id).state is VolumeState.READY and cloud.reverted == []
    assert cloud.get(UUID(taken["snapshot_id"])).state is SnapshotState.CREATED_ON_PRIMARY


# --------------------------------------------------------------------------- backups


def test_backup_every_disk_then_restore_a_stopped_vm(cloud: VolumeCloud) -> None:
    vm = running_vm(cloud)
    cloud.command(CreateVolumeCommand(name="data-1", account="alice",
                                      zone_id=offering_zone(cloud), size_bytes=GIB,
                                      vm_id=vm.id))
    cloud.run()
    vm = cloud.get(vm.id)
    backed = cloud.command(BackupVmCommand(vm_id=vm.id, target_dir="/backups"))
    cloud.run()
    backup: Backup = cloud.get(UUID(backed["backup_id"]))
    assert cloud.op(backed).state is OperationState.SUCCEEDED
    assert backup.state is BackupState.BACKED_UP
    assert backup.external_id == f"/backups/{backup.id}" and backup.size_bytes == 8192
    assert cloud.backups[backup.id] == (vm.disks[0], vm.disks[1])

    with pytest.raises(Exception, match="Running: stop it before restoring"):
        cloud.command(RestoreVmCommand(backup_id=backup.id))
    cloud.command(StopVm(vm_id=vm.id))
    cloud.run()
    restored = cloud.command(RestoreVmCommand(backup_id=backup.id))
    assert cloud.get(backup.id).state is BackupState.RESTORING
    cloud.run()
    assert cloud.op(restored).state is OperationState.SUCCEEDED
    assert cloud.get(backup.id).state is BackupState.BACKED_UP
    assert cloud.restored == [vm.disks[0], vm.disks[1]]
    bound = msgspec.json.decode(cloud.seen[-1].args, type=RestoreBackup)
    assert (bound.target_dir, bound.vm_id) == ("/backups", vm.id)


@pytest.mark.parametrize("cancel", [False, True])
def test_a_backup_that_fails_or_is_cancelled_leaves_no_files(cloud: VolumeCloud,
                                                              cancel: bool) -> None:
    vm = running_vm(cloud)
    if not cancel:
        cloud.fail["backup.create"] = 99
    backed = cloud.command(BackupVmCommand(vm_id=vm.id, target_dir="/backups"))
    if cancel:
        step = cloud.run_until("backup.create")
        cloud.engine.cancel(UUID(backed["operation_id"]), "no", idempotency_key="cancel-b")
        cloud.engine.apply_outcomes([cloud.answer(step)])
    cloud.run()
    backup: Backup = cloud.get(UUID(backed["backup_id"]))
    assert cloud.backups == {}
    if cancel:
        assert cloud.op(backed).state is OperationState.ROLLED_BACK
        assert backup.state is BackupState.REMOVED
    else:
        assert cloud.op(backed).state is OperationState.FAILED
        assert backup.state is BackupState.FAILED and "backup.create" in backup.last_error


def test_a_failed_restore_leaves_the_backup_usable(cloud: VolumeCloud) -> None:
    vm = running_vm(cloud)
    backed = cloud.command(BackupVmCommand(vm_id=vm.id, target_dir="/backups"))
    cloud.run()
    cloud.command(StopVm(vm_id=vm.id))
    cloud.run()
    cloud.fail["backup.restore"] = 99
    restored = cloud.command(RestoreVmCommand(backup_id=UUID(backed["backup_id"])))
    cloud.run()
    backup: Backup = cloud.get(UUID(backed["backup_id"]))
    assert cloud.op(restored).state is OperationState.FAILED
    assert backup.state is BackupState.BACKED_UP and "backup.restore" in backup.last_error
    assert cloud.restored == []
    with pytest.raises(Exception, match="absolute"):
        cloud.command(BackupVmCommand(vm_id=vm.id, target_dir="backups"))
