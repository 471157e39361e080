"""The `snapshot` subsystem: a volume snapshot is a checksummed copy of the volume's file.

Why copies and not libvirt snapshots: libvirt's test driver does support domain snapshots
(`snapshotCreateXML`, `revertToSnapshot`), but they record metadata only and save no disk
content, and it has no storage-volume snapshot call at all. A copy of the volume's file
(found through libvirt: `vol.path()`) works the same on a simulated and a real host whose
files are on this machine (a dir pool on a local or shared filesystem), and a revert can be
verified by its checksum. A volume a running VM holds is copied by the VM's qemu at one
instant, with the guest's filesystems frozen when its agent answers
(`libvirt.disk_copies`); the result says which consistency the snapshot has.

create writes `<directory>/<snapshot_id>.snap` atomically, so an existing file is a complete
snapshot and a repeated step reports it. revert first copies the snapshot beside the volume,
verified against the recorded sha256, then renames it over the volume file: a corrupted
snapshot (`snapshot_corrupt`, not retryable) leaves the volume untouched, and a volume that
already holds the snapshot's bytes is not copied again.

On a host whose files are not this machine's (`pools.is_local_uri`), the same three actions
run on the host through libvirt (`on_host`). Configuration: `on_host` ("remote", default: only
for remote hosts; "always": for every host, which works wherever libvirt can clone and stream
volumes, and is how tests check the remote path on a local qemu host).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any
from uuid import UUID

from aggregates.errors import ConfigError, StepFailedError
from kernel.steps.snapshot import (
    CreateSnapshot,
    DeleteSnapshot,
    RevertSnapshot,
    SnapshotDeleted,
    SnapshotReverted,
    SnapshotTaken,
)
from subsystems.base import StepContext, SubsystemBase, action
from subsystems.libvirt import disk_copies, files, pools, volumes
from subsystems.libvirt.disk_copies import copy_timeout
from subsystems.libvirt.domains import running_on
from subsystems.libvirt.faults import quiet
from subsystems.snapshot import on_host

__all__ = ["Snapshots", "make_snapshot", "snapshot_file"]


def snapshot_file(directory: str, snapshot_id: UUID) -> Path:
    """Where a snapshot's copy lives."""
    return Path(directory) / f"{snapshot_id}.snap"


class Snapshots(SubsystemBase):
    """Takes, reverts to and deletes volume snapshots."""

    name = "snapshot"
    version = "1.0"

    def __init__(self, *, always_on_host: bool = False) -> None:
        """`always_on_host`: keep snapshots through libvirt even on hosts of this machine."""
        self.always_on_host = always_on_host

    def _on_host(self, host_uri: str) -> bool:
        """Whether the snapshot is made and kept through libvirt on its host."""
        return bool(host_uri) and (self.always_on_host or not pools.is_local_uri(host_uri))

    def open(self) -> None:
        """Keep libvirt from printing errors the steps report anyway."""
        quiet()

    @action("create")
    def create(self, ctx: StepContext, args: CreateSnapshot) -> SnapshotTaken:
        """Copy the volume's file into the snapshot directory with its sha256."""
        if self._on_host(args.volume.host_uri):
            return on_host.create(args, copy_timeout(ctx))
        target = snapshot_file(args.directory, args.snapshot_id)
        if target.is_file():
            found = files.hash_file(target)
            return SnapshotTaken(snapshot_id=args.snapshot_id, path=str(target),
                                 size_bytes=found.size, sha256=found.sha256, created=False)
        [copied], consistency = disk_copies.copy_volumes(
            [(args.volume, target)], copy_timeout(ctx))
        return SnapshotTaken(snapshot_id=args.snapshot_id, path=str(target),
                             size_bytes=copied.size, sha256=copied.sha256, created=True,
                             consistency=consistency)

    @action("revert")
    def revert(self, ctx: StepContext, args: RevertSnapshot) -> SnapshotReverted:
        """Put the snapshot's bytes back into the volume, verified by sha256."""
        if self._on_host(args.volume.host_uri):
            return on_host.revert(args)
        snap = snapshot_file(args.directory, args.snapshot_id)
        if not snap.is_file():
            raise StepFailedError(f"snapshot {args.snapshot_id} has no file at {snap}",
                                  retryable=False, code="snapshot_missing")
        if args.vm_id is not None and running_on(args.volume.host_uri, args.vm_id):
            raise StepFailedError(f"VM {args.vm_id} is running: stop it before reverting its "
                                  "volume", retryable=False, code="vm_running")
        volume = volumes.volume_file(args.volume)
        wanted = args.sha256.lower()
        if files.hash_file(volume).sha256 == wanted:
            return SnapshotReverted(snapshot_id=args.snapshot_id, path=str(volume),
                                    sha256=wanted, copied=False)
        try:
            files.copy_file(snap, volume, expect_sha256=wanted)
        except StepFailedError as e:
            if e.code == "checksum_mismatch":
                raise StepFailedError(f"snapshot {args.snapshot_id} is corrupt: {e}",
                                      retryable=False, code="snapshot_corrupt") from e
            raise
        return SnapshotReverted(snapshot_id=args.snapshot_id, path=str(volume), sha256=wanted,
                                copied=True)

    @action("delete")
    def delete(self, ctx: StepContext, args: DeleteSnapshot) -> SnapshotDeleted:
        """Remove the snapshot's file; gone already is success."""
        if self._on_host(args.host_uri):
            return on_host.delete(args)
        existed = files.remove_quietly(snapshot_file(args.directory, args.snapshot_id))
        return SnapshotDeleted(snapshot_id=args.snapshot_id, existed=existed)


def make_snapshot(config: Mapping[str, Any]) -> Snapshots:
    """Entry point factory of `snapshot`: config `on_host` (optional)."""
    unknown = sorted(set(config) - {"on_host"})
    if unknown:
        raise ConfigError(f"snapshot: unknown config keys {unknown}; expected 'on_host'")
    mode = config.get("on_host", "remote")
    if mode not in ("remote", "always"):
        raise ConfigError(f"snapshot: config 'on_host' must be 'remote' or 'always', "
                          f"got {mode!r}")
    return Snapshots(always_on_host=mode == "always")
