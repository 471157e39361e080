"""`networkguru.design`: a network request, validated and normalized into a NetworkDesign.

The design is checked by building the Network it describes (not saved), so whatever the guru
accepts `Network.create` accepts too. On top of the aggregate's rules the guru checks the
zone: an Isolated network lies inside the zone's guest CIDR (when the kernel gives it), and a
Shared network overlaps no other live Shared network of the zone (their guests share L3).
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network

from aggregates.errors import KernelError, StepFailedError
from aggregates.network import GuestNetworkType, Network, NetworkState
from kernel.steps.network import INVALID_DESIGN, DesignNetwork, NetworkDesign
from subsystems.networkguru.index import IndexedNetwork
from subsystems.networkguru.ipam import AddressPlan

__all__ = ["design_network"]


def design_network(args: DesignNetwork, zone_networks: Iterable[IndexedNetwork]) -> NetworkDesign:
    """The normalized design, or StepFailedError(`invalid_design`, not retryable) saying why."""
    label = f"network {args.name}"
    try:
        cidr = IPv4Network(args.cidr, strict=True)
    except (ValueError, TypeError) as e:
        raise _invalid(f"{label}: {args.cidr!r} is not an IPv4 CIDR ({e})") from e
    gateway = args.gateway
    if gateway is None:
        if cidr.prefixlen > 30:
            raise _invalid(f"{label}: {cidr} has no room for guests (max /30)")
        gateway = str(cidr.network_address + 1)
    network_type = GuestNetworkType(args.network_type)
    try:
        network = Network.create(
            name=args.name, zone_id=args.zone_id, cidr=str(cidr), gateway=gateway,
            network_type=network_type, vlan=args.vlan,
            reserved_ranges=tuple(args.reserved_ranges))
    except KernelError as e:
        raise _invalid(str(e)) from e
    if network_type is GuestNetworkType.ISOLATED and args.zone_guest_cidr:
        try:
            zone_cidr = IPv4Network(args.zone_guest_cidr)
        except ValueError as e:
            raise _invalid(f"{label}: zone guest CIDR {args.zone_guest_cidr!r}: {e}") from e
        if not cidr.subnet_of(zone_cidr):
            raise _invalid(f"{label}: {cidr} is outside the zone's guest CIDR {zone_cidr}")
    if network_type is GuestNetworkType.SHARED:
        for other in zone_networks:
            if other.network_type is GuestNetworkType.SHARED \
                    and other.state is not NetworkState.DESTROYED \
                    and other.network_id != network.id \
                    and IPv4Network(other.cidr).overlaps(cidr):
                raise _invalid(f"{label}: {cidr} overlaps shared network {other.name} "
                               f"({other.cidr})")
    plan = AddressPlan.of(network.cidr, network.gateway, network.reserved_ranges)
    if plan.usable_count <= 0:
        raise _invalid(f"{label}: the gateway and reserved ranges leave no address in {cidr}")
    return NetworkDesign(
        network_id=network.id, zone_id=args.zone_id, name=args.name,
        network_type=network_type.value, cidr=network.cidr, gateway=network.gateway,
        netmask=str(cidr.netmask), reserved_ranges=_merged(network.reserved_ranges),
        vlan=network.vlan, usable_ips=plan.usable_count)


def _merged(ranges: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Reserved ranges sorted, with overlapping and adjacent ones joined."""
    out: list[tuple[int, int]] = []
    for low, high in sorted((int(IPv4Address(a)), int(IPv4Address(b))) for a, b in ranges):
        if out and low <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], high))
        else:
            out.append((low, high))
    return tuple((str(IPv4Address(a)), str(IPv4Address(b))) for a, b in out)


def _invalid(message: str) -> StepFailedError:
    return StepFailedError(message, retryable=False, code=INVALID_DESIGN)
