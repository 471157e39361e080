"""The reality check, pure: the model's view and each host's libvirt objects in, every
difference out, each named (PROOF.md invariant 3; `cloudkernel audit reality`).

The views are plain values (`kernel.reality.fleet` reads them from the aggregates; unit tests
write them by hand), and the host objects are what the workers' `inventory` actions answer
(`kernel.steps.inventory`). Nothing here reads the store or a host.

It checks at quiescence: an entity an operation holds is in flight, and what it has on the
hosts may differ from the model until the operation ends. Such entities are skipped (their
domains, files and entries count as theirs) and reported as skipped, never as differences.

What belongs to the platform on a host, and so is checked: every domain; the libvirt pools
named like a pool of the model, their volumes, the files of their directories and of their
snapshot directories; the libvirt networks named `ck-<id>` (`libvirt_network_name`) and
their DHCP host entries; the files of the image stores, and the backup directories (named by
a backup's id) in the directories backups were made in. Anything else (libvirt's `default`
network, another pool, a directory of a backup target not named as a backup) is not the
platform's and is left alone.
"""

from __future__ import annotations

import posixpath
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from uuid import UUID

from aggregates.vm import PowerState
from kernel.reality.reconciler import power_of
from kernel.steps.inventory import DomainFacts, DomainInventory, NetworkInventory, StorageInventory

__all__ = [
    "BackupView",
    "Difference",
    "HostObjects",
    "HostView",
    "Model",
    "NetworkView",
    "NicView",
    "PoolView",
    "RealityReport",
    "SnapshotView",
    "TemplateView",
    "UnmanagedView",
    "VmView",
    "VolumeView",
    "compare",
]

NETWORK_PREFIX = "ck-"
# the states whose file exists on its pool (Destroy: deleted only by its expunge)
_WITH_FILE = frozenset({"Ready", "Destroy"})
_GONE_NETWORK = frozenset({"Shutdown", "Destroyed"})
_STEADY_VM = frozenset({"Running", "Stopped", "Destroyed", "Expunged", "Error", "Allocated"})


@dataclass(frozen=True)
class HostView:
    """A host and its claims: claim id -> (the VM or unmanaged domain, cores, MiB)."""

    id: UUID
    name: str
    uri: str
    claims: Mapping[UUID, tuple[UUID, int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class VmView:
    """A VM: where the model runs it (`host_id`) or last ran it (`last_host_id`), its NICs
    and the volumes attached to it."""

    id: UUID
    name: str
    state: str
    host_id: UUID | None = None
    last_host_id: UUID | None = None
    nic_ids: tuple[UUID, ...] = ()
    volume_ids: tuple[UUID, ...] = ()


@dataclass(frozen=True)
class NicView:
    """A NIC: its MAC and address on its network (`released`: it holds neither)."""

    id: UUID
    vm_id: UUID
    network_id: UUID
    mac: str
    ip: str | None
    released: bool = False


@dataclass(frozen=True)
class NetworkView:
    """A guest network and the hosts its libvirt network was made on."""

    id: UUID
    name: str
    state: str
    element_hosts: tuple[UUID, ...] = ()


@dataclass(frozen=True)
class VolumeView:
    """A volume and its file (None until it is created)."""

    id: UUID
    name: str
    state: str
    path: str | None = None


@dataclass(frozen=True)
class PoolView:
    """A primary storage pool: its libvirt name, its directory and its snapshots' directory,
    the hosts that reach it."""

    id: UUID
    name: str
    pool_name: str
    path: str
    snapshot_path: str
    host_ids: tuple[UUID, ...] = ()


@dataclass(frozen=True)
class SnapshotView:
    """A volume snapshot and its file on primary storage."""

    id: UUID
    state: str
    path: str | None = None


@dataclass(frozen=True)
class TemplateView:
    """A template and its file in an image store (`directory` None: not downloaded)."""

    id: UUID
    name: str
    state: str
    file_name: str
    directory: str | None = None


@dataclass(frozen=True)
class BackupView:
    """A VM backup and its directory on its backup target (None until it is made)."""

    id: UUID
    name: str
    state: str
    path: str | None = None


@dataclass(frozen=True)
class UnmanagedView:
    """A domain the reconciler found and took as an entity (adopted or quarantined)."""

    id: UUID
    host_id: UUID
    domain_uuid: UUID
    name: str
    adopted: bool


@dataclass(frozen=True)
class Model:
    """The model's view of what should be on the hosts; `busy` are the entities an
    operation holds."""

    hosts: tuple[HostView, ...] = ()
    vms: tuple[VmView, ...] = ()
    nics: tuple[NicView, ...] = ()
    networks: tuple[NetworkView, ...] = ()
    volumes: tuple[VolumeView, ...] = ()
    pools: tuple[PoolView, ...] = ()
    snapshots: tuple[SnapshotView, ...] = ()
    templates: tuple[TemplateView, ...] = ()
    image_store_paths: tuple[str, ...] = ()
    backups: tuple[BackupView, ...] = ()
    unmanaged: tuple[UnmanagedView, ...] = ()
    busy: frozenset[UUID] = frozenset()

    @property
    def backup_targets(self) -> tuple[str, ...]:
        """The directories the backups were made in (each backup is a directory there)."""
        return tuple(dict.fromkeys(posixpath.dirname(b.path.rstrip("/"))
                                   for b in self.backups if b.path))

    def directories_of(self, host_id: UUID, *, shared: bool = False) -> tuple[str, ...]:
        """The directories whose content belongs to the platform on this host; with
        `shared`, the image stores and backup targets too (listed once, from one host)."""
        found: list[str] = []
        for pool in self.pools:
            if host_id in pool.host_ids:
                found += [pool.path, pool.snapshot_path]
        if shared:
            found += [*self.image_store_paths, *self.backup_targets]
        return tuple(dict.fromkeys(found))


@dataclass(frozen=True)
class HostObjects:
    """What a host has, as its workers answered; None where a worker could not tell, with
    the reason in `errors`."""

    host_id: UUID
    domains: DomainInventory | None = None
    storage: StorageInventory | None = None
    networks: NetworkInventory | None = None
    errors: tuple[str, ...] = ()


@dataclass(frozen=True, order=True)
class Difference:
    """One thing on a host that differs from the model, named."""

    kind: str
    host: str
    subject: str
    detail: str

    def __str__(self) -> str:
        return f"{self.host}: {self.kind}: {self.subject}: {self.detail}"

    def as_json(self) -> dict[str, str]:
        """The difference as a JSON object."""
        return {"kind": self.kind, "host": self.host, "subject": self.subject,
                "detail": self.detail}


@dataclass(frozen=True)
class RealityReport:
    """The differences found, the hosts compared, the entities skipped as in flight, and
    whether the log stood still while the hosts were asked (`settled`)."""

    differences: tuple[Difference, ...]
    hosts: tuple[str, ...]
    skipped: tuple[str, ...] = ()
    settled: bool = True

    @property
    def clean(self) -> bool:
        """Whether reality matches the model."""
        return not self.differences

    def as_json(self) -> dict[str, object]:
        """The report as a JSON object."""
        return {"clean": self.clean, "settled": self.settled, "hosts": list(self.hosts),
                "skipped": list(self.skipped),
                "differences": [d.as_json() for d in self.differences]}


def compare(model: Model, objects: Iterable[HostObjects]) -> RealityReport:
    """Every difference between the model and the hosts' objects (of the hosts given)."""
    return _Comparison(model, list(objects)).run()


class _Comparison:
    """One comparison: indexes of the model, and the differences found so far."""

    def __init__(self, model: Model, objects: list[HostObjects]) -> None:
        self.model, self.objects = model, objects
        self.hosts = {h.id: h for h in model.hosts}
        self.vms = {v.id: v for v in model.vms}
        self.nics_by_mac = {n.mac.lower(): n for n in model.nics if not n.released}
        self.nics = {n.id: n for n in model.nics}
        self.networks = {n.id: n for n in model.networks}
        self.unmanaged = {(u.host_id, u.domain_uuid): u for u in model.unmanaged}
        self.found: set[Difference] = set()
        self.skipped: set[str] = set()

    def run(self) -> RealityReport:
        listed = [o for o in self.objects if o.host_id in self.hosts]
        for objects in listed:
            host = self.hosts[objects.host_id]
            for error in objects.errors:
                self.add("host_unreachable", host, host.uri, error)
            if objects.domains is not None:
                self.domains(host, objects.domains.domains)
                self.claims(host, objects.domains.domains)
            if objects.networks is not None:
                self.networks_on(host, objects.networks)
        self.running_vms([o for o in listed if o.domains is not None])
        self.storage([o for o in listed if o.storage is not None])
        self.shared_storage([o for o in listed if o.storage is not None])
        return RealityReport(differences=tuple(sorted(self.found)),
                             hosts=tuple(self.hosts[o.host_id].name for o in listed),
                             skipped=tuple(sorted(self.skipped)))

    def add(self, kind: str, host: HostView | str, subject: str, detail: str) -> None:
        name = host if isinstance(host, str) else host.name
        self.found.add(Difference(kind, name, subject, detail))

    def busy(self, entity_id: UUID, label: str) -> bool:
        """Whether an operation holds the entity (then it is skipped, and said so)."""
        if entity_id in self.model.busy:
            self.skipped.add(f"{label} (an operation holds it)")
            return True
        return False

    def host_name(self, host_id: UUID | None) -> str:
        host = self.hosts.get(host_id) if host_id else None
        return host.name if host else str(host_id)

    # ------------------------------------------------------------------ domains

    def domains(self, host: HostView, domains: tuple[DomainFacts, ...]) -> None:
        for dom in domains:
            subject = f"domain {dom.name} ({dom.uuid}, {dom.state})"
            vm = self.vms.get(dom.uuid)
            if vm is None:
                if (host.id, dom.uuid) not in self.unmanaged:
                    self.add("domain_without_vm", host, subject, "no VM or unmanaged domain "
                             "of the platform is this domain")
                continue
            if self.busy(vm.id, f"vm {vm.name}") or vm.state not in _STEADY_VM:
                continue
            if vm.state != "Running":
                self.add("domain_state", host, subject,
                         f"vm {vm.name} is {vm.state}: it should have no domain")
            elif vm.host_id != host.id:
                self.add("domain_on_other_host", host, subject,
                         f"vm {vm.name} is Running on {self.host_name(vm.host_id)}")
            elif power_of(dom.state) is not PowerState.ON:
                self.add("domain_state", host, subject, f"vm {vm.name} is Running")
            else:
                self.devices(host, subject, vm, dom)

    def devices(self, host: HostView, subject: str, vm: VmView, dom: DomainFacts) -> None:
        """A Running VM's domain has its volumes' files and its NICs' MACs, and no other
        volume's file or NIC (a disk that is no volume, a config drive, is not judged)."""
        attached = {v.path for v in self.model.volumes if v.id in vm.volume_ids and v.path}
        others = {v.path for v in self.model.volumes
                  if v.path and v.id not in vm.volume_ids and v.state != "Expunged"}
        macs = {self.nics[n].mac.lower() for n in vm.nic_ids
                if n in self.nics and not self.nics[n].released}
        wrong = sorted(attached - set(dom.disks)) + sorted(set(dom.disks) & others)
        wrong_macs = sorted(macs ^ set(dom.macs))
        if wrong or wrong_macs:
            self.add("domain_devices", host, subject,
                     f"vm {vm.name}: disks {sorted(attached)} and MACs {sorted(macs)}; the "
                     f"domain has disks {list(dom.disks)} and MACs {list(dom.macs)}")

    def running_vms(self, listed: list[HostObjects]) -> None:
        """Each Running VM has exactly one domain, on its host."""
        where: dict[UUID, list[UUID]] = defaultdict(list)
        for objects in listed:
            assert objects.domains is not None
            for dom in objects.domains.domains:
                where[dom.uuid].append(objects.host_id)
        seen_hosts = {o.host_id for o in listed}
        for vm in self.vms.values():
            if vm.state != "Running" or vm.host_id not in seen_hosts \
                    or self.busy(vm.id, f"vm {vm.name}"):
                continue
            host = self.hosts[vm.host_id]
            places = where.get(vm.id, [])
            if vm.host_id not in places:
                self.add("vm_without_domain", host, f"vm {vm.name} ({vm.id})",
                         "Running here, and the host has no domain of it")
            if len(places) > 1:
                self.add("domain_defined_twice", host, f"vm {vm.name} ({vm.id})",
                         "domains on " + ", ".join(sorted(self.host_name(h) for h in places)))

    def claims(self, host: HostView, domains: tuple[DomainFacts, ...]) -> None:
        """The host's claims are exactly the resources of what runs there and holds one."""
        if self.busy(host.id, f"host {host.name}"):
            return
        running = {d.uuid: d for d in domains if power_of(d.state) is PowerState.ON}
        claimed: set[UUID] = set()
        for holder, cpu, memory in host.claims.values():
            vm = self.vms.get(holder)
            unmanaged = next((u for u in self.model.unmanaged if u.id == holder), None)
            domain_uuid = unmanaged.domain_uuid if unmanaged else holder
            label = f"vm {vm.name}" if vm else (f"unmanaged domain {unmanaged.name}"
                                                if unmanaged else f"entity {holder}")
            claimed.add(domain_uuid)
            if vm is not None and self.busy(vm.id, label):
                continue
            dom = running.get(domain_uuid)
            if dom is None:
                self.add("claim_mismatch", host, label,
                         f"claims {cpu} cores {memory} MiB here, and no domain of it runs here")
            elif (dom.vcpus, dom.memory_mib) != (cpu, memory):
                self.add("claim_mismatch", host, label,
                         f"claims {cpu} cores {memory} MiB, its domain runs with {dom.vcpus} "
                         f"vcpus {dom.memory_mib} MiB")
        for uuid, dom in running.items():
            vm = self.vms.get(uuid)
            if uuid in claimed or vm is None or vm.state != "Running" or vm.host_id != host.id \
                    or self.busy(vm.id, f"vm {vm.name}"):
                continue
            self.add("claim_mismatch", host, f"vm {vm.name}",
                     f"runs here with {dom.vcpus} vcpus {dom.memory_mib} MiB and no claim")

    # ------------------------------------------------------------------ networks

    def networks_on(self, host: HostView, inventory: NetworkInventory) -> None:
        present: dict[UUID, set[str]] = {}
        for net in inventory.networks:
            if not net.name.startswith(NETWORK_PREFIX):
                continue  # not the platform's (libvirt's `default`, an operator's own)
            network = self.networks.get(_network_id(net.name) or UUID(int=0))
            subject = f"libvirt network {net.name}"
            if network is None or network.state in _GONE_NETWORK \
                    or host.id not in network.element_hosts:
                if network is None or not self.busy(network.id, f"network {network.name}"):
                    why = ("no Network of the platform" if network is None else
                           f"network {network.name} is {network.state}" if network.state in
                           _GONE_NETWORK else f"network {network.name} was not made here")
                    self.add("network_without_entity", host, subject, why)
                continue
            if self.busy(network.id, f"network {network.name}"):
                continue
            if not net.active:
                self.add("network_inactive", host, subject,
                         f"network {network.name} is {network.state}, and its libvirt "
                         "network does not run here")
            present[network.id] = set()
            for entry in net.dhcp:
                present[network.id].add(entry.mac.lower())
                self.dhcp_entry(host, network, entry.mac.lower(), entry.ip)
        for network in self.networks.values():
            if host.id in network.element_hosts and network.state not in _GONE_NETWORK \
                    and network.id not in present \
                    and not self.busy(network.id, f"network {network.name}"):
                self.add("network_missing", host, f"network {network.name} ({network.id})",
                         "made here as the model says, and the host has no libvirt network "
                         "of it")
        self.missing_entries(host, present)

    def dhcp_entry(self, host: HostView, network: NetworkView, mac: str, ip: str) -> None:
        subject = f"DHCP entry {mac} -> {ip} in network {network.name}"
        nic = self.nics_by_mac.get(mac)
        if nic is None or nic.network_id != network.id:
            self.add("dhcp_without_nic", host, subject, "no NIC of the network has this MAC")
            return
        vm = self.vms.get(nic.vm_id)
        if vm is not None and self.busy(vm.id, f"vm {vm.name}"):
            return
        if nic.ip != ip:
            self.add("dhcp_mismatch", host, subject, f"the NIC's address is {nic.ip}")
            return
        placed = (vm.host_id or vm.last_host_id) if vm else None
        if placed != host.id:
            self.add("dhcp_mismatch", host, subject,
                     f"its vm {vm.name if vm else nic.vm_id} is on {self.host_name(placed)}")

    def missing_entries(self, host: HostView, present: dict[UUID, set[str]]) -> None:
        """A Running VM's NICs have their entries on its host."""
        for vm in self.vms.values():
            if vm.state != "Running" or vm.host_id != host.id \
                    or self.busy(vm.id, f"vm {vm.name}"):
                continue
            for nic_id in vm.nic_ids:
                nic = self.nics.get(nic_id)
                if nic is None or nic.released or nic.ip is None \
                        or nic.network_id not in present:
                    continue  # a missing network is named already
                if nic.mac.lower() not in present[nic.network_id]:
                    network = self.networks[nic.network_id]
                    self.add("dhcp_missing", host, f"NIC {nic.mac} ({nic.ip}) of vm {vm.name}",
                             f"no DHCP entry in network {network.name}")

    # ------------------------------------------------------------------ storage

    def storage(self, listed: list[HostObjects]) -> None:
        """Libvirt volumes of the platform's pools and files of their directories belong to
        a Volume (or, in a snapshot directory, to a Snapshot); a Ready volume has its file."""
        volumes = [v for v in self.model.volumes if v.state != "Expunged" and v.path]
        paths = {v.path: v for v in volumes if v.path}
        # an operation's volume: its file may be there before the model records its path,
        # named for the volume (`<id>.<format>`), or still at its old path
        busy_paths = {v.path for v in volumes if v.path and v.id in self.model.busy}
        busy_ids = {v.id for v in self.model.volumes if v.id in self.model.busy}
        for v in self.model.volumes:
            if v.id in self.model.busy:
                self.skipped.add(f"volume {v.name} (an operation holds it)")

        def in_flight(path: str) -> bool:
            name = posixpath.basename(path)
            return path in busy_paths or _uuid(name.split(".", 1)[0]) in busy_ids
        snapshots = {s.id for s in self.model.snapshots if s.state != "Destroyed"}
        snapshot_paths = {s.path for s in self.model.snapshots
                          if s.state != "Destroyed" and s.path}
        pool_names = {p.pool_name for p in self.model.pools}
        snapshot_dirs = {p.snapshot_path for p in self.model.pools}
        pool_dirs = {p.path for p in self.model.pools} | snapshot_dirs
        directories: dict[str, tuple[HostView, set[str]]] = {}
        # libvirt volumes no Volume is, by path: a shared pool's hosts each list its files
        strays: dict[str, list[tuple[HostView, str]]] = {}
        for objects in listed:
            host = self.hosts[objects.host_id]
            assert objects.storage is not None
            for pool in objects.storage.pools:
                if pool.name not in pool_names:
                    continue
                for vol in pool.volumes:
                    if vol.path not in paths and not in_flight(vol.path):
                        strays.setdefault(vol.path, []).append(
                            (host, f"libvirt volume {pool.name}/{vol.name} ({vol.path})"))
            for listing in objects.storage.directories:
                if listing.exists and listing.path in pool_dirs \
                        and listing.path not in directories:
                    directories[listing.path] = (host, set(listing.files))
        for directory, (host, files) in sorted(directories.items()):
            for name in sorted(files):
                path = posixpath.join(directory, name)
                if directory in snapshot_dirs:
                    stem = name.split(".", 1)[0]
                    if path in snapshot_paths or _uuid(stem) in snapshots:
                        continue
                    self.add("file_without_entity", host, path,
                             "no Snapshot of the platform is this file")
                elif path not in paths and not in_flight(path):
                    # one leak, one difference: the file, with the hosts that list it
                    hosts = sorted(h.name for h, _s in strays.pop(path, []))
                    self.add("file_without_entity", host, path,
                             "no Volume of the platform is this file" + (
                                 f" (a libvirt volume on {', '.join(hosts)})" if hosts else ""))
        for _path, held in sorted(strays.items()):  # no file of a listed directory
            for host, subject in held:
                self.add("volume_without_entity", host, subject,
                         "no Volume of the platform is this volume")
        for v in volumes:
            if v.state not in _WITH_FILE or v.id in self.model.busy or not v.path:
                continue
            directory, name = posixpath.split(v.path)
            if directory in directories and name not in directories[directory][1]:
                self.add("volume_file_missing", directories[directory][0],
                         f"volume {v.name} ({v.id})", f"{v.state}, and {v.path} does not exist")

    def shared_storage(self, listed: list[HostObjects]) -> None:
        """Files of the image stores belong to a live Template, and the backups in a backup
        target to a live Backup; a Ready template and a made backup are there."""
        listings = {listing.path: (self.hosts[o.host_id], listing) for o in listed
                    if o.storage is not None for listing in o.storage.directories
                    if listing.exists}
        busy = self.model.busy
        for template in self.model.templates:
            if template.id in busy:
                self.skipped.add(f"template {template.name} (an operation holds it)")
        for store in self.model.image_store_paths:
            if store not in listings:
                continue
            host, listing = listings[store]
            live = {t.file_name for t in self.model.templates
                    if t.directory == store and t.state != "Removed"}
            for name in listing.files:
                if name not in live and _uuid(name.split(".", 1)[0]) not in busy:
                    self.add("file_without_entity", host, posixpath.join(store, name),
                             "no Template of the platform is this file")
            for template in self.model.templates:
                if template.directory == store and template.state == "Ready" \
                        and template.id not in busy and template.file_name not in listing.files:
                    self.add("template_file_missing", host, f"template {template.name} "
                             f"({template.id})", f"Ready, and {store} has no "
                             f"{template.file_name}")
        backups = {b.id: b for b in self.model.backups}
        for target in self.model.backup_targets:
            if target not in listings:
                continue
            host, listing = listings[target]
            for name in listing.subdirectories:
                backup = backups.get(_uuid(name) or UUID(int=0))
                if _uuid(name) is None or (backup is not None and (
                        backup.state != "Removed" or backup.id in busy)):
                    continue  # not named as a backup (not the platform's), or a live one
                self.add("file_without_entity", host, posixpath.join(target, name),
                         "no Backup of the platform is this directory")
            for backup in backups.values():
                if backup.path and posixpath.dirname(backup.path.rstrip("/")) == target \
                        and backup.state == "BackedUp" and backup.id not in busy \
                        and posixpath.basename(backup.path.rstrip("/")) \
                        not in listing.subdirectories:
                    self.add("backup_missing", host, f"backup {backup.name} ({backup.id})",
                             f"BackedUp, and {backup.path} does not exist")


def _network_id(name: str) -> UUID | None:
    """The guest network a `ck-<hex>` libvirt network realizes, or None."""
    return _uuid(name[len(NETWORK_PREFIX):])


def _uuid(text: str) -> UUID | None:
    try:
        return UUID(text)
    except ValueError:
        return None
