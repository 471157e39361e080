"""NetworkGuru: designs networks and proposes VLANs, addresses and MACs; records nothing.

Every action first catches its index up with the platform log, then decides from it, under
one lock (decisions take microseconds; the catch-up is one query when nothing is new). What
it answers is recorded by the kernel on the aggregates, which refuse a proposal that became
stale meanwhile (see `kernel.steps.network`). Every failure it raises is final
(retryable=False), except a store it cannot read (`store_unavailable`, retryable).

Configuration (the plugin's config dict): `log`, the platform's log to follow (a
`subsystems.base.PlatformLog`). The process that runs the guru opens the platform's store and
injects it; the guru never opens the store. Without it the plugin can be listed but not opened.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from ipaddress import AddressValueError, IPv4Address
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.persistence import PersistenceError

from aggregates.errors import ConfigError, StepFailedError, ValidationError
from aggregates.mac_pool import normalize_guest_mac
from aggregates.network import GuestNetworkType, NetworkState
from kernel.steps.network import (
    IP_TAKEN,
    IP_UNAVAILABLE,
    MAC_TAKEN,
    MAC_UNAVAILABLE,
    NETWORK_NOT_USABLE,
    NO_FREE_IP,
    NO_FREE_MAC,
    NO_FREE_VLAN,
    NO_VLAN_POOL,
    NOT_ALLOCATED,
    UNKNOWN_NETWORK,
    AllocateNic,
    DesignNetwork,
    ImplementNetwork,
    NetworkDesign,
    NicAllocation,
    NicProfile,
    NicReleased,
    ReleaseNic,
    ReserveNic,
    ShutdownNetwork,
    VlanAssigned,
    VlanReleased,
    libvirt_network_name,
)
from subsystems.base import PlatformLog, StepContext, SubsystemBase, action
from subsystems.networkguru.design import design_network
from subsystems.networkguru.index import IndexedNetwork, NetworkIndex
from subsystems.networkguru.ipam import propose_mac, propose_vlan, seed_of

__all__ = ["NetworkGuru", "make_networkguru"]

T = TypeVar("T")
_ADDRESSABLE = frozenset({NetworkState.ALLOCATED, NetworkState.IMPLEMENTING,
                          NetworkState.IMPLEMENTED, NetworkState.SHUTDOWN})


class NetworkGuru(SubsystemBase):
    """Proposes VLANs, addresses and MACs from an index of the platform log."""

    name = "networkguru"
    version = "1.0"

    def __init__(self, log: PlatformLog | None = None) -> None:
        """Follow `log`, the platform's log its runner injects; nothing is read before a step."""
        self.log = log
        self._source: PlatformLog | None = None  # the log while open
        self._index = NetworkIndex()
        self._lock = threading.Lock()

    def open(self) -> None:
        """Start following the log; the index fills on the first step."""
        if self.log is None:
            raise ConfigError("networkguru: no platform log to follow; the process that runs "
                              "the guru injects it (config 'log')")
        self._source = self.log

    def close(self) -> None:
        """Stop following; the log stays open, for its runner to close."""
        self._source = None

    @property
    def index(self) -> NetworkIndex:
        """The index as last caught up (for inspection and tests)."""
        return self._index

    # actions

    @action()
    def design(self, ctx: StepContext, args: DesignNetwork) -> NetworkDesign:
        """Validate a network request and normalize it."""
        return self._decide(lambda index: design_network(
            args, [n for n in index.networks.values() if n.zone_id == args.zone_id]))

    @action()
    def implement(self, ctx: StepContext, args: ImplementNetwork) -> VlanAssigned:
        """Choose the network's VLAN (the one it holds already, if any)."""
        return self._decide(lambda index: _implement(index, args))

    @action()
    def allocate(self, ctx: StepContext, args: AllocateNic) -> NicAllocation:
        """Propose an address and a MAC for a NIC (or repeat the recorded ones)."""
        return self._decide(lambda index: _allocate(index, args))

    @action()
    def reserve(self, ctx: StepContext, args: ReserveNic) -> NicProfile:
        """Confirm the NIC's recorded address and MAC, and describe its wiring."""
        return self._decide(lambda index: _reserve(index, args))

    @action()
    def release(self, ctx: StepContext, args: ReleaseNic) -> NicReleased:
        """Tell what the NIC gives back."""
        return self._decide(lambda index: _release(index, args))

    @action()
    def shutdown(self, ctx: StepContext, args: ShutdownNetwork) -> VlanReleased:
        """Tell which VLAN the network gives back."""
        return self._decide(lambda index: _shutdown(index, args))

    def _decide(self, decide: Callable[[NetworkIndex], T]) -> T:
        with self._lock:
            if self._source is None:
                raise ConfigError("networkguru subsystem is not open")
            try:
                self._index.catch_up(self._source)
            except PersistenceError as e:
                raise StepFailedError(f"networkguru: cannot read the platform log: {e}",
                                      retryable=True, code="store_unavailable") from e
            return decide(self._index)


def make_networkguru(config: Mapping[str, Any]) -> NetworkGuru:
    """Entry point factory of `networkguru`: config `log`, the platform log (see module doc)."""
    unknown = sorted(set(config) - {"log"})
    if unknown:
        raise ConfigError(f"networkguru: unknown config keys {unknown}; expected 'log' (the "
                          "store is not configured here: the process that runs the guru "
                          "injects the platform log)")
    log = config.get("log")
    if log is not None and not isinstance(log, PlatformLog):
        raise ConfigError(f"networkguru: config 'log' must be a PlatformLog (head() and "
                          f"read()), got {type(log).__name__}")
    return NetworkGuru(log)


# decisions: pure functions of the index


def _network(index: NetworkIndex, network_id: UUID, *, addressable: bool = True,
             ) -> IndexedNetwork:
    net = index.networks.get(network_id)
    if net is None:
        raise _fail(UNKNOWN_NETWORK, f"no network {network_id} in the platform log")
    if addressable and net.state not in _ADDRESSABLE:
        raise _fail(NETWORK_NOT_USABLE, f"network {net.name} is {net.state.value}")
    return net


def _implement(index: NetworkIndex, args: ImplementNetwork) -> VlanAssigned:
    net = _network(index, args.network_id)
    if net.network_type is GuestNetworkType.SHARED:
        return VlanAssigned(network_id=net.network_id, zone_id=net.zone_id, vlan=net.vlan,
                            pooled=False)
    pool = index.vlan_pool(net.zone_id)
    if pool is None:
        raise _fail(NO_VLAN_POOL, f"zone {net.zone_id} has no VLAN pool for isolated "
                                  f"network {net.name}")
    vlan = pool.by_network.get(net.network_id)
    if vlan is None:
        vlan = propose_vlan(pool.first, pool.last, pool.holders, seed_of(net.network_id.bytes))
    if vlan is None:
        raise _fail(NO_FREE_VLAN, f"zone {net.zone_id}: every VLAN of "
                                  f"{pool.first}-{pool.last} is taken")
    return VlanAssigned(network_id=net.network_id, zone_id=net.zone_id, vlan=vlan,
                        pooled=True)


def _allocate(index: NetworkIndex, args: AllocateNic) -> NicAllocation:
    net = _network(index, args.network_id)
    ip = net.nic_ips.get(args.nic_id)
    ip_recorded = ip is not None
    if ip is None and args.requested_ip is not None:
        ip = _requested_ip(net, args.requested_ip, args.nic_id)
    if ip is None:
        ip = net.plan.propose(net.taken(), seed_of(args.nic_id.bytes, net.network_id.bytes))
    if ip is None:
        raise _fail(NO_FREE_IP, f"network {net.name}: no free address in {net.cidr}")
    pool = index.mac_pool(net.zone_id)
    mac = pool.by_nic.get(args.nic_id)
    mac_recorded = mac is not None
    if mac is None and args.requested_mac is not None:
        try:
            mac = normalize_guest_mac(f"nic {args.nic_id}", args.requested_mac)
        except ValidationError as e:
            raise _fail(MAC_UNAVAILABLE, str(e)) from e
        holder = pool.holders.get(mac)
        if holder is not None and holder != args.nic_id:
            raise _fail(MAC_TAKEN, f"zone {net.zone_id}: {mac} is held by nic {holder}")
    if mac is None:
        mac = propose_mac(args.nic_id.bytes, pool.holders)
    if mac is None:
        raise _fail(NO_FREE_MAC, f"zone {net.zone_id}: no free MAC after many tries")
    return NicAllocation(network_id=net.network_id, nic_id=args.nic_id, zone_id=net.zone_id,
                         ip=ip, mac=mac, ip_recorded=ip_recorded, mac_recorded=mac_recorded)


def _requested_ip(net: IndexedNetwork, requested: str, nic_id: UUID) -> str:
    try:
        address = IPv4Address(requested)
    except AddressValueError as e:
        raise _fail(IP_UNAVAILABLE, f"network {net.name}: {requested!r} is not an IPv4 "
                                    "address") from e
    if not net.plan.is_usable(int(address)):
        raise _fail(IP_UNAVAILABLE, f"network {net.name}: {address} is not a usable address "
                                    f"of {net.cidr} (network, broadcast, gateway or reserved)")
    holder = net.ips.get(str(address))
    if holder is not None and holder != nic_id:
        raise _fail(IP_TAKEN, f"network {net.name}: {address} is held by nic {holder}")
    return str(address)


def _reserve(index: NetworkIndex, args: ReserveNic) -> NicProfile:
    net = _network(index, args.network_id)
    ip = net.nic_ips.get(args.nic_id)
    mac = index.mac_pool(net.zone_id).by_nic.get(args.nic_id)
    if ip is None or mac is None:
        missing = " and ".join(w for w, v in (("an address", ip), ("a MAC", mac)) if v is None)
        raise _fail(NOT_ALLOCATED, f"network {net.name}: nic {args.nic_id} holds no {missing}"
                                   " (allocate it first)")
    return NicProfile(
        network_id=net.network_id, nic_id=args.nic_id, ip=ip, mac=mac, cidr=net.cidr,
        netmask=str(net.plan.network.netmask), gateway=net.gateway, vlan=net.vlan,
        broadcast_uri=f"vlan://{net.vlan}" if net.vlan is not None else "vlan://untagged",
        libvirt_network=libvirt_network_name(net.network_id))


def _release(index: NetworkIndex, args: ReleaseNic) -> NicReleased:
    net = _network(index, args.network_id, addressable=False)
    mac = index.mac_pool(net.zone_id).by_nic.get(args.nic_id) if args.release_mac else None
    return NicReleased(network_id=net.network_id, nic_id=args.nic_id,
                       ip=net.nic_ips.get(args.nic_id), mac=mac)


def _shutdown(index: NetworkIndex, args: ShutdownNetwork) -> VlanReleased:
    net = _network(index, args.network_id, addressable=False)
    vlan = None
    if net.network_type is GuestNetworkType.ISOLATED:
        pool = index.vlan_pool(net.zone_id)
        vlan = pool.by_network.get(net.network_id) if pool is not None else None
    return VlanReleased(network_id=net.network_id, zone_id=net.zone_id, vlan=vlan)


def _fail(code: str, message: str) -> StepFailedError:
    return StepFailedError(message, retryable=False, code=code)
