"""Snapshot: a point-in-time copy of a volume, taken on primary storage and backed up to an
image store (CloudStack's volume snapshot).

Snapshots have random ids; `Snapshot.allocate(..., id=...)` takes the id when a command has
already chosen it.

    Allocated --create--> Creating --created--> CreatedOnPrimary
    CreatedOnPrimary --back_up--> BackingUp --backed_up--> BackedUp
    Creating/BackingUp --fail--> Error
    Allocated/CreatedOnPrimary/BackedUp/Error --destroy--> Destroyed
"""

from enum import Enum
from uuid import UUID

from eventsourcing.domain import event

from aggregates.base import PlatformAggregate
from aggregates.errors import ValidationError
from aggregates.validation import require_name, require_positive


class SnapshotState(Enum):
    """Where the snapshot is (CloudStack's Snapshot.State, trimmed)."""

    ALLOCATED = "Allocated"
    CREATING = "Creating"
    CREATED_ON_PRIMARY = "CreatedOnPrimary"
    BACKING_UP = "BackingUp"
    BACKED_UP = "BackedUp"
    DESTROYED = "Destroyed"
    ERROR = "Error"


_S = SnapshotState


class Snapshot(PlatformAggregate):
    """A snapshot of one volume."""

    TOPIC = "snapshot"
    KIND = "snapshot"

    class Event(PlatformAggregate.Event):
        """Base of Snapshot events."""

        TOPIC = "snapshot.Event"

    class Allocated(Event, PlatformAggregate.Created):
        """The snapshot was requested for a volume."""

        TOPIC = "snapshot.Allocated"
        name: str
        account: str
        zone_id: UUID
        volume_id: UUID
        volume_size_bytes: int

    class CreationRequested(Event):
        """The snapshot is being taken on primary storage."""

        TOPIC = "snapshot.CreationRequested"

    class CreatedOnPrimary(Event):
        """The snapshot exists on primary storage at `path`."""

        TOPIC = "snapshot.CreatedOnPrimary"
        path: str

    class ChecksumRecorded(Event):
        """The snapshot's content has this sha256 (what a revert verifies against)."""

        TOPIC = "snapshot.ChecksumRecorded"
        sha256: str

    class BackupRequested(Event):
        """The snapshot is being copied to an image store."""

        TOPIC = "snapshot.BackupRequested"
        image_store_id: UUID

    class BackedUp(Event):
        """The snapshot is on the image store at `path`."""

        TOPIC = "snapshot.BackedUp"
        path: str
        size_bytes: int

    class Failed(Event):
        """Taking or backing up the snapshot failed."""

        TOPIC = "snapshot.Failed"
        reason: str

    class Destroyed(Event):
        """The snapshot was deleted."""

        TOPIC = "snapshot.Destroyed"

    @event(Allocated)
    def __init__(self, name: str, account: str, zone_id: UUID, volume_id: UUID,
                 volume_size_bytes: int) -> None:
        self.name, self.account, self.zone_id = name, account, zone_id
        self.volume_id, self.volume_size_bytes = volume_id, volume_size_bytes
        self.state = SnapshotState.ALLOCATED
        self.primary_path: str | None = None
        self.image_store_id: UUID | None = None
        self.backup_path: str | None = None
        self.size_bytes: int | None = None
        self.sha256: str | None = None
        self.last_error = ""

    @classmethod
    def allocate(cls, *, name: str, account: str, zone_id: UUID, volume_id: UUID,
                 volume_size_bytes: int, id: UUID | None = None) -> "Snapshot":
        """Validate and allocate a snapshot of a volume of `volume_size_bytes`."""
        require_name("snapshot", name)
        require_name(f"snapshot {name}: account", account)
        require_positive(f"snapshot {name}", "volume_size_bytes", volume_size_bytes)
        snapshot: Snapshot = cls._create(
            cls.Allocated, id=id, name=name, account=account, zone_id=zone_id,
            volume_id=volume_id, volume_size_bytes=volume_size_bytes)
        return snapshot

    def create(self) -> None:
        """Begin taking the snapshot on primary storage."""
        self._require({_S.ALLOCATED}, "create")
        self._creation_requested()

    @event(CreationRequested)
    def _creation_requested(self) -> None:
        self.state = SnapshotState.CREATING

    def created(self, path: str) -> None:
        """Record that the snapshot exists on primary storage."""
        self._require({_S.CREATING}, "complete creation")
        require_name(f"snapshot {self.name}: path", path)
        self._created_on_primary(path)

    @event(CreatedOnPrimary)
    def _created_on_primary(self, path: str) -> None:
        self.state, self.primary_path = SnapshotState.CREATED_ON_PRIMARY, path

    def record_checksum(self, sha256: str) -> None:
        """Record the sha256 of the snapshot's content, once it exists."""
        self._require({_S.CREATED_ON_PRIMARY, _S.BACKING_UP, _S.BACKED_UP}, "record a checksum")
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256.lower()):
            raise ValidationError(f"snapshot {self.name}: sha256 must be 64 hex digits, "
                                  f"got {sha256!r}")
        self._checksum_recorded(sha256.lower())

    @event(ChecksumRecorded)
    def _checksum_recorded(self, sha256: str) -> None:
        self.sha256 = sha256

    def back_up(self, image_store_id: UUID) -> None:
        """Begin copying the snapshot to an image store."""
        self._require({_S.CREATED_ON_PRIMARY}, "back up")
        self._backup_requested(image_store_id)

    @event(BackupRequested)
    def _backup_requested(self, image_store_id: UUID) -> None:
        self.state, self.image_store_id = SnapshotState.BACKING_UP, image_store_id

    def backed_up(self, path: str, size_bytes: int) -> None:
        """Record that the snapshot is on the image store."""
        self._require({_S.BACKING_UP}, "complete backup")
        require_name(f"snapshot {self.name}: path", path)
        require_positive(f"snapshot {self.name}", "size_bytes", size_bytes)
        self._backed_up(path, size_bytes)

    @event(BackedUp)
    def _backed_up(self, path: str, size_bytes: int) -> None:
        self.state, self.backup_path, self.size_bytes = SnapshotState.BACKED_UP, path, size_bytes

    def fail(self, reason: str) -> None:
        """Record that taking or backing up the snapshot failed."""
        self._require({_S.CREATING, _S.BACKING_UP}, "fail")
        self._failed(reason)

    @event(Failed)
    def _failed(self, reason: str) -> None:
        self.state, self.last_error = SnapshotState.ERROR, reason

    def destroy(self) -> None:
        """Delete the snapshot (not while it is being taken or copied)."""
        self._require({_S.ALLOCATED, _S.CREATED_ON_PRIMARY, _S.BACKED_UP, _S.ERROR}, "destroy")
        self._destroyed()

    @event(Destroyed)
    def _destroyed(self) -> None:
        self.state = SnapshotState.DESTROYED
