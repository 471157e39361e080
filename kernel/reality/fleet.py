"""The model's side of the reality check: the aggregates as the plain views that
`kernel.reality.differences.compare` takes, read from the log as it is now."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from aggregates.backup import Backup
from aggregates.entity_queue import EntityQueue
from aggregates.host import Host
from aggregates.image_store import ImageStore
from aggregates.network import Network
from aggregates.nic import Nic, NicState
from aggregates.snapshot import Snapshot
from aggregates.storage_pool import PrimaryStoragePool
from aggregates.template import Template
from aggregates.unmanaged import Disposition, UnmanagedDomain
from aggregates.vm import VirtualMachine
from aggregates.volume import Volume
from kernel.cloud.storage_pools import directory
from kernel.cloud.vms import pool_path, reaches, store_directory, template_file
from kernel.cloud.volume_copies import snapshot_directory
from kernel.reality.differences import (
    BackupView,
    HostView,
    Model,
    NetworkView,
    NicView,
    PoolView,
    SnapshotView,
    TemplateView,
    UnmanagedView,
    VmView,
    VolumeView,
)
from kernel.store.application import KernelApplication

__all__ = ["read_model"]

A = TypeVar("A")


def read_model(app: KernelApplication) -> Model:
    """Every host, VM, NIC, network, volume, pool, snapshot, template, image store, backup
    and unmanaged domain, and the entities an operation holds now."""
    hosts = _all(app, "host.Registered", Host)
    pools = _all(app, "storage_pool.Created", PrimaryStoragePool)
    stores = {s.id: store_directory(s) for s in _all(app, "image_store.Added", ImageStore)}
    return Model(
        hosts=tuple(HostView(id=h.id, name=h.name, uri=h.uri, claims=dict(h.claims))
                    for h in hosts),
        vms=tuple(VmView(id=v.id, name=v.name, state=v.state.value, host_id=v.host_id,
                         last_host_id=v.last_host_id,
                         nic_ids=tuple(n for _d, n in sorted(v.nics.items())),
                         volume_ids=tuple(i for _d, i in sorted(v.disks.items())))
                  for v in _all(app, "vm.Allocated", VirtualMachine)),
        nics=tuple(NicView(id=n.id, vm_id=n.vm_id, network_id=n.network_id, mac=n.mac,
                           ip=n.ip, released=n.state is NicState.RELEASED)
                   for n in _all(app, "nic.Allocated", Nic)),
        networks=tuple(NetworkView(id=n.id, name=n.name, state=n.state.value,
                                   element_hosts=tuple(n.element_hosts))
                       for n in _all(app, "network.Created", Network)),
        volumes=tuple(VolumeView(id=v.id, name=v.name, state=v.state.value, path=v.path)
                      for v in _all(app, "volume.Allocated", Volume)),
        pools=tuple(PoolView(id=p.id, name=p.name, pool_name=p.pool_name, path=pool_path(p),
                             snapshot_path=snapshot_directory(p),
                             host_ids=tuple(h.id for h in hosts if reaches(h, p)))
                    for p in pools),
        snapshots=tuple(SnapshotView(id=s.id, state=s.state.value, path=s.primary_path)
                        for s in _all(app, "snapshot.Allocated", Snapshot)),
        templates=tuple(TemplateView(id=t.id, name=t.name, state=t.state.value,
                                     file_name=template_file(t),
                                     directory=stores.get(t.image_store_id)
                                     if t.image_store_id else None)
                        for t in _all(app, "template.Registered", Template)),
        image_store_paths=tuple(dict.fromkeys(stores.values())),
        backups=tuple(BackupView(id=b.id, name=b.name, state=b.state.value, path=b.external_id)
                      for b in _all(app, "backup.Allocated", Backup)),
        unmanaged=tuple(UnmanagedView(id=u.id, host_id=u.host_id, domain_uuid=u.domain_uuid,
                                      name=u.name,
                                      adopted=u.disposition is Disposition.ADOPTED)
                        for u in _all(app, "unmanaged_domain.Discovered", UnmanagedDomain)),
        busy=frozenset(q.entity_id for q in _all(app, "entity_queue.Opened", EntityQueue)
                       if q.owner is not None or q.waiting),
    )


def _all(app: KernelApplication, topic: str, kind: type[A]) -> list[A]:
    """The entities created with `topic`, as they are now."""
    found: Iterable[object] = (app.repository.get(i) for i in directory(app, topic).ids())
    return [e for e in found if isinstance(e, kind)]
