"""VM operations end to end: the kernel, real workers (planner, storage, hypervisor) over NATS,
PostgreSQL, and libvirt's test driver. libvirt's own view is checked through its API."""

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4
from xml.etree import ElementTree as ET

import libvirt
import msgspec
import pytest

from aggregates.host import Host
from aggregates.network import Network
from aggregates.nic import Nic
from aggregates.operation import Operation, OperationState
from aggregates.template import Template, TemplateState
from aggregates.vm import VirtualMachine, VmState
from aggregates.volume import Volume, VolumeState
from gateways.stream.kernel_runner import KernelRunner
from gateways.stream.worker import Worker
from kernel.bootstrap import open_engine
from kernel.cloud.networks import CreateNetworkCommand, ImplementNetworkCommand
from kernel.cloud.templates import DownloadTemplateCommand
from kernel.cloud.vms import DeployVm, DestroyVm, StopVm
from kernel.inventory.loader import load_inventory_file
from kernel.settings import Settings
from kernel.steps.network import libvirt_network_name
from kernel.store.migrate import migrate
from subsystems.hypervisor.connections import connection
from subsystems.networkguru.follower import guru_config
from subsystems.registry import load_registry

PLUGINS = ("planner", "storage", "hypervisor", "networkguru", "networkelement")


def write_inventory(tmp: Path, host_uris: list[str]) -> Path:
    """Two hosts, a file pool, a file image store and a checksummed file template."""
    source = tmp / "source" / "tiny.qcow2"
    source.parent.mkdir(parents=True)
    source.write_bytes(b"QFI\xfb" + b"\0" * 65532)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    hosts = "".join(f'''
[[hosts]]
name = "kvm-{i}"
cluster = "c1"
uri = "{uri}"
cpu_cores = 4
cpu_mhz = 2000
memory_mib = 8192
''' for i, uri in enumerate(host_uris))
    path = tmp / "inventory.toml"
    path.write_text(f'''
[[zones]]
name = "z1"
network_type = "Advanced"
dns = ["192.0.2.53"]
guest_cidr = "10.1.0.0/16"
[[pods]]
name = "p1"
zone = "z1"
gateway = "10.0.0.1"
cidr = "10.0.0.0/24"
start_ip = "10.0.0.10"
end_ip = "10.0.0.200"
[[clusters]]
name = "c1"
pod = "p1"
hypervisor = "KVM"
{hosts}
[[storage_pools]]
name = "primary"
cluster = "c1"
uri = "file://{tmp / 'pool'}"
capacity_gib = 100
[[image_stores]]
name = "images"
zone = "z1"
url = "file://{tmp / 'images'}"
protocol = "nfs"
[[templates]]
name = "tiny"
zone = "z1"
url = "file://{source}"
format = "QCOW2"
os_type = "Other Linux (64-bit)"
checksum = "{{SHA-256}}{digest}"
[[service_offerings]]
name = "small"
cpu_cores = 2
cpu_mhz = 1000
memory_mib = 2048
''')
    return path


class Cloud:
    """The running kernel with its workers; blocking calls go to threads."""

    def __init__(self, engine: Any, settings: Settings) -> None:
        self.engine, self.settings, self.app = engine, settings, engine.app

    async def call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kw)

    async def command(self, command: Any) -> dict[str, Any]:
        out = await self.call(self.engine.execute, command, idempotency_key=f"k-{uuid4()}")
        return msgspec.json.decode(out.result)  # type: ignore[no-any-return]

    async def get(self, aggregate_id: UUID) -> Any:
        return await self.call(self.app.repository.get, aggregate_id)

    async def finished(self, operation_id: str, timeout: float = 30) -> Operation:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            op: Operation = await self.get(UUID(operation_id))
            if op.is_finished:
                return op
            await asyncio.sleep(0.05)
        raise AssertionError(f"operation {operation_id} did not finish: {op.state}")

    def ids(self, topic: str) -> list[UUID]:
        return [UUID(str(n.originator_id)) for n in self.app.recorder.select_notifications(
            start=None, limit=10_000, topics=(topic,))]


@asynccontextmanager
async def running_cloud(settings: Settings) -> AsyncIterator[Cloud]:
    platform, engine, feed = await asyncio.to_thread(open_engine, settings)
    configs = {"planner": {"settings": settings}, "networkguru": guru_config(settings)}
    registry = load_registry(PLUGINS, configs)
    stop = asyncio.Event()
    workers = [Worker(registry.plugin(name).subsystem, servers=list(settings.nats_urls),
                      concurrency=4, fetch_timeout=0.25) for name in PLUGINS]
    runner = KernelRunner(engine, feed, list(settings.nats_urls))
    tasks = [asyncio.create_task(w.run(stop)) for w in workers]
    tasks.append(asyncio.create_task(runner.run(stop)))
    try:
        await asyncio.wait_for(asyncio.gather(*(w.ready.wait() for w in workers)), 30)
        yield Cloud(engine, settings)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        platform.close()


def domain_xml(uri: str, vm_id: UUID) -> ET.Element:
    dom = connection(uri).lookupByUUIDString(str(vm_id))
    return ET.fromstring(dom.XMLDesc())


def test_deploy_stop_and_destroy_through_real_workers(
        tmp_path: Path, pg_dsn: str, nats_url: str,
        libvirt_host_factory: Callable[..., str]) -> None:
    uris = [libvirt_host_factory(f"kvm-{i}", cpus=4, memory_mib=8192) for i in range(2)]
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, nats_urls=(nats_url,),
                        data_dir=tmp_path / "data")
    migrate(settings)
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
            assert not ("10.1.1.2" <= nic.ip <= "10.1.1.9") and nic.ip != network.gateway
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
            assert (await cloud.get(vm.id)).state is VmState.DESTROYED
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
    migrate(settings)
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

    asyncio.run(scenario())
