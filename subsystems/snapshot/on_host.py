"""Snapshots kept on a host whose files are not this machine's (`qemu+ssh://...`).

The snapshot directory is beside the volume's pool, on the volume's host, so there the host
does the copying (`libvirt.disk_copies.copy_on_host`: its qemu's block copy of a running
disk, or libvirt's clone of an idle volume) and this worker only checks: sha256s are computed
from libvirt streams, and a snapshot counts once its checksum file is written (`host_dirs`:
libvirt's storage API cannot rename). A revert streams the snapshot's bytes into a new file
for the volume, after checking the snapshot against its recorded sha256, and checks the
volume's bytes afterwards; the snapshot stays until it is deleted, so an interrupted revert
is simply done again.
"""

from __future__ import annotations

from aggregates.errors import StepFailedError
from kernel.steps.snapshot import (
    CreateSnapshot,
    DeleteSnapshot,
    RevertSnapshot,
    SnapshotDeleted,
    SnapshotReverted,
    SnapshotTaken,
)
from subsystems.libvirt import disk_copies
from subsystems.libvirt.connections import connection
from subsystems.libvirt.domains import running_on
from subsystems.libvirt.host_dirs import HostDir

__all__ = ["create", "delete", "revert"]


def create(args: CreateSnapshot, timeout: float) -> SnapshotTaken:
    """Copy the volume into the snapshot directory on its host, and seal it."""
    directory = HostDir(connection(args.volume.host_uri), args.directory)
    name = _name(args.snapshot_id)
    found = directory.checksum(name)
    if found is not None:
        return SnapshotTaken(snapshot_id=args.snapshot_id, path=directory.file(name),
                             size_bytes=found.size, sha256=found.sha256, created=False)
    [copied], consistency = disk_copies.copy_on_host([(args.volume, directory, name)],
                                                     timeout)
    return SnapshotTaken(snapshot_id=args.snapshot_id, path=directory.file(name),
                         size_bytes=copied.size, sha256=copied.sha256, created=True,
                         consistency=consistency)


def revert(args: RevertSnapshot) -> SnapshotReverted:
    """Put the snapshot's bytes into the volume, both checked by sha256."""
    directory = HostDir(connection(args.volume.host_uri), args.directory)
    name = _name(args.snapshot_id)
    snap = directory.find(name)
    if snap is None or directory.checksum(name) is None:
        raise StepFailedError(f"snapshot {args.snapshot_id} has no sealed copy at "
                              f"{directory.file(name)}", retryable=False,
                              code="snapshot_missing")
    if args.vm_id is not None and running_on(args.volume.host_uri, args.vm_id):
        raise StepFailedError(f"VM {args.vm_id} is running: stop it before reverting its "
                              "volume", retryable=False, code="vm_running")
    try:
        path, copied = directory.put_into(name, args.volume, args.sha256.lower())
    except StepFailedError as e:
        if e.code == "checksum_mismatch":
            raise StepFailedError(f"snapshot {args.snapshot_id} is corrupt: {e}",
                                  retryable=False, code="snapshot_corrupt") from e
        raise
    return SnapshotReverted(snapshot_id=args.snapshot_id, path=path,
                            sha256=args.sha256.lower(), copied=copied)


def delete(args: DeleteSnapshot) -> SnapshotDeleted:
    """Remove the snapshot and its checksum from the host; gone already is success."""
    directory = HostDir(connection(args.host_uri), args.directory)
    name = _name(args.snapshot_id)
    sealed = directory.remove(f"{name}.sha256")  # first: a half-removed copy is not complete
    existed = directory.remove(name)
    return SnapshotDeleted(snapshot_id=args.snapshot_id, existed=existed or sealed)


def _name(snapshot_id: object) -> str:
    return f"{snapshot_id}.snap"
