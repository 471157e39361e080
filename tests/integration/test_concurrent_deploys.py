"""200 deploys at once onto a fleet with room for fewer: no host over-committed, no address
given twice, and the deploys that did not fit leave nothing behind."""

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from uuid import UUID

import libvirt
from support.cloud import prepare, running_cloud, write_inventory

from aggregates.host import Host
from aggregates.network import Network
from aggregates.nic import Nic
from aggregates.vm import VirtualMachine, VmState
from aggregates.volume import Volume, VolumeState
from kernel.bootstrap.migrations import migrate_all
from kernel.cloud.vms import DeployVm
from kernel.settings import Settings
from subsystems.libvirt.connections import connection

DEPLOYS = 200
HOSTS, HOST_CORES, VM_CORES = 3, 16, 1  # room for 48 VMs by cpu (factor 1.0)


def test_200_concurrent_deploys_never_over_commit_nor_share_an_address(
        tmp_path: Path, pg_dsn: str, nats_url: str,
        libvirt_host_factory: Callable[..., str]) -> None:
    uris = [libvirt_host_factory(f"kvm-{i}", cpus=HOST_CORES, memory_mib=65536)
            for i in range(HOSTS)]
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, nats_urls=(nats_url,),
                        data_dir=tmp_path / "data")
    migrate_all(settings)
    inventory = write_inventory(tmp_path, uris, host_cores=HOST_CORES, host_memory_mib=65536,
                                vm_cores=VM_CORES, vm_memory_mib=512)

    async def scenario() -> None:
        async with running_cloud(settings) as cloud:
            ids = await prepare(cloud, inventory)
            assert ids.network_id is not None
            accepted = await asyncio.gather(*(cloud.command(DeployVm(
                name=f"vm-{i}", account=f"acct-{i % 5}", zone_id=ids.zone_id,
                service_offering_id=ids.offering_id, template_id=ids.template_id,
                network_ids=(ids.network_id,))) for i in range(DEPLOYS)))
            for a in accepted:
                await cloud.finished(a["operation_id"], timeout=180)
            vms: list[VirtualMachine] = [await cloud.get(UUID(a["vm_id"])) for a in accepted]
            # Deploys that failed at the hypervisor are retried on other hosts: wait for them.
            for _ in range(600):
                if all(vm.state in (VmState.RUNNING, VmState.ERROR) for vm in vms):
                    break
                await asyncio.sleep(0.1)
                vms = [await cloud.get(vm.id) for vm in vms]
            states = Counter(vm.state for vm in vms)
            assert set(states) <= {VmState.RUNNING, VmState.ERROR}, states
            running = [vm for vm in vms if vm.state is VmState.RUNNING]
            why = Counter(vm.last_error.split(":")[0][:120] for vm in vms
                          if vm.state is VmState.ERROR)
            assert len(running) == HOSTS * HOST_CORES // VM_CORES, (states, why)

            # No host over-committed: the claims fit, one per running VM, and libvirt agrees.
            for host_id in cloud.ids("host.Registered"):
                host: Host = await cloud.get(host_id)
                assert host.used_cpu_cores <= host.total_cpu_cores
                on_host = {vm.id for vm in running if vm.host_id == host.id}
                assert {c[0] for c in host.claims.values()} == on_host
                active = {UUID(d.UUIDString()) for d in connection(host.uri).listAllDomains()
                          if d.state()[0] == libvirt.VIR_DOMAIN_RUNNING}
                assert active == on_host

            # No address given twice; exactly the running VMs hold one.
            network: Network = await cloud.get(ids.network_id)
            nics: list[Nic] = [await cloud.get(vm.nics[0]) for vm in running]
            addresses = [nic.ip for nic in nics]
            assert len(set(addresses)) == len(addresses) == len(running)
            assert sorted(network.allocated_ips) == sorted(addresses)  # type: ignore[type-var]
            assert len({nic.mac for nic in nics}) == len(nics)

            # The VMs that did not fit hold nothing.
            for vm in vms:
                if vm.state is VmState.ERROR:
                    assert vm.nics == {} and vm.disks == {}
            volumes: list[Volume] = [await cloud.get(v)
                                     for v in cloud.ids("volume.Allocated")]
            ready = [v for v in volumes if v.state is VolumeState.READY]
            assert {v.vm_id for v in ready} == {vm.id for vm in running}
            assert all(v.state in (VolumeState.READY, VolumeState.EXPUNGED) for v in volumes)

    asyncio.run(scenario())
