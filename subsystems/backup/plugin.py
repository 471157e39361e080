"""The `backup` subsystem: copy a VM's volumes to a backup target and restore them, verified.

create copies each volume's file (found through libvirt, so the worker must see the host's
files: a local host or shared storage) to `<target_dir>/<backup_id>/<volume_id>.img`,
hashing it on the way, and writes the manifest last. A backup with a manifest is complete, so
a repeated step reports it; an interrupted one is copied again. The copy of a running VM's
volumes is only crash-consistent.

restore reads the manifest and verifies every backed-up file against it before touching any
volume, so a corrupted backup (`backup_corrupt`, not retryable) changes nothing. Each file is
then copied beside its volume, checked again against the manifest, renamed over the volume's
file, and the volume's file is hashed once more. A volume that already holds the backed-up
bytes is not copied again. No configuration.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from typing import Any

from aggregates.errors import ConfigError, StepFailedError
from kernel.steps.backup import (
    BackupCreated,
    BackupDeleted,
    BackupFile,
    BackupRestored,
    CreateBackup,
    DeleteBackup,
    RestoreBackup,
)
from subsystems.backup.manifest import backup_dir, read_manifest, verify, write_manifest
from subsystems.base import StepContext, SubsystemBase, action
from subsystems.hypervisor.domains import running_on
from subsystems.hypervisor.faults import quiet
from subsystems.storage import files, volumes

__all__ = ["Backups", "make_backup"]


class Backups(SubsystemBase):
    """Creates, restores and deletes VM backups."""

    name = "backup"
    version = "1.0"

    def open(self) -> None:
        """Keep libvirt from printing errors the steps report anyway."""
        quiet()

    @action("create")
    def create(self, ctx: StepContext, args: CreateBackup) -> BackupCreated:
        """Copy every volume into the backup directory, then write the manifest."""
        directory = backup_dir(args.target_dir, args.backup_id)
        manifest = read_manifest(directory)
        if manifest is not None:
            return _created(str(directory), args, manifest.files, created=False)
        if len({v.volume_id for v in args.volumes}) != len(args.volumes):
            raise StepFailedError("backup: a volume_id is listed twice", retryable=False,
                                  code="invalid_arguments")
        sources = [(v.volume_id, volumes.volume_file(v.volume)) for v in args.volumes]
        directory.mkdir(parents=True, exist_ok=True)
        entries = []
        for volume_id, source in sources:
            name = f"{volume_id}.img"
            copied = files.copy_file(source, directory / name)
            entries.append(BackupFile(volume_id=volume_id, file=name, size_bytes=copied.size,
                                      sha256=copied.sha256))
        write_manifest(directory, args.backup_id, args.vm_id, tuple(entries))
        return _created(str(directory), args, tuple(entries), created=True)

    @action("restore")
    def restore(self, ctx: StepContext, args: RestoreBackup) -> BackupRestored:
        """Verify the backup, then copy each file back over its volume."""
        directory = backup_dir(args.target_dir, args.backup_id)
        manifest = read_manifest(directory)
        if manifest is None:
            raise StepFailedError(f"backup {args.backup_id} has no manifest in {directory}",
                                  retryable=False, code="backup_missing")
        targets = {v.volume_id: v.volume for v in args.volumes}
        missing = [str(e.volume_id) for e in manifest.files if e.volume_id not in targets]
        if missing:
            raise StepFailedError(f"restore {args.backup_id}: no target volume for "
                                  f"{', '.join(missing)}", retryable=False,
                                  code="invalid_arguments")
        if args.vm_id is not None and args.volumes and \
                running_on(args.volumes[0].volume.host_uri, args.vm_id):
            raise StepFailedError(f"VM {args.vm_id} is running: stop it before restoring its "
                                  "volumes", retryable=False, code="vm_running")
        verify(directory, manifest)
        paths = {e.volume_id: volumes.volume_file(targets[e.volume_id])
                 for e in manifest.files}
        copied = 0
        for entry in manifest.files:
            path = paths[entry.volume_id]
            if files.hash_file(path).sha256 == entry.sha256:
                continue
            try:
                files.copy_file(directory / entry.file, path, expect_sha256=entry.sha256)
            except StepFailedError as e:  # it changed since verify()
                if e.code == "checksum_mismatch":
                    raise StepFailedError(f"backup {args.backup_id}: {e}", retryable=False,
                                          code="backup_corrupt") from e
                raise
            if files.hash_file(path).sha256 != entry.sha256:
                raise StepFailedError(f"restored {path} does not match the manifest",
                                      retryable=True, code="restore_unverified")
            copied += 1
        return BackupRestored(backup_id=args.backup_id, files=manifest.files, copied=copied)

    @action("delete")
    def delete(self, ctx: StepContext, args: DeleteBackup) -> BackupDeleted:
        """Remove the backup's directory; gone already is success."""
        directory = backup_dir(args.target_dir, args.backup_id)
        if not directory.exists():
            return BackupDeleted(backup_id=args.backup_id, existed=False)
        shutil.rmtree(directory)
        return BackupDeleted(backup_id=args.backup_id, existed=True)


def _created(path: str, args: CreateBackup, entries: tuple[BackupFile, ...], *,
             created: bool) -> BackupCreated:
    return BackupCreated(backup_id=args.backup_id, path=path, files=entries,
                         total_bytes=sum(e.size_bytes for e in entries), created=created)


def make_backup(config: Mapping[str, Any]) -> Backups:
    """Entry point factory of `backup`: it takes no configuration."""
    if config:
        raise ConfigError(f"backup: takes no config, got keys {sorted(config)}")
    return Backups()
