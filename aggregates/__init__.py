"""Event-sourced platform entities: every zone, host, VM, volume and network is an aggregate."""

from aggregates.backup import Backup
from aggregates.base import PlatformAggregate
from aggregates.cluster import Cluster
from aggregates.console_ticket import ConsoleTicket
from aggregates.entity_queue import EntityQueue
from aggregates.host import Host
from aggregates.image_store import ImageStore
from aggregates.mac_pool import MacPool
from aggregates.network import Network
from aggregates.nic import Nic
from aggregates.offering import DiskOffering, ServiceOffering
from aggregates.operation import Operation
from aggregates.pod import Pod
from aggregates.public_address import PublicAddress
from aggregates.public_address_pool import PublicAddressPool
from aggregates.service import ServiceRegistration
from aggregates.snapshot import Snapshot
from aggregates.storage_pool import PrimaryStoragePool
from aggregates.template import Template
from aggregates.unmanaged import UnmanagedDomain
from aggregates.vlan_pool import VlanPool
from aggregates.vm import VirtualMachine
from aggregates.volume import Volume
from aggregates.zone import Zone

ALL_AGGREGATES: tuple[type[PlatformAggregate], ...] = (
    Zone,
    Pod,
    Cluster,
    Host,
    PrimaryStoragePool,
    ImageStore,
    Template,
    ServiceOffering,
    DiskOffering,
    Network,
    Nic,
    VirtualMachine,
    Volume,
    Snapshot,
    Backup,
    Operation,
    EntityQueue,
    VlanPool,
    MacPool,
    UnmanagedDomain,
    ServiceRegistration,
    ConsoleTicket,
    PublicAddressPool,
    PublicAddress,
)

__all__ = [
    "ALL_AGGREGATES",
    "Backup",
    "Cluster",
    "ConsoleTicket",
    "DiskOffering",
    "EntityQueue",
    "Host",
    "ImageStore",
    "MacPool",
    "Network",
    "Nic",
    "Operation",
    "PlatformAggregate",
    "Pod",
    "PrimaryStoragePool",
    "PublicAddress",
    "PublicAddressPool",
    "ServiceOffering",
    "ServiceRegistration",
    "Snapshot",
    "Template",
    "UnmanagedDomain",
    "VirtualMachine",
    "VlanPool",
    "Volume",
    "Zone",
]
