"""Step contracts of the `storage` subsystem: libvirt storage pools, volumes and templates.

A volume is named by `VolumeRef` (host, pool, volume name); its path is libvirt's business.
Compensations: create_pool -> delete_pool, create_volume -> delete_volume, migrate_volume ->
migrate_volume with source and target swapped, download_template -> delete_template.
resize_volume has none (shrinking is refused, so a grow cannot be undone); delete_* have none.
Attaching a volume to a VM changes the domain, so it is `hypervisor.attach_disk`.
"""

from typing import Annotated, Literal

import msgspec

__all__ = [
    "CreatePool",
    "CreateVolume",
    "DeletePool",
    "DeleteTemplate",
    "DeleteVolume",
    "Deleted",
    "DownloadTemplate",
    "MigrateVolume",
    "PoolInfo",
    "ResizeVolume",
    "TemplateDownloaded",
    "VolumeInfo",
    "VolumeMigrated",
    "VolumeRef",
    "VolumeResized",
]

Bytes = Annotated[int, msgspec.Meta(ge=1)]
# "sha256:<64 hex>" or "md5:<32 hex>"
Checksum = Annotated[str, msgspec.Meta(pattern=r"^(sha256:[0-9a-fA-F]{64}|md5:[0-9a-fA-F]{32})$")]


class VolumeRef(msgspec.Struct, frozen=True, kw_only=True):
    """A storage volume: its host, its pool and its name in the pool."""

    host_uri: str
    pool: str
    name: str


class CreatePool(msgspec.Struct, frozen=True, kw_only=True, tag="storage.create_pool"):
    """Define, build, start and autostart a `dir` storage pool on a host."""

    host_uri: str
    pool: str
    path: str
    pool_type: Literal["dir"] = "dir"


class DeletePool(msgspec.Struct, frozen=True, kw_only=True, tag="storage.delete_pool"):
    """Stop and undefine a pool; its directory and files stay. Gone already is success."""

    host_uri: str
    pool: str


class CreateVolume(msgspec.Struct, frozen=True, kw_only=True, tag="storage.create_volume"):
    """Create a volume, blank or with a template file's content (a local file of the host)."""

    volume: VolumeRef
    capacity_bytes: Bytes
    format: Literal["raw", "qcow2"] = "qcow2"
    template_path: str | None = None
    # Make sure the volume's dir pool exists at this path first (as create_pool does): a
    # deploy saves a round trip.
    pool_path: str | None = None


class ResizeVolume(msgspec.Struct, frozen=True, kw_only=True, tag="storage.resize_volume"):
    """Grow a volume to `capacity_bytes`; shrinking is refused."""

    volume: VolumeRef
    capacity_bytes: Bytes


class DeleteVolume(msgspec.Struct, frozen=True, kw_only=True, tag="storage.delete_volume"):
    """Delete a volume and its file; gone already is success."""

    volume: VolumeRef


class MigrateVolume(msgspec.Struct, frozen=True, kw_only=True, tag="storage.migrate_volume"):
    """Copy a volume to another pool (on the same or another host), then delete the source."""

    source: VolumeRef
    target: VolumeRef


class DownloadTemplate(msgspec.Struct, frozen=True, kw_only=True,
                       tag="storage.download_template"):
    """Fetch a template (`file://` or `http(s)://`) into an image store, verifying a checksum."""

    url: str
    directory: str
    file_name: str
    checksum: Checksum
    timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 60.0


class DeleteTemplate(msgspec.Struct, frozen=True, kw_only=True, tag="storage.delete_template"):
    """Remove a template file from an image store; gone already is success."""

    directory: str
    file_name: str


# --------------------------------------------------------------------------- results


class PoolInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A pool after create_pool; `created` is False when it existed."""

    host_uri: str
    pool: str
    path: str
    capacity_bytes: int
    available_bytes: int
    created: bool


class VolumeInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A volume as libvirt reports it; `created` is False when it existed."""

    volume: VolumeRef
    path: str
    capacity_bytes: int
    allocation_bytes: int
    format: str
    created: bool


class VolumeResized(msgspec.Struct, frozen=True, kw_only=True):
    """The capacity after a resize and how it was done: "live" (through the running domain
    that holds it), "resize" (libvirt's volume resize), "recreated" (its file grown and its
    record made again) or "already"."""

    volume: VolumeRef
    capacity_bytes: int
    how: str


class VolumeMigrated(msgspec.Struct, frozen=True, kw_only=True):
    """The volume on its target, how its content moved ("stream", "file", "already")."""

    volume: VolumeInfo
    how: str
    sha256: str | None = None


class Deleted(msgspec.Struct, frozen=True, kw_only=True):
    """A delete's outcome: whether there was something to delete."""

    existed: bool


class TemplateDownloaded(msgspec.Struct, frozen=True, kw_only=True):
    """The verified template file; `downloaded` is False when it was there already.
    `size_bytes` is the file's length, `virtual_size_bytes` the size of the disk it holds
    (a qcow2 header's; a raw file's length; 0 from a plugin that does not say)."""

    path: str
    size_bytes: int
    checksum: str
    sha256: str
    downloaded: bool
    virtual_size_bytes: int = 0
