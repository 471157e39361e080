"""Read-only step contracts: what a host has, as its subsystem worker sees it.

A host's libvirt objects are visible only to the worker that holds its connection (a
`test:///` host lives in that process's memory; a remote host is reached only by its
workers), so the reality checker asks the workers. The three actions change nothing, so a
worker also answers them as plain NATS requests (`kernel.contracts.steps.QUERY_ACTIONS`),
without the log or JetStream:

* `hypervisor.inventory`: every domain, with what the platform wrote into it (the step that
  defined it, its disks' files and its NICs' MACs);
* `storage.inventory`: every libvirt pool with its volumes, and the files in the directories
  the checker names (only for a host whose files are this machine's: `listed` says so);
* `networkelement.inventory`: every libvirt network with its static DHCP host entries.
"""

from uuid import UUID

import msgspec

from kernel.steps.hypervisor import PowerState

__all__ = [
    "DhcpEntry",
    "DirectoryListing",
    "DomainFacts",
    "DomainInventory",
    "InventoryDomains",
    "InventoryNetworks",
    "InventoryStorage",
    "LibvirtNetworkFacts",
    "LibvirtPoolFacts",
    "LibvirtVolumeFacts",
    "NetworkInventory",
    "StorageInventory",
]


class InventoryDomains(msgspec.Struct, frozen=True, kw_only=True, tag="hypervisor.inventory"):
    """List every domain of a host."""

    host_uri: str


class InventoryStorage(msgspec.Struct, frozen=True, kw_only=True, tag="storage.inventory"):
    """List every libvirt pool and volume of a host, and the files of `directories`."""

    host_uri: str
    directories: tuple[str, ...] = ()


class InventoryNetworks(msgspec.Struct, frozen=True, kw_only=True,
                        tag="networkelement.inventory"):
    """List every libvirt network of a host with its DHCP host entries."""

    host_uri: str


# --------------------------------------------------------------------------- results


class DomainFacts(msgspec.Struct, frozen=True, kw_only=True):
    """One domain: `defined_by` is the step that defined it (None: not the platform's)."""

    uuid: UUID
    name: str
    state: PowerState
    persistent: bool
    vcpus: int
    memory_mib: int
    defined_by: UUID | None = None
    disks: tuple[str, ...] = ()
    macs: tuple[str, ...] = ()


class DomainInventory(msgspec.Struct, frozen=True, kw_only=True):
    """Every domain of a host, sorted by name."""

    host_uri: str
    domains: tuple[DomainFacts, ...]


class LibvirtVolumeFacts(msgspec.Struct, frozen=True, kw_only=True):
    """One libvirt volume of a pool."""

    name: str
    path: str
    capacity_bytes: int


class LibvirtPoolFacts(msgspec.Struct, frozen=True, kw_only=True):
    """One libvirt storage pool and its volumes."""

    name: str
    path: str
    active: bool
    volumes: tuple[LibvirtVolumeFacts, ...]


class DirectoryListing(msgspec.Struct, frozen=True, kw_only=True):
    """The plain files and the subdirectories of a directory (`exists` False: no such
    directory)."""

    path: str
    exists: bool
    files: tuple[str, ...] = ()
    subdirectories: tuple[str, ...] = ()


class StorageInventory(msgspec.Struct, frozen=True, kw_only=True):
    """A host's pools, and the files of the asked directories when `listed` (a host whose
    files are this machine's; a remote host's directories are not read)."""

    host_uri: str
    pools: tuple[LibvirtPoolFacts, ...]
    listed: bool = False
    directories: tuple[DirectoryListing, ...] = ()


class DhcpEntry(msgspec.Struct, frozen=True, kw_only=True):
    """A static DHCP host entry: this MAC gets this address."""

    mac: str
    ip: str
    name: str = ""


class LibvirtNetworkFacts(msgspec.Struct, frozen=True, kw_only=True):
    """One libvirt network and its DHCP host entries (as it runs, or as defined when not
    running)."""

    name: str
    active: bool
    dhcp: tuple[DhcpEntry, ...] = ()


class NetworkInventory(msgspec.Struct, frozen=True, kw_only=True):
    """Every libvirt network of a host, sorted by name."""

    host_uri: str
    networks: tuple[LibvirtNetworkFacts, ...]
