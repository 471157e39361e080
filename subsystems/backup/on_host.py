"""Backups kept on a host whose files are not this machine's (`qemu+ssh://...`).

The backup target is a folder of the VM's host (typically backup storage mounted at the same
path on every host of the cluster, as CloudStack's NAS backup plugin has it), so there the
host copies every volume at one instant (`libvirt.disk_copies.copy_on_host`) into
`<target_dir>/<backup_id>/<volume_id>.img`, and the manifest, uploaded last, makes the backup
complete, as on this machine. A restore reads the manifest and checks every file through a
stream before it writes any volume (`backup_corrupt` changes nothing), then streams each file
into its volume and checks the volume (`host_dirs.HostDir.put_into`).
"""

from __future__ import annotations

from aggregates.errors import StepFailedError
from kernel.steps.backup import (
    BackupCreated,
    BackupDeleted,
    BackupFile,
    BackupRestored,
    CreateBackup,
    DeleteBackup,
    RestoreBackup,
)
from subsystems.backup.manifest import MANIFEST, Manifest, manifest_bytes, parse_manifest
from subsystems.libvirt import disk_copies
from subsystems.libvirt.connections import connection
from subsystems.libvirt.domains import running_on
from subsystems.libvirt.host_dirs import HostDir

__all__ = ["create", "delete", "restore"]


def create(args: CreateBackup, timeout: float) -> BackupCreated:
    """Copy every volume into the backup's folder on the host, then write the manifest."""
    host_uri = args.volumes[0].volume.host_uri
    directory = HostDir(connection(host_uri), f"{args.target_dir}/{args.backup_id}")
    manifest = _manifest(directory)
    if manifest is not None:
        return _created(directory, args, manifest.files, created=False)
    copies, consistency = disk_copies.copy_on_host(
        [(v.volume, directory, f"{v.volume_id}.img") for v in args.volumes], timeout)
    entries = tuple(BackupFile(volume_id=v.volume_id, file=f"{v.volume_id}.img",
                               size_bytes=c.size, sha256=c.sha256)
                    for v, c in zip(args.volumes, copies, strict=True))
    directory.write(MANIFEST, manifest_bytes(args.backup_id, args.vm_id, entries)[1])
    return _created(directory, args, entries, created=True, consistency=consistency)


def restore(args: RestoreBackup) -> BackupRestored:
    """Check every file of the backup, then put each into its volume."""
    host_uri = args.volumes[0].volume.host_uri
    directory = HostDir(connection(host_uri), f"{args.target_dir}/{args.backup_id}")
    manifest = _manifest(directory)
    if manifest is None:
        raise StepFailedError(f"backup {args.backup_id} has no manifest in {directory.path} "
                              f"on {host_uri}", retryable=False, code="backup_missing")
    targets = {v.volume_id: v.volume for v in args.volumes}
    missing = [str(e.volume_id) for e in manifest.files if e.volume_id not in targets]
    if missing:
        raise StepFailedError(f"restore {args.backup_id}: no target volume for "
                              f"{', '.join(missing)}", retryable=False,
                              code="invalid_arguments")
    if args.vm_id is not None and running_on(host_uri, args.vm_id):
        raise StepFailedError(f"VM {args.vm_id} is running: stop it before restoring its "
                              "volumes", retryable=False, code="vm_running")
    for entry in manifest.files:  # all of them, before any volume is written
        vol = directory.find(entry.file)
        found = directory.digest(vol) if vol is not None else None
        if found is None or (found.size, found.sha256) != (entry.size_bytes, entry.sha256):
            raise StepFailedError(f"backup {args.backup_id}: {entry.file} is missing or does "
                                  "not match the manifest", retryable=False,
                                  code="backup_corrupt")
    copied = 0
    for entry in manifest.files:
        _path, wrote = directory.put_into(entry.file, targets[entry.volume_id], entry.sha256)
        copied += wrote
    return BackupRestored(backup_id=args.backup_id, files=manifest.files, copied=copied)


def delete(args: DeleteBackup) -> BackupDeleted:
    """Remove the backup's folder from the host; gone already is success."""
    directory = HostDir(connection(args.host_uri), f"{args.target_dir}/{args.backup_id}")
    return BackupDeleted(backup_id=args.backup_id, existed=directory.remove_all())


def _manifest(directory: HostDir) -> Manifest | None:
    raw = directory.read(MANIFEST)
    return None if raw is None else parse_manifest(raw, directory.file(MANIFEST))


def _created(directory: HostDir, args: CreateBackup, entries: tuple[BackupFile, ...], *,
             created: bool, consistency: str = "") -> BackupCreated:
    return BackupCreated(backup_id=args.backup_id, path=directory.path, files=entries,
                         total_bytes=sum(e.size_bytes for e in entries), created=created,
                         consistency=consistency)
