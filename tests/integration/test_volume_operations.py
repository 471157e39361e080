"""Volume operations and VM migration end to end: the kernel, real workers (planner, storage,
hypervisor, snapshot, backup, network) over NATS, PostgreSQL, and libvirt's test driver.
What each step did is checked in libvirt's own view and on the files it made."""

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID
from xml.etree import ElementTree as ET

import libvirt
import pytest
from support.cloud import Cloud, prepare, running_cloud, write_inventory

from aggregates.backup import Backup, BackupState
from aggregates.errors import DomainRuleError
from aggregates.host import Host
from aggregates.nic import Nic
from aggregates.operation import OperationState
from aggregates.snapshot import Snapshot, SnapshotState
from aggregates.vm import VirtualMachine, VmState
from aggregates.volume import Volume, VolumeState
from kernel.bootstrap.migrations import migrate_all
from kernel.cloud.vm_moves import MigrateVm
from kernel.cloud.vms import DeployVm, DestroyVm, StartVm, StopVm
from kernel.cloud.volume_copies import BackupVmCommand, SnapshotVolumeCommand
from kernel.cloud.volume_moves import DeleteVolumeCommand, MigrateVolumeCommand
from kernel.cloud.volumes import (
    AttachVolumeCommand,
    CreateVolumeCommand,
    DetachVolumeCommand,
    ResizeVolumeCommand,
)
from kernel.settings import Settings
from kernel.steps.network import libvirt_network_name
from subsystems.libvirt.connections import connection

MIB = 1024**2


def persistent_disks(uri: str, vm_id: UUID) -> list[str | None]:
    """The disk files of the domain's persistent (inactive) definition, as libvirt has it."""
    dom = connection(uri).lookupByUUIDString(str(vm_id))
    xml = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    return [d.get("file") for d in xml.iterfind("devices/disk/source")]


def domain_ids(uri: str) -> set[str]:
    return {d.UUIDString() for d in connection(uri).listAllDomains()}


async def succeeded(cloud: Cloud, accepted: dict[str, Any]) -> None:
    op = await cloud.finished(accepted["operation_id"])
    assert op.state is OperationState.SUCCEEDED, (op.kind, op.failure)


def test_data_volume_life_and_migration_through_real_workers(
        tmp_path: Path, pg_dsn: str, nats_url: str,
        libvirt_host_factory: Callable[..., str]) -> None:
    uris = [libvirt_host_factory(f"kvm-{i}", cpus=4, memory_mib=8192) for i in range(2)]
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, nats_urls=(nats_url,),
                        data_dir=tmp_path / "data")
    migrate_all(settings)
    inventory = write_inventory(tmp_path, uris)

    async def scenario() -> None:
        async with running_cloud(settings) as cloud:
            ids = await prepare(cloud, inventory)
            assert ids.network_id is not None
            deployed = await cloud.command(DeployVm(
                name="web-1", account="alice", zone_id=ids.zone_id,
                service_offering_id=ids.offering_id, template_id=ids.template_id,
                network_ids=(ids.network_id,)))
            await succeeded(cloud, deployed)
            vm: VirtualMachine = await cloud.get(UUID(deployed["vm_id"]))
            source: Host = await cloud.get(vm.host_id)

            # create a data volume on the pool, then attach it: the domain's persistent
            # definition names its file
            created = await cloud.command(CreateVolumeCommand(
                name="data-1", account="alice", zone_id=ids.zone_id, size_bytes=MIB))
            await succeeded(cloud, created)
            volume: Volume = await cloud.get(UUID(created["volume_id"]))
            assert volume.state is VolumeState.READY and volume.path is not None
            assert Path(volume.path).parent == tmp_path / "pool"
            assert Path(volume.path).stat().st_size == MIB
            await succeeded(cloud, await cloud.command(
                AttachVolumeCommand(volume_id=volume.id, vm_id=vm.id)))
            vm = await cloud.get(vm.id)
            assert vm.disks[1] == volume.id
            assert volume.path in persistent_disks(source.uri, vm.id)

            # snapshot it: a verified copy beside the pool
            Path(volume.path).write_bytes(b"data-1 content".ljust(MIB, b"\0"))
            snapped = await cloud.command(SnapshotVolumeCommand(volume_id=volume.id))
            await succeeded(cloud, snapped)
            snapshot: Snapshot = await cloud.get(UUID(snapped["snapshot_id"]))
            assert snapshot.state is SnapshotState.CREATED_ON_PRIMARY
            assert snapshot.primary_path is not None
            copy = Path(snapshot.primary_path)
            assert copy.parent == tmp_path / "pool-snapshots"
            assert snapshot.sha256 == hashlib.sha256(copy.read_bytes()).hexdigest() == \
                hashlib.sha256(Path(volume.path).read_bytes()).hexdigest()

            # detach it: gone from the definition; then grow it
            await succeeded(cloud, await cloud.command(DetachVolumeCommand(volume_id=volume.id)))
            assert volume.path not in persistent_disks(source.uri, vm.id)
            assert (await cloud.get(vm.id)).disks == {0: vm.root_volume_id}
            await succeeded(cloud, await cloud.command(
                ResizeVolumeCommand(volume_id=volume.id, size_bytes=2 * MIB)))
            volume = await cloud.get(volume.id)
            assert (volume.state, volume.size_bytes, volume.vm_id) == \
                (VolumeState.READY, 2 * MIB, None)
            assert volume.path is not None
            assert Path(volume.path).stat().st_size == 2 * MIB
            assert Path(volume.path).read_bytes().startswith(b"data-1 content")
            assert volume.pool_id is not None
            pool = await cloud.get(volume.pool_id)
            assert pool.claims[next(c for c, (v, _) in pool.claims.items()
                                    if v == volume.id)] == (volume.id, 2 * MIB)

            # migrate the running VM: it runs on the other host, and is gone from this one
            moved = await cloud.command(MigrateVm(vm_id=vm.id))
            await succeeded(cloud, moved)
            vm = await cloud.get(vm.id)
            target: Host = await cloud.get(vm.host_id)
            assert vm.state is VmState.RUNNING and target.id != source.id
            dom = connection(target.uri).lookupByUUIDString(str(vm.id))
            assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
            assert str(vm.id) not in domain_ids(source.uri)
            # its NIC's network and DHCP entry were made on the target first
            [nic_id] = vm.nics.values()
            nic: Nic = await cloud.get(nic_id)
            lv_net = connection(target.uri).networkLookupByName(
                libvirt_network_name(ids.network_id))
            assert lv_net.isActive()
            assert (nic.mac, nic.ip) in [(h.get("mac"), h.get("ip")) for h in ET.fromstring(
                lv_net.XMLDesc()).iterfind(".//dhcp/host")]
            assert (await cloud.get(source.id)).claims == {}
            assert [c[0] for c in (await cloud.get(target.id)).claims.values()] == [vm.id]

            # its root volume is still found through the host whose pool holds it
            backed = await cloud.command(BackupVmCommand(vm_id=vm.id,
                                                         target_dir=str(tmp_path / "backups")))
            await succeeded(cloud, backed)
            backup: Backup = await cloud.get(UUID(backed["backup_id"]))
            assert backup.state is BackupState.BACKED_UP
            assert (tmp_path / "backups" / str(backup.id) / "manifest.json").is_file()

    asyncio.run(scenario())


def pool_volumes(uri: str, pool: str) -> list[str]:
    """The volume names libvirt lists in a pool of a host."""
    lv_pool = connection(uri).storagePoolLookupByName(pool)
    lv_pool.refresh(0)
    return list(lv_pool.listVolumes())


def test_volume_migration_between_pools_and_delete_through_real_workers(
        tmp_path: Path, pg_dsn: str, nats_url: str,
        libvirt_host_factory: Callable[..., str]) -> None:
    uris = [libvirt_host_factory(f"kvm-{i}", cpus=4, memory_mib=8192) for i in range(2)]
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, nats_urls=(nats_url,),
                        data_dir=tmp_path / "data")
    migrate_all(settings)
    inventory = write_inventory(tmp_path, uris, second_pool=True)

    async def scenario() -> None:
        async with running_cloud(settings) as cloud:
            ids = await prepare(cloud, inventory, network=False)
            pools = {p.name: p for p in [await cloud.get(i)
                                         for i in cloud.ids("storage_pool.Created")]}
            first, second = pools["primary"], pools["primary-2"]

            # a data volume on the first pool, with content
            created = await cloud.command(CreateVolumeCommand(
                name="data-1", account="alice", zone_id=ids.zone_id, size_bytes=MIB))
            await succeeded(cloud, created)
            volume: Volume = await cloud.get(UUID(created["volume_id"]))
            assert volume.pool_id == first.id and volume.path is not None
            host: Host = await cloud.get(volume.host_id)
            old = Path(volume.path)
            content = b"data-1 content".ljust(MIB, b"\x5a")
            old.write_bytes(content)
            name = old.name

            # migrate it: the bytes are in the second pool's file, the first holds nothing
            await succeeded(cloud, await cloud.command(
                MigrateVolumeCommand(volume_id=volume.id, pool_id=second.id)))
            volume = await cloud.get(volume.id)
            assert (volume.state, volume.pool_id) == (VolumeState.READY, second.id)
            assert volume.path is not None
            new = Path(volume.path)
            assert new == tmp_path / "pool-2" / name
            assert new.read_bytes() == content and not old.exists()
            assert name in pool_volumes(host.uri, "primary-2")
            assert name not in pool_volumes(host.uri, "primary")
            first, second = await cloud.get(first.id), await cloud.get(second.id)
            assert [v for v, _ in first.claims.values()].count(volume.id) == 0
            assert [c for c in second.claims.values() if c[0] == volume.id] == \
                [(volume.id, MIB)]

            # delete it: the file, libvirt's volume and the claim are gone
            await succeeded(cloud, await cloud.command(
                DeleteVolumeCommand(volume_id=volume.id)))
            volume = await cloud.get(volume.id)
            assert volume.state is VolumeState.EXPUNGED
            assert not new.exists() and name not in pool_volumes(host.uri, "primary-2")
            second = await cloud.get(second.id)
            assert all(v != volume.id for v, _ in second.claims.values())

            # a Stopped VM's root volume moves too, and the VM starts from its new path
            deployed = await cloud.command(DeployVm(
                name="web-1", account="alice", zone_id=ids.zone_id,
                service_offering_id=ids.offering_id, template_id=ids.template_id))
            await succeeded(cloud, deployed)
            vm: VirtualMachine = await cloud.get(UUID(deployed["vm_id"]))
            root: Volume = await cloud.get(vm.root_volume_id)
            assert root.pool_id == first.id and root.path is not None
            root_content = Path(root.path).read_bytes()
            with pytest.raises(DomainRuleError, match="stop the VM"):  # not while it runs
                await cloud.command(MigrateVolumeCommand(volume_id=root.id, pool_id=second.id))
            await succeeded(cloud, await cloud.command(StopVm(vm_id=vm.id)))
            await succeeded(cloud, await cloud.command(
                MigrateVolumeCommand(volume_id=root.id, pool_id=second.id)))
            moved_root: Volume = await cloud.get(root.id)
            assert moved_root.path is not None
            assert Path(moved_root.path).parent == tmp_path / "pool-2"
            assert Path(moved_root.path).read_bytes() == root_content
            assert not Path(root.path).exists()
            await succeeded(cloud, await cloud.command(StartVm(vm_id=vm.id)))
            vm = await cloud.get(vm.id)
            started_on: Host = await cloud.get(vm.host_id)
            assert vm.state is VmState.RUNNING
            assert persistent_disks(started_on.uri, vm.id) == [moved_root.path]

    asyncio.run(scenario())


def test_a_vm_expunged_with_a_data_volume_attached_leaves_it_ready_and_detached(
        tmp_path: Path, pg_dsn: str, nats_url: str,
        libvirt_host_factory: Callable[..., str]) -> None:
    uris = [libvirt_host_factory("kvm-0", cpus=4, memory_mib=8192)]
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, nats_urls=(nats_url,),
                        data_dir=tmp_path / "data")
    migrate_all(settings)
    inventory = write_inventory(tmp_path, uris)

    async def scenario() -> None:
        async with running_cloud(settings) as cloud:
            ids = await prepare(cloud, inventory, network=False)
            deployed = await cloud.command(DeployVm(
                name="web-1", account="alice", zone_id=ids.zone_id,
                service_offering_id=ids.offering_id, template_id=ids.template_id))
            await succeeded(cloud, deployed)
            vm: VirtualMachine = await cloud.get(UUID(deployed["vm_id"]))
            host: Host = await cloud.get(vm.host_id)
            created = await cloud.command(CreateVolumeCommand(
                name="data-1", account="alice", zone_id=ids.zone_id, size_bytes=MIB,
                vm_id=vm.id))
            await succeeded(cloud, created)
            volume: Volume = await cloud.get(UUID(created["volume_id"]))
            assert volume.vm_id == vm.id and volume.path is not None
            assert volume.path in persistent_disks(host.uri, vm.id)

            await succeeded(cloud, await cloud.command(DestroyVm(vm_id=vm.id)))
            for _ in range(100):  # the expunge follows the destroy (no delay)
                if (await cloud.get(vm.id)).state is VmState.EXPUNGED:
                    break
                await asyncio.sleep(0.05)
            vm = await cloud.get(vm.id)
            assert vm.state is VmState.EXPUNGED and vm.disks == {}
            assert str(vm.id) not in domain_ids(host.uri)
            volume = await cloud.get(volume.id)
            assert (volume.state, volume.vm_id) == (VolumeState.READY, None)
            assert volume.path is not None and Path(volume.path).is_file()

            # an ordinary detached volume: it is deleted, file and all
            await succeeded(cloud, await cloud.command(DeleteVolumeCommand(volume_id=volume.id)))
            assert (await cloud.get(volume.id)).state is VolumeState.EXPUNGED
            assert not Path(volume.path).exists()

    asyncio.run(scenario())
