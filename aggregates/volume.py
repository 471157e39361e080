"""Volume: a disk (ROOT or DATADISK), modelled on CloudStack's Volume state machine.

Volumes have random ids; `Volume.allocate(..., id=...)` takes the id when a command has
already chosen it. Every operation is a Requested state left by success or failure:

    Allocated --create--> Creating --created--> Ready;  Creating --creation_failed--> Allocated
    Ready --attach--> Attaching --attached / attach_failed--> Ready;  Ready --detach--> Ready
    Ready --resize--> Resizing --resized / resize_failed--> Ready  (a resize only grows)
    Ready --migrate--> Migrating --migrated / migration_failed--> Ready
    Ready --take_snapshot--> Snapshotting --snapshot_taken / snapshot_failed--> Ready
    Allocated/Ready --destroy--> Destroy --recover--> Ready (Allocated if never created)
    Destroy --expunge--> Expunging --expunged--> Expunged;  Expunging --expunge_failed--> Destroy
    Creating --repair--> Allocated;  Attaching/Migrating/Resizing/Snapshotting --repair-->
    Ready;  Expunging --repair--> Destroy  (audited, by an operator: see `aggregates.repair`)

Device 0 is the ROOT disk's; data disks use 1 and up, except 3 (the CD-ROM slot).
`locate` records the host whose libvirt pool holds the volume (the one it was created on):
where a pool is not shared between hosts, that is the only host that can reach it.
"""

from enum import Enum
from uuid import UUID

from eventsourcing.domain import event

from aggregates.base import PlatformAggregate
from aggregates.errors import DomainRuleError, ValidationError
from aggregates.repair import VOLUME_REPAIRS, RepairRefusedError, check_reason, check_repair
from aggregates.validation import require_name, require_positive


class VolumeType(Enum):
    """Whether the volume is a VM's boot disk or a data disk."""

    ROOT = "ROOT"
    DATADISK = "DATADISK"


class VolumeState(Enum):
    """The volume's state (CloudStack's Volume.State)."""

    ALLOCATED = "Allocated"
    CREATING = "Creating"
    READY = "Ready"
    ATTACHING = "Attaching"
    MIGRATING = "Migrating"
    SNAPSHOTTING = "Snapshotting"
    RESIZING = "Resizing"
    DESTROY = "Destroy"
    EXPUNGING = "Expunging"
    EXPUNGED = "Expunged"


_S = VolumeState
CDROM_DEVICE_ID = 3


class Volume(PlatformAggregate):
    """A disk on primary storage, optionally attached to a VM."""

    TOPIC = "volume"
    KIND = "volume"

    class Event(PlatformAggregate.Event):
        """Base of Volume events."""

        TOPIC = "volume.Event"

    class Allocated(Event, PlatformAggregate.Created):
        """The volume was allocated (no storage yet)."""

        TOPIC = "volume.Allocated"
        name: str
        account: str
        zone_id: UUID
        volume_type: VolumeType
        size_bytes: int
        disk_offering_id: UUID | None
        template_id: UUID | None

    class CreationRequested(Event):
        """The volume is being created on a pool."""

        TOPIC = "volume.CreationRequested"
        pool_id: UUID

    class CreationCompleted(Event):
        """The volume exists on its pool at `path`."""

        TOPIC = "volume.CreationCompleted"
        path: str

    class CreationFailed(Event):
        """Creating the volume failed; it is Allocated again."""

        TOPIC = "volume.CreationFailed"
        reason: str

    class AttachRequested(Event):
        """The volume is being attached to a VM."""

        TOPIC = "volume.AttachRequested"
        vm_id: UUID
        device_id: int

    class Attached(Event):
        """The volume is attached."""

        TOPIC = "volume.Attached"

    class AttachFailed(Event):
        """Attaching failed; the volume is detached."""

        TOPIC = "volume.AttachFailed"
        reason: str

    class Detached(Event):
        """The volume was detached from its VM."""

        TOPIC = "volume.Detached"

    class ResizeRequested(Event):
        """The volume is growing to `size_bytes`."""

        TOPIC = "volume.ResizeRequested"
        size_bytes: int

    class Resized(Event):
        """The volume has its new size."""

        TOPIC = "volume.Resized"

    class ResizeFailed(Event):
        """Resizing failed; the size is unchanged."""

        TOPIC = "volume.ResizeFailed"
        reason: str

    class MigrationRequested(Event):
        """The volume is moving to another pool."""

        TOPIC = "volume.MigrationRequested"
        destination_pool_id: UUID

    class Migrated(Event):
        """The volume is on its destination pool at `path`."""

        TOPIC = "volume.Migrated"
        path: str

    class MigrationFailed(Event):
        """Migration failed; the volume stays where it was."""

        TOPIC = "volume.MigrationFailed"
        reason: str

    class SnapshotRequested(Event):
        """A snapshot of the volume is being taken."""

        TOPIC = "volume.SnapshotRequested"
        snapshot_id: UUID

    class SnapshotTaken(Event):
        """The snapshot was taken."""

        TOPIC = "volume.SnapshotTaken"

    class SnapshotFailed(Event):
        """Taking the snapshot failed."""

        TOPIC = "volume.SnapshotFailed"
        reason: str

    class Located(Event):
        """The volume's storage is reached through this host's libvirt pool."""

        TOPIC = "volume.Located"
        host_id: UUID

    class Reverted(Event):
        """The volume's content was replaced by a snapshot's."""

        TOPIC = "volume.Reverted"
        snapshot_id: UUID

    class Destroyed(Event):
        """The volume was destroyed; it can be recovered until expunged."""

        TOPIC = "volume.Destroyed"

    class Recovered(Event):
        """A destroyed volume was recovered."""

        TOPIC = "volume.Recovered"

    class ExpungeRequested(Event):
        """The volume's storage is being removed."""

        TOPIC = "volume.ExpungeRequested"

    class Expunged(Event):
        """The volume is gone for good."""

        TOPIC = "volume.Expunged"

    class ExpungeFailed(Event):
        """Removing the storage failed; the volume is back in Destroy."""

        TOPIC = "volume.ExpungeFailed"
        reason: str

    class Repaired(Event):
        """An operator forced the volume out of a stuck state (see `aggregates.repair`);
        `detached`: it is no longer attached to the VM it was being attached to."""

        TOPIC = "volume.Repaired"
        from_state: VolumeState
        to_state: VolumeState
        reason: str
        detached: bool

    @event(Allocated)
    def __init__(self, name: str, account: str, zone_id: UUID, volume_type: VolumeType,
                 size_bytes: int, disk_offering_id: UUID | None,
                 template_id: UUID | None) -> None:
        self.name, self.account, self.zone_id = name, account, zone_id
        self.volume_type, self.size_bytes = volume_type, size_bytes
        self.disk_offering_id, self.template_id = disk_offering_id, template_id
        self.state = VolumeState.ALLOCATED
        self.pool_id: UUID | None = None
        self.path: str | None = None
        self.vm_id: UUID | None = None
        self.device_id: int | None = None
        self.requested_size_bytes: int | None = None
        self.destination_pool_id: UUID | None = None
        self.snapshot_id: UUID | None = None
        self.host_id: UUID | None = None
        self.last_error = ""

    @classmethod
    def allocate(cls, *, name: str, account: str, zone_id: UUID, volume_type: VolumeType,
                 size_bytes: int, disk_offering_id: UUID | None = None,
                 template_id: UUID | None = None, id: UUID | None = None) -> "Volume":
        """Validate and allocate a volume."""
        require_name("volume", name)
        require_name(f"volume {name}: account", account)
        require_positive(f"volume {name}", "size_bytes", size_bytes)
        if volume_type is VolumeType.DATADISK and template_id is not None:
            raise ValidationError(f"volume {name}: a data disk is not built from a template")
        volume: Volume = cls._create(
            cls.Allocated, id=id, name=name, account=account, zone_id=zone_id,
            volume_type=volume_type, size_bytes=size_bytes, disk_offering_id=disk_offering_id,
            template_id=template_id)
        return volume

    @property
    def is_attached(self) -> bool:
        """Whether the volume is attached (or being attached) to a VM."""
        return self.vm_id is not None

    # create

    def create(self, pool_id: UUID) -> None:
        """Begin creating the volume on the pool placement chose."""
        self._require({_S.ALLOCATED}, "create")
        self._creation_requested(pool_id)

    @event(CreationRequested)
    def _creation_requested(self, pool_id: UUID) -> None:
        self.state, self.pool_id = VolumeState.CREATING, pool_id

    def created(self, path: str) -> None:
        """Record that the volume exists on its pool."""
        self._require({_S.CREATING}, "complete creation")
        require_name(f"volume {self.name}: path", path)
        self._creation_completed(path)

    @event(CreationCompleted)
    def _creation_completed(self, path: str) -> None:
        self.state, self.path, self.last_error = VolumeState.READY, path, ""

    def creation_failed(self, reason: str) -> None:
        """Record a failed creation; the volume is Allocated again."""
        self._require({_S.CREATING}, "fail creation")
        self._creation_failed(reason)

    @event(CreationFailed)
    def _creation_failed(self, reason: str) -> None:
        self.state, self.pool_id, self.last_error = VolumeState.ALLOCATED, None, reason

    # attach, detach

    def attach(self, vm_id: UUID, device_id: int) -> None:
        """Begin attaching the volume to a VM at a device slot."""
        self._require({_S.READY}, "attach")
        label = f"volume {self.name}"
        if self.vm_id is not None:
            raise DomainRuleError(f"{label} is already attached to vm {self.vm_id}")
        if isinstance(device_id, bool) or not isinstance(device_id, int):
            raise ValidationError(f"{label}: device_id must be an integer, got {device_id!r}")
        if self.volume_type is VolumeType.ROOT and device_id != 0:
            raise ValidationError(f"{label}: a ROOT volume attaches as device 0")
        if self.volume_type is VolumeType.DATADISK and (
                device_id < 1 or device_id == CDROM_DEVICE_ID):
            raise ValidationError(f"{label}: a data disk needs a device id >= 1 other than "
                                  f"{CDROM_DEVICE_ID}, got {device_id}")
        self._attach_requested(vm_id, device_id)

    @event(AttachRequested)
    def _attach_requested(self, vm_id: UUID, device_id: int) -> None:
        self.state, self.vm_id, self.device_id = VolumeState.ATTACHING, vm_id, device_id

    def attached(self) -> None:
        """Record that the attach succeeded."""
        self._require({_S.ATTACHING}, "complete attach")
        self._attached()

    @event(Attached)
    def _attached(self) -> None:
        self.state, self.last_error = VolumeState.READY, ""

    def attach_failed(self, reason: str) -> None:
        """Record a failed attach; the volume is detached and Ready."""
        self._require({_S.ATTACHING}, "fail attach")
        self._attach_failed(reason)

    @event(AttachFailed)
    def _attach_failed(self, reason: str) -> None:
        self.state, self.vm_id, self.device_id = VolumeState.READY, None, None
        self.last_error = reason

    def detach(self) -> None:
        """Record that the volume was detached from its VM."""
        self._require({_S.READY}, "detach")
        if self.vm_id is None:
            raise DomainRuleError(f"volume {self.name} is not attached")
        self._detached()

    @event(Detached)
    def _detached(self) -> None:
        self.vm_id, self.device_id = None, None

    # resize

    def resize(self, size_bytes: int) -> None:
        """Begin growing the volume; a volume never shrinks."""
        self._require({_S.READY}, "resize")
        require_positive(f"volume {self.name}", "size_bytes", size_bytes)
        if size_bytes <= self.size_bytes:
            raise DomainRuleError(f"volume {self.name}: a resize only grows; {size_bytes} "
                                  f"is not more than {self.size_bytes}")
        self._resize_requested(size_bytes)

    @event(ResizeRequested)
    def _resize_requested(self, size_bytes: int) -> None:
        self.state, self.requested_size_bytes = VolumeState.RESIZING, size_bytes

    def resized(self) -> None:
        """Record that the volume has its new size."""
        self._require({_S.RESIZING}, "complete resize")
        self._resized()

    @event(Resized)
    def _resized(self) -> None:
        self.size_bytes = self.requested_size_bytes or self.size_bytes
        self.requested_size_bytes = None
        self.state, self.last_error = VolumeState.READY, ""

    def resize_failed(self, reason: str) -> None:
        """Record a failed resize; the size is unchanged."""
        self._require({_S.RESIZING}, "fail resize")
        self._resize_failed(reason)

    @event(ResizeFailed)
    def _resize_failed(self, reason: str) -> None:
        self.state, self.requested_size_bytes = VolumeState.READY, None
        self.last_error = reason

    # migrate

    def migrate(self, destination_pool_id: UUID) -> None:
        """Begin moving the volume to another pool."""
        self._require({_S.READY}, "migrate")
        if destination_pool_id == self.pool_id:
            raise DomainRuleError(f"volume {self.name} is already on {destination_pool_id}")
        self._migration_requested(destination_pool_id)

    @event(MigrationRequested)
    def _migration_requested(self, destination_pool_id: UUID) -> None:
        self.state, self.destination_pool_id = VolumeState.MIGRATING, destination_pool_id

    def migrated(self, path: str) -> None:
        """Record that the volume is on its destination pool."""
        self._require({_S.MIGRATING}, "complete migration")
        require_name(f"volume {self.name}: path", path)
        self._migrated(path)

    @event(Migrated)
    def _migrated(self, path: str) -> None:
        self.pool_id, self.destination_pool_id = self.destination_pool_id, None
        self.path, self.state, self.last_error = path, VolumeState.READY, ""

    def migration_failed(self, reason: str) -> None:
        """Record a failed migration; the volume stays where it was."""
        self._require({_S.MIGRATING}, "fail migration")
        self._migration_failed(reason)

    @event(MigrationFailed)
    def _migration_failed(self, reason: str) -> None:
        self.state, self.destination_pool_id = VolumeState.READY, None
        self.last_error = reason

    # snapshot

    def take_snapshot(self, snapshot_id: UUID) -> None:
        """Begin taking a snapshot of the volume."""
        self._require({_S.READY}, "take a snapshot")
        self._snapshot_requested(snapshot_id)

    @event(SnapshotRequested)
    def _snapshot_requested(self, snapshot_id: UUID) -> None:
        self.state, self.snapshot_id = VolumeState.SNAPSHOTTING, snapshot_id

    def snapshot_taken(self) -> None:
        """Record that the snapshot was taken."""
        self._require({_S.SNAPSHOTTING}, "complete snapshot")
        self._snapshot_taken()

    @event(SnapshotTaken)
    def _snapshot_taken(self) -> None:
        self.state, self.snapshot_id, self.last_error = VolumeState.READY, None, ""

    def snapshot_failed(self, reason: str) -> None:
        """Record that taking the snapshot failed."""
        self._require({_S.SNAPSHOTTING}, "fail snapshot")
        self._snapshot_failed(reason)

    @event(SnapshotFailed)
    def _snapshot_failed(self, reason: str) -> None:
        self.state, self.snapshot_id, self.last_error = VolumeState.READY, None, reason

    def reverted(self, snapshot_id: UUID) -> None:
        """Record that a snapshot's content was put back into the volume."""
        self._require({_S.READY}, "revert")
        self._reverted(snapshot_id)

    @event(Reverted)
    def _reverted(self, snapshot_id: UUID) -> None:
        self.last_error = ""

    # location

    def locate(self, host_id: UUID) -> None:
        """Record the host whose pool holds the volume; the same host again records nothing."""
        if host_id != self.host_id:
            self._located(host_id)

    @event(Located)
    def _located(self, host_id: UUID) -> None:
        self.host_id = host_id

    # destroy, recover, expunge

    def destroy(self) -> None:
        """Destroy a detached volume; it can be recovered until expunged."""
        self._require({_S.ALLOCATED, _S.READY}, "destroy")
        if self.vm_id is not None:
            raise DomainRuleError(f"volume {self.name} is attached to vm {self.vm_id}; "
                                  "detach it first")
        self._destroyed()

    @event(Destroyed)
    def _destroyed(self) -> None:
        self.state = VolumeState.DESTROY

    def recover(self) -> None:
        """Bring a destroyed volume back (Ready, or Allocated if it was never created)."""
        self._require({_S.DESTROY}, "recover")
        self._recovered()

    @event(Recovered)
    def _recovered(self) -> None:
        self.state = VolumeState.ALLOCATED if self.path is None else VolumeState.READY

    def expunge(self) -> None:
        """Begin removing the volume's storage for good."""
        self._require({_S.DESTROY}, "expunge")
        self._expunge_requested()

    @event(ExpungeRequested)
    def _expunge_requested(self) -> None:
        self.state = VolumeState.EXPUNGING

    def expunged(self) -> None:
        """Record that the storage is gone."""
        self._require({_S.EXPUNGING}, "complete expunge")
        self._expunged()

    @event(Expunged)
    def _expunged(self) -> None:
        self.state = VolumeState.EXPUNGED

    def expunge_failed(self, reason: str) -> None:
        """Record that removing the storage failed; the volume is back in Destroy."""
        self._require({_S.EXPUNGING}, "fail expunge")
        self._expunge_failed(reason)

    @event(ExpungeFailed)
    def _expunge_failed(self, reason: str) -> None:
        self.state, self.last_error = VolumeState.DESTROY, reason

    # repair

    def repair(self, to_state: VolumeState, reason: str, *, detach: bool = False,
               vm_gone: bool = False) -> None:
        """Force a stuck volume to a settled state, saying why; with `detach`, a volume
        stuck Attaching is Ready detached (as a failed attach). `vm_gone` (the caller found
        the VM it is attached to Expunged): it is detached from that VM too, and a Ready one,
        stuck by that attachment alone, is repaired to Ready, detached."""
        label = f"volume {self.name}"
        orphaned = bool(vm_gone) and self.vm_id is not None
        if orphaned and self.state is _S.READY:
            if to_state is not _S.READY:
                raise RepairRefusedError(f"{label} is Ready, attached to vm {self.vm_id}, "
                                         "which is expunged: repair it to Ready, detached")
            why = check_reason(label, reason)
        else:
            why = check_repair(VOLUME_REPAIRS, label, self.state, to_state, reason)
        self._repaired(self.state, to_state, why,
                       orphaned or (bool(detach) and self.state is _S.ATTACHING))

    @event(Repaired)
    def _repaired(self, from_state: VolumeState, to_state: VolumeState, reason: str,
                  detached: bool) -> None:
        self.state, self.last_error = to_state, reason
        self.destination_pool_id, self.requested_size_bytes, self.snapshot_id = None, None, None
        if to_state is VolumeState.ALLOCATED:
            self.pool_id = None
        if detached:
            self.vm_id, self.device_id = None, None
