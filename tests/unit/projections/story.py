"""A story over hosts, networks, NICs, volumes, snapshots, templates and public addresses,
driven through the aggregates' own methods, and the rows each read model must hold for an
aggregate as it ends.

Shared by the SQLite unit tests and the PostgreSQL integration test. The expected rows are
computed from the aggregates' own state (properties such as `free_cpu_cores` and
`free_ip_count`), never from the projection code.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid4

from aggregates.base import audit_context
from aggregates.host import Host, HostResourceState, HostStatus
from aggregates.network import GuestNetworkType, Network
from aggregates.nic import Nic
from aggregates.public_address import PublicAddress
from aggregates.public_address_pool import PublicAddressPool
from aggregates.snapshot import Snapshot
from aggregates.template import Template, TemplateFormat
from aggregates.volume import Volume, VolumeType
from kernel.store.application import KernelApplication
from projections.models import Row

GIB = 1 << 30
RS = HostResourceState


@dataclass
class Story:
    """The aggregates as the story leaves them, and the ids the audit checks look for."""

    hosts: list[Host] = field(default_factory=list)
    networks: list[Network] = field(default_factory=list)
    nics: list[Nic] = field(default_factory=list)
    volumes: list[Volume] = field(default_factory=list)
    snapshots: list[Snapshot] = field(default_factory=list)
    templates: list[Template] = field(default_factory=list)
    addresses: list[PublicAddress] = field(default_factory=list)
    pools: list[PublicAddressPool] = field(default_factory=list)
    correlation_id: UUID = field(default_factory=uuid4)

    def all(self) -> Iterator[Any]:
        """Every aggregate of the story."""
        yield from (*self.hosts, *self.networks, *self.nics, *self.volumes,
                    *self.snapshots, *self.templates, *self.addresses, *self.pools)


def new_hosts(zone_id: UUID) -> list[Host]:
    """Four hosts in two clusters; factors whose products are not whole numbers."""
    pod, cluster_a, cluster_b = uuid4(), uuid4(), uuid4()
    specs = [("h-a1", cluster_a, 16, 65536, 2.0, 1.0), ("h-a2", cluster_a, 12, 49152, 1.3, 1.1),
             ("h-b1", cluster_b, 32, 131072, 4.0, 1.5), ("h-b2", cluster_b, 8, 16384, 1.0, 1.0)]
    return [Host.register(name=f"{name}-{uuid4().hex[:6]}", uri="test:///default",
                          zone_id=zone_id, pod_id=pod, cluster_id=cluster, cpu_cores=cores,
                          cpu_mhz=2400, memory_mib=mem, cpu_overprovisioning=cpu_f,
                          memory_overprovisioning=mem_f, tags=("ssd",))
            for name, cluster, cores, mem, cpu_f, mem_f in specs]


def host_activity(app: KernelApplication, story: Story, hosts: list[Host]) -> None:
    """Claims, releases, a full host, a host going Down, one into maintenance."""
    busy, full, down, maint = hosts[:4]
    with audit_context(actor="alice", correlation_id=story.correlation_id,
                       causation_id="command:place:1"):
        claims = [uuid4() for _ in range(4)]
        for i, claim in enumerate(claims):
            busy.claim(claim, uuid4(), 1 + i, 1024 * (i + 1))
        app.save(*hosts)
        busy.release(claims[1])
        busy.release(claims[3])
        full.claim(uuid4(), uuid4(), full.free_cpu_cores, full.free_memory_mib)
    down.claim(uuid4(), uuid4(), 2, 2048)
    down.change_status(HostStatus.DOWN, "no heartbeat")
    maint.change_resource_state(RS.DISABLED, "admin")
    maint.change_resource_state(RS.PREPARE_FOR_MAINTENANCE)
    maint.change_resource_state(RS.MAINTENANCE)
    app.save(*hosts)
    story.hosts.extend(hosts)


def network_activity(app: KernelApplication, story: Story, zone_id: UUID) -> None:
    """Networks through their life cycle, with addresses handed out and given back."""
    tag = uuid4().hex[:6]
    isolated = Network.create(name=f"iso-{tag}", zone_id=zone_id, cidr="10.20.0.0/24",
                              gateway="10.20.0.1",
                              reserved_ranges=(("10.20.0.1", "10.20.0.9"),
                                               ("10.20.0.5", "10.20.0.20"),
                                               ("10.20.0.250", "10.20.0.255")))
    shared = Network.create(name=f"shared-{tag}", zone_id=zone_id, cidr="192.168.8.0/22",
                            gateway="192.168.11.254", network_type=GuestNetworkType.SHARED,
                            vlan=300)
    tiny = Network.create(name=f"tiny-{tag}", zone_id=zone_id, cidr="10.30.0.0/30",
                          gateway="10.30.0.2")
    failed = Network.create(name=f"failed-{tag}", zone_id=zone_id, cidr="10.40.0.0/28",
                            gateway="10.40.0.14")
    isolated.implement()
    isolated.implemented(vlan=1042)
    shared.implement()
    shared.implemented()
    failed.implement()
    failed.implementation_failed("switch said no")
    app.save(isolated, shared, tiny, failed)
    vm = uuid4()
    for i, net in enumerate((isolated, isolated, isolated, shared, tiny)):
        nic = Nic.allocate(vm_id=vm, network_id=net.id, mac=f"02:00:00:00:00:{i:02x}",
                           device_id=i)
        nic.reserve(net.allocate_ip(nic.id, "10.20.0.100" if i == 2 else None))
        story.nics.append(nic)
    app.save(isolated, shared, tiny, *story.nics)
    gone = story.nics[1]
    isolated.release_ip(gone.ip or "")
    gone.release()
    tiny_nic = story.nics[4]
    tiny.release_ip(tiny_nic.ip or "")
    tiny_nic.release()
    tiny.destroy()
    shared.shutdown()  # a Shared network keeps its VLAN
    app.save(isolated, shared, tiny, gone, tiny_nic)
    story.networks.extend((isolated, shared, tiny, failed))


def storage_activity(app: KernelApplication, story: Story, zone_id: UUID,
                     pool_ids: tuple[UUID, UUID], image_store_id: UUID) -> None:
    """Volumes through every kind of transition, their snapshots, and templates."""
    pool_a, pool_b = pool_ids
    debian = Template.register(name=f"debian-{uuid4().hex[:6]}", zone_id=zone_id,
                               url="http://images.example.org/d.qcow2",
                               checksum="{SHA-256}ab12")
    debian.start_download(image_store_id)
    debian.download_completed(10 * GIB, checksum="{SHA-256}ffff")  # mismatch: failed
    debian.start_download(image_store_id)
    debian.download_completed(10 * GIB, checksum="AB12")
    iso = Template.register(name=f"iso-{uuid4().hex[:6]}", zone_id=zone_id,
                            url="http://images.example.org/x.iso", format=TemplateFormat.ISO)
    iso.start_download(image_store_id)
    iso.download_completed(GIB, checksum="{MD5}0a0b")  # learnt: none was registered
    raw = Template.register(name=f"raw-{uuid4().hex[:6]}", zone_id=zone_id,
                            url="http://images.example.org/r.img", format=TemplateFormat.RAW)
    raw.start_download(image_store_id)
    raw.download_failed("404")
    gone = Template.register(name=f"gone-{uuid4().hex[:6]}", zone_id=zone_id,
                             url="http://images.example.org/g.qcow2")
    gone.remove()
    story.templates.extend((debian, iso, raw, gone))
    app.save(*story.templates)

    vm = uuid4()

    def volume(name: str, kind: VolumeType = VolumeType.DATADISK) -> Volume:
        return Volume.allocate(name=f"{name}-{uuid4().hex[:6]}", account="alice",
                               zone_id=zone_id, volume_type=kind, size_bytes=20 * GIB,
                               template_id=debian.id if kind is VolumeType.ROOT else None)

    root = volume("root", VolumeType.ROOT)
    root.create(pool_a)
    root.created("/pool-a/root")
    root.attach(vm, 0)
    root.attached()
    root.resize(40 * GIB)
    root.resized()
    data = volume("data")
    data.create(pool_a)
    data.created("/pool-a/data")
    data.attach(vm, 1)
    data.attached()
    data.resize(80 * GIB)
    data.resize_failed("pool full")
    app.save(root, data)
    data.migrate(pool_b)
    data.migrated("/pool-b/data")
    moving = volume("moving")
    moving.create(pool_a)
    moving.created("/pool-a/moving")
    moving.migrate(pool_b)
    moving.migration_failed("timeout")
    moving.attach(vm, 2)
    moving.attach_failed("busy")
    snapping = volume("snapping")
    snapping.create(pool_b)
    snapping.created("/pool-b/snapping")
    snapping.take_snapshot(uuid4())
    snapping.snapshot_taken()
    snapping.take_snapshot(uuid4())
    snapshotting = volume("snapshotting")
    snapshotting.create(pool_a)
    snapshotting.creation_failed("no room")
    snapshotting.create(pool_b)
    snapshotting.created("/pool-b/s")
    snapshotting.take_snapshot(uuid4())
    snapshotting.snapshot_failed("io error")
    recovered = volume("recovered")
    recovered.destroy()
    recovered.recover()
    expunged = volume("expunged")
    expunged.create(pool_a)
    expunged.created("/pool-a/x")
    expunged.attach(vm, 4)
    expunged.attached()
    expunged.detach()
    expunged.destroy()
    expunged.expunge()
    expunged.expunge_failed("busy")
    expunged.expunge()
    expunged.expunged()
    story.volumes.extend((root, data, moving, snapping, snapshotting, recovered, expunged))

    def snapshot(of: Volume) -> Snapshot:
        return Snapshot.allocate(name=f"snap-{uuid4().hex[:6]}", account="alice",
                                 zone_id=zone_id, volume_id=of.id,
                                 volume_size_bytes=of.size_bytes)

    backed_up, on_primary, errored, destroyed, waiting = (
        snapshot(root), snapshot(root), snapshot(data), snapshot(data), snapshot(snapping))
    for s in (backed_up, on_primary, errored, destroyed):
        s.create()
    backed_up.created("/pool-a/snap1")
    backed_up.back_up(image_store_id)
    backed_up.backed_up("snapshots/1", 3 * GIB)
    on_primary.created("/pool-a/snap2")
    errored.created("/pool-a/snap3")
    errored.back_up(image_store_id)
    errored.fail("store unreachable")
    destroyed.fail("lost")
    destroyed.destroy()
    story.snapshots.extend((backed_up, on_primary, errored, destroyed, waiting))
    app.save(*story.volumes, *story.snapshots)


def full_story(app: KernelApplication, zone_id: UUID | None = None) -> Story:
    """Everything above in a fresh zone."""
    zone_id = zone_id or uuid4()
    story = Story()
    host_activity(app, story, new_hosts(zone_id))
    network_activity(app, story, zone_id)
    storage_activity(app, story, zone_id, (uuid4(), uuid4()), uuid4())
    address_activity(app, story, zone_id)
    return story


def address_activity(app: KernelApplication, story: Story, zone_id: UUID) -> None:
    """Public address pools in four zones; allocations, two released, one taken again."""
    pools = [PublicAddressPool.create(zone_id=z) for z in (zone_id, uuid4(), uuid4(), uuid4())]
    for i, pool in enumerate(pools):
        pool.add_range(name="a", cidr="203.0.113.0/24", gateway="203.0.113.1",
                       first="203.0.113.10", last=f"203.0.113.{10 + i}")
    pools[0].add_range(name="b", cidr="198.51.100.0/24", gateway="198.51.100.1",
                       first="198.51.100.2", last="198.51.100.100")
    app.save(*pools)
    main = pools[0]
    for i, account in enumerate(("acme", "acme", "globex", "initech", "acme")):
        address_id = uuid4()
        held = main.allocate(address_id, account)
        story.addresses.append(PublicAddress.allocate(
            id=address_id, zone_id=main.zone_id, pool_id=main.id, address=held,
            account=account, purpose="web" if i % 2 else None))
    app.save(main, *story.addresses)
    for gone in story.addresses[1:3]:
        gone.release()
        main.release(gone.id)
    app.save(main, *story.addresses)
    address_id = uuid4()
    story.addresses.append(PublicAddress.allocate(
        id=address_id, zone_id=main.zone_id, pool_id=main.id,
        address=main.allocate(address_id, "globex"), account="globex"))
    app.save(main, story.addresses[-1])
    story.pools.extend(pools)


# --------------------------------------------------------------------------- expected rows


def _stamp(agg: Any) -> Row:
    return {"version": agg.version, "updated_at": agg.modified_on}


def expected_host(h: Host) -> Row:
    """The hosts row of this host."""
    return {
        "id": h.id, "name": h.name, "uri": h.uri, "zone_id": h.zone_id, "pod_id": h.pod_id,
        "cluster_id": h.cluster_id, "resource_state": h.resource_state.value,
        "status": h.status.value, "cpu_cores": h.cpu_cores, "cpu_mhz": h.cpu_mhz,
        "memory_mib": h.memory_mib, "cpu_overprovisioning": h.cpu_overprovisioning,
        "memory_overprovisioning": h.memory_overprovisioning,
        "total_cpu_cores": h.total_cpu_cores, "total_memory_mib": h.total_memory_mib,
        "used_cpu_cores": h.used_cpu_cores, "used_memory_mib": h.used_memory_mib,
        "free_cpu_cores": h.free_cpu_cores, "free_memory_mib": h.free_memory_mib,
        "claim_count": len(h.claims),
        "claims": {str(c): [str(vm), cpu, mem] for c, (vm, cpu, mem) in h.claims.items()},
        "tags": list(h.tags), **_stamp(h),
    }


def expected_network(n: Network) -> Row:
    """The networks row of this network."""
    used = len(n.allocated_ips)
    return {
        "id": n.id, "name": n.name, "zone_id": n.zone_id, "type": n.network_type.value,
        "state": n.state.value, "cidr": n.cidr, "gateway": n.gateway, "vlan": n.vlan,
        "reserved_ranges": [list(r) for r in n.reserved_ranges],
        "ip_total": n.free_ip_count + used, "ip_used": used, "ip_free": n.free_ip_count,
        "last_error": n.last_error, **_stamp(n),
    }


def expected_volume(v: Volume) -> Row:
    """The volumes row of this volume."""
    return {
        "id": v.id, "name": v.name, "account": v.account, "zone_id": v.zone_id,
        "type": v.volume_type.value, "state": v.state.value, "size_bytes": v.size_bytes,
        "requested_size_bytes": v.requested_size_bytes, "pool_id": v.pool_id,
        "destination_pool_id": v.destination_pool_id, "path": v.path, "vm_id": v.vm_id,
        "device_id": v.device_id, "disk_offering_id": v.disk_offering_id,
        "template_id": v.template_id, "snapshot_id": v.snapshot_id,
        "last_error": v.last_error, **_stamp(v),
    }


def expected_snapshot(s: Snapshot) -> Row:
    """The snapshots row of this snapshot."""
    return {
        "id": s.id, "name": s.name, "account": s.account, "zone_id": s.zone_id,
        "volume_id": s.volume_id, "volume_size_bytes": s.volume_size_bytes,
        "state": s.state.value, "primary_path": s.primary_path,
        "image_store_id": s.image_store_id, "backup_path": s.backup_path,
        "size_bytes": s.size_bytes, "last_error": s.last_error, **_stamp(s),
    }


def expected_template(t: Template) -> Row:
    """The templates row of this template."""
    return {
        "id": t.id, "name": t.name, "zone_id": t.zone_id, "url": t.url,
        "format": t.format.value, "os_type": t.os_type, "checksum": t.checksum,
        "state": t.state.value, "image_store_id": t.image_store_id,
        "size_bytes": t.size_bytes, "last_error": t.last_error, **_stamp(t),
    }


def expected_address(a: PublicAddress) -> Row:
    """The addresses row of this allocation."""
    return {
        "id": a.id, "zone_id": a.zone_id, "pool_id": a.pool_id, "address": a.address,
        "account": a.account, "purpose": a.purpose, "state": a.state.value, **_stamp(a),
    }


def expected_pool(p: PublicAddressPool) -> Row:
    """The address_pools row of this pool."""
    return {
        "id": p.id, "zone_id": p.zone_id,
        "ranges": [{"name": r.name, "cidr": r.cidr, "gateway": r.gateway, "first": r.first,
                    "last": r.last} for r in p.ranges],
        "address_count": p.size, "allocated_count": p.allocated_count,
        "free_count": p.free_count, **_stamp(p),
    }


EXPECTED: dict[str, Callable[[Any], Row]] = {
    "hosts": expected_host, "networks": expected_network, "volumes": expected_volume,
    "snapshots": expected_snapshot, "templates": expected_template,
    "addresses": expected_address, "address_pools": expected_pool,
}


def expectations(story: Story) -> dict[str, list[tuple[UUID, Row]]]:
    """For each entity model: (id, expected row) of every aggregate it holds."""
    groups: dict[str, list[Any]] = {
        "hosts": story.hosts, "networks": story.networks, "volumes": story.volumes,
        "snapshots": story.snapshots, "templates": story.templates,
        "addresses": story.addresses, "address_pools": story.pools,
    }
    return {name: [(a.id, EXPECTED[name](a)) for a in aggs] for name, aggs in groups.items()}
