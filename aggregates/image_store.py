"""ImageStore: secondary storage that holds templates, ISOs, snapshots and backups.

Image stores are known by name (`ImageStore.create_id(name)`). A store starts ReadWrite; a
ReadOnly store still serves what it holds but takes nothing new (CloudStack's `readonly`).
"""

from enum import Enum
from uuid import UUID

from eventsourcing.domain import event

from aggregates.base import PlatformAggregate, natural_id
from aggregates.validation import require_name, require_url


class ImageStoreProtocol(Enum):
    """How the store is reached."""

    NFS = "nfs"
    S3 = "s3"
    SWIFT = "swift"
    SMB = "smb"


class ImageStoreState(Enum):
    """Whether the store takes new images."""

    READ_WRITE = "ReadWrite"
    READ_ONLY = "ReadOnly"
    REMOVED = "Removed"


_S = ImageStoreState


class ImageStore(PlatformAggregate):
    """A secondary storage image store, in a zone or (zone_id None) for the whole region."""

    TOPIC = "image_store"
    KIND = "image store"

    class Event(PlatformAggregate.Event):
        """Base of ImageStore events."""

        TOPIC = "image_store.Event"

    class Added(Event, PlatformAggregate.Created):
        """The image store was added."""

        TOPIC = "image_store.Added"
        name: str
        zone_id: UUID | None
        url: str
        protocol: ImageStoreProtocol

    class StateChanged(Event):
        """The store was made read-only, read-write, or removed."""

        TOPIC = "image_store.StateChanged"
        state: ImageStoreState

    @staticmethod
    def create_id(name: str) -> UUID:
        """Image stores are known by name."""
        return natural_id("image_store", name)

    @event(Added)
    def __init__(self, name: str, zone_id: UUID | None, url: str,
                 protocol: ImageStoreProtocol) -> None:
        self.name, self.zone_id, self.url, self.protocol = name, zone_id, url, protocol
        self.state = ImageStoreState.READ_WRITE

    @classmethod
    def add(cls, *, name: str, zone_id: UUID | None, url: str,
            protocol: ImageStoreProtocol = ImageStoreProtocol.NFS) -> "ImageStore":
        """Validate and add an image store."""
        require_name("image store", name)
        require_url(f"image store {name}", "url", url)
        return cls(name, zone_id, url, protocol)

    @property
    def writable(self) -> bool:
        """Whether new images may be written to the store."""
        return self.state is ImageStoreState.READ_WRITE

    def make_read_only(self) -> None:
        """Stop writing new images to the store."""
        self._require({_S.READ_WRITE}, "make read-only")
        self._state_changed(ImageStoreState.READ_ONLY)

    def make_read_write(self) -> None:
        """Let new images be written to the store again."""
        self._require({_S.READ_ONLY}, "make read-write")
        self._state_changed(ImageStoreState.READ_WRITE)

    def remove(self) -> None:
        """Retire the store for good."""
        self._require({_S.READ_WRITE, _S.READ_ONLY}, "remove")
        self._state_changed(ImageStoreState.REMOVED)

    @event(StateChanged)
    def _state_changed(self, state: ImageStoreState) -> None:
        self.state = state
