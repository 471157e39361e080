"""The platform on real libvirtd + qemu (TCG): every VM and volume operation, checked from
inside the guest where it matters, and the failure paths only a real hypervisor shows.

The kernel and real workers run over PostgreSQL and NATS as in the test-driver tests; the
one host is the session's private libvirtd (`qemu_host`), the template is the tiny guest of
`support.guest_image`, and the guest's serial console (`support.guest_console`) says what the
guest sees: its boot id, the address it leased, its disks and their sizes. TCG boots are slow
on loaded cores, so each test drives one booted guest through a whole story.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any
from uuid import UUID

import libvirt
import pytest
from fixtures.qemu_host import QemuHost
from support.cloud import Cloud, Prepared, prepare, running_cloud, write_inventory
from support.guest_console import GuestConsole
from support.guest_image import GuestImage

from aggregates.entity_queue import EntityQueue
from aggregates.nic import Nic
from aggregates.operation import Operation, OperationState
from aggregates.snapshot import Snapshot
from aggregates.vm import VirtualMachine, VmState
from aggregates.volume import Volume, VolumeState
from kernel.bootstrap.migrations import migrate_all
from kernel.cloud.networks import ShutdownNetworkCommand
from kernel.cloud.vm_moves import MigrateVm, RebootVm
from kernel.cloud.vms import DeployVm, DestroyVm, StartVm, StopVm
from kernel.cloud.volume_copies import SnapshotVolumeCommand
from kernel.cloud.volume_moves import DeleteVolumeCommand
from kernel.cloud.volumes import (
    AttachVolumeCommand,
    CreateVolumeCommand,
    DetachVolumeCommand,
    ResizeVolumeCommand,
)
from kernel.settings import Settings
from subsystems.libvirt.connections import close_all

pytestmark = pytest.mark.qemu

MIB = 1 << 20
BOOT_TIMEOUT = 120.0  # TCG on two loaded cores: a boot to DHCP takes 10-30 s


def qemu_settings(tmp_path: Path, pg_dsn: str, nats_url: str) -> Settings:
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, nats_urls=(nats_url,),
                        data_dir=tmp_path / "data")
    migrate_all(settings)
    return settings


def qemu_inventory(qemu_host: QemuHost, name: str, template: Path) -> tuple[Path, Path]:
    """An inventory whose one host is the private libvirtd, its pool and image store in a
    folder qemu can reach; returns (inventory, that folder)."""
    folder = qemu_host.storage_dir / name
    folder.mkdir(mode=0o755)
    return write_inventory(folder, [qemu_host.uri], host_cores=2, host_memory_mib=4096,
                           vm_cores=1, vm_memory_mib=192, template_image=template), folder


def run_scenario(scenario: Callable[[], Coroutine[Any, Any, None]], *hosts: QemuHost) -> None:
    """Run a test's scenario, close this process's libvirt connections, then check that it
    left no domain and no network on `hosts`."""
    try:
        asyncio.run(scenario())
    finally:
        close_all()
    for host in hosts:
        left = host.leftovers()
        assert not left.domains and not left.networks, left


async def succeeded(cloud: Cloud, accepted: dict[str, Any], timeout: float = 120) -> Operation:
    op = await cloud.finished(accepted["operation_id"], timeout=timeout)
    failed = op.runs[op.failed_step] if op.failed_step is not None else None
    assert op.state is OperationState.SUCCEEDED, (
        op.kind, op.state, failed and f"{failed.subsystem}.{failed.action}",
        failed and failed.attempts[-1].message)
    return op


async def deploy(cloud: Cloud, ids: Prepared, name: str) -> VirtualMachine:
    assert ids.network_id is not None
    deployed = await cloud.command(DeployVm(
        name=name, account="alice", zone_id=ids.zone_id, service_offering_id=ids.offering_id,
        template_id=ids.template_id, network_ids=(ids.network_id,)))
    await succeeded(cloud, deployed)
    vm: VirtualMachine = await cloud.get(UUID(deployed["vm_id"]))
    assert vm.state is VmState.RUNNING
    return vm


async def status(console: GuestConsole, predicate: Any, *, since: int = 0,
                 timeout: float = BOOT_TIMEOUT) -> Any:
    return await asyncio.to_thread(console.wait_status, predicate, since=since,
                                   timeout=timeout)


async def expunge_all(cloud: Cloud, ids: Prepared, vm: VirtualMachine) -> None:
    """Destroy and expunge the VM, then shut its network down: nothing may stay in libvirt."""
    await succeeded(cloud, await cloud.command(DestroyVm(vm_id=vm.id)))
    deadline = time.monotonic() + 60
    while (await cloud.get(vm.id)).state is not VmState.EXPUNGED:  # a timer expunges it
        assert time.monotonic() < deadline, (await cloud.get(vm.id)).state
        await asyncio.sleep(0.1)
    assert ids.network_id is not None
    await succeeded(cloud, await cloud.command(ShutdownNetworkCommand(network_id=ids.network_id)))


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def domain_state(qemu_host: QemuHost, vm_id: UUID) -> int | None:
    conn = qemu_host.connect()
    try:
        return int(conn.lookupByUUIDString(str(vm_id)).state()[0])
    except libvirt.libvirtError:
        return None
    finally:
        conn.close()


def test_a_vm_and_its_volumes_through_every_operation_on_real_qemu(
        tmp_path: Path, pg_dsn: str, nats_url: str, qemu_host: QemuHost,
        guest_image: GuestImage) -> None:
    settings = qemu_settings(tmp_path, pg_dsn, nats_url)
    inventory, folder = qemu_inventory(qemu_host, "story", guest_image.root)

    async def scenario() -> None:
        async with running_cloud(settings) as cloud:
            ids = await prepare(cloud, inventory, cidr="10.1.1.0/24")
            vm = await deploy(cloud, ids, "web-1")
            [nic_id] = vm.nics.values()
            nic: Nic = await cloud.get(nic_id)
            console = GuestConsole(qemu_host.uri, str(vm.id))
            try:
                # the address the guest leased is the one the platform allocated
                booted = await status(console, lambda s: s.ip is not None)
                assert booted.ip == nic.ip
                assert set(booted.disks) == {"vda"}

                # a data volume, attached: it appears in the guest with its size
                created = await cloud.command(CreateVolumeCommand(
                    name="data-1", account="alice", zone_id=ids.zone_id, size_bytes=64 * MIB))
                await succeeded(cloud, created)
                volume: Volume = await cloud.get(UUID(created["volume_id"]))
                await succeeded(cloud, await cloud.command(
                    AttachVolumeCommand(volume_id=volume.id, vm_id=vm.id)))
                await status(console, lambda s: s.disks.get("vdb") == 64 * MIB,
                             since=console.mark())

                # detached: gone from the guest
                await succeeded(cloud, await cloud.command(
                    DetachVolumeCommand(volume_id=volume.id)))
                await status(console, lambda s: "vdb" not in s.disks, since=console.mark(),
                             timeout=30)

                # resized while detached, attached again: the guest sees the new size
                await succeeded(cloud, await cloud.command(
                    ResizeVolumeCommand(volume_id=volume.id, size_bytes=128 * MIB)))
                await succeeded(cloud, await cloud.command(
                    AttachVolumeCommand(volume_id=volume.id, vm_id=vm.id)))
                await status(console, lambda s: s.disks.get("vdb") == 128 * MIB,
                             since=console.mark(), timeout=30)
                await succeeded(cloud, await cloud.command(
                    DetachVolumeCommand(volume_id=volume.id)))
                await status(console, lambda s: "vdb" not in s.disks, since=console.mark(),
                             timeout=30)

                # a reboot really reboots: a new boot id, and the same address again
                await succeeded(cloud, await cloud.command(RebootVm(vm_id=vm.id)))
                rebooted = await status(
                    console, lambda s: s.boot_id != booted.boot_id and s.ip is not None)
                assert rebooted.ip == nic.ip

                # a stop asks the guest by ACPI, and the guest powers off by itself
                mark = console.mark()
                started = time.monotonic()
                await succeeded(cloud, await cloud.command(StopVm(vm_id=vm.id)))
                assert time.monotonic() - started < 30
                assert any("CK-EVENT power-button" in line for line in console.lines()[mark:])
                assert (await cloud.get(vm.id)).state is VmState.STOPPED
                assert domain_state(qemu_host, vm.id) is None  # a stop frees the host

                # a snapshot of the stopped VM's root volume
                snapped = await cloud.command(SnapshotVolumeCommand(
                    volume_id=vm.root_volume_id))
                await succeeded(cloud, snapped)
                snapshot: Snapshot = await cloud.get(UUID(snapped["snapshot_id"]))
                root: Volume = await cloud.get(vm.root_volume_id)
                assert snapshot.primary_path is not None and root.path is not None
                # the disk the guest booted from, byte for byte (it is off: nothing writes)
                assert file_sha256(Path(snapshot.primary_path)) == snapshot.sha256 == \
                    file_sha256(Path(root.path))

                # started again: a new boot, the same address
                await succeeded(cloud, await cloud.command(StartVm(vm_id=vm.id)))
                again = await status(console, lambda s: s.boot_id not in (
                    booted.boot_id, rebooted.boot_id) and s.ip is not None)
                assert again.ip == nic.ip and set(again.disks) == {"vda"}
            finally:
                await asyncio.to_thread(console.close)
            # destroyed and expunged: nothing left in libvirt, no volume file in the pool
            await expunge_all(cloud, ids, vm)
            assert domain_state(qemu_host, vm.id) is None
            assert not Path(root.path).exists()
            assert (await cloud.get(volume.id)).state is VolumeState.READY  # detached: kept
            await succeeded(cloud, await cloud.command(DeleteVolumeCommand(volume_id=volume.id)))
            assert volume.path is not None and not Path(volume.path).exists()
        close_all()

    run_scenario(scenario, qemu_host)
    del folder


def test_a_guest_that_ignores_acpi_is_stopped_by_force_and_keeps_its_disk(
        tmp_path: Path, pg_dsn: str, nats_url: str, qemu_host: QemuHost,
        guest_image: GuestImage) -> None:
    settings = qemu_settings(tmp_path, pg_dsn, nats_url)
    inventory, _ = qemu_inventory(qemu_host, "deaf", guest_image.ignore_acpi)

    async def scenario() -> None:
        async with running_cloud(settings) as cloud:
            ids = await prepare(cloud, inventory, cidr="10.1.2.0/24")
            vm = await deploy(cloud, ids, "deaf-1")
            console = GuestConsole(qemu_host.uri, str(vm.id))
            try:
                await status(console, lambda s: s.ip is not None)
                created = await cloud.command(CreateVolumeCommand(
                    name="data-1", account="alice", zone_id=ids.zone_id, size_bytes=16 * MIB))
                await succeeded(cloud, created)
                volume_id = UUID(created["volume_id"])
                await succeeded(cloud, await cloud.command(
                    AttachVolumeCommand(volume_id=volume_id, vm_id=vm.id)))

                # the guest never lets the disk go: the detach is failed or retried, never done
                detach = await cloud.command(DetachVolumeCommand(volume_id=volume_id))
                op: Operation = await cloud.finished(detach["operation_id"], timeout=120)
                volume: Volume = await cloud.get(volume_id)
                assert op.state is not OperationState.SUCCEEDED or volume.vm_id == vm.id, \
                    "a detach the guest never completed was reported as done"
                assert volume.vm_id == vm.id

                # the stop waits its short grace, then powers the guest off
                mark = console.mark()
                started = time.monotonic()
                await succeeded(cloud, await cloud.command(
                    StopVm(vm_id=vm.id, force_after_seconds=3.0)))
                took = time.monotonic() - started
                assert 3.0 <= took < 30, took
                assert not any("CK-EVENT" in line for line in console.lines()[mark:])
                assert domain_state(qemu_host, vm.id) is None
            finally:
                await asyncio.to_thread(console.close)
            await expunge_all(cloud, ids, vm)
            assert domain_state(qemu_host, vm.id) is None
            await succeeded(cloud, await cloud.command(DeleteVolumeCommand(volume_id=volume_id)))

    run_scenario(scenario)


def test_a_deploy_that_fails_after_define_leaves_nothing_in_libvirt(
        tmp_path: Path, pg_dsn: str, nats_url: str, qemu_host: QemuHost) -> None:
    settings = qemu_settings(tmp_path, pg_dsn, nats_url)
    # a template whose backing file is missing: storage copies it and define takes it, but
    # qemu cannot open the disk, so the start fails after the define
    broken = tmp_path / "broken.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-F", "raw",
                    "-b", "/nonexistent/ck-base.raw", str(broken), "32M"], check=True)
    inventory, _ = qemu_inventory(qemu_host, "broken", broken)

    async def scenario() -> None:
        async with running_cloud(settings) as cloud:
            ids = await prepare(cloud, inventory, cidr="10.1.3.0/24")
            assert ids.network_id is not None
            deployed = await cloud.command(DeployVm(
                name="broken-1", account="alice", zone_id=ids.zone_id,
                service_offering_id=ids.offering_id, template_id=ids.template_id,
                network_ids=(ids.network_id,)))
            op = await cloud.finished(deployed["operation_id"], timeout=120)
            assert op.state is OperationState.ROLLED_BACK and op.failed_step is not None
            failed = op.runs[op.failed_step]
            message = failed.attempts[-1].message
            assert (failed.subsystem, failed.action) == ("hypervisor", "define"), message
            assert "start domain" in message and "ck-base.raw" in message, message
            vm: VirtualMachine = await cloud.get(UUID(deployed["vm_id"]))
            assert vm.state is not VmState.RUNNING
            assert domain_state(qemu_host, vm.id) is None
            assert ids.network_id is not None
            # The hypervisor failed, so the platform deploys again with this host avoided: that
            # second deploy takes a NIC of its own, finds no other host and rolls back. Only when
            # the VM is in Error with no operation left on it must the network be empty (an
            # empty network between the two deploys proves nothing).
            queue_id = EntityQueue.create_id(vm.id)
            deadline = time.monotonic() + 120
            while True:
                vm = await cloud.get(vm.id)
                queue: EntityQueue = await cloud.get(queue_id)
                if vm.state is VmState.ERROR and not queue.is_busy:
                    break
                assert time.monotonic() < deadline, (vm.state, queue.owner, queue.waiting)
                await asyncio.sleep(0.25)
            network = await cloud.get(ids.network_id)
            assert not network.allocated_ips, network.allocated_ips
            await succeeded(cloud, await cloud.command(
                ShutdownNetworkCommand(network_id=ids.network_id)))

    run_scenario(scenario, qemu_host)


def test_a_volume_resized_while_attached_has_the_new_size_in_the_guest(
        tmp_path: Path, pg_dsn: str, nats_url: str, qemu_host: QemuHost,
        guest_image: GuestImage) -> None:
    settings = qemu_settings(tmp_path, pg_dsn, nats_url)
    inventory, _ = qemu_inventory(qemu_host, "grow", guest_image.root)

    async def scenario() -> None:
        async with running_cloud(settings) as cloud:
            ids = await prepare(cloud, inventory, cidr="10.1.4.0/24")
            vm = await deploy(cloud, ids, "grow-1")
            console = GuestConsole(qemu_host.uri, str(vm.id))
            try:
                await status(console, lambda s: "vda" in s.disks)
                created = await cloud.command(CreateVolumeCommand(
                    name="data-1", account="alice", zone_id=ids.zone_id, size_bytes=64 * MIB))
                await succeeded(cloud, created)
                volume_id = UUID(created["volume_id"])
                await succeeded(cloud, await cloud.command(
                    AttachVolumeCommand(volume_id=volume_id, vm_id=vm.id)))
                await status(console, lambda s: s.disks.get("vdb") == 64 * MIB,
                             since=console.mark())
                # qemu holds the file's write lock: only libvirt's block resize can grow it
                await succeeded(cloud, await cloud.command(
                    ResizeVolumeCommand(volume_id=volume_id, size_bytes=96 * MIB)))
                await status(console, lambda s: s.disks.get("vdb") == 96 * MIB,
                             since=console.mark(), timeout=30)
                await succeeded(cloud, await cloud.command(
                    DetachVolumeCommand(volume_id=volume_id)))
            finally:
                await asyncio.to_thread(console.close)
            await expunge_all(cloud, ids, vm)
            await succeeded(cloud, await cloud.command(DeleteVolumeCommand(volume_id=volume_id)))

    run_scenario(scenario)


def test_a_running_vm_migrates_live_between_two_real_hosts(
        tmp_path: Path, pg_dsn: str, nats_url: str, qemu_pair: tuple[QemuHost, QemuHost],
        guest_image: GuestImage) -> None:
    settings = qemu_settings(tmp_path, pg_dsn, nats_url)
    source, target = qemu_pair
    folder = source.storage_dir / "moving"  # the cluster's pool: one folder both hosts see
    folder.mkdir(mode=0o755)
    inventory = write_inventory(folder, [source.uri, target.uri], host_cores=2,
                                host_memory_mib=4096, vm_cores=1, vm_memory_mib=192,
                                template_image=guest_image.root)

    async def scenario() -> None:
        async with running_cloud(settings) as cloud:
            ids = await prepare(cloud, inventory, cidr="10.1.5.0/24")
            vm = await deploy(cloud, ids, "moving-1")
            first = (await cloud.get(vm.host_id)).uri
            second = target.uri if first == source.uri else source.uri
            console = GuestConsole(first, str(vm.id))
            try:
                before = await status(console, lambda s: s.ip is not None)
            finally:
                await asyncio.to_thread(console.close)
            await succeeded(cloud, await cloud.command(MigrateVm(vm_id=vm.id)))
            moved: VirtualMachine = await cloud.get(vm.id)
            assert (await cloud.get(moved.host_id)).uri == second
            console = GuestConsole(second, str(vm.id))
            try:
                after = await status(console, lambda s: s.ip is not None, timeout=60)
            finally:
                await asyncio.to_thread(console.close)
            assert after.boot_id == before.boot_id  # live: the same boot, the same address
            assert after.ip == before.ip
            await expunge_all(cloud, ids, vm)

    run_scenario(scenario, *qemu_pair)
