"""The inventory read model: zones, pods, clusters, primary storage pools, image stores and
service and disk offerings, one row each, filterable by kind and by where it sits.

Hosts have their own model (`fleet`, with capacity); this one is the rest of what the
inventory file registers, so that the admin API lists the whole inventory from read models.
`details` keeps each kind's own fields (a pod's addresses, an offering's size...).
"""

from enum import Enum
from typing import Any, ClassVar

from aggregates.cluster import Cluster
from aggregates.image_store import ImageStore
from aggregates.offering import DiskOffering, OfferingState, ServiceOffering
from aggregates.pod import Pod
from aggregates.storage_pool import PrimaryStoragePool
from aggregates.zone import Zone
from projections.models import (
    JSON_T,
    STAMP_COLUMNS,
    TEXT_T,
    UUID_T,
    Column,
    Handler,
    Row,
    RowModel,
    stamp,
    update_with,
)


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _created(kind: str, state: str, *, where: tuple[str, ...] = (), details: tuple[str, ...] = (),
             self_zone: bool = False) -> Handler:
    """A row for a newly registered entity: its place (`where` fields) and `details`."""

    def apply(_: Row | None, e: Any) -> Row:
        place = {f: getattr(e, f) for f in where}
        return {"id": e.originator_id, "kind": kind, "name": e.name,
                "zone_id": e.originator_id if self_zone else place.get("zone_id"),
                "pod_id": place.get("pod_id"), "cluster_id": place.get("cluster_id"),
                "state": state, "details": {f: _plain(getattr(e, f)) for f in details},
                **stamp(e)}

    return apply


def _state(field: str = "state") -> Handler:
    return update_with(lambda r, e: {**r, "state": _plain(getattr(e, field))})


class InventoryModel(RowModel):
    """Zones, pods, clusters, storage pools, image stores and offerings."""

    name = "inventory"
    columns = (
        Column("id", UUID_T, nullable=False),
        Column("kind", TEXT_T, nullable=False),
        Column("name", TEXT_T, nullable=False),
        Column("zone_id", UUID_T),
        Column("pod_id", UUID_T),
        Column("cluster_id", UUID_T),
        Column("state", TEXT_T, nullable=False),
        Column("details", JSON_T, nullable=False),
        *STAMP_COLUMNS,
    )
    filters = ("kind", "zone_id", "pod_id", "cluster_id", "name")
    handlers: ClassVar[dict[type[Any], Handler]] = {
        Zone.Created: _created("zone", "Enabled", self_zone=True, details=(
            "network_type", "dns_servers", "internal_dns_servers", "network_domain",
            "guest_cidr", "local_storage_enabled")),
        Zone.AllocationStateChanged: _state(),
        Pod.Created: _created("pod", "Enabled", where=("zone_id",), details=(
            "gateway", "cidr", "start_ip", "end_ip")),
        Pod.AllocationStateChanged: _state(),
        Cluster.Added: _created("cluster", "Enabled", where=("zone_id", "pod_id"), details=(
            "hypervisor", "cpu_overprovisioning", "memory_overprovisioning")),
        Cluster.AllocationStateChanged: _state(),
        PrimaryStoragePool.Created: _created(
            "storage_pool", "Up", where=("zone_id", "pod_id", "cluster_id"), details=(
                "scope", "host_id", "pool_name", "uri", "capacity_bytes",
                "storage_overprovisioning", "tags")),
        PrimaryStoragePool.StateChanged: _state(),
        ImageStore.Added: _created("image_store", "ReadWrite", where=("zone_id",),
                                   details=("url", "protocol")),
        ImageStore.StateChanged: _state(),
        ServiceOffering.Created: _created("service_offering", OfferingState.ACTIVE.value,
                                          details=("display_text", "cpu_cores", "cpu_mhz",
                                                   "memory_mib", "host_tags", "storage_tags",
                                                   "ha_enabled")),
        ServiceOffering.Retired: update_with(
            lambda r, e: {**r, "state": OfferingState.RETIRED.value}),
        DiskOffering.Created: _created("disk_offering", OfferingState.ACTIVE.value,
                                       details=("display_text", "size_bytes", "customizable",
                                                "tags")),
        DiskOffering.Retired: update_with(
            lambda r, e: {**r, "state": OfferingState.RETIRED.value}),
    }
