"""The `backup` subsystem: copy a VM's volumes to a backup target and restore them, verified.

create copies each volume's file (found through libvirt, so the worker must see the host's
files: a local host or shared storage) to `<target_dir>/<backup_id>/<volume_id>.img`,
hashing it on the way, and writes the manifest last. A backup with a manifest is complete, so
a repeated step reports it; an interrupted one is copied again. The volumes of a running VM
are copied by its qemu, all at one instant, with the guest's filesystems frozen when its
agent answers (`libvirt.disk_copies`); the result says which consistency the backup has.

restore reads the manifest and verifies every backed-up file against it before touching any
volume, so a corrupted backup (`backup_corrupt`, not retryable) changes nothing. Each file is
then copied beside its volume, checked again against the manifest, renamed over the volume's
file, and the volume's file is hashed once more. A volume that already holds the backed-up
bytes is not copied again.

On a host whose files are not this machine's (`pools.is_local_uri`), the same three actions
run on the host through libvirt (`on_host`), in a `dir` pool per backup folder. Configuration:
`on_host` ("remote", default: only for remote hosts; "always": for every host, which works
wherever libvirt can clone and stream volumes, and is how tests check the remote path on a
local qemu host).
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
from subsystems.backup import on_host
from subsystems.backup.manifest import backup_dir, read_manifest, verify, write_manifest
from subsystems.base import StepContext, SubsystemBase, action
from subsystems.libvirt import disk_copies, files, pools, volumes
from subsystems.libvirt.disk_copies import copy_timeout
from subsystems.libvirt.domains import running_on
from subsystems.libvirt.faults import quiet

__all__ = ["Backups", "make_backup"]


class Backups(SubsystemBase):
    """Creates, restores and deletes VM backups."""

    name = "backup"
    version = "1.0"

    def __init__(self, *, always_on_host: bool = False) -> None:
        """`always_on_host`: keep backups through libvirt even on hosts of this machine."""
        self.always_on_host = always_on_host

    def _on_host(self, host_uri: str) -> bool:
        """Whether the backup is made and kept through libvirt on the host."""
        return bool(host_uri) and (self.always_on_host or not pools.is_local_uri(host_uri))

    def open(self) -> None:
        """Keep libvirt from printing errors the steps report anyway."""
        quiet()

    @action("create")
    def create(self, ctx: StepContext, args: CreateBackup) -> BackupCreated:
        """Copy every volume into the backup directory, then write the manifest."""
        if args.volumes and self._on_host(args.volumes[0].volume.host_uri):
            return on_host.create(args, copy_timeout(ctx))
        directory = backup_dir(args.target_dir, args.backup_id)
        manifest = read_manifest(directory)
        if manifest is not None:
            return _created(str(directory), args, manifest.files, created=False)
        if len({v.volume_id for v in args.volumes}) != len(args.volumes):
            raise StepFailedError("backup: a volume_id is listed twice", retryable=False,
                                  code="invalid_arguments")
        directory.mkdir(parents=True, exist_ok=True)
        copies, consistency = disk_copies.copy_volumes(
            [(v.volume, directory / f"{v.volume_id}.img") for v in args.volumes],
            copy_timeout(ctx))
        entries = tuple(BackupFile(volume_id=v.volume_id, file=f"{v.volume_id}.img",
                                   size_bytes=c.size, sha256=c.sha256)
                        for v, c in zip(args.volumes, copies, strict=True))
        write_manifest(directory, args.backup_id, args.vm_id, entries)
        return _created(str(directory), args, entries, created=True, consistency=consistency)

    @action("restore")
    def restore(self, ctx: StepContext, args: RestoreBackup) -> BackupRestored:
        """Verify the backup, then copy each file back over its volume."""
        if args.volumes and self._on_host(args.volumes[0].volume.host_uri):
            return on_host.restore(args)
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
        if self._on_host(args.host_uri):
            return on_host.delete(args)
        directory = backup_dir(args.target_dir, args.backup_id)
        if not directory.exists():
            return BackupDeleted(backup_id=args.backup_id, existed=False)
        shutil.rmtree(directory)
        return BackupDeleted(backup_id=args.backup_id, existed=True)


def _created(path: str, args: CreateBackup, entries: tuple[BackupFile, ...], *,
             created: bool, consistency: str = "") -> BackupCreated:
    return BackupCreated(backup_id=args.backup_id, path=path, files=entries,
                         total_bytes=sum(e.size_bytes for e in entries), created=created,
                         consistency=consistency)


def make_backup(config: Mapping[str, Any]) -> Backups:
    """Entry point factory of `backup`: config `on_host` (optional)."""
    unknown = sorted(set(config) - {"on_host"})
    if unknown:
        raise ConfigError(f"backup: unknown config keys {unknown}; expected 'on_host'")
    mode = config.get("on_host", "remote")
    if mode not in ("remote", "always"):
        raise ConfigError(f"backup: config 'on_host' must be 'remote' or 'always', "
                          f"got {mode!r}")
    return Backups(always_on_host=mode == "always")
