"""The `storage` subsystem: primary storage pools, volumes and templates, one step at a time.

Pools and volumes are libvirt's (through `subsystems.libvirt.pools` and the process's one
connection per host URI); template downloads are plain files in an image-store directory.
Every action checks the real state first, so a repeated step is harmless (see `volumes` and
`templates`). No configuration.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aggregates.errors import ConfigError, StepFailedError
from kernel.steps.inventory import InventoryStorage, StorageInventory
from kernel.steps.storage import (
    CreatePool,
    CreateVolume,
    Deleted,
    DeletePool,
    DeleteTemplate,
    DeleteVolume,
    DownloadTemplate,
    MigrateVolume,
    PoolInfo,
    ResizeVolume,
    TemplateDownloaded,
    VolumeInfo,
    VolumeMigrated,
    VolumeResized,
)
from subsystems.base import StepContext, SubsystemBase, action
from subsystems.libvirt import inventory, pools, volumes
from subsystems.libvirt.connections import connection
from subsystems.libvirt.faults import quiet
from subsystems.storage import templates

__all__ = ["Storage", "make_storage"]


class Storage(SubsystemBase):
    """Creates, grows, moves and deletes volumes in libvirt storage pools."""

    name = "storage"
    version = "1.0"

    def open(self) -> None:
        """Keep libvirt from printing errors the steps report anyway."""
        quiet()

    @action("create_pool")
    def create_pool(self, ctx: StepContext, args: CreatePool) -> PoolInfo:
        """Define, build, start and autostart a dir pool; an existing one is reported."""
        pool, created = pools.ensure_pool(connection(args.host_uri), args.pool, args.path)
        facts = pools.pool_facts(pool)
        if facts.path.rstrip("/") != args.path.rstrip("/"):
            raise StepFailedError(f"pool {args.pool} exists at {facts.path}, not {args.path}",
                                  retryable=False, code="conflict")
        return PoolInfo(host_uri=args.host_uri, pool=args.pool, path=facts.path,
                        capacity_bytes=facts.capacity, available_bytes=facts.available,
                        created=created)

    @action("delete_pool")
    def delete_pool(self, ctx: StepContext, args: DeletePool) -> Deleted:
        """Stop and undefine a pool (files stay); gone already is success."""
        return Deleted(existed=pools.remove_pool(connection(args.host_uri), args.pool))

    @action("create_volume")
    def create_volume(self, ctx: StepContext, args: CreateVolume) -> VolumeInfo:
        """Create a blank or template-based volume (and its pool first, if asked)."""
        if args.pool_path is not None:
            self.create_pool(ctx, CreatePool(host_uri=args.volume.host_uri,
                                             pool=args.volume.pool, path=args.pool_path))
        return volumes.create(args)

    @action("resize_volume")
    def resize_volume(self, ctx: StepContext, args: ResizeVolume) -> VolumeResized:
        """Grow a volume."""
        return volumes.resize(args)

    @action("delete_volume")
    def delete_volume(self, ctx: StepContext, args: DeleteVolume) -> Deleted:
        """Delete a volume and its file."""
        return volumes.delete(args.volume)

    @action("migrate_volume")
    def migrate_volume(self, ctx: StepContext, args: MigrateVolume) -> VolumeMigrated:
        """Move a volume to another pool or host."""
        return volumes.migrate(args)

    @action("download_template")
    def download_template(self, ctx: StepContext, args: DownloadTemplate
                          ) -> TemplateDownloaded:
        """Fetch a template into an image store and verify its checksum."""
        return templates.download_template(args)

    @action("delete_template")
    def delete_template(self, ctx: StepContext, args: DeleteTemplate) -> Deleted:
        """Remove a template file."""
        return templates.delete_template(args)

    @action("inventory")
    def inventory(self, ctx: StepContext, args: InventoryStorage) -> StorageInventory:
        """Every pool and volume of a host, and the files of the asked directories when
        the host's files are this machine's (read only)."""
        listed = pools.is_local_uri(args.host_uri)
        return StorageInventory(
            host_uri=args.host_uri, pools=inventory.pool_facts(connection(args.host_uri)),
            listed=listed, directories=tuple(inventory.directory_listing(d)
                                             for d in args.directories) if listed else ())


def make_storage(config: Mapping[str, Any]) -> Storage:
    """Entry point factory of `storage`: it takes no configuration."""
    if config:
        raise ConfigError(f"storage: takes no config, got keys {sorted(config)}")
    return Storage()
