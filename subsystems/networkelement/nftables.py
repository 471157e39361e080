"""A network's rule set rendered as one nftables script (`nft -f`), replacing its table.

libvirt networks have no firewall, port forwarding or static NAT rules of their own, so the
element records the rules in the network's metadata together with this rendering, and a
host agent (a libvirt network hook, `/etc/libvirt/hooks/network`, which receives the network
XML when it starts or changes) applies it. The script is atomic and idempotent: it declares
the network's table, deletes it and declares it again with its chains, in one transaction.

* port forwarding and static NAT: `dnat` in a prerouting NAT chain; static NAT also `snat`s
  the guest's outgoing traffic to its public IP in a postrouting NAT chain;
* firewall: in the forward filter chain, traffic whose original destination (before DNAT,
  `ct original ...`) is one of the network's public IPs is accepted when a firewall rule
  allows it, and dropped otherwise, as CloudStack's virtual router does.
"""

from __future__ import annotations

from collections.abc import Iterable

from aggregates.network_rules import NetworkRule, RuleKind, RuleProtocol, rule_sort_key

__all__ = ["removal_script", "render_ruleset", "table_name"]

_ANYWHERE = ("0.0.0.0/0",)


def table_name(bridge: str) -> str:
    """The nftables table of a network: one per bridge, so per network on a host."""
    return f"ck_{bridge}"


def render_ruleset(bridge: str, rules: Iterable[NetworkRule], *, revision: int) -> str:
    """The nftables script that makes the network's table hold exactly `rules`."""
    table = f"ip {table_name(bridge)}"
    ordered = sorted(rules, key=rule_sort_key)
    lines = [f"# cloudkernel rules of bridge {bridge}, revision {revision}: nft -f <this>",
             f"table {table}", f"delete table {table}"]
    if not ordered:
        return "\n".join(lines) + "\n"
    prerouting, postrouting, forward = [], [], []
    guarded: list[str] = []
    for rule in ordered:
        if rule.public_ip not in guarded:
            guarded.append(rule.public_ip)
        if rule.kind is RuleKind.PORT_FORWARDING:
            assert rule.public_ports and rule.private_ports  # checked by the aggregate
            prerouting.append(
                f"ip daddr {rule.public_ip} {rule.protocol.value} dport "
                f"{_range(rule.public_ports)} dnat to {rule.private_ip}:"
                f"{_range(rule.private_ports)}")
        elif rule.kind is RuleKind.STATIC_NAT:
            prerouting.append(f"ip daddr {rule.public_ip} dnat to {rule.private_ip}")
            postrouting.append(f'ip saddr {rule.private_ip} oifname != "{bridge}" '
                               f"snat to {rule.public_ip}")
        else:
            forward.append(_firewall(rule))
    lines.append(f"table {table} {{")
    lines += _chain("prerouting", "type nat hook prerouting priority dstnat; policy accept;",
                    prerouting)
    lines += _chain("postrouting", "type nat hook postrouting priority srcnat; policy accept;",
                    postrouting)
    forward = ["ct state established,related accept", *forward,
               f"ct original ip daddr {{ {', '.join(guarded)} }} drop"]
    lines += _chain("forward", "type filter hook forward priority filter; policy accept;",
                    forward)
    lines.append("}")
    return "\n".join(lines) + "\n"


def removal_script(bridge: str) -> str:
    """The nftables script that removes the network's table (declared first, so that it
    runs as well when the table is gone already)."""
    table = f"ip {table_name(bridge)}"
    return (f"# cloudkernel: bridge {bridge} is gone, and its rules: nft -f <this>\n"
            f"table {table}\ndelete table {table}\n")


def _firewall(rule: NetworkRule) -> str:
    parts = [f"ct original ip daddr {rule.public_ip}"]
    if tuple(rule.source_cidrs) != _ANYWHERE:
        parts.append(f"ip saddr {{ {', '.join(rule.source_cidrs)} }}")
    if rule.protocol is not RuleProtocol.ALL:
        parts.append(f"meta l4proto {rule.protocol.value}")
    if rule.public_ports is not None:
        parts.append(f"ct original proto-dst {_range(rule.public_ports)}")
    parts.append("accept")
    return " ".join(parts)


def _chain(name: str, header: str, body: list[str]) -> list[str]:
    return [f"\tchain {name} {{", f"\t\t{header}", *(f"\t\t{line}" for line in body), "\t}"]


def _range(ports: tuple[int, int]) -> str:
    low, high = ports
    return str(low) if low == high else f"{low}-{high}"
