"""The libvirt network XML of a guest network: made from step arguments, read back, edited.

A guest network becomes a libvirt network with its own bridge whose address is the network's
gateway: NAT forwarding for an Isolated network (the virtual router's source NAT), routed for
a Shared one. Its `<metadata>` holds one `<ck:network>` element: the guest network's id, type
and VLAN, and the realized rule set (`<ck:rule>` per rule, the `revision` it is at, and the
rendered `<ck:ruleset>` a host agent applies).

The VLAN is recorded, not applied: libvirt tags VLANs only on Open vSwitch and SR-IOV
networks and refuses `<vlan>` on a NAT or routed one, so tagging belongs to the host's
switch configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network
from uuid import UUID
from xml.etree import ElementTree as ET

import msgspec

from aggregates.network_rules import NetworkRule
from kernel.steps.network import ImplementElement, bridge_name, libvirt_network_name

__all__ = [
    "NS",
    "Addressing",
    "DhcpHost",
    "DnsHost",
    "RuleRecord",
    "addressing_of",
    "dhcp_hosts",
    "dns_hosts",
    "network_id_of",
    "render_network",
    "rules_of",
    "with_entries",
    "with_rules",
]

NS = "https://cloudkernel.dev/xmlns/network/1"
_CK = f"{{{NS}}}"
ET.register_namespace("ck", NS)


@dataclass(frozen=True, slots=True)
class Addressing:
    """What must match for an existing libvirt network to be the one we would define."""

    bridge: str
    address: str
    netmask: str
    forward: str  # "nat", "route" or "" (none)


@dataclass(frozen=True, slots=True)
class DhcpHost:
    """A static DHCP lease: this MAC gets this address and name."""

    mac: str
    ip: str
    name: str

    def xml(self) -> str:
        """The `<host>` element `virNetworkUpdate` takes."""
        return ET.tostring(ET.Element("host", {"mac": self.mac, "name": self.name,
                                               "ip": self.ip}), encoding="unicode")


@dataclass(frozen=True, slots=True)
class DnsHost:
    """A DNS host record: names that resolve to an address."""

    ip: str
    hostnames: tuple[str, ...]

    def xml(self) -> str:
        """The `<host>` element `virNetworkUpdate` takes."""
        host = ET.Element("host", {"ip": self.ip})
        for name in self.hostnames:
            ET.SubElement(host, "hostname").text = name
        return ET.tostring(host, encoding="unicode")


@dataclass(frozen=True, slots=True)
class RuleRecord:
    """The rule set realized on a network: its revision, rules and rendered ruleset."""

    revision: int
    rules: tuple[NetworkRule, ...]
    ruleset: str


def render_network(args: ImplementElement) -> str:
    """The definition of a new libvirt network for the guest network."""
    cidr = IPv4Network(args.cidr)
    root = ET.Element("network")
    ET.SubElement(root, "name").text = libvirt_network_name(args.network_id)
    meta = ET.SubElement(ET.SubElement(root, "metadata"), _CK + "network",
                         {"id": str(args.network_id), "type": args.network_type,
                          "revision": "0"})
    if args.vlan is not None:
        meta.set("vlan", str(args.vlan))
    ET.SubElement(meta, _CK + "ruleset").text = ""
    ET.SubElement(root, "forward", {"mode": "nat" if args.network_type == "Isolated"
                                    else "route"})
    ET.SubElement(root, "bridge", {"name": bridge_name(args.network_id), "stp": "on",
                                   "delay": "0"})
    if args.dns_domain:
        ET.SubElement(root, "domain", {"name": args.dns_domain, "localOnly": "yes"})
    ip = ET.SubElement(root, "ip", {"address": args.gateway, "netmask": str(cidr.netmask)})
    dhcp = ET.SubElement(ip, "dhcp")
    if args.dhcp_range is not None:
        ET.SubElement(dhcp, "range", {"start": args.dhcp_range[0], "end": args.dhcp_range[1]})
    return ET.tostring(root, encoding="unicode")


def addressing_of(xml: str) -> Addressing:
    """The bridge, gateway address, netmask and forward mode of a network's XML."""
    root = ET.fromstring(xml)
    bridge, ip, forward = root.find("bridge"), root.find("ip"), root.find("forward")
    return Addressing(
        bridge=bridge.get("name", "") if bridge is not None else "",
        address=ip.get("address", "") if ip is not None else "",
        netmask=_netmask(ip) if ip is not None else "",
        forward=forward.get("mode", "nat") if forward is not None else "")


def network_id_of(xml: str) -> UUID | None:
    """The guest network a libvirt network realizes, from its metadata."""
    meta = ET.fromstring(xml).find(f"metadata/{_CK}network")
    return UUID(meta.get("id", "")) if meta is not None and meta.get("id") else None


def dhcp_hosts(xml: str) -> list[DhcpHost]:
    """The static DHCP leases of the network's IPv4 address."""
    return [DhcpHost(mac=h.get("mac", "").lower(), ip=h.get("ip", ""), name=h.get("name", ""))
            for h in ET.fromstring(xml).iterfind("ip/dhcp/host")]


def dns_hosts(xml: str) -> list[DnsHost]:
    """The DNS host records."""
    return [DnsHost(ip=h.get("ip", ""),
                    hostnames=tuple(n.text or "" for n in h.iterfind("hostname")))
            for h in ET.fromstring(xml).iterfind("dns/host")]


def with_entries(xml: str, *, add_dhcp: tuple[DhcpHost, ...] = (),
                 drop_dhcp: tuple[DhcpHost, ...] = (), add_dns: tuple[DnsHost, ...] = (),
                 drop_dns: tuple[DnsHost, ...] = ()) -> str:
    """The network XML with DHCP and DNS host entries dropped and added (for drivers
    without `virNetworkUpdate`)."""
    root = ET.fromstring(xml)
    ip = root.find("ip")
    if ip is None:
        raise ValueError("network XML has no <ip> element")
    dhcp = ip.find("dhcp")
    if dhcp is None:
        dhcp = ET.SubElement(ip, "dhcp")
    for host in list(dhcp.iterfind("host")):
        if DhcpHost(host.get("mac", "").lower(), host.get("ip", ""),
                    host.get("name", "")) in drop_dhcp:
            dhcp.remove(host)
    for entry in add_dhcp:
        dhcp.append(ET.fromstring(entry.xml()))
    dns = root.find("dns")
    if dns is None and add_dns:
        dns = ET.Element("dns")
        root.insert(list(root).index(ip), dns)
    if dns is not None:
        for host in list(dns.iterfind("host")):
            record = DnsHost(host.get("ip", ""),
                             tuple(n.text or "" for n in host.iterfind("hostname")))
            if record in drop_dns:
                dns.remove(host)
        for record in add_dns:
            dns.append(ET.fromstring(record.xml()))
    return ET.tostring(root, encoding="unicode")


def rules_of(xml: str) -> RuleRecord:
    """The rule set recorded in the network's metadata (revision 0 and none if absent)."""
    meta = ET.fromstring(xml).find(f"metadata/{_CK}network")
    if meta is None:
        return RuleRecord(revision=0, rules=(), ruleset="")
    rules = tuple(_rule_of(e) for e in meta.iterfind(_CK + "rule"))
    ruleset = meta.find(_CK + "ruleset")
    return RuleRecord(revision=int(meta.get("revision", "0")), rules=rules,
                      ruleset=(ruleset.text or "") if ruleset is not None else "")


def with_rules(xml: str, record: RuleRecord) -> str:
    """The network XML with its metadata's rule set replaced by `record`."""
    root = ET.fromstring(xml)
    metadata = root.find("metadata")
    if metadata is None:
        metadata = ET.Element("metadata")
        root.insert(2 if root.find("uuid") is not None else 1, metadata)
    meta = metadata.find(_CK + "network")
    if meta is None:
        meta = ET.SubElement(metadata, _CK + "network")
    for child in list(meta):
        meta.remove(child)
    meta.set("revision", str(record.revision))
    for rule in record.rules:
        ET.SubElement(meta, _CK + "rule", _rule_attributes(rule))
    ET.SubElement(meta, _CK + "ruleset").text = record.ruleset
    return ET.tostring(root, encoding="unicode")


def _rule_attributes(rule: NetworkRule) -> dict[str, str]:
    attributes = {"id": str(rule.rule_id), "kind": rule.kind.value,
                  "protocol": rule.protocol.value, "public_ip": rule.public_ip,
                  "sources": ",".join(rule.source_cidrs)}
    if rule.public_ports is not None:
        attributes["public_ports"] = "{}-{}".format(*rule.public_ports)
    if rule.private_ip is not None:
        attributes["private_ip"] = rule.private_ip
    if rule.private_ports is not None:
        attributes["private_ports"] = "{}-{}".format(*rule.private_ports)
    return attributes


def _rule_of(element: ET.Element) -> NetworkRule:
    def ports(name: str) -> tuple[int, int] | None:
        text = element.get(name)
        if not text:
            return None
        low, _, high = text.partition("-")
        return (int(low), int(high))

    return msgspec.convert({
        "rule_id": element.get("id"), "kind": element.get("kind"),
        "protocol": element.get("protocol"), "public_ip": element.get("public_ip"),
        "public_ports": ports("public_ports"), "private_ip": element.get("private_ip"),
        "private_ports": ports("private_ports"),
        "source_cidrs": tuple(s for s in element.get("sources", "").split(",") if s),
    }, NetworkRule)


def _netmask(ip: ET.Element) -> str:
    if ip.get("netmask"):
        return ip.get("netmask", "")
    prefix = ip.get("prefix")
    return str(IPv4Network(f"0.0.0.0/{prefix}").netmask) if prefix else ""
