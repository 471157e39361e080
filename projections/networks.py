"""The networks read model: life cycle, addressing, and how many addresses are used and free.

`ip_total` is what the network can ever hand out: the CIDR's addresses less the network and
broadcast addresses, the gateway and the reserved ranges (overlaps counted once), the same
count `Network.free_ip_count` starts from. Every allocation and release moves `ip_used` and
`ip_free` by one; the aggregate refuses a double allocation or an unknown release.
"""

from ipaddress import IPv4Address, IPv4Network
from typing import Any, ClassVar

from aggregates.network import GuestNetworkType, Network, NetworkState
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

_ISOLATED = GuestNetworkType.ISOLATED.value


def assignable_addresses(cidr: str, gateway: str,
                         reserved_ranges: tuple[tuple[str, str], ...] | list[list[str]]) -> int:
    """How many addresses of the CIDR a NIC could ever get."""
    network = IPv4Network(cidr)
    low, high = int(network.network_address) + 1, int(network.broadcast_address) - 1
    excluded = [(int(IPv4Address(gateway)), int(IPv4Address(gateway)))]
    excluded += [(int(IPv4Address(start)), int(IPv4Address(end)))
                 for start, end in reserved_ranges]
    count, reach = 0, low - 1  # reach: the highest address already counted as excluded
    for start, end in sorted(excluded):
        start, end = max(start, low, reach + 1), min(end, high)
        if start <= end:
            count += end - start + 1
            reach = end
    return (high - low + 1) - count


def _created(_: Row | None, e: Any) -> Row:
    total = assignable_addresses(e.cidr, e.gateway, e.reserved_ranges)
    return {
        "id": e.originator_id, "name": e.name, "zone_id": e.zone_id,
        "type": e.network_type.value, "state": NetworkState.ALLOCATED.value,
        "cidr": e.cidr, "gateway": e.gateway, "vlan": e.vlan,
        "reserved_ranges": [[start, end] for start, end in e.reserved_ranges],
        "ip_total": total, "ip_used": 0, "ip_free": total, "last_error": "", **stamp(e),
    }


def _implemented(r: Row, e: Any) -> Row:
    r.update(state=NetworkState.IMPLEMENTED.value, last_error="")
    if e.vlan is not None:
        r["vlan"] = e.vlan
    return r


def _torn_down(state: NetworkState, error: bool) -> Handler:
    """Implementation failed or shut down: an Isolated network gives its VLAN back."""

    def fn(r: Row, e: Any) -> Row:
        r["state"] = state.value
        if error:
            r["last_error"] = e.reason
        if r["type"] == _ISOLATED:
            r["vlan"] = None
        return r

    return update_with(fn)


def _ips(delta: int) -> Handler:
    def fn(r: Row, _: Any) -> Row:
        r["ip_used"] += delta
        r["ip_free"] = r["ip_total"] - r["ip_used"]
        return r

    return update_with(fn)


class NetworkModel(RowModel):
    """Guest networks with their address usage: queryable by zone, state and type."""

    name = "networks"
    columns = (
        Column("id", UUID_T, nullable=False),
        Column("name", TEXT_T, nullable=False),
        Column("zone_id", UUID_T, nullable=False),
        Column("type", TEXT_T, nullable=False),
        Column("state", TEXT_T, nullable=False),
        Column("cidr", TEXT_T, nullable=False),
        Column("gateway", TEXT_T, nullable=False),
        Column("vlan", INT_T),
        Column("reserved_ranges", JSON_T, nullable=False),
        Column("ip_total", INT_T, nullable=False),
        Column("ip_used", INT_T, nullable=False),
        Column("ip_free", INT_T, nullable=False),
        Column("last_error", TEXT_T, nullable=False),
        *STAMP_COLUMNS,
    )
    filters = ("zone_id", "state", "type")
    handlers: ClassVar[dict[type[Any], Handler]] = {
        Network.Created: _created,
        Network.ImplementationStarted: set_values(state=NetworkState.IMPLEMENTING.value),
        Network.Implemented: update_with(_implemented),
        Network.ImplementationFailed: _torn_down(NetworkState.ALLOCATED, error=True),
        Network.ShutDown: _torn_down(NetworkState.SHUTDOWN, error=False),
        Network.Destroyed: set_values(state=NetworkState.DESTROYED.value),
        Network.IpAllocated: _ips(+1),
        Network.IpReleased: _ips(-1),
    }
