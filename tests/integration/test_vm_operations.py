"""VM operations end to end: the kernel, real workers (planner, storage, hypervisor) over NATS,
PostgreSQL, and libvirt's test driver. libvirt's own view is checked through its API."""

import asyncio
import hashlib
import ipaddress
import time
from collections.abc import Callable
from pathlib import Path
from uuid import UUID
from xml.etree import ElementTree as ET

import libvirt
import pytest
from support.cloud import prepare, running_cloud, write_inventory

from aggregates.errors import ValidationError
from aggregates.host import Host
from aggregates.network import Network
from aggregates.nic import Nic
from aggregates.operation import OperationState
from aggregates.template import Template, TemplateState
from aggregates.vm import VirtualMachine, VmState
from aggregates.volume import Volume, VolumeState
from kernel.bootstrap.migrations import migrate_all
from kernel.cloud.networks import (
    CreateNetworkCommand,
    ImplementNetworkCommand,
    ShutdownNetworkCommand,
)
from kernel.cloud.templates import DownloadTemplateCommand
from kernel.cloud.vm_moves import MigrateVm
from kernel.cloud.vms import DeployVm, DestroyVm, StopVm
from kernel.inventory.loader import load_inventory_file
from kernel.settings import Settings
from kernel.steps.network import libvirt_network_name
from subsystems.libvirt import disk_images
from subsystems.libvirt.connections import connection

MIB = 1 << 20


def domain_xml(uri: str, vm_id: UUID) -> ET.Element:
    dom = connection(uri).lookupByUUIDString(str(vm_id))
    return ET.fromstring(dom.XMLDesc())


def test_deploy_stop_and_destroy_through_real_workers(
        tmp_path: Path, pg_dsn: str, nats_url: str,
        libvirt_host_factory: Callable[..., str]) -> None:
    uris = [libvirt_host_factory(f"kvm-{i}", cpus=4, memory_mib=8192) for i in range(2)]
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, nats_urls=(nats_url,),
                        data_dir=tmp_path / "data")
    migrate_all(settings)
    inventory = write_inventory(tmp_path, uris)

    async def scenario() -> None:
        async with running_cloud(settings) as cloud:
            platform_commands = cloud.engine  # inventory through the platform's service
            from kernel.bootstrap import open_platform
            platform = await cloud.call(open_platform, settings)
            try:
                await cloud.call(load_inventory_file, platform.commands, inventory)
            finally:
                platform.close()
            del platform_commands
            [template_id] = cloud.ids("template.Registered")
            [store_id] = cloud.ids("image_store.Added")
            [zone_id] = cloud.ids("zone.Created")
            [offering_id] = cloud.ids("service_offering.Created")

            download = await cloud.command(DownloadTemplateCommand(
                template_id=template_id, image_store_id=store_id))
            assert (await cloud.finished(download["operation_id"])).state is \
                OperationState.SUCCEEDED
            template: Template = await cloud.get(template_id)
            assert template.state is TemplateState.READY and template.size_bytes == 65536
            assert (tmp_path / "images" / f"{template_id}.qcow2").is_file()

            created = await cloud.command(CreateNetworkCommand(
                zone_id=zone_id, name="guests", cidr="10.1.1.0/24",
                reserved_ranges=(("10.1.1.2", "10.1.1.9"),)))
            assert (await cloud.finished(created["operation_id"])).state is \
                OperationState.SUCCEEDED
            network_id = UUID(created["network_id"])
            implemented = await cloud.command(ImplementNetworkCommand(network_id=network_id))
            assert (await cloud.finished(implemented["operation_id"])).state is \
                OperationState.SUCCEEDED
            network: Network = await cloud.get(network_id)
            assert network.state.value == "Implemented" and network.vlan is not None

            accepted = await cloud.command(DeployVm(
                name="web-1", account="alice", zone_id=zone_id,
                service_offering_id=offering_id, template_id=template_id,
                network_ids=(network_id,)))
            op = await cloud.finished(accepted["operation_id"])
            assert op.state is OperationState.SUCCEEDED, (op.failure, op.failed_step)
            vm: VirtualMachine = await cloud.get(UUID(accepted["vm_id"]))
            volume: Volume = await cloud.get(UUID(accepted["volume_id"]))
            assert vm.state is VmState.RUNNING and volume.state is VolumeState.READY
            host: Host = await cloud.get(vm.host_id)
            # libvirt's own view: the domain exists on that host, runs, with the root disk
            dom = connection(host.uri).lookupByUUIDString(str(vm.id))
            assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
            xml = domain_xml(host.uri, vm.id)
            assert [d.get("file") for d in xml.iterfind("devices/disk/source")] == \
                [volume.path]
            assert xml.findtext("vcpu") == "2"
            [nic_id] = vm.nics.values()
            nic: Nic = await cloud.get(nic_id)
            network = await cloud.get(network_id)
            assert nic.ip is not None and network.nic_ip(nic.id) == nic.ip
            address = ipaddress.ip_address(nic.ip)
            assert not (ipaddress.ip_address("10.1.1.2") <= address
                        <= ipaddress.ip_address("10.1.1.9"))
            assert nic.ip != network.gateway
            [iface] = xml.iterfind("devices/interface")
            assert iface.find("mac").get("address") == nic.mac  # type: ignore[union-attr]
            assert iface.find("source").get("network") == \
                libvirt_network_name(network_id)  # type: ignore[union-attr]
            lv_net = connection(host.uri).networkLookupByName(libvirt_network_name(network_id))
            assert lv_net.isActive()
            hosts_xml = ET.fromstring(lv_net.XMLDesc())
            assert [(h.get("mac"), h.get("ip")) for h in hosts_xml.iterfind(".//dhcp/host")] \
                == [(nic.mac, nic.ip)]
            other = next(u for u in uris if u != host.uri)
            assert str(vm.id) not in [d.UUIDString() for d in
                                      connection(other).listAllDomains()]

            stopped = await cloud.command(StopVm(vm_id=vm.id, force_after_seconds=5))
            assert (await cloud.finished(stopped["operation_id"])).state is \
                OperationState.SUCCEEDED
            vm = await cloud.get(vm.id)
            assert vm.state is VmState.STOPPED
            assert str(vm.id) not in [d.UUIDString() for d in
                                      connection(host.uri).listAllDomains()]
            assert (await cloud.get(host.id)).claims == {}

            destroyed = await cloud.command(DestroyVm(vm_id=vm.id))
            assert (await cloud.finished(destroyed["operation_id"])).state is \
                OperationState.SUCCEEDED
            for _ in range(100):  # the expunge follows the destroy (no delay)
                if (await cloud.get(vm.id)).state is VmState.EXPUNGED:
                    break
                await asyncio.sleep(0.05)
            assert (await cloud.get(vm.id)).state is VmState.EXPUNGED
            assert (await cloud.get(volume.id)).state is VolumeState.EXPUNGED
            assert (await cloud.get(network_id)).allocated_ips == {}
            assert (await cloud.get(nic_id)).state.value == "Released"

    asyncio.run(scenario())


@pytest.mark.parametrize("hosts", [2])
def test_a_deploy_that_cannot_start_anywhere_leaves_nothing_behind(
        tmp_path: Path, pg_dsn: str, nats_url: str,
        libvirt_host_factory: Callable[..., str], hosts: int) -> None:
    # Each host already has a domain named like the VM: define fails for good on each,
    # and the deploy moves on to the next host, then gives up, leaving no leak.
    from fixtures.libvirt_host import LibvirtTestDomain

    uris = [libvirt_host_factory(f"kvm-{i}", cpus=4, memory_mib=8192,
                                 domains=[LibvirtTestDomain(name="web-1", running=False)])
            for i in range(hosts)]
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, nats_urls=(nats_url,),
                        data_dir=tmp_path / "data")
    migrate_all(settings)
    inventory = write_inventory(tmp_path, uris)

    async def scenario() -> None:
        async with running_cloud(settings) as cloud:
            from kernel.bootstrap import open_platform
            platform = await cloud.call(open_platform, settings)
            try:
                await cloud.call(load_inventory_file, platform.commands, inventory)
            finally:
                platform.close()
            [template_id] = cloud.ids("template.Registered")
            [store_id] = cloud.ids("image_store.Added")
            [zone_id] = cloud.ids("zone.Created")
            [offering_id] = cloud.ids("service_offering.Created")
            download = await cloud.command(DownloadTemplateCommand(
                template_id=template_id, image_store_id=store_id))
            await cloud.finished(download["operation_id"])
            accepted = await cloud.command(DeployVm(
                name="web-1", account="alice", zone_id=zone_id,
                service_offering_id=offering_id, template_id=template_id))
            vm_id = UUID(accepted["vm_id"])
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                vm: VirtualMachine = await cloud.get(vm_id)
                if vm.state is VmState.ERROR:
                    break
                await asyncio.sleep(0.1)
            if vm.state is not VmState.ERROR:
                ops = [await cloud.get(o) for o in cloud.ids("operation.Accepted")]
                raise AssertionError(f"vm {vm.state}: " + "; ".join(
                    f"{o.kind} {o.state.value} " + ",".join(
                        f"{r.subsystem}.{r.action}:{r.status.value}/{len(r.attempts)}"
                        for r in o.runs.values()) for o in ops))
            assert len(vm.avoid_hosts) == hosts
            for host_id in cloud.ids("host.Registered"):
                assert (await cloud.get(host_id)).claims == {}
            for volume_id in cloud.ids("volume.Allocated"):
                assert (await cloud.get(volume_id)).state is VolumeState.EXPUNGED
            for uri in uris:  # only the pre-existing domain is left, and no volume file
                assert [d.name() for d in connection(uri).listAllDomains()] == ["web-1"]
                assert str(vm_id) not in [d.UUIDString()
                                          for d in connection(uri).listAllDomains()]
            assert list((tmp_path / "pool").glob("*")) == []
            # the blockers this test put on the hosts are no VM's: the check names them
            cloud.expect_difference("domain_without_vm", "domain web-1")

    asyncio.run(scenario())


def test_a_deploy_whose_domain_never_starts_leaves_no_domain_defined(
        tmp_path: Path, pg_dsn: str, nats_url: str,
        libvirt_host_factory: Callable[..., str], monkeypatch: pytest.MonkeyPatch) -> None:
    # Every host defines the domain, then fails to start it: the define-and-start step
    # fails (its undo never runs), on each host, and the VM ends in Error. No host may keep
    # the domain it defined.
    uris = [libvirt_host_factory(f"kvm-{i}", cpus=4, memory_mib=8192) for i in range(2)]
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, nats_urls=(nats_url,),
                        data_dir=tmp_path / "data")
    migrate_all(settings)
    inventory = write_inventory(tmp_path, uris)
    started: list[str] = []

    def create(self: libvirt.virDomain, *args: object) -> int:
        started.append(self.UUIDString())
        raise libvirt.libvirtError("injected: the host could not start the domain")

    monkeypatch.setattr(libvirt.virDomain, "create", create)

    async def scenario() -> None:
        async with running_cloud(settings) as cloud:
            ids = await prepare(cloud, inventory, network=False)
            accepted = await cloud.command(DeployVm(
                name="web-1", account="alice", zone_id=ids.zone_id,
                service_offering_id=ids.offering_id, template_id=ids.template_id))
            vm_id = UUID(accepted["vm_id"])
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                vm: VirtualMachine = await cloud.get(vm_id)
                if vm.state is VmState.ERROR:
                    break
                await asyncio.sleep(0.1)
            assert vm.state is VmState.ERROR
            assert set(started) == {str(vm_id)} and len(vm.avoid_hosts) == len(uris)
            for uri in uris:
                assert connection(uri).listAllDomains() == []
            for host_id in cloud.ids("host.Registered"):
                assert (await cloud.get(host_id)).claims == {}

    asyncio.run(scenario())


def test_network_shutdown_removes_its_libvirt_network_from_every_host(
        tmp_path: Path, pg_dsn: str, nats_url: str,
        libvirt_host_factory: Callable[..., str]) -> None:
    uris = [libvirt_host_factory(f"kvm-{i}", cpus=4, memory_mib=8192) for i in range(3)]
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, nats_urls=(nats_url,),
                        data_dir=tmp_path / "data")
    migrate_all(settings)
    inventory = write_inventory(tmp_path, uris)

    def has_network(uri: str, network_id: UUID) -> bool:
        return libvirt_network_name(network_id) in connection(uri).listNetworks() + \
            connection(uri).listDefinedNetworks()

    async def scenario() -> None:
        async with running_cloud(settings) as cloud:
            ids = await prepare(cloud, inventory)
            network_id = ids.network_id
            assert network_id is not None
            vm_ids: list[UUID] = []
            for name in ("web-1", "web-2"):  # on two hosts: the second avoids the first
                accepted = await cloud.command(DeployVm(
                    name=name, account="alice", zone_id=ids.zone_id,
                    service_offering_id=ids.offering_id, template_id=ids.template_id,
                    network_ids=(network_id,), anti_affinity_vm_ids=tuple(vm_ids)))
                op = await cloud.finished(accepted["operation_id"])
                assert op.state is OperationState.SUCCEEDED, op.failure
                vm_ids.append(UUID(accepted["vm_id"]))
            hosts = {(await cloud.get(vm_id)).host_id for vm_id in vm_ids}
            used = [(await cloud.get(h)).uri for h in hosts]
            assert len(used) == 2 and all(has_network(uri, network_id) for uri in used)
            with pytest.raises(Exception, match="still hold addresses"):
                await cloud.command(ShutdownNetworkCommand(network_id=network_id))

            for vm_id in vm_ids:
                destroyed = await cloud.command(DestroyVm(vm_id=vm_id))
                await cloud.finished(destroyed["operation_id"])
            for _ in range(600):  # the expunges follow the destroys (no delay)
                if (await cloud.get(network_id)).allocated_ips == {}:
                    break
                await asyncio.sleep(0.05)
            shutdown = await cloud.command(ShutdownNetworkCommand(network_id=network_id))
            op = await cloud.finished(shutdown["operation_id"])
            assert op.state is OperationState.SUCCEEDED, op.failure
            network: Network = await cloud.get(network_id)
            assert network.state.value == "Shutdown" and network.vlan is None
            # libvirt's own view: the network, its bridge and its rules are gone everywhere
            for uri in uris:
                assert not has_network(uri, network_id), uri

            # implemented again, a deploy makes it on its host once more
            implemented = await cloud.command(ImplementNetworkCommand(network_id=network_id))
            await cloud.finished(implemented["operation_id"])
            accepted = await cloud.command(DeployVm(
                name="web-3", account="alice", zone_id=ids.zone_id,
                service_offering_id=ids.offering_id, template_id=ids.template_id,
                network_ids=(network_id,)))
            op = await cloud.finished(accepted["operation_id"])
            assert op.state is OperationState.SUCCEEDED, op.failure
            vm: VirtualMachine = await cloud.get(UUID(accepted["vm_id"]))
            assert has_network((await cloud.get(vm.host_id)).uri, network_id)

    asyncio.run(scenario())


def test_a_root_disk_is_made_at_the_size_it_is_recorded(
        tmp_path: Path, pg_dsn: str, nats_url: str,
        libvirt_host_factory: Callable[..., str]) -> None:
    # A real qcow2 template: a 256 KiB file holding a 1 MiB disk.
    uris = [libvirt_host_factory("kvm-0", cpus=4, memory_mib=8192)]
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, nats_urls=(nats_url,),
                        data_dir=tmp_path / "data")
    migrate_all(settings)
    inventory = write_inventory(tmp_path, uris)
    source = tmp_path / "source" / "tiny.qcow2"
    old_digest = hashlib.sha256(source.read_bytes()).hexdigest()
    disk_images.empty_qcow2(source, MIB)
    inventory.write_text(inventory.read_text().replace(
        old_digest, hashlib.sha256(source.read_bytes()).hexdigest()))

    async def scenario() -> None:
        async with running_cloud(settings) as cloud:
            ids = await prepare(cloud, inventory, network=False)
            template: Template = await cloud.get(ids.template_id)
            assert template.size_bytes == MIB  # the disk's size, not the file's

            async def deploy(name: str, size: int | None) -> tuple[Volume, Path]:
                accepted = await cloud.command(DeployVm(
                    name=name, account="alice", zone_id=ids.zone_id,
                    service_offering_id=ids.offering_id, template_id=ids.template_id,
                    root_size_bytes=size))
                op = await cloud.finished(accepted["operation_id"])
                assert op.state is OperationState.SUCCEEDED, op.failure
                volume: Volume = await cloud.get(UUID(accepted["volume_id"]))
                assert volume.path is not None
                return volume, Path(volume.path)

            default, default_file = await deploy("web-1", None)
            assert default.size_bytes == disk_images.virtual_size(default_file) == MIB
            grown, grown_file = await deploy("web-2", 1024 * MIB)
            assert grown.size_bytes == disk_images.virtual_size(grown_file) == 1024 * MIB
            assert grown_file.stat().st_size == source.stat().st_size  # grown, not filled
            with pytest.raises(ValidationError, match="root_size_bytes"):
                await cloud.command(DeployVm(
                    name="web-3", account="alice", zone_id=ids.zone_id,
                    service_offering_id=ids.offering_id, template_id=ids.template_id,
                    root_size_bytes=MIB // 2))

    asyncio.run(scenario())


def test_a_migration_moves_the_nic_entries_to_the_target(
        tmp_path: Path, pg_dsn: str, nats_url: str,
        libvirt_host_factory: Callable[..., str]) -> None:
    uris = [libvirt_host_factory(f"kvm-{i}", cpus=4, memory_mib=8192) for i in range(2)]
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, nats_urls=(nats_url,),
                        data_dir=tmp_path / "data")
    migrate_all(settings)
    inventory = write_inventory(tmp_path, uris)

    def dhcp_entries(uri: str, network_id: UUID) -> list[tuple[str | None, str | None]]:
        lv_net = connection(uri).networkLookupByName(libvirt_network_name(network_id))
        return [(h.get("mac"), h.get("ip"))
                for h in ET.fromstring(lv_net.XMLDesc()).iterfind(".//dhcp/host")]

    async def scenario() -> None:
        async with running_cloud(settings) as cloud:
            ids = await prepare(cloud, inventory)
            assert ids.network_id is not None
            accepted = await cloud.command(DeployVm(
                name="web-1", account="alice", zone_id=ids.zone_id,
                service_offering_id=ids.offering_id, template_id=ids.template_id,
                network_ids=(ids.network_id,)))
            op = await cloud.finished(accepted["operation_id"])
            assert op.state is OperationState.SUCCEEDED, op.failure
            vm: VirtualMachine = await cloud.get(UUID(accepted["vm_id"]))
            source: Host = await cloud.get(vm.host_id)
            [nic_id] = vm.nics.values()
            nic: Nic = await cloud.get(nic_id)
            assert dhcp_entries(source.uri, ids.network_id) == [(nic.mac, nic.ip)]

            moved = await cloud.command(MigrateVm(vm_id=vm.id))
            op = await cloud.finished(moved["operation_id"])
            assert op.state is OperationState.SUCCEEDED, op.failure
            vm = await cloud.get(vm.id)
            target: Host = await cloud.get(vm.host_id)
            assert target.id != source.id and vm.last_host_id == source.id
            dom = connection(target.uri).lookupByUUIDString(str(vm.id))
            assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
            # libvirt's own view: the entry went with the VM; the source's network stays
            assert dhcp_entries(target.uri, ids.network_id) == [(nic.mac, nic.ip)]
            assert dhcp_entries(source.uri, ids.network_id) == []

    asyncio.run(scenario())
