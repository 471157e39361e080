"""The hosts read model: identity, states, and cpu and memory capacity used and free.

Totals are what placement may hand out, after the host's over-provisioning factors, exactly as
`Host.total_cpu_cores` and `Host.total_memory_mib` compute them. A release names only its
claim, so the row keeps the open claims (claim id -> [vm id, cores, MiB]) to know what a
release gives back.
"""

from typing import Any, ClassVar

from aggregates.host import Host, HostResourceState, HostStatus
from projections.models import (
    FLOAT_T,
    INT_T,
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


def _registered(_: Row | None, e: Any) -> Row:
    # int() of the product, as the aggregate's total_* properties do.
    total_cpu = int(e.cpu_cores * e.cpu_overprovisioning)
    total_memory = int(e.memory_mib * e.memory_overprovisioning)
    return {
        "id": e.originator_id, "name": e.name, "uri": e.uri, "zone_id": e.zone_id,
        "pod_id": e.pod_id, "cluster_id": e.cluster_id,
        "resource_state": HostResourceState.ENABLED.value, "status": HostStatus.UP.value,
        "cpu_cores": e.cpu_cores, "cpu_mhz": e.cpu_mhz, "memory_mib": e.memory_mib,
        "cpu_overprovisioning": float(e.cpu_overprovisioning),
        "memory_overprovisioning": float(e.memory_overprovisioning),
        "total_cpu_cores": total_cpu, "total_memory_mib": total_memory,
        "used_cpu_cores": 0, "used_memory_mib": 0,
        "free_cpu_cores": total_cpu, "free_memory_mib": total_memory,
        "claim_count": 0, "claims": {}, "tags": list(e.tags), **stamp(e),
    }


def _claimed(r: Row, e: Any) -> Row:
    # A new dict, so that the row handed in is never changed (the fold stays pure).
    r["claims"] = {**r["claims"], str(e.claim_id): [str(e.vm_id), e.cpu_cores, e.memory_mib]}
    return _with_usage(r, e.cpu_cores, e.memory_mib)


def _released(r: Row, e: Any) -> Row:
    claims = dict(r["claims"])
    claim = claims.pop(str(e.claim_id), None)
    if claim is None:  # the aggregate refuses unknown claims; nothing to give back
        return r
    r["claims"] = claims
    return _with_usage(r, -claim[1], -claim[2])


def _with_usage(r: Row, cpu_cores: int, memory_mib: int) -> Row:
    r["used_cpu_cores"] += cpu_cores
    r["used_memory_mib"] += memory_mib
    r["free_cpu_cores"] = r["total_cpu_cores"] - r["used_cpu_cores"]
    r["free_memory_mib"] = r["total_memory_mib"] - r["used_memory_mib"]
    r["claim_count"] = len(r["claims"])
    return r


class HostModel(RowModel):
    """Hosts with used and free capacity: queryable by zone, cluster, status and resource state."""

    name = "hosts"
    columns = (
        Column("id", UUID_T, nullable=False),
        Column("name", TEXT_T, nullable=False),
        Column("uri", TEXT_T, nullable=False),
        Column("zone_id", UUID_T, nullable=False),
        Column("pod_id", UUID_T, nullable=False),
        Column("cluster_id", UUID_T, nullable=False),
        Column("resource_state", TEXT_T, nullable=False),
        Column("status", TEXT_T, nullable=False),
        Column("cpu_cores", INT_T, nullable=False),
        Column("cpu_mhz", INT_T, nullable=False),
        Column("memory_mib", INT_T, nullable=False),
        Column("cpu_overprovisioning", FLOAT_T, nullable=False),
        Column("memory_overprovisioning", FLOAT_T, nullable=False),
        Column("total_cpu_cores", INT_T, nullable=False),
        Column("total_memory_mib", INT_T, nullable=False),
        Column("used_cpu_cores", INT_T, nullable=False),
        Column("used_memory_mib", INT_T, nullable=False),
        Column("free_cpu_cores", INT_T, nullable=False),
        Column("free_memory_mib", INT_T, nullable=False),
        Column("claim_count", INT_T, nullable=False),
        Column("claims", JSON_T, nullable=False),
        Column("tags", JSON_T, nullable=False),
        *STAMP_COLUMNS,
    )
    filters = ("zone_id", "cluster_id", "status", "resource_state")
    handlers: ClassVar[dict[type[Any], Handler]] = {
        Host.Registered: _registered,
        Host.ResourceStateChanged: update_with(
            lambda r, e: {**r, "resource_state": e.state.value}),
        Host.StatusChanged: update_with(lambda r, e: {**r, "status": e.status.value}),
        Host.CapacityClaimed: update_with(_claimed),
        Host.CapacityReleased: update_with(_released),
    }
