"""Loading an inventory file: one idempotent command, all or nothing.

A file is self-contained: an entry refers to its parents by name within the same file. Entries
that are already registered must match what was registered (listing them again is how a second
file adds hosts to an existing cluster); they are left alone. Everything new is saved in one
transaction, under an idempotency key derived from the file's content.
"""

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate

from aggregates.cluster import Cluster
from aggregates.errors import DomainRuleError, ValidationError
from aggregates.host import Host
from aggregates.image_store import ImageStore, ImageStoreProtocol
from aggregates.offering import DiskOffering, ServiceOffering
from aggregates.pod import Pod
from aggregates.public_address_pool import PublicAddressPool, check_range
from aggregates.storage_pool import PrimaryStoragePool, StorageScope
from aggregates.template import Template, TemplateFormat
from aggregates.zone import NetworkType, Zone
from kernel.commands import Command, CommandOutcome, CommandService
from kernel.inventory.spec import (
    ClusterSpec,
    DiskOfferingSpec,
    HostSpec,
    ImageStoreSpec,
    InventoryFile,
    Located,
    PodSpec,
    PublicRangeSpec,
    ServiceOfferingSpec,
    StoragePoolSpec,
    TemplateSpec,
    ZoneSpec,
    parse_inventory,
    sections,
)
from kernel.store.application import KernelApplication

GIB = 1024**3
# Fields stamped on every event that say nothing about what was registered.
_NOT_COMPARED = frozenset({
    "originator_id", "originator_version", "timestamp", "originator_topic",
    "actor", "correlation_id", "causation_id",
})


class LoadInventory(Command, frozen=True, kw_only=True, tag="inventory.load"):
    """Register everything an inventory file lists that is not registered yet."""

    source: str
    inventory: InventoryFile


class InventoryResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a load registered, and what it found already registered, per section."""

    registered: dict[str, list[str]]
    unchanged: dict[str, list[str]]

    def summary(self) -> str:
        """A one-line account of the load."""
        new = sum(len(v) for v in self.registered.values())
        same = sum(len(v) for v in self.unchanged.values())
        parts = [f"{len(v)} {k}" for k, v in self.registered.items() if v]
        detail = f" ({', '.join(parts)})" if parts else ""
        return f"registered {new} entities{detail}; {same} already registered and unchanged"


class _Resolver:
    """Builds the aggregates of one file, resolving names to ids within it."""

    def __init__(self, app: KernelApplication, inventory: InventoryFile, located: Located):
        self.app, self.inventory, self.located = app, inventory, located
        self.ids: dict[tuple[str, str], UUID] = {}
        self.parents: dict[tuple[str, str], dict[str, UUID]] = {}
        self.new: list[Aggregate] = []
        self.pools: dict[UUID, PublicAddressPool] = {}  # by zone id
        self.result = InventoryResult(
            registered={s: [] for s in InventoryFile.__struct_fields__},
            unchanged={s: [] for s in InventoryFile.__struct_fields__},
        )

    def run(self) -> tuple[list[Aggregate], InventoryResult]:
        builders: dict[str, Callable[[Any], Aggregate]] = {
            "zones": self._zone, "pods": self._pod, "clusters": self._cluster,
            "hosts": self._host, "storage_pools": self._pool, "image_stores": self._store,
            "templates": self._template, "service_offerings": self._offering,
            "disk_offerings": self._disk_offering,
        }
        for section, index, spec in sections(self.inventory):
            self.section, self.index, self.spec = section, index, spec
            if isinstance(spec, PublicRangeSpec):
                self._public_range(spec)
                continue
            try:
                candidate = builders[section](spec)
            except ValidationError as e:
                raise self._error(str(e)) from None
            self.ids[(section, spec.name)] = candidate.id
            self._keep_or_compare(candidate)
        return self.new, self.result

    def _keep_or_compare(self, candidate: Aggregate) -> None:
        created = candidate.pending_events[0]
        stored = list(self.app.events.get(candidate.id, lte=1))
        if not stored:
            self.new.append(candidate)
            self.result.registered[self.section].append(self.spec.name)
            return
        before, after = vars(stored[0]), vars(created)
        for field, value in after.items():
            if field not in _NOT_COMPARED and before.get(field) != value:
                raise self._error(
                    f"{self.spec.name!r} is already registered with {field}="
                    f"{_show(before.get(field))}, the file gives {_show(value)}; loading an "
                    "inventory never changes registered entities")
        self.result.unchanged[self.section].append(self.spec.name)

    def _ref(self, section: str, field: str, name: str) -> UUID:
        try:
            return self.ids[(section, name)]
        except KeyError:
            raise self._error(
                f"{field} {name!r} is not among this file's {section} (list it above; "
                "entries already registered are left unchanged)", field) from None

    def _error(self, message: str, field: str = "") -> ValidationError:
        if not field:
            field = next((f for f in self.spec.__struct_fields__ if f in message), "")
        return self.located.error(self.section, self.index, field, message)

    def _zone(self, s: ZoneSpec) -> Aggregate:
        return Zone.create(name=s.name, network_type=NetworkType(s.network_type),
                           dns_servers=s.dns, internal_dns_servers=s.internal_dns,
                           network_domain=s.network_domain, guest_cidr=s.guest_cidr or None,
                           local_storage_enabled=s.local_storage)

    def _pod(self, s: PodSpec) -> Aggregate:
        zone_id = self._ref("zones", "zone", s.zone)
        self.parents[("pods", s.name)] = {"zone_id": zone_id}
        return Pod.create(name=s.name, zone_id=zone_id, gateway=s.gateway, cidr=s.cidr,
                          start_ip=s.start_ip, end_ip=s.end_ip)

    def _cluster(self, s: ClusterSpec) -> Aggregate:
        pod_id = self._ref("pods", "pod", s.pod)
        zone_id = self.parents[("pods", s.pod)]["zone_id"]
        self.parents[("clusters", s.name)] = {"zone_id": zone_id, "pod_id": pod_id}
        return Cluster.add(name=s.name, zone_id=zone_id, pod_id=pod_id, hypervisor=s.hypervisor,
                           cpu_overprovisioning=s.cpu_overprovisioning,
                           memory_overprovisioning=s.memory_overprovisioning)

    def _host(self, s: HostSpec) -> Aggregate:
        cluster_id = self._ref("clusters", "cluster", s.cluster)
        parents = self.parents[("clusters", s.cluster)]
        cluster = next(c for c in self.inventory.clusters if c.name == s.cluster)
        # Placement uses the cluster's over-provisioning factors, as CloudStack does.
        return Host.register(name=s.name, uri=s.uri, zone_id=parents["zone_id"],
                             pod_id=parents["pod_id"], cluster_id=cluster_id,
                             cpu_cores=s.cpu_cores, cpu_mhz=s.cpu_mhz, memory_mib=s.memory_mib,
                             cpu_overprovisioning=cluster.cpu_overprovisioning,
                             memory_overprovisioning=cluster.memory_overprovisioning,
                             tags=s.tags)

    def _pool(self, s: StoragePoolSpec) -> Aggregate:
        if bool(s.cluster) == bool(s.zone):
            raise self._error("give either cluster (cluster-wide) or zone (zone-wide)",
                              "cluster")
        pool = dict(name=s.name, pool_name=s.pool_name or s.name, uri=s.uri,
                    capacity_bytes=s.capacity_gib * GIB,
                    storage_overprovisioning=s.overprovisioning, tags=s.tags)
        if s.zone:
            return PrimaryStoragePool.create(zone_id=self._ref("zones", "zone", s.zone),
                                             scope=StorageScope.ZONE, **pool)  # type: ignore[arg-type]
        cluster_id = self._ref("clusters", "cluster", s.cluster)
        parents = self.parents[("clusters", s.cluster)]
        return PrimaryStoragePool.create(zone_id=parents["zone_id"], scope=StorageScope.CLUSTER,
                                         pod_id=parents["pod_id"], cluster_id=cluster_id,
                                         **pool)  # type: ignore[arg-type]

    def _store(self, s: ImageStoreSpec) -> Aggregate:
        return ImageStore.add(name=s.name, zone_id=self._ref("zones", "zone", s.zone), url=s.url,
                              protocol=ImageStoreProtocol(s.protocol))

    def _template(self, s: TemplateSpec) -> Aggregate:
        return Template.register(name=s.name, zone_id=self._ref("zones", "zone", s.zone),
                                 url=s.url, format=TemplateFormat(s.format), os_type=s.os_type,
                                 checksum=s.checksum or None)

    def _offering(self, s: ServiceOfferingSpec) -> Aggregate:
        return ServiceOffering.create(name=s.name, cpu_cores=s.cpu_cores, cpu_mhz=s.cpu_mhz,
                                      memory_mib=s.memory_mib, host_tags=s.host_tags,
                                      storage_tags=s.storage_tags, ha_enabled=s.ha)

    def _disk_offering(self, s: DiskOfferingSpec) -> Aggregate:
        return DiskOffering.create(name=s.name, size_bytes=s.size_gib * GIB or None,
                                   customizable=s.customizable, tags=s.tags)


    def _public_range(self, s: PublicRangeSpec) -> None:
        """A range goes into its zone's pool (created with the zone's first range); a range
        of that name registered already must be the same range."""
        zone_id = self._ref("zones", "zone", s.zone)
        pool = self.pools.get(zone_id)
        if pool is None:
            found: PublicAddressPool
            try:
                found = self.app.repository.get(PublicAddressPool.create_id(zone_id))
            except AggregateNotFoundError:
                found = PublicAddressPool.create(zone_id=zone_id)
            pool = self.pools[zone_id] = found
        fields = dict(name=s.name, cidr=s.cidr, gateway=s.gateway, first=s.first, last=s.last)
        try:
            registered = pool.range_named(s.name)
            if registered is not None:
                wanted = check_range(pool.label, **fields)
                if registered != wanted:
                    raise ValidationError(
                        f"{s.name!r} is already registered as {registered.cidr} "
                        f"{registered.first}-{registered.last} via {registered.gateway}, the "
                        f"file gives {wanted.cidr} {wanted.first}-{wanted.last} via "
                        f"{wanted.gateway}; loading an inventory never changes registered "
                        "entities")
                self.result.unchanged[self.section].append(s.name)
                return
            pool.add_range(**fields)
        except (ValidationError, DomainRuleError) as e:
            raise self._error(str(e), e.field or "") from None
        if all(pool is not other for other in self.new):
            self.new.append(pool)
        self.result.registered[self.section].append(s.name)


def _show(value: object) -> str:
    return repr(getattr(value, "value", value))


def handle_load_inventory(
    app: KernelApplication, command: LoadInventory
) -> tuple[Sequence[Aggregate], InventoryResult]:
    """Command handler: build every entry, keep the new ones."""
    located = Located(command.source, {})
    return _Resolver(app, command.inventory, located).run()


def load_inventory_file(
    service: CommandService, path: Path, *, actor: str = "system"
) -> tuple[CommandOutcome, InventoryResult]:
    """Parse, validate and load a file; a file loaded before returns its first result."""
    inventory, located = parse_inventory(path)
    command = LoadInventory(source=str(path), inventory=inventory)
    # Validate with line numbers before the command runs (the handler re-checks against
    # the store inside the command, where a mismatch also names the entry).
    _Resolver(service.app, inventory, located).run()
    key = "inventory:" + hashlib.sha256(msgspec.json.encode(command)).hexdigest()
    outcome = service.execute(command, idempotency_key=key, actor=actor)
    return outcome, outcome.decode(InventoryResult)
