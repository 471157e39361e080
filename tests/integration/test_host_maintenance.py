"""Host maintenance end to end: the kernel, real workers over NATS, PostgreSQL and libvirt's
test driver. A host with 20 VMs is put in maintenance: they all live-migrate to other hosts
(libvirt's own view agrees) and the host is in Maintenance; with too little room elsewhere it
ends ErrorInMaintenance and every VM still runs, each on exactly one host."""

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from uuid import UUID
from xml.etree import ElementTree as ET

import libvirt
from support.cloud import Cloud, Prepared, prepare, running_cloud, write_inventory

from aggregates.host import Host, HostResourceState
from aggregates.operation import OperationState
from aggregates.vm import VirtualMachine, VmState
from kernel.bootstrap.migrations import migrate_all
from kernel.cloud.hosts import DisableHost, EnableHost, PrepareHostMaintenance
from kernel.cloud.vms import DeployVm
from kernel.settings import Settings
from kernel.steps.network import libvirt_network_name
from subsystems.libvirt.connections import connection

VMS = 20
RS = HostResourceState


def inventory(tmp: Path, source_uri: str, other_uris: list[str], *, source_cores: int,
              other_cores: int) -> Path:
    """The support inventory with its first host (`kvm-0`) sized for every VM and the others
    (`kvm-1`...) with `other_cores` each; VMs of one core and 256 MiB."""
    path = write_inventory(tmp, [source_uri], host_cores=source_cores, host_memory_mib=16384,
                           vm_cores=1, vm_memory_mib=256)
    with path.open("a") as out:
        for i, uri in enumerate(other_uris, start=1):
            out.write(f'''
[[hosts]]
name = "kvm-{i}"
cluster = "c1"
uri = "{uri}"
cpu_cores = {other_cores}
cpu_mhz = 2000
memory_mib = 16384
''')
    return path


def running_domains(uri: str) -> set[str]:
    """The UUIDs of the domains libvirt runs on that host."""
    return {d.UUIDString() for d in connection(uri).listAllDomains()
            if d.state()[0] == libvirt.VIR_DOMAIN_RUNNING}


def dhcp_macs(uri: str, network_id: UUID) -> set[str | None]:
    """The MACs in the DHCP entries of the guest network on that host."""
    net = connection(uri).networkLookupByName(libvirt_network_name(network_id))
    return {h.get("mac") for h in ET.fromstring(net.XMLDesc()).iterfind(".//dhcp/host")}


async def hosts_by_name(cloud: Cloud) -> dict[str, Host]:
    return {h.name: h for h in [await cloud.get(i) for i in cloud.ids("host.Registered")]}


async def twenty_vms_on(cloud: Cloud, ids: Prepared, source: Host,
                        others: list[Host]) -> list[VirtualMachine]:
    """Deploy VMS VMs at once while every other host is Disabled; Enable them again."""
    for host in others:
        await cloud.command(DisableHost(host_id=host.id, reason="pin the deploys"))
    assert ids.network_id is not None
    accepted = await asyncio.gather(*(cloud.command(DeployVm(
        name=f"vm-{i}", account="alice", zone_id=ids.zone_id,
        service_offering_id=ids.offering_id, template_id=ids.template_id,
        network_ids=(ids.network_id,))) for i in range(VMS)))
    for a in accepted:
        op = await cloud.finished(a["operation_id"], timeout=60)
        assert op.state is OperationState.SUCCEEDED, op.failure
    for host in others:
        await cloud.command(EnableHost(host_id=host.id))
    vms: list[VirtualMachine] = [await cloud.get(UUID(a["vm_id"])) for a in accepted]
    assert {vm.state for vm in vms} == {VmState.RUNNING}
    assert {vm.host_id for vm in vms} == {source.id}
    assert running_domains(source.uri) == {str(vm.id) for vm in vms}
    return vms


async def maintenance_ended(cloud: Cloud, host_id: UUID, timeout: float = 60) -> Host:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        host: Host = await cloud.get(host_id)
        if host.resource_state in (RS.MAINTENANCE, RS.ERROR_IN_MAINTENANCE):
            return host
        await asyncio.sleep(0.1)
    raise AssertionError(f"host {host_id} is still {host.resource_state.value}")


async def each_runs_on_one_host(cloud: Cloud, vms: list[VirtualMachine],
                                hosts: list[Host]) -> dict[UUID, Host]:
    """Every VM Running, and running in libvirt on its host and nowhere else."""
    by_id = {h.id: h for h in hosts}
    seen = {h.id: running_domains(h.uri) for h in hosts}
    where = {}
    for vm in vms:
        now: VirtualMachine = await cloud.get(vm.id)
        assert now.state is VmState.RUNNING and now.host_id is not None, now.last_error
        assert [h for h, running in seen.items() if str(vm.id) in running] == [now.host_id]
        where[vm.id] = by_id[now.host_id]
    return where


def test_maintenance_moves_twenty_vms_to_other_hosts(
        tmp_path: Path, pg_dsn: str, nats_url: str,
        libvirt_host_factory: Callable[..., str]) -> None:
    uris = [libvirt_host_factory(f"kvm-{i}", cpus=24, memory_mib=16384) for i in range(3)]
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, nats_urls=(nats_url,),
                        data_dir=tmp_path / "data")
    migrate_all(settings)
    path = inventory(tmp_path, uris[0], uris[1:], source_cores=24, other_cores=16)

    async def scenario() -> None:
        async with running_cloud(settings) as cloud:
            ids = await prepare(cloud, path)
            hosts = await hosts_by_name(cloud)
            source, others = hosts["kvm-0"], [hosts["kvm-1"], hosts["kvm-2"]]
            vms = await twenty_vms_on(cloud, ids, source, others)
            assert ids.network_id is not None
            assert len(dhcp_macs(source.uri, ids.network_id)) == VMS

            accepted = await cloud.command(PrepareHostMaintenance(host_id=source.id))
            assert accepted["resource_state"] == "PrepareForMaintenance"
            assert len(accepted["vm_ids"]) == VMS
            host = await maintenance_ended(cloud, source.id)
            assert host.resource_state is RS.MAINTENANCE, host.maintenance.errors
            assert host.claims == {} and host.maintenance.errors == ()
            where = await each_runs_on_one_host(cloud, vms, [source, *others])
            assert source not in where.values()
            assert {h.name for h in where.values()} == {"kvm-1", "kvm-2"}
            assert running_domains(source.uri) == set()
            assert not dhcp_macs(source.uri, ids.network_id)  # the entries went with them

    asyncio.run(scenario())


def test_with_too_little_room_elsewhere_the_host_ends_in_error_and_every_vm_runs(
        tmp_path: Path, pg_dsn: str, nats_url: str,
        libvirt_host_factory: Callable[..., str]) -> None:
    uris = [libvirt_host_factory("kvm-0", cpus=24, memory_mib=16384)]
    uris += [libvirt_host_factory(f"kvm-{i}", cpus=4, memory_mib=16384) for i in (1, 2)]
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, nats_urls=(nats_url,),
                        data_dir=tmp_path / "data")
    migrate_all(settings)
    path = inventory(tmp_path, uris[0], uris[1:], source_cores=24, other_cores=4)

    async def scenario() -> None:
        async with running_cloud(settings) as cloud:
            ids = await prepare(cloud, path)
            hosts = await hosts_by_name(cloud)
            source, others = hosts["kvm-0"], [hosts["kvm-1"], hosts["kvm-2"]]
            vms = await twenty_vms_on(cloud, ids, source, others)

            await cloud.command(PrepareHostMaintenance(host_id=source.id))
            host = await maintenance_ended(cloud, source.id)
            assert host.resource_state is RS.ERROR_IN_MAINTENANCE
            where = await each_runs_on_one_host(cloud, vms, [source, *others])
            stayed = [vm_id for vm_id, h in where.items() if h.id == source.id]
            assert len(stayed) == VMS - 8  # the other hosts have room for 4 each
            assert len(host.maintenance.errors) == len(stayed)
            assert all("still runs here" in e for e in host.maintenance.errors)
            assert running_domains(source.uri) == {str(v) for v in stayed}

    asyncio.run(scenario())
