"""Step contracts of the `backup` subsystem: a VM's volumes copied to a backup target.

A backup is a directory `<target_dir>/<backup_id>/` holding one file per volume and a
`manifest.json` with each file's size and sha256. Compensation: create -> delete. restore
overwrites volumes and has no compensation.
"""

from uuid import UUID

import msgspec

from kernel.steps.storage import VolumeRef

__all__ = ["BackupCreated", "BackupDeleted", "BackupFile", "BackupRestored", "BackupVolume",
           "CreateBackup", "DeleteBackup", "RestoreBackup"]


class BackupVolume(msgspec.Struct, frozen=True, kw_only=True):
    """One volume of the VM, by id and by libvirt name."""

    volume_id: UUID
    volume: VolumeRef


class CreateBackup(msgspec.Struct, frozen=True, kw_only=True, tag="backup.create"):
    """Copy each volume into `<target_dir>/<backup_id>/` and write the manifest last."""

    backup_id: UUID
    vm_id: UUID
    volumes: tuple[BackupVolume, ...]
    target_dir: str


class RestoreBackup(msgspec.Struct, frozen=True, kw_only=True, tag="backup.restore"):
    """Copy each backed-up volume back, verified against the manifest before and after.

    `volumes` names where each backed-up `volume_id` goes. With `vm_id`, the step is refused
    while that domain runs on the first volume's host.
    """

    backup_id: UUID
    target_dir: str
    volumes: tuple[BackupVolume, ...]
    vm_id: UUID | None = None


class DeleteBackup(msgspec.Struct, frozen=True, kw_only=True, tag="backup.delete"):
    """Remove a backup's directory; gone already is success. `host_uri` names a host that
    reaches it (its VM's), for a host whose files are not the worker's."""

    backup_id: UUID
    target_dir: str
    host_uri: str = ""


class BackupFile(msgspec.Struct, frozen=True, kw_only=True):
    """One file of a backup, as the manifest records it."""

    volume_id: UUID
    file: str
    size_bytes: int
    sha256: str


class BackupCreated(msgspec.Struct, frozen=True, kw_only=True):
    """The backup's directory and files; `created` is False when it existed and verified.

    `consistency` as a snapshot's (`SnapshotTaken`), for all the volumes at once: they are
    copied at one point in time."""

    backup_id: UUID
    path: str
    files: tuple[BackupFile, ...]
    total_bytes: int
    created: bool
    consistency: str = ""


class BackupRestored(msgspec.Struct, frozen=True, kw_only=True):
    """The restored volumes' files; `copied` counts those that did not already match."""

    backup_id: UUID
    files: tuple[BackupFile, ...]
    copied: int


class BackupDeleted(msgspec.Struct, frozen=True, kw_only=True):
    """Whether there was a backup directory to remove."""

    backup_id: UUID
    existed: bool
