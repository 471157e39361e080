"""Volume operations in the engine (create, attach, detach, resize, snapshot, revert, backup,
restore), with scripted subsystem outcomes.

The test plays the subsystems as `test_vm_deploy` does, and keeps what they hold (volume
files, disks in domains, snapshot and backup files), so that a failure injected at each step,
or a cancel that compensates a step that succeeded, is checked to leave no claim, file, disk,
snapshot or backup behind, and the entities in their resting states.
"""

from collections.abc import Iterator
from uuid import UUID

import msgspec
import pytest

from aggregates.backup import Backup, BackupState
from aggregates.operation import OperationState
from aggregates.snapshot import Snapshot, SnapshotState
from aggregates.vm import VmState
from aggregates.volume import Volume, VolumeState
from kernel.cloud.vms import DestroyVm, StopVm, pool_claim_id
from kernel.cloud.volume_copies import (
    BackupVmCommand,
    RestoreVmCommand,
    RevertVolumeCommand,
    SnapshotVolumeCommand,
)
from kernel.cloud.volume_moves import DeleteVolumeCommand
from kernel.cloud.volumes import (
    AttachVolumeCommand,
    CreateVolumeCommand,
    DetachVolumeCommand,
    ResizeVolumeCommand,
)
from kernel.steps.backup import RestoreBackup
from kernel.steps.hypervisor import AttachDisk

from ._volume_cloud import (
    VolumeCloud,
    create_volume,
    make_cloud,
    offering_zone,
    pool_of,
    ready_volume,
    running_vm,
)
from .test_vm_deploy import GIB


@pytest.fixture
def cloud() -> Iterator[VolumeCloud]:
    made = make_cloud()
    yield made
    made.app.close()


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


@pytest.mark.parametrize("stopped", [False, True], ids=["running", "stopped"])
def test_an_expunged_vm_leaves_its_data_volume_ready_and_detached(
        cloud: VolumeCloud, stopped: bool) -> None:
    vm, volume = running_vm(cloud), ready_volume(cloud)
    cloud.command(AttachVolumeCommand(volume_id=volume.id, vm_id=vm.id))
    cloud.run()
    if stopped:
        cloud.command(StopVm(vm_id=vm.id))
        cloud.run()
    destroyed = cloud.command(DestroyVm(vm_id=vm.id))
    cloud.run()
    assert cloud.op(destroyed).state is OperationState.SUCCEEDED
    assert cloud.get(vm.id).state is VmState.EXPUNGED and cloud.get(vm.id).disks == {}
    volume = cloud.get(volume.id)
    assert (volume.state, volume.vm_id, volume.device_id) == (VolumeState.READY, None, None)
    assert volume.path in cloud.volumes  # its storage stays: only the root disk is deleted
    # it is an ordinary detached volume again: it attaches to another VM, and is deleted
    other = running_vm(cloud, "web-2")
    attached = cloud.command(AttachVolumeCommand(volume_id=volume.id, vm_id=other.id))
    cloud.run()
    assert cloud.op(attached).state is OperationState.SUCCEEDED
    cloud.command(DetachVolumeCommand(volume_id=volume.id))
    cloud.run()
    deleted = cloud.command(DeleteVolumeCommand(volume_id=volume.id))
    cloud.run()
    assert cloud.op(deleted).state is OperationState.SUCCEEDED
    assert cloud.get(volume.id).state is VolumeState.EXPUNGED
    assert volume.path not in cloud.volumes


def test_a_destroyed_vm_kept_unexpunged_keeps_its_data_volume(cloud: VolumeCloud) -> None:
    vm, volume = running_vm(cloud), ready_volume(cloud)
    cloud.command(AttachVolumeCommand(volume_id=volume.id, vm_id=vm.id))
    cloud.run()
    cloud.command(DestroyVm(vm_id=vm.id, expunge=False))
    cloud.run()
    assert cloud.get(vm.id).state is VmState.DESTROYED
    assert cloud.get(volume.id).vm_id == vm.id and volume.id in cloud.get(vm.id).disks.values()


def test_an_expunge_holds_the_data_volumes_it_detaches(cloud: VolumeCloud) -> None:
    vm, volume = running_vm(cloud), ready_volume(cloud)
    cloud.command(AttachVolumeCommand(volume_id=volume.id, vm_id=vm.id))
    cloud.run()
    cloud.command(StopVm(vm_id=vm.id))
    cloud.run()
    destroyed = cloud.command(DestroyVm(vm_id=vm.id, expunge_delay_seconds=3600))
    assert volume.id in cloud.op(destroyed).entity_ids


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
    assert (snapshot.primary_path or "").endswith(f"/primary-a-snapshots/{snapshot_id}.snap")
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


def test_a_restore_that_waited_behind_another_operation_on_its_vm_runs_when_its_turn_comes(
        cloud: VolumeCloud) -> None:
    """A restore holds its backup while it waits for the VM: when its turn comes and it is
    planned again, the hold on the backup is its own, not another operation's."""
    vm = running_vm(cloud)
    first = cloud.command(BackupVmCommand(vm_id=vm.id, target_dir="/backups"))
    cloud.run()
    second = cloud.command(BackupVmCommand(vm_id=vm.id, target_dir="/backups"))
    cloud.run()
    cloud.command(StopVm(vm_id=vm.id))
    cloud.run()
    earlier = cloud.command(RestoreVmCommand(backup_id=UUID(first["backup_id"])))
    step = cloud.run_until("backup.restore")  # the VM is held meanwhile
    later = cloud.command(RestoreVmCommand(backup_id=UUID(second["backup_id"])))
    assert cloud.op(later).state is OperationState.WAITING
    cloud.engine.apply_outcomes([cloud.answer(step)])
    cloud.run()
    assert cloud.op(earlier).state is OperationState.SUCCEEDED
    op = cloud.op(later)
    assert op.state is OperationState.SUCCEEDED, op.failure
    assert cloud.get(UUID(second["backup_id"])).state is BackupState.BACKED_UP
