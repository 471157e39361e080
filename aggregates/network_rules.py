"""Network rules: ingress firewall, port forwarding and static NAT on a guest network.

Rules are platform state: a `Network` records them (`Network.add_rule` / `remove_rule`), so
the log says which rules exist, and the NetworkElement realizes a network's whole rule set
on its router host. As in CloudStack's virtual router:

* a **firewall** rule allows traffic from `source_cidrs` to a public IP (a protocol, and a
  port range for TCP/UDP); traffic to a public IP that has rules and matches none is dropped;
* a **port forwarding** rule sends a public IP's port range to the same-sized port range of a
  guest address (destination NAT);
* a **static NAT** rule maps a public IP one-to-one onto a guest address (destination NAT in,
  source NAT out).

A public IP carries either static NAT or port forwarding, never both; port forwards on one
public IP and protocol never overlap; a guest address has at most one static NAT.
"""

from collections.abc import Iterable
from enum import Enum
from ipaddress import IPv4Address, IPv4Network
from uuid import UUID

import msgspec

from aggregates.errors import DomainRuleError, ValidationError
from aggregates.validation import ipv4_address


class RuleKind(Enum):
    """What a rule does."""

    FIREWALL = "firewall"
    PORT_FORWARDING = "port_forwarding"
    STATIC_NAT = "static_nat"


class RuleProtocol(Enum):
    """Which traffic a rule matches; `all` only for firewall and static NAT rules."""

    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"
    ALL = "all"


_PORTED = frozenset({RuleProtocol.TCP, RuleProtocol.UDP})


class NetworkRule(msgspec.Struct, frozen=True, kw_only=True):
    """One firewall, port forwarding or static NAT rule; ports are inclusive ranges."""

    rule_id: UUID
    kind: RuleKind
    public_ip: str
    protocol: RuleProtocol = RuleProtocol.ALL
    public_ports: tuple[int, int] | None = None
    private_ip: str | None = None
    private_ports: tuple[int, int] | None = None
    source_cidrs: tuple[str, ...] = ("0.0.0.0/0",)


def checked_rule(label: str, rule: NetworkRule, network: IPv4Network, gateway: str,
                 existing: Iterable[NetworkRule]) -> NetworkRule:
    """The rule with canonical addresses, or an error saying why it is malformed
    (ValidationError) or clashes with the network's rules (DomainRuleError)."""
    if not isinstance(rule, NetworkRule):
        raise ValidationError(f"{label}: a rule must be a NetworkRule, got {type(rule)}")
    public = ipv4_address(label, "public ip", rule.public_ip)
    if public in network:
        raise ValidationError(f"{label}: public ip {public} is inside the guest network "
                              f"{network}")
    where = f"{label}: {rule.kind.value} rule {rule.rule_id}"
    public_ports = _ports(where, "public", rule.public_ports)
    private_ports = _ports(where, "private", rule.private_ports)
    private = None
    if rule.private_ip is not None:
        private = ipv4_address(label, "private ip", rule.private_ip)
        if private not in network or private in (network.network_address,
                                                 network.broadcast_address) \
                or str(private) == gateway:
            raise ValidationError(f"{where}: private ip {private} is not a guest address of "
                                  f"{network}")
    sources = tuple(_cidr(where, c) for c in rule.source_cidrs)
    if rule.kind is RuleKind.FIREWALL:
        if private is not None or private_ports is not None:
            raise ValidationError(f"{where}: a firewall rule has no private side")
        if not sources:
            raise ValidationError(f"{where}: give at least one source CIDR")
        _check_protocol_ports(where, rule.protocol, public_ports)
    elif rule.kind is RuleKind.PORT_FORWARDING:
        if rule.protocol not in _PORTED or public_ports is None or private is None:
            raise ValidationError(f"{where}: port forwarding needs tcp or udp, public ports "
                                  "and a private ip")
        private_ports = private_ports or public_ports
        if private_ports[1] - private_ports[0] != public_ports[1] - public_ports[0]:
            raise ValidationError(f"{where}: public and private port ranges differ in size")
    else:
        if private is None or public_ports or private_ports \
                or rule.protocol is not RuleProtocol.ALL:
            raise ValidationError(f"{where}: static NAT maps a whole public ip (protocol "
                                  "all, no ports) onto a private ip")
    normalized = msgspec.structs.replace(
        rule, public_ip=str(public), private_ip=None if private is None else str(private),
        public_ports=public_ports, private_ports=private_ports, source_cidrs=sources)
    _check_clashes(where, normalized, list(existing))
    return normalized


def _check_clashes(where: str, rule: NetworkRule, existing: list[NetworkRule]) -> None:
    for other in existing:
        if other.rule_id == rule.rule_id:
            raise DomainRuleError(f"{where}: the network already has a rule with this id")
        same_public = other.public_ip == rule.public_ip
        nat_kinds = {rule.kind, other.kind}
        if same_public and nat_kinds == {RuleKind.STATIC_NAT, RuleKind.PORT_FORWARDING}:
            raise DomainRuleError(f"{where}: {rule.public_ip} cannot carry both static NAT "
                                  f"and port forwarding (rule {other.rule_id})")
        if rule.kind is other.kind is RuleKind.STATIC_NAT and (
                same_public or other.private_ip == rule.private_ip):
            raise DomainRuleError(f"{where}: clashes with static NAT rule {other.rule_id} "
                                  f"({other.public_ip} -> {other.private_ip})")
        if rule.kind is other.kind is RuleKind.PORT_FORWARDING and same_public \
                and rule.protocol is other.protocol \
                and _overlap(rule.public_ports, other.public_ports):
            raise DomainRuleError(f"{where}: public ports overlap port forwarding rule "
                                  f"{other.rule_id}")


def _check_protocol_ports(where: str, protocol: RuleProtocol,
                          ports: tuple[int, int] | None) -> None:
    if protocol in _PORTED and ports is None:
        raise ValidationError(f"{where}: {protocol.value} needs a port range")
    if protocol not in _PORTED and ports is not None:
        raise ValidationError(f"{where}: {protocol.value} has no ports")


def _ports(where: str, side: str, ports: tuple[int, int] | None) -> tuple[int, int] | None:
    if ports is None:
        return None
    start, end = ports
    for port in ports:
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValidationError(f"{where}: {side} port {port!r} is not 1-65535")
    if start > end:
        raise ValidationError(f"{where}: {side} ports {start}-{end} are not ordered")
    return (start, end)


def _cidr(where: str, cidr: str) -> str:
    try:
        return str(IPv4Network(cidr, strict=True))
    except (ValueError, TypeError) as e:
        raise ValidationError(f"{where}: source {cidr!r} is not an IPv4 CIDR: {e}") from e


def _overlap(a: tuple[int, int] | None, b: tuple[int, int] | None) -> bool:
    if a is None or b is None:
        return True
    return a[0] <= b[1] and b[0] <= a[1]


def rule_sort_key(rule: NetworkRule) -> tuple[str, int, str]:
    """A stable order for rendering: by kind, public address, then id."""
    return (rule.kind.value, int(IPv4Address(rule.public_ip)), str(rule.rule_id))
