"""NetworkElement against libvirt's test driver: what libvirt itself reports after each step.

Every check reads libvirt's view through the process's connection to the host
(`networkLookupByName(...).XMLDesc()`), never the plugin's own answer alone.
"""

from collections.abc import Callable, Iterator
from uuid import UUID, uuid4
from xml.etree import ElementTree as ET

import libvirt
import pytest

from aggregates.errors import StepFailedError
from aggregates.network_rules import NetworkRule, RuleKind, RuleProtocol
from kernel.steps.network import (
    ApplyRules,
    ImplementElement,
    PrepareNic,
    ReleaseNicEntries,
    RemoveRules,
    ShutdownElement,
    bridge_name,
    libvirt_network_name,
)
from subsystems.base import StepContext
from subsystems.libvirt.connections import close_all, connection
from subsystems.networkelement import NetworkElement
from subsystems.networkelement.network_xml import NS

NET = uuid4()


@pytest.fixture(autouse=True)
def _fresh_connections() -> Iterator[None]:
    yield
    close_all()


@pytest.fixture
def element() -> NetworkElement:
    """An open element."""
    plugin = NetworkElement()
    plugin.open()
    return plugin


@pytest.fixture
def uri(libvirt_host_factory: Callable[..., str]) -> str:
    """A simulated host."""
    return libvirt_host_factory("router-1")


def ctx(action: str) -> StepContext:
    """A first delivery of a networkelement step."""
    return StepContext(step_id=uuid4(), operation_id=uuid4(), attempt=1,
                       subsystem="networkelement", action=action)


def libvirt_view(uri: str, network_id: UUID = NET) -> ET.Element:
    """The network as libvirt reports it."""
    return ET.fromstring(connection(uri).networkLookupByName(
        libvirt_network_name(network_id)).XMLDesc())


def dhcp(uri: str) -> set[tuple[str, str, str]]:
    """libvirt's DHCP host entries: (mac, ip, name)."""
    return {(h.get("mac", ""), h.get("ip", ""), h.get("name", ""))
            for h in libvirt_view(uri).iterfind("ip/dhcp/host")}


def dns(uri: str) -> set[tuple[str, tuple[str, ...]]]:
    """libvirt's DNS host entries: (ip, hostnames)."""
    return {(h.get("ip", ""), tuple(n.text or "" for n in h.iterfind("hostname")))
            for h in libvirt_view(uri).iterfind("dns/host")}


def implement(element: NetworkElement, uri: str, cidr: str = "10.30.0.0/24",
              gateway: str = "10.30.0.1") -> object:
    """Run the implement step."""
    return element.implement(ctx("implement"), ImplementElement(
        network_id=NET, host_uri=uri, network_type="Isolated", cidr=cidr, gateway=gateway,
        vlan=300, dns_domain="guests.test"))


def prepare(element: NetworkElement, uri: str, mac: str, ip: str, name: str) -> bool:
    """Run the prepare step; whether it changed anything."""
    return element.prepare(ctx("prepare"), PrepareNic(
        network_id=NET, host_uri=uri, nic_id=uuid4(), mac=mac, ip=ip, hostname=name)).changed


def release(element: NetworkElement, uri: str, mac: str, ip: str, name: str) -> bool:
    """Run the release step; whether it changed anything."""
    return element.release(ctx("release"), ReleaseNicEntries(
        network_id=NET, host_uri=uri, nic_id=uuid4(), mac=mac, ip=ip, hostname=name)).changed


def test_implement_defines_starts_and_keeps_the_network(
        element: NetworkElement, uri: str, libvirt_host_factory: Callable[..., str]) -> None:
    first = implement(element, uri)
    assert first.created and first.bridge == bridge_name(NET)  # type: ignore[attr-defined]
    net = connection(uri).networkLookupByName(libvirt_network_name(NET))
    assert net.isActive() and net.isPersistent() and net.autostart()
    view = libvirt_view(uri)
    assert view.find("bridge").get("name") == bridge_name(NET)  # type: ignore[union-attr]
    assert view.find("ip").attrib == {"address": "10.30.0.1", "netmask": "255.255.255.0"}  # type: ignore[union-attr]
    assert view.find("forward").get("mode") == "nat"  # type: ignore[union-attr]
    meta = view.find(f"metadata/{{{NS}}}network")
    assert meta is not None and (meta.get("id"), meta.get("vlan")) == (str(NET), "300")
    net.destroy()  # the host lost it (a reboot without autostart): implement starts it again
    assert not implement(element, uri).created  # type: ignore[attr-defined]
    assert connection(uri).networkLookupByName(libvirt_network_name(NET)).isActive()
    with pytest.raises(StepFailedError) as info:
        implement(element, uri, cidr="10.31.0.0/24", gateway="10.31.0.1")
    assert (info.value.code, info.value.retryable) == ("network_conflict", False)
    other = libvirt_host_factory("router-2")  # another host has none of it
    with pytest.raises(libvirt.libvirtError):
        connection(other).networkLookupByName(libvirt_network_name(NET))


def test_prepare_and_release_dhcp_and_dns_host_entries(element: NetworkElement,
                                                       uri: str) -> None:
    implement(element, uri)
    assert prepare(element, uri, "52:54:00:00:00:0A", "10.30.0.10", "vm-a")
    assert not prepare(element, uri, "52:54:00:00:00:0a", "10.30.0.10", "vm-a")  # repeated
    assert prepare(element, uri, "02:00:00:00:00:0b", "10.30.0.11", "vm-b")
    assert dhcp(uri) == {("52:54:00:00:00:0a", "10.30.0.10", "vm-a"),
                         ("02:00:00:00:00:0b", "10.30.0.11", "vm-b")}
    assert dns(uri) == {("10.30.0.10", ("vm-a",)), ("10.30.0.11", ("vm-b",))}
    # vm-a's address went to vm-c, but vm-a's release step never ran: its entries are stale
    assert prepare(element, uri, "02:00:00:00:00:0c", "10.30.0.10", "vm-c")
    assert dhcp(uri) == {("02:00:00:00:00:0c", "10.30.0.10", "vm-c"),
                         ("02:00:00:00:00:0b", "10.30.0.11", "vm-b")}
    assert dns(uri) == {("10.30.0.10", ("vm-c",)), ("10.30.0.11", ("vm-b",))}
    # a late release of vm-a removes nothing of vm-c's
    assert not release(element, uri, "52:54:00:00:00:0a", "10.30.0.10", "vm-a")
    assert release(element, uri, "02:00:00:00:00:0b", "10.30.0.11", "vm-b")
    assert not release(element, uri, "02:00:00:00:00:0b", "10.30.0.11", "vm-b")
    assert dhcp(uri) == {("02:00:00:00:00:0c", "10.30.0.10", "vm-c")}
    assert dns(uri) == {("10.30.0.10", ("vm-c",))}


def test_rules_are_realized_in_the_network_definition(element: NetworkElement,
                                                      uri: str) -> None:
    implement(element, uri)
    prepare(element, uri, "02:00:00:00:00:0a", "10.30.0.10", "web")
    rules = (
        NetworkRule(rule_id=uuid4(), kind=RuleKind.PORT_FORWARDING, public_ip="198.51.100.4",
                    protocol=RuleProtocol.TCP, public_ports=(80, 80), private_ip="10.30.0.10",
                    private_ports=(8080, 8080)),
        NetworkRule(rule_id=uuid4(), kind=RuleKind.FIREWALL, public_ip="198.51.100.4",
                    protocol=RuleProtocol.TCP, public_ports=(80, 80)),
    )
    done = element.apply_rules(ctx("apply_rules"), ApplyRules(
        network_id=NET, host_uri=uri, revision=2, rules=rules))
    assert done.applied and (done.revision, done.rule_count) == (2, 2)
    assert "dnat to 10.30.0.10:8080" in done.ruleset
    net = connection(uri).networkLookupByName(libvirt_network_name(NET))
    assert net.isActive()  # no guest was connected: restarted with the new definition
    meta = libvirt_view(uri).find(f"metadata/{{{NS}}}network")
    assert meta is not None and meta.get("revision") == "2"
    assert {r.get("id") for r in meta.iterfind(f"{{{NS}}}rule")} == \
        {str(r.rule_id) for r in rules}
    assert meta.findtext(f"{{{NS}}}ruleset") == done.ruleset
    assert meta.get("vlan") == "300"  # the rest of the metadata is kept
    assert dhcp(uri) == {("02:00:00:00:00:0a", "10.30.0.10", "web")}  # and the entries
    late = element.apply_rules(ctx("apply_rules"), ApplyRules(
        network_id=NET, host_uri=uri, revision=1, rules=rules[:1]))
    assert not late.applied and (late.revision, late.rule_count) == (2, 2)
    cleared = element.remove_rules(ctx("remove_rules"), RemoveRules(
        network_id=NET, host_uri=uri, revision=3))
    assert cleared.applied and cleared.rule_count == 0
    meta = libvirt_view(uri).find(f"metadata/{{{NS}}}network")
    assert meta is not None and meta.get("revision") == "3"
    assert not list(meta.iterfind(f"{{{NS}}}rule"))


def test_shutdown_removes_the_network_and_later_steps_say_so(element: NetworkElement,
                                                             uri: str) -> None:
    implement(element, uri)
    prepare(element, uri, "02:00:00:00:00:0a", "10.30.0.10", "web")
    gone = element.shutdown(ctx("shutdown"), ShutdownElement(network_id=NET, host_uri=uri))
    assert gone.existed
    with pytest.raises(libvirt.libvirtError) as lookup:
        connection(uri).networkLookupByName(libvirt_network_name(NET))
    assert lookup.value.get_error_code() == libvirt.VIR_ERR_NO_NETWORK
    assert not element.shutdown(ctx("shutdown"), ShutdownElement(
        network_id=NET, host_uri=uri)).existed
    assert not release(element, uri, "02:00:00:00:00:0a", "10.30.0.10", "web")
    with pytest.raises(StepFailedError) as info:
        prepare(element, uri, "02:00:00:00:00:0a", "10.30.0.10", "web")
    assert (info.value.code, info.value.retryable) == ("network_not_implemented", False)


def test_shutdown_hands_the_host_agent_the_removal_of_the_rules_table(
        element: NetworkElement, uri: str) -> None:
    # The rules live in the network's metadata, and leave with it; the nftables table a
    # host agent made from them goes too, by the script the shutdown answers with.
    implement(element, uri)
    rule = NetworkRule(rule_id=uuid4(), kind=RuleKind.STATIC_NAT, public_ip="198.51.100.4",
                       private_ip="10.30.0.10")
    element.apply_rules(ctx("apply_rules"), ApplyRules(network_id=NET, host_uri=uri,
                                                       revision=1, rules=(rule,)))
    gone = element.shutdown(ctx("shutdown"), ShutdownElement(network_id=NET, host_uri=uri))
    table = f"ip ck_{bridge_name(NET)}"
    assert gone.existed and gone.rule_count == 1
    assert gone.ruleset.splitlines()[1:] == [f"table {table}", f"delete table {table}"]
    assert libvirt_network_name(NET) not in [n.name() for n in
                                             connection(uri).listAllNetworks()]
    again = element.shutdown(ctx("shutdown"), ShutdownElement(network_id=NET, host_uri=uri))
    assert not again.existed and again.rule_count == 0 and again.ruleset == gone.ruleset
