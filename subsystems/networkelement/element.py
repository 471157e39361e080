"""NetworkElement, the virtual-router provider: guest networks as libvirt networks on a host.

Every action reads the host's real state first and changes only what differs, so a repeated
step is harmless: an entry already there is success, a missing one on removal is success.
Steps on one network are serialized in this process (one lock per host and network); two
processes racing on a real host meet libvirt's own refusal (the entry exists, or is gone),
read again and decide again.

What is realized where:

* the network, its bridge, gateway address and forward mode: libvirt (`networkDefineXML`,
  started and autostarted);
* DHCP host (mac -> ip, name) and DNS host (ip -> name) entries: libvirt, live and persistent,
  through `virNetworkUpdate`; a driver without it (VIR_ERR_NO_SUPPORT) gets the network
  redefined with the entries instead, which reaches a running network at once only when no
  guest is connected (see `subsystems.libvirt.networks`);
* firewall, port forwarding and static NAT rules: recorded in the network's persistent
  `<metadata>` with their nftables rendering (`nftables.py`), for the host agent to apply.
  libvirt itself enforces none of them. The result carries the rendering too.

An entry in the way of a new one (the same MAC, address or name with other values) is stale
(the aggregates never give an address or MAC to two NICs) and is replaced. A release removes
only the NIC's own entries (its MAC; its address with its name), so a late release cannot
remove the entries of a NIC that got the address since.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from ipaddress import AddressValueError, IPv4Address
from typing import Any, Literal
from uuid import UUID

from aggregates.errors import ConfigError, StepFailedError
from aggregates.network_rules import NetworkRule
from kernel.steps.inventory import (
    DhcpEntry,
    InventoryNetworks,
    LibvirtNetworkFacts,
    NetworkInventory,
)
from kernel.steps.network import (
    NETWORK_CONFLICT,
    ApplyRules,
    ElementImplemented,
    ElementShutDown,
    ImplementElement,
    NicEntriesReleased,
    NicPrepared,
    PrepareNic,
    ReleaseNicEntries,
    RemoveRules,
    RulesApplied,
    ShutdownElement,
    bridge_name,
    libvirt_network_name,
)
from subsystems.base import StepContext, SubsystemBase, action
from subsystems.libvirt import inventory
from subsystems.libvirt import networks as virt
from subsystems.libvirt.connections import connection
from subsystems.libvirt.faults import quiet
from subsystems.networkelement.network_xml import (
    DhcpHost,
    DnsHost,
    RuleRecord,
    addressing_of,
    dhcp_hosts,
    dns_hosts,
    render_network,
    rules_of,
    with_entries,
    with_rules,
)
from subsystems.networkelement.nftables import removal_script, render_ruleset

__all__ = ["NOT_IMPLEMENTED", "NetworkElement", "make_networkelement"]

NOT_IMPLEMENTED = "network_not_implemented"
Command = Literal["add", "delete"]
Section = Literal["dhcp_host", "dns_host"]
# live XML -> (DHCP entries to drop, to add, DNS entries to drop, to add)
EntryPlanned = tuple[list[DhcpHost], list[DhcpHost], list[DnsHost], list[DnsHost]]
EntryPlan = Callable[[str], EntryPlanned]
_RACE_RETRIES = 3


class NetworkElement(SubsystemBase):
    """Realizes guest networks, their NIC entries and rules on libvirt hosts."""

    name = "networkelement"
    version = "1.0"

    def __init__(self) -> None:
        """No driver state: connections are the process's shared ones, opened on use."""
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def open(self) -> None:
        """Keep libvirt from printing the errors the actions report as step failures."""
        quiet()

    @action()
    def implement(self, ctx: StepContext, args: ImplementElement) -> ElementImplemented:
        """Define, start and autostart the network (an identical one is kept)."""
        name = libvirt_network_name(args.network_id)
        with self._lock(args.host_uri, name):
            wanted = render_network(args)
            facts = virt.find_network(args.host_uri, name)
            created = facts is None
            if facts is None:
                virt.define_network(args.host_uri, wanted)
            elif addressing_of(facts.live_xml) != addressing_of(wanted):
                raise StepFailedError(
                    f"host {args.host_uri} has a network {name} with other addressing "
                    f"({addressing_of(facts.live_xml)}); shut it down first",
                    retryable=False, code=NETWORK_CONFLICT)
            virt.start_network(args.host_uri, name)
        return ElementImplemented(network_id=args.network_id, host_uri=args.host_uri,
                                  libvirt_network=name, bridge=bridge_name(args.network_id),
                                  created=created)

    @action()
    def prepare(self, ctx: StepContext, args: PrepareNic) -> NicPrepared:
        """Make the NIC's DHCP and DNS host entries exactly what the arguments say."""
        name = libvirt_network_name(args.network_id)
        mac = args.mac.lower()
        dhcp = DhcpHost(mac=mac, ip=args.ip, name=args.hostname)
        dns = DnsHost(ip=args.ip, hostnames=(args.hostname,))
        _check_address(args.ip)

        def plan(xml: str) -> EntryPlanned:
            # each section parsed once: the network's XML grows with every NIC on it
            dhcps, dnss = dhcp_hosts(xml), dns_hosts(xml)
            return ([h for h in dhcps if h != dhcp and (
                        h.mac == mac or h.ip == dhcp.ip or h.name == dhcp.name)],
                    [] if dhcp in dhcps else [dhcp],
                    [h for h in dnss if h != dns and (
                        h.ip == dns.ip or args.hostname in h.hostnames)],
                    [] if dns in dnss else [dns])

        with self._lock(args.host_uri, name):
            changed = self._converge(args.host_uri, name, plan)
        return NicPrepared(network_id=args.network_id, host_uri=args.host_uri,
                           libvirt_network=name, mac=mac, ip=args.ip,
                           hostname=args.hostname, changed=changed)

    @action()
    def release(self, ctx: StepContext, args: ReleaseNicEntries) -> NicEntriesReleased:
        """Remove the NIC's DHCP entry (by MAC) and its DNS entry (address and name)."""
        name = libvirt_network_name(args.network_id)
        mac = args.mac.lower()
        with self._lock(args.host_uri, name):
            if virt.find_network(args.host_uri, name) is None:
                changed = False  # the network is gone, and its entries with it
            else:
                changed = self._converge(args.host_uri, name, lambda xml: (
                    [h for h in dhcp_hosts(xml) if h.mac == mac], [],
                    [h for h in dns_hosts(xml)
                     if h.ip == args.ip and args.hostname in h.hostnames],
                    [DnsHost(h.ip, tuple(n for n in h.hostnames if n != args.hostname))
                     for h in dns_hosts(xml) if h.ip == args.ip
                     and args.hostname in h.hostnames and len(h.hostnames) > 1]))
        return NicEntriesReleased(network_id=args.network_id, host_uri=args.host_uri,
                                  changed=changed)

    @action()
    def shutdown(self, ctx: StepContext, args: ShutdownElement) -> ElementShutDown:
        """Stop and undefine the network, its bridge, DHCP/DNS entries and rules with it;
        gone already is success. The answer carries the removal of the rules' nftables
        table for the host agent."""
        name = libvirt_network_name(args.network_id)
        with self._lock(args.host_uri, name):
            facts = virt.find_network(args.host_uri, name)
            rules = rules_of(facts.definition_xml).rules if facts is not None else ()
            existed = virt.remove_network(args.host_uri, name)
        return ElementShutDown(network_id=args.network_id, host_uri=args.host_uri,
                               existed=existed, rule_count=len(rules),
                               ruleset=removal_script(bridge_name(args.network_id)))

    @action()
    def apply_rules(self, ctx: StepContext, args: ApplyRules) -> RulesApplied:
        """Realize exactly the network's rule set at `revision` (an older one is skipped)."""
        return self._realize(args.host_uri, args.network_id, args.revision, args.rules)

    @action()
    def remove_rules(self, ctx: StepContext, args: RemoveRules) -> RulesApplied:
        """Realize the empty rule set at `revision`."""
        return self._realize(args.host_uri, args.network_id, args.revision, ())

    @action()
    def inventory(self, ctx: StepContext, args: InventoryNetworks) -> NetworkInventory:
        """Every libvirt network of a host with its DHCP host entries (read only)."""
        return NetworkInventory(host_uri=args.host_uri, networks=tuple(
            LibvirtNetworkFacts(name=name, active=active, dhcp=tuple(
                DhcpEntry(mac=h.mac, ip=h.ip, name=h.name) for h in dhcp_hosts(xml)))
            for name, active, xml in inventory.network_xmls(connection(args.host_uri))))

    def _realize(self, uri: str, network_id: UUID, revision: int,
                 rules: tuple[NetworkRule, ...]) -> RulesApplied:
        name = libvirt_network_name(network_id)
        with self._lock(uri, name):
            facts = self._require(uri, name)
            current = rules_of(facts.definition_xml)
            if current.revision >= revision:
                return RulesApplied(network_id=network_id, host_uri=uri,
                                    revision=current.revision, applied=False,
                                    rule_count=len(current.rules), ruleset=current.ruleset)
            ruleset = render_ruleset(bridge_name(network_id), rules, revision=revision)
            record = RuleRecord(revision=revision, rules=tuple(rules), ruleset=ruleset)
            virt.redefine_network(uri, name, with_rules(facts.definition_xml, record))
        return RulesApplied(network_id=network_id, host_uri=uri, revision=revision,
                            applied=True, rule_count=len(rules), ruleset=ruleset)

    def _converge(self, uri: str, name: str, plan: EntryPlan) -> bool:
        """Read the live entries, drop and add what `plan` says; True if anything changed.

        When another process changed the entries meanwhile (libvirt refuses an add or a
        delete), read again and plan again.
        """
        for _ in range(_RACE_RETRIES):
            facts = self._require(uri, name)
            if not facts.active:
                virt.start_network(uri, name)
                facts = self._require(uri, name)
            drop_dhcp, add_dhcp, drop_dns, add_dns = plan(facts.live_xml)
            if not (drop_dhcp or add_dhcp or drop_dns or add_dns):
                return False
            updates: list[tuple[Command, Section, DhcpHost | DnsHost]] = [
                *(("delete", "dhcp_host", h) for h in drop_dhcp),
                *(("delete", "dns_host", h) for h in drop_dns),
                *(("add", "dhcp_host", h) for h in add_dhcp),
                *(("add", "dns_host", h) for h in add_dns)]
            for command, section, entry in updates:
                outcome = virt.update_network(uri, name, command, section, entry.xml())
                if outcome is virt.UpdateOutcome.UNSUPPORTED:
                    virt.redefine_network(uri, name, with_entries(
                        facts.definition_xml, add_dhcp=tuple(add_dhcp),
                        drop_dhcp=tuple(drop_dhcp), add_dns=tuple(add_dns),
                        drop_dns=tuple(drop_dns)))
                    return True
                if outcome is virt.UpdateOutcome.REFUSED:
                    break  # someone else changed the entries: read again
            else:
                return True
        raise StepFailedError(f"network {name} on {uri}: its DHCP/DNS entries kept changing "
                              "under us", retryable=True, code="network_busy")

    @staticmethod
    def _require(uri: str, name: str) -> virt.NetworkFacts:
        facts = virt.find_network(uri, name)
        if facts is None:
            raise StepFailedError(f"host {uri} has no network {name}: implement it first",
                                  retryable=False, code=NOT_IMPLEMENTED)
        return facts

    def _lock(self, uri: str, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault((uri, name), threading.Lock())


def make_networkelement(config: Mapping[str, Any]) -> NetworkElement:
    """Entry point factory of `networkelement`: it takes no configuration."""
    if config:
        raise ConfigError(f"networkelement: takes no config, got keys {sorted(config)}")
    return NetworkElement()


def _check_address(ip: str) -> None:
    try:
        IPv4Address(ip)
    except AddressValueError as e:
        raise StepFailedError(f"{ip!r} is not an IPv4 address", retryable=False,
                              code="bad_args") from e
