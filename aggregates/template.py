"""Template: a disk image (or ISO) registered from a URL and downloaded to an image store.

Templates are known by zone and name (`Template.create_id(zone_id, name)`).
Registered -> Downloading -> Ready, or Downloading -> Error; an Error template may be
downloaded again. A completed download whose checksum does not match the registered one
is recorded as a failed download. `size_bytes` is the size of the disk the template holds (its
virtual size, as CloudStack's template size; downloads recorded before the kernel read it
recorded the file's length).
"""

import re
from enum import Enum
from uuid import UUID

from eventsourcing.domain import event

from aggregates.base import PlatformAggregate, natural_id
from aggregates.errors import ValidationError
from aggregates.validation import require_name, require_positive, require_url

_CHECKSUM = re.compile(r"^(\{[A-Za-z0-9-]+\})?[0-9a-fA-F]+$")


class TemplateFormat(Enum):
    """The image format (CloudStack's spelling)."""

    QCOW2 = "QCOW2"
    RAW = "RAW"
    ISO = "ISO"


class TemplateState(Enum):
    """Where the template is in its download life."""

    REGISTERED = "Registered"
    DOWNLOADING = "Downloading"
    READY = "Ready"
    ERROR = "Error"
    REMOVED = "Removed"


_S = TemplateState


class Template(PlatformAggregate):
    """A template or ISO that volumes and VMs are built from."""

    TOPIC = "template"
    KIND = "template"

    class Event(PlatformAggregate.Event):
        """Base of Template events."""

        TOPIC = "template.Event"

    class Registered(Event, PlatformAggregate.Created):
        """The template was registered from a URL."""

        TOPIC = "template.Registered"
        name: str
        zone_id: UUID
        url: str
        format: TemplateFormat
        os_type: str
        checksum: str | None

    class DownloadStarted(Event):
        """The template is being downloaded to an image store."""

        TOPIC = "template.DownloadStarted"
        image_store_id: UUID

    class Downloaded(Event):
        """The template is on the image store and usable."""

        TOPIC = "template.Downloaded"
        size_bytes: int
        checksum: str | None

    class DownloadFailed(Event):
        """The download failed."""

        TOPIC = "template.DownloadFailed"
        reason: str

    class Removed(Event):
        """The template was deleted."""

        TOPIC = "template.Removed"

    @staticmethod
    def create_id(zone_id: UUID, name: str) -> UUID:
        """Templates are known by zone and name."""
        return natural_id("template", str(zone_id), name)

    @event(Registered)
    def __init__(self, name: str, zone_id: UUID, url: str, format: TemplateFormat,
                 os_type: str, checksum: str | None) -> None:
        self.name, self.zone_id, self.url = name, zone_id, url
        self.format, self.os_type, self.checksum = format, os_type, checksum
        self.state = TemplateState.REGISTERED
        self.image_store_id: UUID | None = None
        self.size_bytes: int | None = None
        self.last_error = ""

    @classmethod
    def register(cls, *, name: str, zone_id: UUID, url: str,
                 format: TemplateFormat = TemplateFormat.QCOW2, os_type: str = "Other Linux",
                 checksum: str | None = None) -> "Template":
        """Validate and register a template."""
        require_name("template", name)
        label = f"template {name}"
        require_url(label, "url", url)
        require_name(f"{label}: os type", os_type)
        if checksum is not None:
            _check_checksum(label, checksum)
        return cls(name, zone_id, url, format, os_type, checksum)

    def start_download(self, image_store_id: UUID) -> None:
        """Begin (or retry) downloading the template to an image store."""
        self._require({_S.REGISTERED, _S.ERROR}, "start download")
        self._download_started(image_store_id)

    @event(DownloadStarted)
    def _download_started(self, image_store_id: UUID) -> None:
        self.image_store_id, self.state = image_store_id, TemplateState.DOWNLOADING

    def download_completed(self, size_bytes: int, checksum: str | None = None) -> None:
        """Record a finished download; a checksum mismatch is recorded as a failure."""
        self._require({_S.DOWNLOADING}, "complete download")
        label = f"template {self.name}"
        require_positive(label, "size_bytes", size_bytes)
        if checksum is not None:
            _check_checksum(label, checksum)
            if self.checksum is not None and _digest(checksum) != _digest(self.checksum):
                self._download_failed(f"checksum mismatch: expected {self.checksum}, "
                                      f"got {checksum}")
                return
        self._downloaded(size_bytes, checksum)

    @event(Downloaded)
    def _downloaded(self, size_bytes: int, checksum: str | None) -> None:
        self.size_bytes, self.state, self.last_error = size_bytes, TemplateState.READY, ""
        if self.checksum is None:
            self.checksum = checksum

    def download_failed(self, reason: str) -> None:
        """Record a failed download; it may be retried."""
        self._require({_S.DOWNLOADING}, "fail download")
        self._download_failed(reason)

    @event(DownloadFailed)
    def _download_failed(self, reason: str) -> None:
        self.state, self.last_error = TemplateState.ERROR, reason

    def remove(self) -> None:
        """Delete the template (not while a download runs)."""
        self._require({_S.REGISTERED, _S.READY, _S.ERROR}, "remove")
        self._removed()

    @event(Removed)
    def _removed(self) -> None:
        self.state = TemplateState.REMOVED


def _check_checksum(label: str, checksum: str) -> None:
    if not isinstance(checksum, str) or not _CHECKSUM.match(checksum):
        raise ValidationError(f"{label}: checksum {checksum!r} must be hex digits, "
                              "optionally prefixed with {ALGORITHM}")


def _digest(checksum: str) -> str:
    return checksum.rpartition("}")[2].lower()
