"""Backup: a backup of a VM's volumes kept by a backup provider (CloudStack's Backup).

Backups have random ids; `Backup.allocate(..., id=...)` takes the id when a command has
already chosen it.

    Allocated --back_up--> BackingUp --backed_up--> BackedUp;  BackingUp --backup_failed--> Failed
    BackedUp --restore--> Restoring --restored / restore_failed--> BackedUp
    Allocated/BackedUp/Failed --remove--> Removed
"""

from enum import Enum
from uuid import UUID

from eventsourcing.domain import event

from aggregates.base import PlatformAggregate
from aggregates.errors import ValidationError
from aggregates.validation import require_name, require_non_negative


class BackupState(Enum):
    """Where the backup is (CloudStack's Backup.Status, trimmed)."""

    ALLOCATED = "Allocated"
    BACKING_UP = "BackingUp"
    BACKED_UP = "BackedUp"
    RESTORING = "Restoring"
    FAILED = "Failed"
    REMOVED = "Removed"


_S = BackupState


class Backup(PlatformAggregate):
    """A backup of some or all volumes of one VM."""

    TOPIC = "backup"
    KIND = "backup"

    class Event(PlatformAggregate.Event):
        """Base of Backup events."""

        TOPIC = "backup.Event"

    class Allocated(Event, PlatformAggregate.Created):
        """The backup was requested."""

        TOPIC = "backup.Allocated"
        name: str
        account: str
        zone_id: UUID
        vm_id: UUID
        volume_ids: tuple[UUID, ...]

    class BackupStarted(Event):
        """The provider is taking the backup."""

        TOPIC = "backup.BackupStarted"

    class BackedUp(Event):
        """The provider holds the backup as `external_id`."""

        TOPIC = "backup.BackedUp"
        external_id: str
        size_bytes: int

    class BackupFailed(Event):
        """Taking the backup failed."""

        TOPIC = "backup.BackupFailed"
        reason: str

    class RestoreRequested(Event):
        """The backup is being restored (one volume, or the whole VM if volume_id is None)."""

        TOPIC = "backup.RestoreRequested"
        volume_id: UUID | None

    class Restored(Event):
        """The restore finished."""

        TOPIC = "backup.Restored"

    class RestoreFailed(Event):
        """The restore failed; the backup itself is intact."""

        TOPIC = "backup.RestoreFailed"
        reason: str

    class Removed(Event):
        """The backup was deleted."""

        TOPIC = "backup.Removed"

    @event(Allocated)
    def __init__(self, name: str, account: str, zone_id: UUID, vm_id: UUID,
                 volume_ids: tuple[UUID, ...]) -> None:
        self.name, self.account, self.zone_id = name, account, zone_id
        self.vm_id, self.volume_ids = vm_id, tuple(volume_ids)
        self.state = BackupState.ALLOCATED
        self.external_id: str | None = None
        self.size_bytes: int | None = None
        self.restoring_volume_id: UUID | None = None
        self.last_error = ""

    @classmethod
    def allocate(cls, *, name: str, account: str, zone_id: UUID, vm_id: UUID,
                 volume_ids: tuple[UUID, ...], id: UUID | None = None) -> "Backup":
        """Validate and allocate a backup of the given volumes of a VM."""
        require_name("backup", name)
        require_name(f"backup {name}: account", account)
        volumes = tuple(volume_ids)
        if not volumes or len(set(volumes)) != len(volumes):
            raise ValidationError(f"backup {name}: volume_ids must be distinct and not empty")
        backup: Backup = cls._create(cls.Allocated, id=id, name=name, account=account,
                                     zone_id=zone_id, vm_id=vm_id, volume_ids=volumes)
        return backup

    def back_up(self) -> None:
        """Begin taking the backup."""
        self._require({_S.ALLOCATED}, "back up")
        self._backup_started()

    @event(BackupStarted)
    def _backup_started(self) -> None:
        self.state = BackupState.BACKING_UP

    def backed_up(self, external_id: str, size_bytes: int) -> None:
        """Record that the provider holds the backup."""
        self._require({_S.BACKING_UP}, "complete backup")
        require_name(f"backup {self.name}: external id", external_id)
        require_non_negative(f"backup {self.name}", "size_bytes", size_bytes)
        self._backed_up(external_id, size_bytes)

    @event(BackedUp)
    def _backed_up(self, external_id: str, size_bytes: int) -> None:
        self.state, self.last_error = BackupState.BACKED_UP, ""
        self.external_id, self.size_bytes = external_id, size_bytes

    def backup_failed(self, reason: str) -> None:
        """Record that taking the backup failed."""
        self._require({_S.BACKING_UP}, "fail backup")
        self._backup_failed(reason)

    @event(BackupFailed)
    def _backup_failed(self, reason: str) -> None:
        self.state, self.last_error = BackupState.FAILED, reason

    def restore(self, volume_id: UUID | None = None) -> None:
        """Begin restoring one backed-up volume, or the whole VM."""
        self._require({_S.BACKED_UP}, "restore")
        if volume_id is not None and volume_id not in self.volume_ids:
            raise ValidationError(f"backup {self.name} holds no volume {volume_id}")
        self._restore_requested(volume_id)

    @event(RestoreRequested)
    def _restore_requested(self, volume_id: UUID | None) -> None:
        self.state, self.restoring_volume_id = BackupState.RESTORING, volume_id

    def restored(self) -> None:
        """Record that the restore finished."""
        self._require({_S.RESTORING}, "complete restore")
        self._restored()

    @event(Restored)
    def _restored(self) -> None:
        self.state, self.restoring_volume_id, self.last_error = BackupState.BACKED_UP, None, ""

    def restore_failed(self, reason: str) -> None:
        """Record that the restore failed; the backup stays usable."""
        self._require({_S.RESTORING}, "fail restore")
        self._restore_failed(reason)

    @event(RestoreFailed)
    def _restore_failed(self, reason: str) -> None:
        self.state, self.restoring_volume_id = BackupState.BACKED_UP, None
        self.last_error = reason

    def remove(self) -> None:
        """Delete the backup (not while it is being taken or restored)."""
        self._require({_S.ALLOCATED, _S.BACKED_UP, _S.FAILED}, "remove")
        self._removed()

    @event(Removed)
    def _removed(self) -> None:
        self.state = BackupState.REMOVED
