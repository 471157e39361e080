"""libvirt networks: the NetworkElement plugin's driver (define, start, update, remove).

Only libvirt calls live here; the network XML is made and read by the plugin. Every function
takes a host URI and a network name and returns plain values, through the process's shared
connection (`connections.connection`), so the plugin never touches a libvirt object.

Two facts of libvirt 9.0 shape the API:

* `virNetworkUpdate` changes a running network live and in its persistent definition at once
  (DHCP and DNS host entries). A driver without it answers VIR_ERR_NO_SUPPORT: `update_network`
  then returns UNSUPPORTED and the caller redefines the network instead.
* Redefining a running network changes only its persistent definition, which takes effect
  when the network next starts (and libvirt 9.0 has no `virNetworkSetMetadata`). So
  `redefine_network` stops a running network that no guest is connected to, defines it and
  starts it again, which disturbs nothing; with guests connected it only redefines, and says
  so. (The test driver never applies a running network's new definition, not even at its
  next start, so there only the stop-define-start order shows the change.)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal
from xml.etree import ElementTree as ET

import libvirt

from subsystems.libvirt.connections import connection
from subsystems.libvirt.faults import code_of, is_unsupported, translated, wrap

__all__ = [
    "NetworkFacts",
    "Redefined",
    "UpdateOutcome",
    "define_network",
    "find_network",
    "redefine_network",
    "remove_network",
    "start_network",
    "update_network",
]

Section = Literal["dhcp_host", "dns_host"]
_SECTIONS = {"dhcp_host": libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST,
             "dns_host": libvirt.VIR_NETWORK_SECTION_DNS_HOST}
_COMMANDS = {"add": libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST,
             "delete": libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE}


@dataclass(frozen=True, slots=True)
class NetworkFacts:
    """A libvirt network as the host has it."""

    name: str
    uuid: str
    active: bool
    persistent: bool
    autostart: bool
    connections: int  # guest interfaces plugged into it (0 when the driver does not count)
    live_xml: str  # what it runs with (its definition while inactive)
    definition_xml: str  # its persistent definition (= live_xml if the driver cannot tell)


class UpdateOutcome(enum.Enum):
    """What `virNetworkUpdate` did."""

    DONE = "done"
    UNSUPPORTED = "unsupported"  # the driver has no virNetworkUpdate: redefine instead
    REFUSED = "refused"  # the entry exists (add) or is missing (delete): read and decide again


class Redefined(enum.Enum):
    """How a redefinition reached the host."""

    DEFINED = "defined"  # the network is not running: the definition is what it will run
    RESTARTED = "restarted"  # it was running with no guest connected: restarted with it
    PENDING = "pending"  # guests are connected: the definition waits for the next start


def find_network(uri: str, name: str) -> NetworkFacts | None:
    """The network's facts, or None when the host has no network of that name."""
    conn = connection(uri)
    try:
        net = conn.networkLookupByName(name)
    except libvirt.libvirtError as e:
        if code_of(e) == libvirt.VIR_ERR_NO_NETWORK:
            return None
        raise wrap(e, f"look up network {name} on {uri}") from e
    with translated(f"read network {name} on {uri}"):
        live = net.XMLDesc(0)
        active, persistent = bool(net.isActive()), bool(net.isPersistent())
        autostart = bool(net.autostart()) if persistent else False
        definition = _definition_xml(net, live)
        return NetworkFacts(name=name, uuid=net.UUIDString(), active=active,
                            persistent=persistent, autostart=autostart,
                            connections=_connections(live), live_xml=live,
                            definition_xml=definition)


def define_network(uri: str, xml: str) -> None:
    """Define (or redefine, when the XML carries the existing uuid) a persistent network."""
    with translated(f"define network on {uri}"):
        connection(uri).networkDefineXML(xml)


def start_network(uri: str, name: str) -> bool:
    """Start the network if it is not running, and mark it autostart; True if started now."""
    with translated(f"start network {name} on {uri}"):
        net = connection(uri).networkLookupByName(name)
        started = False
        if not net.isActive():
            net.create()
            started = True
        if net.isPersistent() and not net.autostart():
            net.setAutostart(1)
        return started


def redefine_network(uri: str, name: str, xml: str) -> Redefined:
    """Replace the network's definition (see the module doc for when it takes effect)."""
    facts = find_network(uri, name)
    if facts is None or not facts.active or facts.connections:
        define_network(uri, xml)
        return Redefined.PENDING if facts is not None and facts.active else Redefined.DEFINED
    # Stop, define, start: on an idle network this costs nothing, and it is the order every
    # driver honours (the test driver never applies a running network's new definition).
    with translated(f"restart network {name} on {uri} with its new definition"):
        net = connection(uri).networkLookupByName(name)
        net.destroy()
        try:
            connection(uri).networkDefineXML(xml)
        finally:
            net.create()
    return Redefined.RESTARTED


def update_network(uri: str, name: str, command: Literal["add", "delete"], section: Section,
                   entry_xml: str) -> UpdateOutcome:
    """Add or delete one entry, live (when running) and in the persistent definition."""
    conn = connection(uri)
    try:
        net = conn.networkLookupByName(name)
        flags = libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG
        if net.isActive():
            flags |= libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE
        net.update(_COMMANDS[command], _SECTIONS[section], -1, entry_xml, flags)
    except libvirt.libvirtError as e:
        if is_unsupported(e):
            return UpdateOutcome.UNSUPPORTED
        if code_of(e) == libvirt.VIR_ERR_OPERATION_INVALID:
            return UpdateOutcome.REFUSED
        raise wrap(e, f"{command} {section} entry of network {name} on {uri}") from e
    return UpdateOutcome.DONE


def remove_network(uri: str, name: str) -> bool:
    """Stop and undefine the network; False when there was none."""
    conn = connection(uri)
    try:
        net = conn.networkLookupByName(name)
    except libvirt.libvirtError as e:
        if code_of(e) == libvirt.VIR_ERR_NO_NETWORK:
            return False
        raise wrap(e, f"look up network {name} on {uri}") from e
    with translated(f"remove network {name} on {uri}"):
        if net.isActive():
            net.destroy()
        if net.isPersistent():
            net.undefine()
    return True


def _definition_xml(net: libvirt.virNetwork, live: str) -> str:
    """The persistent definition; drivers that refuse the flag (the test driver) give the
    live XML, which is then the best view of the definition there is."""
    try:
        return str(net.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE))
    except libvirt.libvirtError as e:
        if is_unsupported(e) or code_of(e) == libvirt.VIR_ERR_INVALID_ARG:
            return live
        raise


def _connections(live_xml: str) -> int:
    """libvirt writes `<network connections='N'>` on a running network with guests."""
    try:
        return int(ET.fromstring(live_xml).get("connections", "0"))
    except (ET.ParseError, ValueError):
        return 0
