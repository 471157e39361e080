"""The public address read models: every allocation (`addresses`) and every zone's pool
(`address_pools`: its ranges and how many of its addresses are allocated and free).

Each fold mirrors its aggregate's `@event` methods, so that a row equals what the aggregate
itself holds after the same events; an `addresses` row belongs to its account, so a tenant
lists only its own.
"""

from ipaddress import IPv4Address
from typing import Any, ClassVar

from aggregates.public_address import AddressState, PublicAddress
from aggregates.public_address_pool import PublicAddressPool
from projections.models import (
    INT_T,
    JSON_T,
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


def _allocated(_: Row | None, e: Any) -> Row:
    return {
        "id": e.originator_id, "zone_id": e.zone_id, "pool_id": e.pool_id,
        "address": e.address, "account": e.account, "purpose": e.purpose,
        "state": AddressState.ALLOCATED.value, **stamp(e),
    }


class AddressModel(RowModel):
    """Public address allocations: queryable by account, zone, state and address."""

    name = "addresses"
    columns = (
        Column("id", UUID_T, nullable=False),
        Column("zone_id", UUID_T, nullable=False),
        Column("pool_id", UUID_T, nullable=False),
        Column("address", TEXT_T, nullable=False),
        Column("account", TEXT_T, nullable=False),
        Column("purpose", TEXT_T),
        Column("state", TEXT_T, nullable=False),
        *STAMP_COLUMNS,
    )
    filters = ("account", "zone_id", "state", "address")
    handlers: ClassVar[dict[type[Any], Handler]] = {
        PublicAddress.Allocated: _allocated,
        PublicAddress.Released: set_values(state=AddressState.RELEASED.value),
    }


def _pool_created(_: Row | None, e: Any) -> Row:
    return {"id": e.originator_id, "zone_id": e.zone_id, "ranges": [],
            "address_count": 0, "allocated_count": 0, "free_count": 0, **stamp(e)}


def _range_added(r: Row, e: Any) -> Row:
    size = int(IPv4Address(e.last)) - int(IPv4Address(e.first)) + 1
    r["ranges"] = [*r["ranges"], {"name": e.name, "cidr": e.cidr, "gateway": e.gateway,
                                  "first": e.first, "last": e.last}]
    r["address_count"] += size
    r["free_count"] += size
    return r


def _held(delta: int) -> Handler:
    def fn(r: Row, _: Any) -> Row:
        r["allocated_count"] += delta
        r["free_count"] = r["address_count"] - r["allocated_count"]
        return r

    return update_with(fn)


class AddressPoolModel(RowModel):
    """Each zone's public address pool: its ranges, size, allocated and free counts."""

    name = "address_pools"
    columns = (
        Column("id", UUID_T, nullable=False),
        Column("zone_id", UUID_T, nullable=False),
        Column("ranges", JSON_T, nullable=False),
        Column("address_count", INT_T, nullable=False),
        Column("allocated_count", INT_T, nullable=False),
        Column("free_count", INT_T, nullable=False),
        *STAMP_COLUMNS,
    )
    filters = ("zone_id",)
    handlers: ClassVar[dict[type[Any], Handler]] = {
        PublicAddressPool.Created: _pool_created,
        PublicAddressPool.RangeAdded: update_with(_range_added),
        PublicAddressPool.Allocated: _held(+1),
        PublicAddressPool.Released: _held(-1),
    }
