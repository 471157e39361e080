"""Snapshot and backup plugins: real volume files of libvirt test-driver pools, real copies."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
from support.plugin_steps import PluginSteps

from kernel.steps.backup import (
    BackupCreated,
    BackupDeleted,
    BackupRestored,
    BackupVolume,
    CreateBackup,
    DeleteBackup,
    RestoreBackup,
)
from kernel.steps.hypervisor import DefineDomain, DiskSpec, DomainDefined, PowerChanged, StartDomain
from kernel.steps.snapshot import (
    CreateSnapshot,
    DeleteSnapshot,
    RevertSnapshot,
    SnapshotDeleted,
    SnapshotReverted,
    SnapshotTaken,
)
from kernel.steps.storage import CreatePool, CreateVolume, PoolInfo, VolumeInfo, VolumeRef
from subsystems.libvirt.connections import close_all

MiB = 1 << 20


@pytest.fixture(autouse=True)
def _fresh_connections() -> Iterator[None]:
    yield
    close_all()


def volume(libvirt_uri: str, tmp_path: Path, name: str, content: bytes) -> tuple[VolumeRef, Path]:
    """A raw volume in pool `primary` holding `content` (via a template file)."""
    storage = PluginSteps("storage")
    storage.ok(CreatePool(host_uri=libvirt_uri, pool="primary", path=str(tmp_path / "primary")),
               PoolInfo)
    template = tmp_path / f"{name}.tpl"
    template.write_bytes(content)
    ref = VolumeRef(host_uri=libvirt_uri, pool="primary", name=name)
    made = storage.ok(CreateVolume(volume=ref, capacity_bytes=len(content), format="raw",
                                   template_path=str(template)), VolumeInfo)
    return ref, Path(made.path)


def test_snapshot_create_revert_delete(libvirt_uri: str, tmp_path: Path) -> None:
    snap = PluginSteps("snapshot")
    original = os.urandom(MiB) + bytes(MiB)  # half of it a hole
    ref, path = volume(libvirt_uri, tmp_path, "root", original)
    snapshot_id, directory = uuid4(), str(tmp_path / "snapshots")
    create = CreateSnapshot(snapshot_id=snapshot_id, volume=ref, directory=directory)
    taken = snap.ok(create, SnapshotTaken)
    assert taken.created and taken.sha256 == hashlib.sha256(original).hexdigest()
    assert taken.consistency == "offline"  # no running domain has it: an exact copy
    assert Path(taken.path).read_bytes() == original
    path.write_bytes(b"the guest wrote this later")
    again = snap.ok(create, SnapshotTaken)  # the snapshot is of the first execution's bytes
    assert (again.created, again.sha256) == (False, taken.sha256)

    revert = RevertSnapshot(snapshot_id=snapshot_id, volume=ref, directory=directory,
                            sha256=taken.sha256)
    assert snap.ok(revert, SnapshotReverted).copied
    assert path.read_bytes() == original
    assert snap.ok(revert, SnapshotReverted).copied is False

    delete = DeleteSnapshot(snapshot_id=snapshot_id, directory=directory)
    assert snap.ok(delete, SnapshotDeleted, compensation=True).existed
    assert not snap.ok(delete, SnapshotDeleted).existed
    gone = snap.fail(revert)
    assert (gone.error_code, gone.retryable) == ("snapshot_missing", False)


def test_a_corrupt_snapshot_leaves_the_volume_alone(libvirt_uri: str, tmp_path: Path) -> None:
    snap = PluginSteps("snapshot")
    ref, path = volume(libvirt_uri, tmp_path, "root", os.urandom(200_000))
    directory = str(tmp_path / "snapshots")
    taken = snap.ok(CreateSnapshot(snapshot_id=uuid4(), volume=ref, directory=directory),
                    SnapshotTaken)
    with open(taken.path, "r+b") as f:
        f.seek(1000)
        f.write(b"bitrot")
    path.write_bytes(b"current")
    outcome = snap.fail(RevertSnapshot(snapshot_id=taken.snapshot_id, volume=ref,
                                       directory=directory, sha256=taken.sha256))
    assert (outcome.error_code, outcome.retryable) == ("snapshot_corrupt", False)
    assert path.read_bytes() == b"current"


def test_revert_is_refused_while_the_vm_runs(libvirt_uri: str, tmp_path: Path) -> None:
    hv, snap = PluginSteps("hypervisor"), PluginSteps("snapshot")
    ref, path = volume(libvirt_uri, tmp_path, "root", os.urandom(10_000))
    vm_id = uuid4()
    hv.ok(DefineDomain(vm_id=vm_id, name="vm", host_uri=libvirt_uri, cpu_cores=1, cpu_mhz=1000,
                       memory_mib=256, disks=(DiskSpec(path=str(path), format="raw"),)),
          DomainDefined)
    hv.ok(StartDomain(vm_id=vm_id, host_uri=libvirt_uri), PowerChanged)
    directory = str(tmp_path / "snapshots")
    taken = snap.ok(CreateSnapshot(snapshot_id=uuid4(), volume=ref, directory=directory),
                    SnapshotTaken)
    # the test driver cannot copy blocks; its simulated guest agent freezes the filesystems
    # around the copy of the file
    assert taken.consistency == "filesystem"
    outcome = snap.fail(RevertSnapshot(snapshot_id=taken.snapshot_id, volume=ref,
                                       directory=directory, sha256=taken.sha256, vm_id=vm_id))
    assert (outcome.error_code, outcome.retryable) == ("vm_running", False)


def test_backup_and_verified_restore(libvirt_uri: str, tmp_path: Path) -> None:
    backup = PluginSteps("backup")
    root_bytes, data_bytes = os.urandom(300_000), os.urandom(50_000) + bytes(MiB)
    root, root_path = volume(libvirt_uri, tmp_path, "root", root_bytes)
    data, data_path = volume(libvirt_uri, tmp_path, "data", data_bytes)
    vols = (BackupVolume(volume_id=uuid4(), volume=root),
            BackupVolume(volume_id=uuid4(), volume=data))
    backup_id, target = uuid4(), str(tmp_path / "backups")
    create = CreateBackup(backup_id=backup_id, vm_id=uuid4(), volumes=vols, target_dir=target)
    made = backup.ok(create, BackupCreated)
    assert made.created and made.total_bytes == len(root_bytes) + len(data_bytes)
    assert made.consistency == "offline"
    manifest = json.loads((Path(made.path) / "manifest.json").read_text())
    assert {f["volume_id"]: f["sha256"] for f in manifest["files"]} == {
        str(vols[0].volume_id): hashlib.sha256(root_bytes).hexdigest(),
        str(vols[1].volume_id): hashlib.sha256(data_bytes).hexdigest()}
    assert backup.ok(create, BackupCreated).created is False

    root_path.write_bytes(b"ransomware")
    data_path.write_bytes(b"")
    restore = RestoreBackup(backup_id=backup_id, target_dir=target, volumes=vols)
    restored = backup.ok(restore, BackupRestored)
    assert restored.copied == 2
    assert (root_path.read_bytes(), data_path.read_bytes()) == (root_bytes, data_bytes)
    assert backup.ok(restore, BackupRestored).copied == 0

    delete = DeleteBackup(backup_id=backup_id, target_dir=target)
    assert backup.ok(delete, BackupDeleted, compensation=True).existed
    assert not backup.ok(delete, BackupDeleted).existed
    missing = backup.fail(restore)
    assert (missing.error_code, missing.retryable) == ("backup_missing", False)


def test_a_corrupted_backup_is_refused_and_restores_nothing(libvirt_uri: str,
                                                            tmp_path: Path) -> None:
    backup = PluginSteps("backup")
    root, root_path = volume(libvirt_uri, tmp_path, "root", os.urandom(100_000))
    data, data_path = volume(libvirt_uri, tmp_path, "data", os.urandom(100_000))
    vols = (BackupVolume(volume_id=uuid4(), volume=root),
            BackupVolume(volume_id=uuid4(), volume=data))
    backup_id, target = uuid4(), str(tmp_path / "backups")
    made = backup.ok(CreateBackup(backup_id=backup_id, vm_id=uuid4(), volumes=vols,
                                  target_dir=target), BackupCreated)
    corrupt = Path(made.path) / made.files[1].file  # the second volume's copy
    with open(corrupt, "r+b") as f:
        f.write(b"\0garbage")
    root_path.write_bytes(b"root now")
    data_path.write_bytes(b"data now")
    outcome = backup.fail(RestoreBackup(backup_id=backup_id, target_dir=target, volumes=vols))
    assert (outcome.error_code, outcome.retryable) == ("backup_corrupt", False)
    assert (root_path.read_bytes(), data_path.read_bytes()) == (b"root now", b"data now")


def test_a_running_vms_backup_is_taken_at_one_point_and_says_how(libvirt_uri: str,
                                                                  tmp_path: Path) -> None:
    hv, backup = PluginSteps("hypervisor"), PluginSteps("backup")
    root, root_path = volume(libvirt_uri, tmp_path, "root", os.urandom(70_000))
    data, data_path = volume(libvirt_uri, tmp_path, "data", os.urandom(30_000))
    vm_id = uuid4()
    hv.ok(DefineDomain(vm_id=vm_id, name="vm", host_uri=libvirt_uri, cpu_cores=1, cpu_mhz=1000,
                       memory_mib=256, disks=(DiskSpec(path=str(root_path), format="raw"),)),
          DomainDefined)
    hv.ok(StartDomain(vm_id=vm_id, host_uri=libvirt_uri), PowerChanged)
    vols = (BackupVolume(volume_id=uuid4(), volume=root),
            BackupVolume(volume_id=uuid4(), volume=data))  # data: in no domain
    made = backup.ok(CreateBackup(backup_id=uuid4(), vm_id=vm_id, volumes=vols,
                                  target_dir=str(tmp_path / "backups")), BackupCreated)
    assert made.consistency == "filesystem"
    assert [f.sha256 for f in made.files] == [
        hashlib.sha256(root_path.read_bytes()).hexdigest(),
        hashlib.sha256(data_path.read_bytes()).hexdigest()]
    assert not list(Path(made.path).glob(".*"))  # no part file left
