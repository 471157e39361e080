"""The reality check's comparison: one test per kind of difference, on hand-written views of
the model and hand-written host objects, and what it must not call a difference."""

from uuid import UUID, uuid4

from kernel.reality.differences import (
    BackupView,
    Difference,
    HostObjects,
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
    compare,
)
from kernel.steps.inventory import (
    DhcpEntry,
    DirectoryListing,
    DomainFacts,
    DomainInventory,
    LibvirtNetworkFacts,
    LibvirtPoolFacts,
    LibvirtVolumeFacts,
    NetworkInventory,
    StorageInventory,
)
from kernel.steps.network import libvirt_network_name

H1, H2 = uuid4(), uuid4()
VM, NIC, NET, VOL, POOL = uuid4(), uuid4(), uuid4(), uuid4(), uuid4()
MAC, IP = "52:54:00:00:00:01", "10.1.1.10"
POOL_DIR = "/srv/pool"
ROOT = f"{POOL_DIR}/{VOL}.qcow2"


def host(host_id: UUID, name: str, claims: dict[UUID, tuple[UUID, int, int]] | None = None
         ) -> HostView:
    return HostView(id=host_id, name=name, uri=f"test:///{name}.xml", claims=claims or {})


def model(**changes: object) -> Model:
    """One Running VM on kvm-1 with a NIC and a root volume; a pool both hosts reach."""
    base = dict(
        hosts=(host(H1, "kvm-1", {uuid4(): (VM, 2, 2048)}), host(H2, "kvm-2")),
        vms=(VmView(id=VM, name="web-1", state="Running", host_id=H1, nic_ids=(NIC,),
                    volume_ids=(VOL,)),),
        nics=(NicView(id=NIC, vm_id=VM, network_id=NET, mac=MAC, ip=IP),),
        networks=(NetworkView(id=NET, name="guests", state="Implemented",
                              element_hosts=(H1,)),),
        volumes=(VolumeView(id=VOL, name="root-web-1", state="Ready", path=ROOT),),
        pools=(PoolView(id=POOL, name="primary", pool_name="primary", path=POOL_DIR,
                        snapshot_path=f"{POOL_DIR}-snapshots", host_ids=(H1, H2)),),
    )
    base.update(changes)
    return Model(**base)  # type: ignore[arg-type]


def domain(uuid: UUID = VM, name: str = "web-1", state: str = "running", vcpus: int = 2,
           memory_mib: int = 2048, disks: tuple[str, ...] = (ROOT,),
           macs: tuple[str, ...] = (MAC,)) -> DomainFacts:
    return DomainFacts(uuid=uuid, name=name, state=state,  # type: ignore[arg-type]
                       persistent=True, vcpus=vcpus, memory_mib=memory_mib, disks=disks,
                       macs=macs)


def network(*entries: DhcpEntry, network_id: UUID = NET) -> LibvirtNetworkFacts:
    return LibvirtNetworkFacts(name=libvirt_network_name(network_id), active=True,
                               dhcp=entries)


def objects(host_id: UUID, domains: tuple[DomainFacts, ...] = (),
            networks: tuple[LibvirtNetworkFacts, ...] = (),
            volumes: tuple[str, ...] = (), files: tuple[str, ...] = (),
            snapshot_files: tuple[str, ...] = ()) -> HostObjects:
    uri = f"test:///{host_id}.xml"
    return HostObjects(
        host_id=host_id, domains=DomainInventory(host_uri=uri, domains=domains),
        networks=NetworkInventory(host_uri=uri, networks=networks),
        storage=StorageInventory(host_uri=uri, listed=True, pools=(LibvirtPoolFacts(
            name="primary", path=POOL_DIR, active=True, volumes=tuple(
                LibvirtVolumeFacts(name=v, path=f"{POOL_DIR}/{v}", capacity_bytes=1)
                for v in volumes)),), directories=(
            DirectoryListing(path=POOL_DIR, exists=True, files=files),
            DirectoryListing(path=f"{POOL_DIR}-snapshots", exists=True,
                             files=snapshot_files))))


def clean_hosts(**h1: object) -> list[HostObjects]:
    """kvm-1 as the model wants it (parts replaced by `h1`), kvm-2 empty."""
    parts: dict[str, object] = dict(domains=(domain(),), networks=(network(DhcpEntry(
        mac=MAC, ip=IP)),), volumes=(f"{VOL}.qcow2",), files=(f"{VOL}.qcow2",))
    parts.update(h1)
    return [objects(H1, **parts), objects(H2)]  # type: ignore[arg-type]


def kinds(found: tuple[Difference, ...]) -> list[tuple[str, str]]:
    return [(d.kind, d.host) for d in found]


def test_what_the_model_wants_is_clean() -> None:
    report = compare(model(), clean_hosts())
    assert report.clean, report.differences
    assert report.hosts == ("kvm-1", "kvm-2") and report.skipped == ()


def test_a_domain_of_no_vm_is_named_and_an_unmanaged_one_is_not() -> None:
    stray = domain(uuid4(), "stray", state="shutoff")
    report = compare(model(), clean_hosts(domains=(domain(), stray)))
    assert kinds(report.differences) == [("domain_without_vm", "kvm-1")]
    assert "stray" in report.differences[0].subject
    known = UnmanagedView(id=uuid4(), host_id=H1, domain_uuid=stray.uuid, name="stray",
                          adopted=False)
    assert compare(model(unmanaged=(known,)), clean_hosts(domains=(domain(), stray))).clean


def test_a_running_vm_whose_domain_is_shut_off_or_missing() -> None:
    report = compare(model(), clean_hosts(domains=(domain(state="shutoff"),)))
    assert ("domain_state", "kvm-1") in kinds(report.differences)
    report = compare(model(), clean_hosts(domains=()))
    assert ("vm_without_domain", "kvm-1") in kinds(report.differences)


def test_a_stopped_vm_with_a_domain_left() -> None:
    stopped = VmView(id=VM, name="web-1", state="Stopped", last_host_id=H1, nic_ids=(NIC,))
    report = compare(model(vms=(stopped,), hosts=(host(H1, "kvm-1"), host(H2, "kvm-2"))),
                     clean_hosts(domains=(domain(state="shutoff"),)))
    assert kinds(report.differences) == [("domain_state", "kvm-1")]
    assert "Stopped" in report.differences[0].detail


def test_a_domain_on_another_host_than_the_model_says_and_defined_twice() -> None:
    hosts = [objects(H1, domains=(domain(),), networks=(network(DhcpEntry(mac=MAC, ip=IP)),),
                     volumes=(f"{VOL}.qcow2",), files=(f"{VOL}.qcow2",)),
             objects(H2, domains=(domain(),))]
    found = kinds(compare(model(), hosts).differences)
    assert ("domain_on_other_host", "kvm-2") in found
    assert ("domain_defined_twice", "kvm-1") in found
    assert ("claim_mismatch", "kvm-2") not in found  # a VM Running elsewhere holds no claim


def test_a_running_domain_without_its_volumes_or_nics_or_with_anothers() -> None:
    data = VolumeView(id=uuid4(), name="data-1", state="Ready", path=f"{POOL_DIR}/data-1")
    files = (f"{VOL}.qcow2", "data-1")
    m = model(volumes=(model().volumes[0], data))
    config_drive = f"{POOL_DIR}-seeds/web-1.iso"  # not a volume: not judged
    assert compare(m, clean_hosts(domains=(domain(disks=(ROOT, config_drive)),),
                                  files=files)).clean
    for wrong in (domain(disks=()), domain(disks=(ROOT, data.path or "")), domain(macs=()),
                  domain(macs=(MAC, "52:54:00:00:00:02"))):
        report = compare(m, clean_hosts(domains=(wrong,), files=files))
        assert kinds(report.differences) == [("domain_devices", "kvm-1")], wrong


def test_claims_that_differ_from_what_runs() -> None:
    report = compare(model(), clean_hosts(domains=(domain(vcpus=4),)))
    assert kinds(report.differences) == [("claim_mismatch", "kvm-1")]
    assert "4 vcpus" in report.differences[0].detail
    unclaimed = model(hosts=(host(H1, "kvm-1"), host(H2, "kvm-2")))
    assert kinds(compare(unclaimed, clean_hosts()).differences) == [("claim_mismatch", "kvm-1")]
    ghost = model(hosts=(host(H1, "kvm-1", {uuid4(): (VM, 2, 2048)}),
                         host(H2, "kvm-2", {uuid4(): (uuid4(), 1, 512)})))
    assert ("claim_mismatch", "kvm-2") in kinds(compare(ghost, clean_hosts()).differences)


def test_an_adopted_unmanaged_domain_is_claimed_by_its_entity() -> None:
    found = domain(uuid4(), "legacy", vcpus=1, memory_mib=512)
    unmanaged = UnmanagedView(id=uuid4(), host_id=H2, domain_uuid=found.uuid, name="legacy",
                              adopted=True)
    claims = {uuid4(): (unmanaged.id, 1, 512)}
    m = model(unmanaged=(unmanaged,), hosts=(model().hosts[0], host(H2, "kvm-2", claims)))
    hosts = clean_hosts()
    hosts[1] = objects(H2, domains=(found,))
    assert compare(m, hosts).clean


def test_volumes_and_files_of_no_volume_and_a_missing_file() -> None:
    leaked, stale, bare = (f"{uuid4()}.qcow2" for _ in range(3))
    report = compare(model(), clean_hosts(volumes=(f"{VOL}.qcow2", leaked, stale),
                                          files=(f"{VOL}.qcow2", leaked, bare)))
    # a leaked file libvirt lists is one difference (the file, naming the host that lists
    # it); a volume whose file is not there, and a file no volume names, one each
    found = sorted((d.kind, d.host, d.subject.rsplit("/", 1)[-1].rstrip(")"), d.detail)
                   for d in report.differences)
    assert found == sorted([
        ("file_without_entity", "kvm-1", leaked,
         "no Volume of the platform is this file (a libvirt volume on kvm-1)"),
        ("file_without_entity", "kvm-1", bare, "no Volume of the platform is this file"),
        ("volume_without_entity", "kvm-1", stale, "no Volume of the platform is this volume")])
    report = compare(model(), clean_hosts(files=()))
    assert kinds(report.differences) == [("volume_file_missing", "kvm-1")]


def test_an_expunged_volume_owns_no_file_and_a_destroyed_one_still_does() -> None:
    gone = VolumeView(id=VOL, name="root-web-1", state="Expunged", path=ROOT)
    found = kinds(compare(model(volumes=(gone,)), clean_hosts()).differences)
    assert ("file_without_entity", "kvm-1") in found
    destroyed = VolumeView(id=VOL, name="root-web-1", state="Destroy", path=ROOT)
    assert compare(model(volumes=(destroyed,)), clean_hosts()).clean


def test_snapshot_files_belong_to_live_snapshots() -> None:
    live, dead = uuid4(), uuid4()
    snapshots = (SnapshotView(id=live, state="CreatedOnPrimary",
                              path=f"{POOL_DIR}-snapshots/{live}.snap"),
                 SnapshotView(id=dead, state="Destroyed"))
    report = compare(model(snapshots=snapshots),
                     clean_hosts(snapshot_files=(f"{live}.snap", f"{dead}.snap")))
    assert kinds(report.differences) == [("file_without_entity", "kvm-1")]
    assert str(dead) in report.differences[0].subject


def shared(*listings: DirectoryListing) -> list[HostObjects]:
    """The model's hosts, kvm-1 also listing the image store and backup directories."""
    hosts = clean_hosts()
    assert hosts[0].storage is not None
    storage = hosts[0].storage
    hosts[0] = HostObjects(host_id=H1, domains=hosts[0].domains, networks=hosts[0].networks,
                           storage=StorageInventory(
                               host_uri=storage.host_uri, pools=storage.pools, listed=True,
                               directories=(*storage.directories, *listings)))
    return hosts


def test_image_store_files_belong_to_live_templates() -> None:
    ready, removed = uuid4(), uuid4()
    templates = (TemplateView(id=ready, name="tiny", state="Ready", file_name=f"{ready}.qcow2",
                              directory="/srv/images"),
                 TemplateView(id=removed, name="old", state="Removed",
                              file_name=f"{removed}.qcow2", directory="/srv/images"))
    m = model(templates=templates, image_store_paths=("/srv/images",))
    listing = DirectoryListing(path="/srv/images", exists=True,
                               files=(f"{ready}.qcow2", f"{ready}.qcow2.part"))
    report = compare(m, shared(listing))
    assert [(d.kind, d.subject) for d in report.differences] == [
        ("file_without_entity", f"/srv/images/{ready}.qcow2.part")]
    gone = DirectoryListing(path="/srv/images", exists=True, files=(f"{removed}.qcow2",))
    report = compare(m, shared(gone))
    assert sorted(d.kind for d in report.differences) == ["file_without_entity",
                                                         "template_file_missing"]


def test_backup_directories_belong_to_live_backups() -> None:
    live, removed = uuid4(), uuid4()
    backups = (BackupView(id=live, name="b1", state="BackedUp", path=f"/srv/backups/{live}"),
               BackupView(id=removed, name="b0", state="Removed",
                          path=f"/srv/backups/{removed}"))
    m = model(backups=backups)
    listing = DirectoryListing(path="/srv/backups", exists=True, files=("notes.txt",),
                               subdirectories=(str(live), str(removed), "lost+found"))
    report = compare(m, shared(listing))
    assert [(d.kind, d.subject) for d in report.differences] == [
        ("file_without_entity", f"/srv/backups/{removed}")]
    empty = DirectoryListing(path="/srv/backups", exists=True)
    report = compare(m, shared(empty))
    assert [d.kind for d in report.differences] == ["backup_missing"]
    assert m.directories_of(H1, shared=True) == (POOL_DIR, f"{POOL_DIR}-snapshots",
                                                 "/srv/backups")


def test_a_pool_that_is_not_the_platforms_is_left_alone() -> None:
    hosts = clean_hosts()
    assert hosts[1].storage is not None
    other = LibvirtPoolFacts(name="default", path="/var/lib/libvirt/images", active=True,
                             volumes=(LibvirtVolumeFacts(name="os.img", path="/x/os.img",
                                                         capacity_bytes=1),))
    hosts[1] = HostObjects(host_id=H2, storage=StorageInventory(host_uri="x", pools=(other,)))
    assert compare(model(), hosts).clean


def test_libvirt_networks_of_no_network_missing_or_not_made_there() -> None:
    stray = network(network_id=uuid4())
    foreign = LibvirtNetworkFacts(name="default", active=True)
    hosts = clean_hosts(networks=(network(DhcpEntry(mac=MAC, ip=IP)), stray, foreign))
    assert kinds(compare(model(), hosts).differences) == [("network_without_entity", "kvm-1")]
    hosts = clean_hosts()
    hosts[1] = objects(H2, networks=(network(),))
    assert kinds(compare(model(), hosts).differences) == [("network_without_entity", "kvm-2")]
    found = kinds(compare(model(), clean_hosts(networks=())).differences)
    assert found == [("network_missing", "kvm-1")]
    stopped = LibvirtNetworkFacts(name=libvirt_network_name(NET), active=False,
                                  dhcp=(DhcpEntry(mac=MAC, ip=IP),))
    found = kinds(compare(model(), clean_hosts(networks=(stopped,))).differences)
    assert found == [("network_inactive", "kvm-1")]
    shut = NetworkView(id=NET, name="guests", state="Shutdown", element_hosts=(H1,))
    report = compare(model(networks=(shut,)), clean_hosts())
    assert [d.detail for d in report.differences] == ["network guests is Shutdown"]


def test_dhcp_entries_of_no_nic_with_another_address_on_another_host_or_missing() -> None:
    other = DhcpEntry(mac="52:54:00:00:00:99", ip="10.1.1.99")
    report = compare(model(), clean_hosts(networks=(network(DhcpEntry(mac=MAC, ip=IP),
                                                            other),)))
    assert kinds(report.differences) == [("dhcp_without_nic", "kvm-1")]
    report = compare(model(), clean_hosts(networks=(network(DhcpEntry(mac=MAC,
                                                                      ip="10.1.1.11")),)))
    assert [(d.kind, d.detail) for d in report.differences] == [
        ("dhcp_mismatch", f"the NIC's address is {IP}")]
    report = compare(model(), clean_hosts(networks=(network(),)))
    assert kinds(report.differences) == [("dhcp_missing", "kvm-1")]
    both = NetworkView(id=NET, name="guests", state="Implemented", element_hosts=(H1, H2))
    hosts = clean_hosts()
    hosts[1] = objects(H2, networks=(network(DhcpEntry(mac=MAC, ip=IP)),))
    report = compare(model(networks=(both,)), hosts)
    assert [(d.kind, d.host) for d in report.differences] == [("dhcp_mismatch", "kvm-2")]
    assert "is on kvm-1" in report.differences[0].detail


def test_a_released_nic_owns_no_entry() -> None:
    released = NicView(id=NIC, vm_id=VM, network_id=NET, mac=MAC, ip=None, released=True)
    report = compare(model(nics=(released,)), clean_hosts())
    # and the Running VM's domain still has the released NIC's MAC
    assert kinds(report.differences) == [("dhcp_without_nic", "kvm-1"),
                                         ("domain_devices", "kvm-1")]


def test_what_an_operation_holds_is_skipped_and_said_so() -> None:
    stray_file = f"{uuid4()}.qcow2"
    busy = model(busy=frozenset({VM, H1}))
    report = compare(busy, clean_hosts(domains=(domain(state="shutoff", vcpus=8),),
                                       networks=(network(),)))
    assert report.clean, report.differences
    assert report.skipped == ("host kvm-1 (an operation holds it)",
                              "vm web-1 (an operation holds it)")
    report = compare(busy, clean_hosts(files=(f"{VOL}.qcow2", stray_file)))
    assert kinds(report.differences) == [("file_without_entity", "kvm-1")]


def test_the_file_of_a_volume_an_operation_is_creating_is_its_own() -> None:
    creating = VolumeView(id=uuid4(), name="data-1", state="Creating")
    hosts = clean_hosts(volumes=(f"{VOL}.qcow2", f"{creating.id}.qcow2"),
                        files=(f"{VOL}.qcow2", f"{creating.id}.qcow2"))
    report = compare(model(volumes=(model().volumes[0], creating),
                           busy=frozenset({creating.id})), hosts)
    assert report.clean and report.skipped == ("volume data-1 (an operation holds it)",)
    report = compare(model(volumes=(model().volumes[0], creating)), hosts)
    assert [(d.kind, d.host, d.detail) for d in report.differences] == [
        ("file_without_entity", "kvm-1",
         "no Volume of the platform is this file (a libvirt volume on kvm-1)")]


def test_a_host_that_could_not_be_listed_is_a_difference() -> None:
    hosts = clean_hosts()
    hosts[1] = HostObjects(host_id=H2, errors=("no hypervisor worker answered",))
    report = compare(model(), hosts)
    assert [(d.kind, d.host, d.detail) for d in report.differences] == [
        ("host_unreachable", "kvm-2", "no hypervisor worker answered")]
    assert report.as_json()["differences"] == [report.differences[0].as_json()]
