"""NetworkElement's pure parts: the libvirt network XML it writes and reads, and the
nftables rendering of a rule set."""

from uuid import UUID, uuid4
from xml.etree import ElementTree as ET

import msgspec
import pytest

from aggregates.errors import ConfigError
from aggregates.network_rules import NetworkRule, RuleKind, RuleProtocol
from aggregates.plan import PlannedStep
from kernel.steps.network import (
    AllocateNic,
    ApplyRules,
    ImplementElement,
    PrepareNic,
    bridge_name,
    libvirt_network_name,
)
from subsystems.base import action_table
from subsystems.networkelement import NetworkElement, make_networkelement
from subsystems.networkelement.network_xml import (
    NS,
    Addressing,
    DhcpHost,
    DnsHost,
    RuleRecord,
    addressing_of,
    dhcp_hosts,
    dns_hosts,
    network_id_of,
    render_network,
    rules_of,
    with_entries,
    with_rules,
)
from subsystems.networkelement.nftables import render_ruleset

NET = UUID("6f1c2a9e-0b55-4c7e-9a43-5d0a3b1f2e11")


def implement(**kw: object) -> ImplementElement:
    """Arguments of an implement step."""
    base: dict[str, object] = dict(network_id=NET, host_uri="test:///x.xml",
                                   network_type="Isolated", cidr="10.4.0.0/24",
                                   gateway="10.4.0.1")
    return ImplementElement(**{**base, **kw})  # type: ignore[arg-type]


def test_names_fit_libvirt_and_the_kernel() -> None:
    assert libvirt_network_name(NET) == "ck-6f1c2a9e0b554c7e9a435d0a3b1f2e11"
    assert bridge_name(NET) == "ck6f1c2a9e0b554" and len(bridge_name(uuid4())) == 15


def test_an_isolated_network_is_nat_with_static_dhcp_and_metadata() -> None:
    xml = render_network(implement(vlan=120, dns_domain="cloud.test"))
    root = ET.fromstring(xml)
    assert root.findtext("name") == libvirt_network_name(NET)
    assert root.find("forward").get("mode") == "nat"  # type: ignore[union-attr]
    assert root.find("domain").attrib == {"name": "cloud.test", "localOnly": "yes"}  # type: ignore[union-attr]
    assert root.find("ip/dhcp/range") is None  # static leases only: the guru picks addresses
    meta = root.find(f"metadata/{{{NS}}}network")
    assert meta is not None and meta.attrib == {"id": str(NET), "type": "Isolated",
                                                "revision": "0", "vlan": "120"}
    assert root.find("vlan") is None  # libvirt refuses <vlan> on NAT networks
    assert addressing_of(xml) == Addressing(bridge=bridge_name(NET), address="10.4.0.1",
                                            netmask="255.255.255.0", forward="nat")
    assert network_id_of(xml) == NET and rules_of(xml) == RuleRecord(0, (), "")


def test_a_shared_network_is_routed_and_may_have_a_dynamic_range() -> None:
    xml = render_network(implement(network_type="Shared", dhcp_range=("10.4.0.100",
                                                                      "10.4.0.200")))
    root = ET.fromstring(xml)
    assert root.find("forward").get("mode") == "route"  # type: ignore[union-attr]
    assert root.find("ip/dhcp/range").attrib == {"start": "10.4.0.100", "end": "10.4.0.200"}  # type: ignore[union-attr]
    assert root.find("domain") is None


def test_entries_are_read_and_edited() -> None:
    a = DhcpHost(mac="52:54:00:00:00:0a", ip="10.4.0.10", name="vm-a")
    b = DhcpHost(mac="52:54:00:00:00:0b", ip="10.4.0.11", name="vm-b")
    xml = with_entries(render_network(implement()), add_dhcp=(a, b),
                       add_dns=(DnsHost("10.4.0.10", ("vm-a",)),))
    assert dhcp_hosts(xml) == [a, b]
    assert dns_hosts(xml) == [DnsHost("10.4.0.10", ("vm-a",))]
    root = ET.fromstring(xml)
    assert [c.tag for c in root].index("dns") < [c.tag for c in root].index("ip")
    xml = with_entries(xml, drop_dhcp=(a,), drop_dns=(DnsHost("10.4.0.10", ("vm-a",)),))
    assert dhcp_hosts(xml) == [b] and dns_hosts(xml) == []
    assert ET.fromstring(a.xml()).attrib == {"mac": a.mac, "name": "vm-a", "ip": "10.4.0.10"}
    assert DnsHost("10.4.0.10", ("a", "b")).xml() == \
        '<host ip="10.4.0.10"><hostname>a</hostname><hostname>b</hostname></host>'


RULES = (
    NetworkRule(rule_id=UUID(int=1), kind=RuleKind.FIREWALL, public_ip="203.0.113.5",
                protocol=RuleProtocol.TCP, public_ports=(8080, 8081),
                source_cidrs=("198.51.100.0/24", "192.0.2.7/32")),
    NetworkRule(rule_id=UUID(int=2), kind=RuleKind.PORT_FORWARDING, public_ip="203.0.113.5",
                protocol=RuleProtocol.TCP, public_ports=(8080, 8081), private_ip="10.4.0.10",
                private_ports=(80, 81)),
    NetworkRule(rule_id=UUID(int=3), kind=RuleKind.STATIC_NAT, public_ip="203.0.113.9",
                private_ip="10.4.0.11"),
    NetworkRule(rule_id=UUID(int=4), kind=RuleKind.FIREWALL, public_ip="203.0.113.9",
                protocol=RuleProtocol.ICMP),
)


def test_the_rule_set_is_kept_in_the_metadata() -> None:
    record = RuleRecord(revision=7, rules=RULES, ruleset="table ip x\n")
    xml = with_rules(render_network(implement(vlan=9)), record)
    assert rules_of(xml) == record
    meta = ET.fromstring(xml).find(f"metadata/{{{NS}}}network")
    assert meta is not None and meta.get("vlan") == "9"  # the rest of the metadata stays
    emptied = with_rules(xml, RuleRecord(revision=8, rules=(), ruleset=""))
    assert rules_of(emptied) == RuleRecord(8, (), "")
    bare = "<network><name>x</name><uuid>u</uuid><bridge name='b'/></network>"
    assert rules_of(with_rules(bare, record)) == record


def test_the_ruleset_renders_nat_and_a_guarding_firewall() -> None:
    text = render_ruleset("ckbr", RULES, revision=7)
    assert text.splitlines()[1:3] == ["table ip ck_ckbr", "delete table ip ck_ckbr"]
    for line in (
        "ip daddr 203.0.113.5 tcp dport 8080-8081 dnat to 10.4.0.10:80-81",
        "ip daddr 203.0.113.9 dnat to 10.4.0.11",
        'ip saddr 10.4.0.11 oifname != "ckbr" snat to 203.0.113.9',
        "ct state established,related accept",
        "ct original ip daddr 203.0.113.5 ip saddr { 198.51.100.0/24, 192.0.2.7/32 } "
        "meta l4proto tcp ct original proto-dst 8080-8081 accept",
        "ct original ip daddr 203.0.113.9 meta l4proto icmp accept",
        "ct original ip daddr { 203.0.113.5, 203.0.113.9 } drop",
    ):
        assert f"\t\t{line}\n" in text, line
    body = text.splitlines()
    assert body.index("\t\tct original ip daddr { 203.0.113.5, 203.0.113.9 } drop") > \
        body.index("\t\tct original ip daddr 203.0.113.9 meta l4proto icmp accept")
    assert render_ruleset("ckbr", reversed(RULES), revision=7) == text  # order-independent
    assert render_ruleset("ckbr", (), revision=8).splitlines()[1:] == [
        "table ip ck_ckbr", "delete table ip ck_ckbr"]


def test_the_element_is_a_plugin_without_config() -> None:
    assert sorted(action_table(NetworkElement())) == [
        "apply_rules", "implement", "inventory", "prepare", "release", "remove_rules",
        "shutdown"]
    assert isinstance(make_networkelement({}), NetworkElement)
    with pytest.raises(ConfigError):
        make_networkelement({"x": 1})


def test_step_arguments_route_by_tag_and_roundtrip_as_json() -> None:
    args = ApplyRules(network_id=NET, host_uri="test:///x.xml", revision=3, rules=RULES)
    step = PlannedStep.of(args)
    assert (step.subsystem, step.action) == ("networkelement", "apply_rules")
    assert step.decode_args(ApplyRules) == args
    guru = PlannedStep.of(AllocateNic(network_id=NET, nic_id=uuid4()))
    assert (guru.subsystem, guru.action) == ("networkguru", "allocate")
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"network_id": "%s", "host_uri": "h", "nic_id": "%s", '
                            b'"mac": "nope", "ip": "10.0.0.2", "hostname": "a"}'
                            % (str(NET).encode(), str(NET).encode()), type=PrepareNic)
