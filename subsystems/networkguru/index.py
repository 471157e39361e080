"""The guru's index: networks, their addresses, and each zone's VLAN and MAC pools, folded
from platform events.

It is a read model private to one guru process, built by applying the events of `TOPICS` in
log order. It may lag the log: every proposal made from it is checked again by the
aggregates when the kernel records it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any
from uuid import UUID

from aggregates.mac_pool import MacPool
from aggregates.network import GuestNetworkType, Network, NetworkState
from aggregates.vlan_pool import VlanPool
from subsystems.base import PlatformLog
from subsystems.networkguru.ipam import AddressPlan

__all__ = [
    "TOPICS",
    "IndexedMacPool",
    "IndexedNetwork",
    "IndexedVlanPool",
    "NetworkIndex",
]

PAGE = 1000


@dataclass
class IndexedNetwork:
    """What the guru knows of a network."""

    network_id: UUID
    zone_id: UUID
    name: str
    network_type: GuestNetworkType
    cidr: str
    gateway: str
    reserved_ranges: tuple[tuple[str, str], ...]
    vlan: int | None
    state: NetworkState
    plan: AddressPlan
    ips: dict[str, UUID] = field(default_factory=dict)  # address -> nic
    nic_ips: dict[UUID, str] = field(default_factory=dict)  # nic -> address

    def taken(self) -> set[int]:
        """The allocated addresses, as integers."""
        return {int(IPv4Address(ip)) for ip in self.ips}


@dataclass
class IndexedVlanPool:
    """A zone's VLAN range and which network holds which VLAN."""

    zone_id: UUID
    first: int
    last: int
    by_network: dict[UUID, int] = field(default_factory=dict)
    holders: dict[int, UUID] = field(default_factory=dict)


@dataclass
class IndexedMacPool:
    """A zone's MACs and which NIC holds which."""

    zone_id: UUID
    by_nic: dict[UUID, str] = field(default_factory=dict)
    holders: dict[str, UUID] = field(default_factory=dict)


class NetworkIndex:
    """The fold of network, VLAN pool and MAC pool events; not thread-safe (the guru locks)."""

    def __init__(self) -> None:
        """An empty index at log position 0."""
        self.position = 0
        self.networks: dict[UUID, IndexedNetwork] = {}
        self.vlan_pools: dict[UUID, IndexedVlanPool] = {}  # by zone
        self.mac_pools: dict[UUID, IndexedMacPool] = {}  # by zone
        self._pool_zone: dict[UUID, UUID] = {}  # pool aggregate id -> zone id

    def catch_up(self, log: PlatformLog, page: int = PAGE) -> int:
        """Apply every event of `TOPICS` the log has after our position; return how many."""
        applied = 0
        while True:
            batch = log.read(self.position, page, topics=TOPICS)
            for position, event in batch:
                self.apply(event)
                self.position = position
            applied += len(batch)
            if len(batch) < page:
                return applied

    def apply(self, event: Any) -> None:
        """Fold one event (events of other types are ignored)."""
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    def vlan_pool(self, zone_id: UUID) -> IndexedVlanPool | None:
        """The zone's VLAN pool, if it was created."""
        return self.vlan_pools.get(zone_id)

    def mac_pool(self, zone_id: UUID) -> IndexedMacPool:
        """The zone's MAC pool (empty when not created yet)."""
        return self.mac_pools.get(zone_id) or IndexedMacPool(zone_id)

    def _vlan_pool_of(self, pool_id: UUID) -> IndexedVlanPool | None:
        zone = self._pool_zone.get(pool_id)
        return None if zone is None else self.vlan_pools.get(zone)

    def _mac_pool_of(self, pool_id: UUID) -> IndexedMacPool | None:
        zone = self._pool_zone.get(pool_id)
        return None if zone is None else self.mac_pools.get(zone)

    # folds

    def _network_created(self, e: Any) -> None:
        ranges = tuple((a, b) for a, b in e.reserved_ranges)
        self.networks[e.originator_id] = IndexedNetwork(
            network_id=e.originator_id, zone_id=e.zone_id, name=e.name,
            network_type=e.network_type, cidr=e.cidr, gateway=e.gateway,
            reserved_ranges=ranges, vlan=e.vlan, state=NetworkState.ALLOCATED,
            plan=AddressPlan.of(e.cidr, e.gateway, ranges))

    def _network_implemented(self, e: Any) -> None:
        net = self.networks.get(e.originator_id)
        if net is not None:
            net.state = NetworkState.IMPLEMENTED
            if e.vlan is not None:
                net.vlan = e.vlan

    def _ip_allocated(self, e: Any) -> None:
        net = self.networks.get(e.originator_id)
        if net is not None:
            net.ips[e.ip] = e.nic_id
            net.nic_ips[e.nic_id] = e.ip

    def _ip_released(self, e: Any) -> None:
        net = self.networks.get(e.originator_id)
        if net is not None:
            nic = net.ips.pop(e.ip, None)
            if nic is not None and net.nic_ips.get(nic) == e.ip:
                del net.nic_ips[nic]

    def _vlan_pool_created(self, e: Any) -> None:
        self._pool_zone[e.originator_id] = e.zone_id
        self.vlan_pools[e.zone_id] = IndexedVlanPool(e.zone_id, e.first, e.last)

    def _vlan_allocated(self, e: Any) -> None:
        pool = self._vlan_pool_of(e.originator_id)
        if pool is not None:
            pool.by_network[e.network_id] = e.vlan
            pool.holders[e.vlan] = e.network_id

    def _vlan_released(self, e: Any) -> None:
        pool = self._vlan_pool_of(e.originator_id)
        if pool is not None:
            pool.by_network.pop(e.network_id, None)
            pool.holders.pop(e.vlan, None)

    def _mac_pool_created(self, e: Any) -> None:
        self._pool_zone[e.originator_id] = e.zone_id
        self.mac_pools.setdefault(e.zone_id, IndexedMacPool(e.zone_id))

    def _mac_allocated(self, e: Any) -> None:
        pool = self._mac_pool_of(e.originator_id)
        if pool is not None:
            pool.by_nic[e.nic_id] = e.mac
            pool.holders[e.mac] = e.nic_id

    def _mac_released(self, e: Any) -> None:
        pool = self._mac_pool_of(e.originator_id)
        if pool is not None:
            pool.by_nic.pop(e.nic_id, None)
            pool.holders.pop(e.mac, None)


def _state_fold(state: NetworkState, drop_vlan: bool = False,
                ) -> Callable[[NetworkIndex, Any], None]:
    """A fold that moves a network to `state` (and drops an Isolated network's VLAN)."""
    def fold(index: NetworkIndex, e: Any) -> None:
        net = index.networks.get(e.originator_id)
        if net is not None:
            net.state = state
            if drop_vlan and net.network_type is GuestNetworkType.ISOLATED:
                net.vlan = None
    return fold


_S = NetworkState
_HANDLERS: dict[type, Callable[[NetworkIndex, Any], None]] = {
    Network.Created: NetworkIndex._network_created,
    Network.ImplementationStarted: _state_fold(_S.IMPLEMENTING),
    Network.Implemented: NetworkIndex._network_implemented,
    Network.ImplementationFailed: _state_fold(_S.ALLOCATED, drop_vlan=True),
    Network.ShutDown: _state_fold(_S.SHUTDOWN, drop_vlan=True),
    Network.Destroyed: _state_fold(_S.DESTROYED),
    Network.IpAllocated: NetworkIndex._ip_allocated,
    Network.IpReleased: NetworkIndex._ip_released,
    VlanPool.Created: NetworkIndex._vlan_pool_created,
    VlanPool.Allocated: NetworkIndex._vlan_allocated,
    VlanPool.Released: NetworkIndex._vlan_released,
    MacPool.Created: NetworkIndex._mac_pool_created,
    MacPool.Allocated: NetworkIndex._mac_allocated,
    MacPool.Released: NetworkIndex._mac_released,
}
TOPICS: tuple[str, ...] = tuple(sorted(cls.TOPIC for cls in _HANDLERS))  # type: ignore[attr-defined]
