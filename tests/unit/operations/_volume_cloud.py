"""The volume harness shared by the volume operation tests: the deploy harness of
`test_vm_deploy`, answering the volume, snapshot, backup and move steps too and keeping what
the subsystems hold (volume files, disks in domains, snapshot and backup files), and builders
of VMs and volumes over the sample inventory."""

import hashlib
from datetime import timedelta
from typing import Any
from uuid import UUID

import msgspec
from support.sample import load_sample_with_ready_template

from aggregates.offering import DiskOffering
from aggregates.operation import Operation, OperationState
from aggregates.storage_pool import PrimaryStoragePool
from aggregates.vm import VirtualMachine, VmState
from aggregates.volume import Volume
from kernel.cloud.volumes import CreateVolumeCommand
from kernel.contracts.steps import StepMessage, StepOutcome
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
from kernel.steps.storage import (
    MigrateVolume,
    ResizeVolume,
    VolumeInfo,
    VolumeMigrated,
    VolumeRef,
    VolumeResized,
)
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
        self.migrations: list[tuple[VolumeRef, VolumeRef]] = []  # storage.migrate_volume
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

    def _storage_migrate_volume(self, raw: msgspec.Raw) -> VolumeMigrated:
        m = msgspec.json.decode(raw, type=MigrateVolume)
        source = f"/pools/{m.source.pool}/{m.source.name}"
        target = f"/pools/{m.target.pool}/{m.target.name}"
        assert source != target and (source in self.volumes or target in self.volumes)
        how = "stream" if source in self.volumes else "already"  # a repeated step
        self.volumes.discard(source)
        self.volumes.add(target)
        if source in self.sizes:
            self.sizes[target] = self.sizes.pop(source)
        self.migrations.append((m.source, m.target))
        return VolumeMigrated(volume=VolumeInfo(volume=m.target, path=target,
                                                capacity_bytes=GIB, allocation_bytes=0,
                                                format="qcow2", created=how != "already"),
                              how=how)

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
    load_sample_with_ready_template(app)
    return VolumeCloud(app)


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
