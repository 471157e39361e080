"""The storage read models: volumes, snapshots and templates, one row per aggregate.

Each fold mirrors its aggregate's `@event` methods field by field, so that a row equals what
the aggregate itself holds after the same events.
"""

from typing import Any, ClassVar

from aggregates.snapshot import Snapshot, SnapshotState
from aggregates.template import Template, TemplateState
from aggregates.volume import Volume, VolumeState
from projections.models import (
    INT_T,
    STAMP_COLUMNS,
    TEXT_T,
    UUID_T,
    Column,
    Handler,
    Row,
    RowModel,
    set_values,
    stamp,
    update_with,
)


def _failed(**values: Any) -> Handler:
    """A failure handler: sets the values and records the event's reason as last_error."""
    return update_with(lambda r, e: {**r, **values, "last_error": e.reason})


# --------------------------------------------------------------------------- volumes

_VS = VolumeState


def _volume_allocated(_: Row | None, e: Any) -> Row:
    return {
        "id": e.originator_id, "name": e.name, "account": e.account, "zone_id": e.zone_id,
        "type": e.volume_type.value, "state": _VS.ALLOCATED.value,
        "size_bytes": e.size_bytes, "requested_size_bytes": None,
        "pool_id": None, "destination_pool_id": None, "path": None,
        "vm_id": None, "device_id": None, "disk_offering_id": e.disk_offering_id,
        "template_id": e.template_id, "snapshot_id": None, "last_error": "", **stamp(e),
    }


def _volume_resized(r: Row, _: Any) -> Row:
    r.update(size_bytes=r["requested_size_bytes"] or r["size_bytes"],
             requested_size_bytes=None, state=_VS.READY.value, last_error="")
    return r


def _volume_migrated(r: Row, e: Any) -> Row:
    r.update(pool_id=r["destination_pool_id"], destination_pool_id=None, path=e.path,
             state=_VS.READY.value, last_error="")
    return r


def _volume_repaired(r: Row, e: Any) -> Row:
    # as Volume._repaired
    r.update(state=e.to_state.value, last_error=e.reason, destination_pool_id=None,
             requested_size_bytes=None, snapshot_id=None)
    if e.to_state is _VS.ALLOCATED:
        r["pool_id"] = None
    if e.detached:
        r.update(vm_id=None, device_id=None)
    return r


def _volume_recovered(r: Row, _: Any) -> Row:
    # Recovered to Ready only if the volume was ever created (it has a path).
    r["state"] = (_VS.ALLOCATED if r["path"] is None else _VS.READY).value
    return r


class VolumeModel(RowModel):
    """Volumes: queryable by account, zone, state, type, VM, pool and template."""

    name = "volumes"
    columns = (
        Column("id", UUID_T, nullable=False),
        Column("name", TEXT_T, nullable=False),
        Column("account", TEXT_T, nullable=False),
        Column("zone_id", UUID_T, nullable=False),
        Column("type", TEXT_T, nullable=False),
        Column("state", TEXT_T, nullable=False),
        Column("size_bytes", INT_T, nullable=False),
        Column("requested_size_bytes", INT_T),
        Column("pool_id", UUID_T),
        Column("destination_pool_id", UUID_T),
        Column("path", TEXT_T),
        Column("vm_id", UUID_T),
        Column("device_id", INT_T),
        Column("disk_offering_id", UUID_T),
        Column("template_id", UUID_T),
        Column("snapshot_id", UUID_T),
        Column("last_error", TEXT_T, nullable=False),
        *STAMP_COLUMNS,
    )
    filters = ("account", "zone_id", "state", "type", "vm_id", "pool_id", "template_id")
    handlers: ClassVar[dict[type[Any], Handler]] = {
        Volume.Allocated: _volume_allocated,
        Volume.CreationRequested: update_with(
            lambda r, e: {**r, "state": _VS.CREATING.value, "pool_id": e.pool_id}),
        Volume.CreationCompleted: update_with(
            lambda r, e: {**r, "state": _VS.READY.value, "path": e.path, "last_error": ""}),
        Volume.CreationFailed: _failed(state=_VS.ALLOCATED.value, pool_id=None),
        Volume.AttachRequested: update_with(
            lambda r, e: {**r, "state": _VS.ATTACHING.value, "vm_id": e.vm_id,
                          "device_id": e.device_id}),
        Volume.Attached: set_values(state=_VS.READY.value, last_error=""),
        Volume.AttachFailed: _failed(state=_VS.READY.value, vm_id=None, device_id=None),
        Volume.Detached: set_values(vm_id=None, device_id=None),
        Volume.ResizeRequested: update_with(
            lambda r, e: {**r, "state": _VS.RESIZING.value,
                          "requested_size_bytes": e.size_bytes}),
        Volume.Resized: update_with(_volume_resized),
        Volume.ResizeFailed: _failed(state=_VS.READY.value, requested_size_bytes=None),
        Volume.MigrationRequested: update_with(
            lambda r, e: {**r, "state": _VS.MIGRATING.value,
                          "destination_pool_id": e.destination_pool_id}),
        Volume.Migrated: update_with(_volume_migrated),
        Volume.MigrationFailed: _failed(state=_VS.READY.value, destination_pool_id=None),
        Volume.SnapshotRequested: update_with(
            lambda r, e: {**r, "state": _VS.SNAPSHOTTING.value, "snapshot_id": e.snapshot_id}),
        Volume.SnapshotTaken: set_values(state=_VS.READY.value, snapshot_id=None,
                                         last_error=""),
        Volume.SnapshotFailed: _failed(state=_VS.READY.value, snapshot_id=None),
        Volume.Destroyed: set_values(state=_VS.DESTROY.value),
        Volume.Recovered: update_with(_volume_recovered),
        Volume.ExpungeRequested: set_values(state=_VS.EXPUNGING.value),
        Volume.Expunged: set_values(state=_VS.EXPUNGED.value),
        Volume.ExpungeFailed: _failed(state=_VS.DESTROY.value),
        Volume.Repaired: update_with(_volume_repaired),
    }


# --------------------------------------------------------------------------- snapshots

_SS = SnapshotState


def _snapshot_allocated(_: Row | None, e: Any) -> Row:
    return {
        "id": e.originator_id, "name": e.name, "account": e.account, "zone_id": e.zone_id,
        "volume_id": e.volume_id, "volume_size_bytes": e.volume_size_bytes,
        "state": _SS.ALLOCATED.value, "primary_path": None, "image_store_id": None,
        "backup_path": None, "size_bytes": None, "last_error": "", **stamp(e),
    }


class SnapshotModel(RowModel):
    """Volume snapshots: queryable by volume, state, account, zone and image store."""

    name = "snapshots"
    columns = (
        Column("id", UUID_T, nullable=False),
        Column("name", TEXT_T, nullable=False),
        Column("account", TEXT_T, nullable=False),
        Column("zone_id", UUID_T, nullable=False),
        Column("volume_id", UUID_T, nullable=False),
        Column("volume_size_bytes", INT_T, nullable=False),
        Column("state", TEXT_T, nullable=False),
        Column("primary_path", TEXT_T),
        Column("image_store_id", UUID_T),
        Column("backup_path", TEXT_T),
        Column("size_bytes", INT_T),
        Column("last_error", TEXT_T, nullable=False),
        *STAMP_COLUMNS,
    )
    filters = ("volume_id", "state", "account", "zone_id", "image_store_id")
    handlers: ClassVar[dict[type[Any], Handler]] = {
        Snapshot.Allocated: _snapshot_allocated,
        Snapshot.CreationRequested: set_values(state=_SS.CREATING.value),
        Snapshot.CreatedOnPrimary: update_with(
            lambda r, e: {**r, "state": _SS.CREATED_ON_PRIMARY.value, "primary_path": e.path}),
        Snapshot.BackupRequested: update_with(
            lambda r, e: {**r, "state": _SS.BACKING_UP.value,
                          "image_store_id": e.image_store_id}),
        Snapshot.BackedUp: update_with(
            lambda r, e: {**r, "state": _SS.BACKED_UP.value, "backup_path": e.path,
                          "size_bytes": e.size_bytes}),
        Snapshot.Failed: _failed(state=_SS.ERROR.value),
        Snapshot.Destroyed: set_values(state=_SS.DESTROYED.value),
    }


# --------------------------------------------------------------------------- templates

_TS = TemplateState


def _template_registered(_: Row | None, e: Any) -> Row:
    return {
        "id": e.originator_id, "name": e.name, "zone_id": e.zone_id, "url": e.url,
        "format": e.format.value, "os_type": e.os_type, "checksum": e.checksum,
        "state": _TS.REGISTERED.value, "image_store_id": None, "size_bytes": None,
        "last_error": "", **stamp(e),
    }


def _template_downloaded(r: Row, e: Any) -> Row:
    r.update(size_bytes=e.size_bytes, state=_TS.READY.value, last_error="")
    if r["checksum"] is None:  # a registered checksum is kept; else the download's is learnt
        r["checksum"] = e.checksum
    return r


class TemplateModel(RowModel):
    """Templates and ISOs: queryable by zone, state, format and image store."""

    name = "templates"
    columns = (
        Column("id", UUID_T, nullable=False),
        Column("name", TEXT_T, nullable=False),
        Column("zone_id", UUID_T, nullable=False),
        Column("url", TEXT_T, nullable=False),
        Column("format", TEXT_T, nullable=False),
        Column("os_type", TEXT_T, nullable=False),
        Column("checksum", TEXT_T),
        Column("state", TEXT_T, nullable=False),
        Column("image_store_id", UUID_T),
        Column("size_bytes", INT_T),
        Column("last_error", TEXT_T, nullable=False),
        *STAMP_COLUMNS,
    )
    filters = ("zone_id", "state", "format", "image_store_id")
    handlers: ClassVar[dict[type[Any], Handler]] = {
        Template.Registered: _template_registered,
        Template.DownloadStarted: update_with(
            lambda r, e: {**r, "state": _TS.DOWNLOADING.value,
                          "image_store_id": e.image_store_id}),
        Template.Downloaded: update_with(_template_downloaded),
        Template.DownloadFailed: _failed(state=_TS.ERROR.value),
        Template.Removed: set_values(state=_TS.REMOVED.value),
    }
