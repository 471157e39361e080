"""Step contracts of the `snapshot` subsystem: volume snapshots as checksummed file copies.

A snapshot is a copy of a volume's file at `<directory>/<snapshot_id>.snap` with its sha256.
Compensation: create -> delete. revert overwrites the volume with the snapshot and has no
compensation (take another snapshot first to be able to undo it).
"""

from uuid import UUID

import msgspec

from kernel.steps.storage import VolumeRef

__all__ = ["CreateSnapshot", "DeleteSnapshot", "RevertSnapshot", "SnapshotDeleted",
           "SnapshotReverted", "SnapshotTaken"]


class CreateSnapshot(msgspec.Struct, frozen=True, kw_only=True, tag="snapshot.create"):
    """Copy a volume's content into the snapshot directory, with its checksum."""

    snapshot_id: UUID
    volume: VolumeRef
    directory: str


class RevertSnapshot(msgspec.Struct, frozen=True, kw_only=True, tag="snapshot.revert"):
    """Put a snapshot's content back into its volume, verified against `sha256`.

    With `vm_id`, the step is refused while that domain runs on the volume's host.
    """

    snapshot_id: UUID
    volume: VolumeRef
    directory: str
    sha256: str
    vm_id: UUID | None = None


class DeleteSnapshot(msgspec.Struct, frozen=True, kw_only=True, tag="snapshot.delete"):
    """Remove a snapshot's file; gone already is success. `host_uri` names the host that
    keeps it (its volume's), for a host whose files are not the worker's."""

    snapshot_id: UUID
    directory: str
    host_uri: str = ""


class SnapshotTaken(msgspec.Struct, frozen=True, kw_only=True):
    """The snapshot file; `created` is False when it existed and verified.

    `consistency`: "offline" (no running VM had the volume: an exact copy), "filesystem"
    (taken by the VM's qemu with the guest's filesystems frozen by its agent), "crash" (by
    its qemu at one instant, not frozen: as after a power cut), "" (an existing file whose
    taking this step did not see)."""

    snapshot_id: UUID
    path: str
    size_bytes: int
    sha256: str
    created: bool
    consistency: str = ""


class SnapshotReverted(msgspec.Struct, frozen=True, kw_only=True):
    """The volume's file after a revert; `copied` is False when it already matched."""

    snapshot_id: UUID
    path: str
    sha256: str
    copied: bool


class SnapshotDeleted(msgspec.Struct, frozen=True, kw_only=True):
    """Whether there was a snapshot file to remove."""

    snapshot_id: UUID
    existed: bool
