"""Network rules: firewall, port forwarding and static NAT are validated, clash-checked,
counted by `rules_revision`, and survive the store."""

from uuid import uuid4

import msgspec
import pytest

from aggregates.errors import DomainRuleError, InvalidTransitionError, ValidationError
from aggregates.network import Network
from aggregates.network_rules import NetworkRule, RuleKind, RuleProtocol
from kernel.store.testing import roundtrip

P = RuleProtocol


def net() -> Network:
    """A small network with gateway 10.0.0.1."""
    return Network.create(name=f"n-{uuid4().hex[:6]}", zone_id=uuid4(), cidr="10.0.0.0/24",
                          gateway="10.0.0.1")


def fw(public: str = "203.0.113.5", protocol: RuleProtocol = P.TCP,
       ports: tuple[int, int] | None = (22, 22), **kw: object) -> NetworkRule:
    """A firewall rule."""
    return NetworkRule(rule_id=uuid4(), kind=RuleKind.FIREWALL, public_ip=public,
                       protocol=protocol, public_ports=ports, **kw)  # type: ignore[arg-type]


def pf(public: str = "203.0.113.5", ports: tuple[int, int] = (8080, 8081),
       private: str = "10.0.0.10", private_ports: tuple[int, int] | None = (80, 81),
       protocol: RuleProtocol = P.TCP) -> NetworkRule:
    """A port forwarding rule."""
    return NetworkRule(rule_id=uuid4(), kind=RuleKind.PORT_FORWARDING, public_ip=public,
                       protocol=protocol, public_ports=ports, private_ip=private,
                       private_ports=private_ports)


def nat(public: str = "203.0.113.9", private: str = "10.0.0.20") -> NetworkRule:
    """A static NAT rule."""
    return NetworkRule(rule_id=uuid4(), kind=RuleKind.STATIC_NAT, public_ip=public,
                       private_ip=private)


def test_rules_are_added_normalized_counted_and_removed() -> None:
    network = net()
    rule = network.add_rule(fw(source_cidrs=("198.51.100.0/24",)))
    forward = network.add_rule(pf(private_ports=None))
    assert forward.private_ports == (8080, 8081)  # defaults to the public ports
    network.add_rule(nat())
    network.add_rule(fw(public="203.0.113.9", protocol=P.ICMP, ports=None))
    assert network.rules_revision == 4 and len(network.rules) == 4
    network.remove_rule(rule.rule_id)
    assert network.rules_revision == 5 and rule.rule_id not in network.rules
    with pytest.raises(DomainRuleError, match="no rule"):
        network.remove_rule(rule.rule_id)
    loaded = roundtrip(network)
    assert loaded.rules == network.rules and loaded.rules_revision == 5


@pytest.mark.parametrize("rule", [
    fw(public="10.0.0.77"),  # the public IP lies inside the guest network
    fw(public="nonsense"),
    fw(protocol=P.TCP, ports=None),
    fw(protocol=P.ICMP, ports=(1, 2)),
    fw(ports=(0, 10)),
    fw(ports=(30, 20)),
    fw(source_cidrs=("10.0.0.1/8",)),
    fw(source_cidrs=()),
    fw(private_ip="10.0.0.5"),
    pf(protocol=P.ALL),
    pf(private="10.0.0.1"),  # the gateway
    pf(private="10.0.0.255"),  # broadcast
    pf(private="10.1.0.5"),  # outside
    pf(private_ports=(80, 82)),  # another size
    NetworkRule(rule_id=uuid4(), kind=RuleKind.STATIC_NAT, public_ip="203.0.113.1",
                private_ip="10.0.0.3", protocol=P.TCP),
    NetworkRule(rule_id=uuid4(), kind=RuleKind.STATIC_NAT, public_ip="203.0.113.1"),
], ids=lambda r: f"{r.kind.value}")
def test_malformed_rules_are_refused(rule: NetworkRule) -> None:
    network = net()
    with pytest.raises(ValidationError):
        network.add_rule(rule)
    assert network.rules_revision == 0 and not network.pending_events[1:]


def test_clashing_rules_are_refused() -> None:
    network = net()
    first = network.add_rule(pf())
    network.add_rule(nat())
    clashes = [
        msgspec.structs.replace(first, public_ip="203.0.113.77"),  # same id
        pf(ports=(8081, 8090), private_ports=None),  # overlaps on the same public IP and protocol
        nat(public="203.0.113.5", private="10.0.0.30"),  # static NAT on a forwarded IP
        pf(public="203.0.113.9"),  # port forwarding on a static NAT IP
        nat(public="203.0.113.10"),  # the same guest address twice
        nat(private="10.0.0.30"),  # the same public IP twice
    ]
    for rule in clashes:
        with pytest.raises(DomainRuleError):
            network.add_rule(rule)
    network.add_rule(pf(ports=(8082, 8083), private_ports=None))  # adjacent, not overlapping
    network.add_rule(pf(ports=(8080, 8081), protocol=P.UDP))  # another protocol
    assert network.rules_revision == 4


def test_a_destroyed_network_takes_no_rules() -> None:
    network = net()
    network.destroy()
    with pytest.raises(InvalidTransitionError):
        network.add_rule(fw())
