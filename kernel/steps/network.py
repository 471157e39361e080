"""Step contracts of `networkguru` (addresses, VLANs, MACs) and `networkelement` (libvirt).

**networkguru decides, the aggregates record.** The guru keeps an index of the platform log
(networks and their addresses, the VLAN and MAC pools of each zone) and answers with a
proposal; the kernel records it in the same transaction as the operation's progress:

| step        | result        | the kernel records                                       |
|-------------|---------------|----------------------------------------------------------|
| `design`    | NetworkDesign | `Network.create(...)` from the normalized design         |
| `implement` | VlanAssigned  | `VlanPool.allocate` if `pooled`; `Network.implemented`   |
| `allocate`  | NicAllocation | `MacPool.allocate`, `Network.allocate_ip`, the `Nic`     |
| `reserve`   | NicProfile    | `Nic.reserve(ip)`                                        |
| `release`   | NicReleased   | `Network.release_ip`, `Nic.release`, `MacPool.release`   |
| `shutdown`  | VlanReleased  | `VlanPool.release` if `vlan` is set; `Network.shutdown`  |

A proposal made from a stale index is refused by the aggregate (`DomainRuleError`), and the
kernel retries the step: the guru catches up with the log before every decision, so the
retry proposes something else. Proposals are deterministic per NIC (IP, MAC) and per network
(VLAN), so a redelivered step proposes the same thing, and concurrent proposals for different
NICs start from different places and rarely collide. A guru answer for something already
recorded (the NIC holds an address) repeats what is recorded.

**networkelement realizes a network on its router host** (a libvirt network named
`libvirt_network_name(network_id)` on `host_uri`): the bridge and gateway address, static
DHCP host and DNS host entries per NIC, and the network's rule set. Each action checks the
host's real state first, so a repeated step is harmless. Compensations: implement ->
shutdown, prepare -> release, apply_rules -> apply_rules with the previous set (or
remove_rules), at a higher revision.
"""

from typing import Annotated, Literal
from uuid import UUID

import msgspec

from aggregates.network_rules import NetworkRule

__all__ = [
    "AllocateNic",
    "ApplyRules",
    "DesignNetwork",
    "ElementImplemented",
    "ElementShutDown",
    "GuestType",
    "ImplementElement",
    "ImplementNetwork",
    "NetworkDesign",
    "NicAllocation",
    "NicEntriesReleased",
    "NicPrepared",
    "NicProfile",
    "NicReleased",
    "PrepareNic",
    "ReleaseNic",
    "ReleaseNicEntries",
    "RemoveRules",
    "ReserveNic",
    "RulesApplied",
    "ShutdownElement",
    "ShutdownNetwork",
    "VlanAssigned",
    "VlanReleased",
    "bridge_name",
    "libvirt_network_name",
]

GuestType = Literal["Isolated", "Shared"]
Mac = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")]
Hostname = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")]
Vlan = Annotated[int, msgspec.Meta(ge=1, le=4094)]
Revision = Annotated[int, msgspec.Meta(ge=0)]

# error codes (StepFailedError.code); none of them is retryable
INVALID_DESIGN = "invalid_design"
UNKNOWN_NETWORK = "unknown_network"
NETWORK_NOT_USABLE = "network_not_usable"
NO_VLAN_POOL = "no_vlan_pool"
NO_FREE_VLAN = "no_free_vlan"
NO_FREE_IP = "no_free_ip"
NO_FREE_MAC = "no_free_mac"
IP_UNAVAILABLE = "ip_unavailable"
IP_TAKEN = "ip_taken"
MAC_TAKEN = "mac_taken"
MAC_UNAVAILABLE = "mac_unavailable"
NOT_ALLOCATED = "not_allocated"
NETWORK_CONFLICT = "network_conflict"


def libvirt_network_name(network_id: UUID) -> str:
    """The libvirt network that realizes a guest network on a host (what a NicSpec names)."""
    return f"ck-{network_id.hex}"


def bridge_name(network_id: UUID) -> str:
    """The Linux bridge of that libvirt network: 15 characters, the kernel's limit."""
    return f"ck{network_id.hex[:13]}"


class _Args(msgspec.Struct, frozen=True, kw_only=True):
    """Common base of the network step arguments."""


class _Result(msgspec.Struct, frozen=True, kw_only=True):
    """Common base of the network step results."""


# --------------------------------------------------------------------------- networkguru


class DesignNetwork(_Args, frozen=True, kw_only=True, tag="networkguru.design"):
    """Validate a network request and normalize it into a design `Network.create` accepts.

    `gateway` defaults to the first host address. `zone_guest_cidr`, when the kernel binds
    the zone's, must contain the CIDR of an Isolated network. A Shared network must not
    overlap another live Shared network of the zone.
    """

    zone_id: UUID
    name: str
    cidr: str
    network_type: GuestType = "Isolated"
    gateway: str | None = None
    reserved_ranges: tuple[tuple[str, str], ...] = ()
    vlan: Vlan | None = None
    zone_guest_cidr: str | None = None


class ImplementNetwork(_Args, frozen=True, kw_only=True, tag="networkguru.implement"):
    """Choose the network's VLAN: from the zone's pool (Isolated) or its fixed one (Shared)."""

    network_id: UUID


class AllocateNic(_Args, frozen=True, kw_only=True, tag="networkguru.allocate"):
    """Propose an address and a MAC for a NIC (the ones asked for, if given and free)."""

    network_id: UUID
    nic_id: UUID
    requested_ip: str | None = None
    requested_mac: Mac | None = None


class ReserveNic(_Args, frozen=True, kw_only=True, tag="networkguru.reserve"):
    """Confirm a NIC's recorded allocation and describe how the guest is wired."""

    network_id: UUID
    nic_id: UUID


class ReleaseNic(_Args, frozen=True, kw_only=True, tag="networkguru.release"):
    """Tell what a NIC gives back: its address, and its MAC when the NIC goes away."""

    network_id: UUID
    nic_id: UUID
    release_mac: bool = False


class ShutdownNetwork(_Args, frozen=True, kw_only=True, tag="networkguru.shutdown"):
    """Tell which VLAN the network gives back to its zone's pool (Isolated only)."""

    network_id: UUID


class NetworkDesign(_Result, frozen=True, kw_only=True):
    """A validated, normalized network: the arguments of `Network.create`."""

    network_id: UUID
    zone_id: UUID
    name: str
    network_type: GuestType
    cidr: str
    gateway: str
    netmask: str
    reserved_ranges: tuple[tuple[str, str], ...]
    vlan: int | None
    usable_ips: int


class VlanAssigned(_Result, frozen=True, kw_only=True):
    """The network's VLAN; `pooled`: record it on the zone's VlanPool (None: untagged)."""

    network_id: UUID
    zone_id: UUID
    vlan: int | None
    pooled: bool


class NicAllocation(_Result, frozen=True, kw_only=True):
    """The proposed (or already recorded) address and MAC of a NIC."""

    network_id: UUID
    nic_id: UUID
    zone_id: UUID
    ip: str
    mac: str
    ip_recorded: bool = False
    mac_recorded: bool = False


class NicProfile(_Result, frozen=True, kw_only=True):
    """How a NIC's guest is wired: address, mask, gateway, VLAN and libvirt network."""

    network_id: UUID
    nic_id: UUID
    ip: str
    mac: str
    cidr: str
    netmask: str
    gateway: str
    vlan: int | None
    broadcast_uri: str  # "vlan://<id>" or "vlan://untagged", as CloudStack names it
    libvirt_network: str


class NicReleased(_Result, frozen=True, kw_only=True):
    """What a NIC gives back; None: nothing (already given back)."""

    network_id: UUID
    nic_id: UUID
    ip: str | None
    mac: str | None


class VlanReleased(_Result, frozen=True, kw_only=True):
    """The VLAN to take back from the zone's pool; None: the network holds none."""

    network_id: UUID
    zone_id: UUID
    vlan: int | None


# --------------------------------------------------------------------------- networkelement


class ImplementElement(_Args, frozen=True, kw_only=True, tag="networkelement.implement"):
    """Define, start and autostart the libvirt network of a guest network on its host.

    The gateway becomes the bridge's address. DHCP hands out only the per-NIC host entries
    (`prepare`), so the guru stays the only one choosing addresses; `dhcp_range` adds a
    dynamic range for guests the platform does not manage.
    """

    network_id: UUID
    host_uri: str
    network_type: GuestType
    cidr: str
    gateway: str
    vlan: Vlan | None = None
    dns_domain: str = ""
    dhcp_range: tuple[str, str] | None = None


class PrepareNic(_Args, frozen=True, kw_only=True, tag="networkelement.prepare"):
    """Add the DHCP host entry (mac -> ip, name) and the DNS host entry (ip -> name)."""

    network_id: UUID
    host_uri: str
    nic_id: UUID
    mac: Mac
    ip: str
    hostname: Hostname


class ReleaseNicEntries(_Args, frozen=True, kw_only=True, tag="networkelement.release"):
    """Remove the NIC's DHCP host entry (by MAC) and its DNS host entry; gone is success."""

    network_id: UUID
    host_uri: str
    nic_id: UUID
    mac: Mac
    ip: str
    hostname: Hostname


class ShutdownElement(_Args, frozen=True, kw_only=True, tag="networkelement.shutdown"):
    """Stop and undefine the libvirt network; gone already is success."""

    network_id: UUID
    host_uri: str


class ApplyRules(_Args, frozen=True, kw_only=True, tag="networkelement.apply_rules"):
    """Realize exactly `rules`, the network's rule set at `revision` (`Network.rules_revision`).

    A revision older than the one realized is skipped, so a late redelivery cannot bring back
    a rule set that has since changed.
    """

    network_id: UUID
    host_uri: str
    revision: Revision
    rules: tuple[NetworkRule, ...] = ()


class RemoveRules(_Args, frozen=True, kw_only=True, tag="networkelement.remove_rules"):
    """Realize the empty rule set at `revision`."""

    network_id: UUID
    host_uri: str
    revision: Revision


class ElementImplemented(_Result, frozen=True, kw_only=True):
    """The libvirt network (and its bridge) that realizes the guest network on the host."""

    network_id: UUID
    host_uri: str
    libvirt_network: str
    bridge: str
    created: bool


class NicPrepared(_Result, frozen=True, kw_only=True):
    """The NIC's entries are in place; `changed` is False when they were already."""

    network_id: UUID
    host_uri: str
    libvirt_network: str
    mac: str
    ip: str
    hostname: str
    changed: bool


class NicEntriesReleased(_Result, frozen=True, kw_only=True):
    """The NIC's entries are gone; `changed` is False when they were already."""

    network_id: UUID
    host_uri: str
    changed: bool


class ElementShutDown(_Result, frozen=True, kw_only=True):
    """The libvirt network is gone; `existed` is False when it was already. Its rules went
    with it (`rule_count` of them); `ruleset` is the nftables script that removes the
    network's table, for the host agent that applied them (harmless when there is none)."""

    network_id: UUID
    host_uri: str
    existed: bool
    rule_count: int = 0
    ruleset: str = ""


class RulesApplied(_Result, frozen=True, kw_only=True):
    """The realized rule set: its revision, size and the rendered nftables ruleset.

    `applied` is False when a newer (or the same) revision was realized already; `revision`
    and `ruleset` then describe what is realized.
    """

    network_id: UUID
    host_uri: str
    revision: int
    applied: bool
    rule_count: int
    ruleset: str
