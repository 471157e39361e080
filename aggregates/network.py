"""Network: a guest network in a zone, its life cycle and the bookkeeping of its addresses.

Networks are known by zone and name (`Network.create_id(zone_id, name)`).
Allocated -> Implementing -> Implemented -> Shutdown -> Destroyed; a failed implementation
goes back to Allocated, and a Shutdown network may be implemented again. An Allocated
network that was never implemented may be destroyed directly.

The network owns address uniqueness: an address is handed to at most one NIC, always inside
the CIDR, never the network, broadcast or gateway address, and never in a reserved range.
An Isolated network gets its VLAN when implemented and gives it back on shutdown; a Shared
network's VLAN is fixed when it is created. Its firewall, port forwarding and static NAT rules
(`aggregates.network_rules`) are platform state too; `rules_revision` counts their changes, so
a network element can tell a newer rule set from an older one. `element_hosts` are the hosts
its element (libvirt network, bridge, DHCP/DNS entries, rules) was made on; a shutdown
removes it from each before the network is Shutdown.
"""

from enum import Enum
from ipaddress import IPv4Address, IPv4Network
from uuid import UUID

from eventsourcing.domain import event

from aggregates.base import PlatformAggregate, natural_id
from aggregates.errors import CapacityError, DomainRuleError, ValidationError
from aggregates.network_rules import NetworkRule, checked_rule
from aggregates.validation import ipv4_address, ipv4_network, require_name


class GuestNetworkType(Enum):
    """Who the network serves: one account (Isolated) or many (Shared)."""

    ISOLATED = "Isolated"
    SHARED = "Shared"


class NetworkState(Enum):
    """The network's life cycle (CloudStack's Network.State)."""

    ALLOCATED = "Allocated"
    IMPLEMENTING = "Implementing"
    IMPLEMENTED = "Implemented"
    SHUTDOWN = "Shutdown"
    DESTROYED = "Destroyed"


_S = NetworkState
_ADDRESSABLE = frozenset({_S.ALLOCATED, _S.IMPLEMENTING, _S.IMPLEMENTED, _S.SHUTDOWN})


class Network(PlatformAggregate):
    """A guest network: CIDR, gateway, VLAN, and which NIC holds which address."""

    TOPIC = "network"
    KIND = "network"

    class Event(PlatformAggregate.Event):
        """Base of Network events."""

        TOPIC = "network.Event"

    class Created(Event, PlatformAggregate.Created):
        """The network was created (Allocated)."""

        TOPIC = "network.Created"
        name: str
        zone_id: UUID
        network_type: GuestNetworkType
        cidr: str
        gateway: str
        vlan: int | None
        reserved_ranges: tuple[tuple[str, str], ...]

    class ImplementationStarted(Event):
        """The network elements are being set up."""

        TOPIC = "network.ImplementationStarted"

    class Implemented(Event):
        """The network is set up and usable; `vlan` is the VLAN it got, if any."""

        TOPIC = "network.Implemented"
        vlan: int | None

    class ImplementationFailed(Event):
        """Setting up the network failed; it is Allocated again."""

        TOPIC = "network.ImplementationFailed"
        reason: str

    class ShutDown(Event):
        """The network elements were torn down; addresses stay allocated."""

        TOPIC = "network.ShutDown"

    class Destroyed(Event):
        """The network was deleted."""

        TOPIC = "network.Destroyed"

    class ElementImplemented(Event):
        """The network's element (its libvirt network, bridge, DHCP/DNS and rules) is on
        this host."""

        TOPIC = "network.ElementImplemented"
        host_id: UUID

    class ElementShutDown(Event):
        """The network's element was removed from this host."""

        TOPIC = "network.ElementShutDown"
        host_id: UUID

    class IpAllocated(Event):
        """An address was handed to a NIC."""

        TOPIC = "network.IpAllocated"
        ip: str
        nic_id: UUID

    class IpReleased(Event):
        """An address was given back."""

        TOPIC = "network.IpReleased"
        ip: str

    class RuleAdded(Event):
        """A firewall, port forwarding or static NAT rule was added."""

        TOPIC = "network.RuleAdded"
        rule: NetworkRule

    class RuleRemoved(Event):
        """A rule was removed."""

        TOPIC = "network.RuleRemoved"
        rule_id: UUID

    @staticmethod
    def create_id(zone_id: UUID, name: str) -> UUID:
        """Networks are known by zone and name."""
        return natural_id("network", str(zone_id), name)

    @event(Created)
    def __init__(self, name: str, zone_id: UUID, network_type: GuestNetworkType, cidr: str,
                 gateway: str, vlan: int | None,
                 reserved_ranges: tuple[tuple[str, str], ...]) -> None:
        self.name, self.zone_id, self.network_type = name, zone_id, network_type
        self.cidr, self.gateway, self.vlan = cidr, gateway, vlan
        self.reserved_ranges = tuple((start, end) for start, end in reserved_ranges)
        self.state = NetworkState.ALLOCATED
        self.allocated_ips: dict[str, UUID] = {}
        self.last_error = ""
        self.rules: dict[UUID, NetworkRule] = {}
        self.rules_revision = 0
        self.element_hosts: tuple[UUID, ...] = ()  # sorted; where its element was made

    @classmethod
    def create(cls, *, name: str, zone_id: UUID, cidr: str, gateway: str,
               network_type: GuestNetworkType = GuestNetworkType.ISOLATED,
               vlan: int | None = None,
               reserved_ranges: tuple[tuple[str, str], ...] = ()) -> "Network":
        """Validate and create a network: gateway a usable address of the CIDR."""
        require_name("network", name)
        label = f"network {name}"
        network = ipv4_network(label, cidr)
        if network.prefixlen > 30:
            raise ValidationError(f"{label}: {network} has no room for guests (max /30)")
        gw = ipv4_address(label, "gateway", gateway)
        if not _usable(network, gw):
            raise ValidationError(f"{label}: gateway {gw} is not a usable address of {network}")
        if vlan is not None:
            _check_vlan(label, vlan)
            if network_type is GuestNetworkType.ISOLATED:
                raise ValidationError(f"{label}: an Isolated network gets its VLAN when "
                                      "implemented")
        ranges = []
        for start, end in reserved_ranges:
            first = ipv4_address(label, "reserved range start", start)
            last = ipv4_address(label, "reserved range end", end)
            if first not in network or last not in network or first > last:
                raise ValidationError(f"{label}: reserved range {first}-{last} is not an "
                                      f"ordered range inside {network}")
            ranges.append((str(first), str(last)))
        return cls(name, zone_id, network_type, str(network), str(gw), vlan, tuple(ranges))

    # life cycle

    def implement(self) -> None:
        """Start setting up the network (again, after a shutdown)."""
        self._require({_S.ALLOCATED, _S.SHUTDOWN}, "implement")
        self._implementation_started()

    @event(ImplementationStarted)
    def _implementation_started(self) -> None:
        self.state = NetworkState.IMPLEMENTING

    def implemented(self, vlan: int | None = None) -> None:
        """Record that the network is set up, with the VLAN an Isolated network got."""
        self._require({_S.IMPLEMENTING}, "complete implementation")
        label = f"network {self.name}"
        if vlan is not None:
            _check_vlan(label, vlan)
            if self.network_type is GuestNetworkType.SHARED and vlan != self.vlan:
                raise DomainRuleError(f"{label}: a Shared network keeps VLAN {self.vlan}")
        self._implemented(vlan)

    @event(Implemented)
    def _implemented(self, vlan: int | None) -> None:
        self.state, self.last_error = NetworkState.IMPLEMENTED, ""
        if vlan is not None:
            self.vlan = vlan

    def implementation_failed(self, reason: str) -> None:
        """Record a failed implementation; the network is Allocated again."""
        self._require({_S.IMPLEMENTING}, "fail implementation")
        self._implementation_failed(reason)

    @event(ImplementationFailed)
    def _implementation_failed(self, reason: str) -> None:
        self.state, self.last_error = NetworkState.ALLOCATED, reason
        if self.network_type is GuestNetworkType.ISOLATED:
            self.vlan = None

    def shutdown(self) -> None:
        """Record that the network elements were torn down (on every host it was made)."""
        self._require({_S.IMPLEMENTED}, "shut down")
        if self.element_hosts:
            raise DomainRuleError(f"network {self.name} is still set up on hosts "
                                  f"{', '.join(map(str, self.element_hosts))}")
        self._shut_down()

    @event(ShutDown)
    def _shut_down(self) -> None:
        self.state = NetworkState.SHUTDOWN
        if self.network_type is GuestNetworkType.ISOLATED:
            self.vlan = None

    def destroy(self) -> None:
        """Delete the network; every address must have been released first."""
        self._require({_S.ALLOCATED, _S.SHUTDOWN}, "destroy")
        if self.allocated_ips:
            raise DomainRuleError(f"network {self.name}: {len(self.allocated_ips)} addresses "
                                  "are still allocated; cannot destroy")
        self._destroyed()

    @event(Destroyed)
    def _destroyed(self) -> None:
        self.state = NetworkState.DESTROYED

    # elements: where the network is realized

    def element_implemented(self, host_id: UUID) -> None:
        """Record that the network's element is on a host; the same host again records
        nothing. Recorded in any state but Destroyed: it is what the host has."""
        self._require(_ADDRESSABLE, "record an element")
        if host_id not in self.element_hosts:
            self._element_implemented(host_id)

    @event(ElementImplemented)
    def _element_implemented(self, host_id: UUID) -> None:
        self.element_hosts = tuple(sorted((*self.element_hosts, host_id), key=str))

    def element_shut_down(self, host_id: UUID) -> None:
        """Record that the network's element left a host; a host without it records
        nothing."""
        if host_id in self.element_hosts:
            self._element_shut_down(host_id)

    @event(ElementShutDown)
    def _element_shut_down(self, host_id: UUID) -> None:
        self.element_hosts = tuple(h for h in self.element_hosts if h != host_id)

    # addresses

    @property
    def network(self) -> IPv4Network:
        """The CIDR as an address object."""
        return IPv4Network(self.cidr)

    def nic_ip(self, nic_id: UUID) -> str | None:
        """The address a NIC holds on this network, if any."""
        return next((ip for ip, nic in self.allocated_ips.items() if nic == nic_id), None)

    def is_assignable(self, ip: str) -> bool:
        """Whether the address could be handed to a NIC now."""
        address = ipv4_address(f"network {self.name}", "ip", ip)
        return (_usable(self.network, address) and not self._is_excluded(address)
                and str(address) not in self.allocated_ips)

    @property
    def free_ip_count(self) -> int:
        """How many more addresses can be handed out."""
        network = self.network
        low, high = int(network.network_address) + 1, int(network.broadcast_address) - 1
        excluded = 0
        for start, end in _merged(self._excluded_ranges()):
            start, end = max(start, low), min(end, high)
            excluded += max(0, end - start + 1)
        return (high - low + 1) - excluded - len(self.allocated_ips)

    def allocate_ip(self, nic_id: UUID, ip: str | None = None) -> str:
        """Hand an address (the one asked for, or the lowest free) to a NIC; return it."""
        self._require(_ADDRESSABLE, "allocate an address")
        label = f"network {self.name}"
        held = self.nic_ip(nic_id)
        if held is not None:
            raise DomainRuleError(f"{label}: nic {nic_id} already holds {held}")
        if ip is None:
            chosen = self._lowest_free()
            if chosen is None:
                raise CapacityError(f"{label}: no free address in {self.cidr}")
        else:
            address = ipv4_address(label, "ip", ip)
            if not _usable(self.network, address):
                raise ValidationError(f"{label}: {address} is not a usable address of "
                                      f"{self.cidr}")
            if self._is_excluded(address):
                raise DomainRuleError(f"{label}: {address} is the gateway or reserved")
            if str(address) in self.allocated_ips:
                raise DomainRuleError(f"{label}: {address} is already allocated to nic "
                                      f"{self.allocated_ips[str(address)]}")
            chosen = str(address)
        self._ip_allocated(chosen, nic_id)
        return chosen

    @event(IpAllocated)
    def _ip_allocated(self, ip: str, nic_id: UUID) -> None:
        self.allocated_ips[ip] = nic_id

    def release_ip(self, ip: str) -> None:
        """Give an allocated address back; an address not allocated is refused."""
        if ip not in self.allocated_ips:
            raise DomainRuleError(f"network {self.name}: {ip} is not allocated")
        self._ip_released(ip)

    @event(IpReleased)
    def _ip_released(self, ip: str) -> None:
        del self.allocated_ips[ip]

    # rules

    def add_rule(self, rule: NetworkRule) -> NetworkRule:
        """Add a rule (validated against the CIDR and the other rules); return it normalized."""
        self._require(_ADDRESSABLE, "add a rule")
        normalized = checked_rule(f"network {self.name}", rule, self.network, self.gateway,
                                  self.rules.values())
        self._rule_added(normalized)
        return normalized

    @event(RuleAdded)
    def _rule_added(self, rule: NetworkRule) -> None:
        self.rules[rule.rule_id] = rule
        self.rules_revision += 1

    def remove_rule(self, rule_id: UUID) -> None:
        """Remove a rule; an unknown rule id is refused."""
        if rule_id not in self.rules:
            raise DomainRuleError(f"network {self.name}: no rule {rule_id}")
        self._rule_removed(rule_id)

    @event(RuleRemoved)
    def _rule_removed(self, rule_id: UUID) -> None:
        del self.rules[rule_id]
        self.rules_revision += 1

    def _excluded_ranges(self) -> list[tuple[int, int]]:
        gateway = int(IPv4Address(self.gateway))
        return [(gateway, gateway)] + [(int(IPv4Address(start)), int(IPv4Address(end)))
                                       for start, end in self.reserved_ranges]

    def _is_excluded(self, address: IPv4Address) -> bool:
        value = int(address)
        return any(start <= value <= end for start, end in self._excluded_ranges())

    def _lowest_free(self) -> str | None:
        network = self.network
        candidate = int(network.network_address) + 1
        last = int(network.broadcast_address) - 1
        ranges = _merged(self._excluded_ranges())
        taken = {int(IPv4Address(ip)) for ip in self.allocated_ips}
        while candidate <= last:
            skip = next((end for start, end in ranges if start <= candidate <= end), None)
            if skip is not None:
                candidate = skip + 1
            elif candidate in taken:
                candidate += 1
            else:
                return str(IPv4Address(candidate))
        return None


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _usable(network: IPv4Network, address: IPv4Address) -> bool:
    return address in network and address not in (network.network_address,
                                                   network.broadcast_address)


def _check_vlan(label: str, vlan: int) -> None:
    if isinstance(vlan, bool) or not isinstance(vlan, int) or not 1 <= vlan <= 4094:
        raise ValidationError(f"{label}: vlan must be 1-4094, got {vlan!r}")
