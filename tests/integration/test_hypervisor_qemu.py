"""The libvirt plugins on a real libvirtd + qemu (TCG) with a guest that boots: what the test
driver cannot show. Each claim is checked from the guest's side (its serial console prints
its boot id and the sizes of the disks it sees) as well as from libvirt's."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID, uuid4
from xml.etree import ElementTree as ET

import libvirt
import pytest
from fixtures.qemu_host import QemuHost
from support.guest_console import GuestConsole, GuestStatus
from support.guest_image import GuestImage
from support.plugin_steps import PluginSteps

from kernel.steps.backup import (
    BackupCreated,
    BackupDeleted,
    BackupRestored,
    BackupVolume,
    CreateBackup,
    DeleteBackup,
    RestoreBackup,
)
from kernel.steps.hypervisor import (
    AttachDisk,
    ConsoleInfo,
    DefineDomain,
    DetachDisk,
    DiskChanged,
    DiskSpec,
    DomainDefined,
    GetConsole,
    PowerChanged,
    RebootDomain,
    StartDomain,
    StopDomain,
    console_password,
)
from kernel.steps.snapshot import (
    CreateSnapshot,
    DeleteSnapshot,
    RevertSnapshot,
    SnapshotDeleted,
    SnapshotReverted,
    SnapshotTaken,
)
from kernel.steps.storage import (
    CreatePool,
    CreateVolume,
    PoolInfo,
    ResizeVolume,
    VolumeInfo,
    VolumeRef,
    VolumeResized,
)
from subsystems.libvirt import domain_xml
from subsystems.libvirt.connections import close_all, connection

MiB = 1 << 20


pytestmark = pytest.mark.qemu


@dataclass
class Cloud:
    """The plugins, on one real host with a pool in its storage folder."""

    uri: str
    pool_dir: Path
    hv: PluginSteps
    storage: PluginSteps
    secret: bytes

    def volume(self, name: str, *, template: Path | None = None,
               size: int = 64 * MiB) -> tuple[VolumeRef, str]:
        ref = VolumeRef(host_uri=self.uri, pool="primary", name=name)
        made = self.storage.ok(CreateVolume(volume=ref, capacity_bytes=size,
                                            template_path=str(template) if template else None),
                               VolumeInfo)
        return ref, made.path

    def boot(self, image: Path, *disks: str) -> tuple[UUID, GuestConsole]:
        """A running VM from a copy of `image` (and more disks); its console, once it runs."""
        _root_ref, root = self.volume(f"root-{uuid4().hex[:6]}", template=image)
        vm_id = uuid4()
        self.hv.ok(DefineDomain(vm_id=vm_id, name=f"vm-{vm_id.hex[:8]}", host_uri=self.uri,
                                cpu_cores=1, cpu_mhz=1000, memory_mib=192, start=True,
                                disks=tuple(DiskSpec(path=p) for p in (root, *disks))),
                   DomainDefined)
        console = GuestConsole(self.uri, str(vm_id))
        console.wait_status(timeout=120)  # it booted
        return vm_id, console


@pytest.fixture
def cloud(qemu_host: QemuHost, tmp_path: Path) -> Iterator[Cloud]:
    qemu = qemu_host
    secret_file = tmp_path / "console.secret"
    hv = PluginSteps("hypervisor", {"poll_seconds": 0.1, "detach_wait_seconds": 8,
                                    "console_secret_file": str(secret_file),
                                    "console_listen": "127.0.0.1"})
    storage = PluginSteps("storage")
    pool_dir = qemu.storage_dir / f"primary-{uuid4().hex[:6]}"
    storage.ok(CreatePool(host_uri=qemu.uri, pool="primary", path=str(pool_dir)), PoolInfo)
    yield Cloud(uri=qemu.uri, pool_dir=pool_dir, hv=hv, storage=storage,
                secret=secret_file.read_text().strip().encode())
    close_all()
    qemu.clean()  # the domains, pools and volumes the test made on purpose
    shutil.rmtree(pool_dir, ignore_errors=True)


def live_xml(cloud: Cloud, vm_id: UUID) -> ET.Element:
    dom = connection(cloud.uri).lookupByUUIDString(str(vm_id))
    return ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE))


def test_a_real_host_runs_tcg_with_the_full_definition(
        cloud: Cloud, guest_image: GuestImage) -> None:
    """/dev/kvm is hidden from this daemon: auto picks TCG, and the guest boots on q35 with a
    Nehalem CPU, its agent channel, spare root ports and a console with its own password."""
    vm_id, console = cloud.boot(guest_image.root)
    with console:
        root = live_xml(cloud, vm_id)
        assert root.get("type") == "qemu"
        os_type = root.find("os/type")
        assert os_type is not None and "q35" in (os_type.get("machine") or "")
        assert root.findtext("cpu/model") == "Nehalem"
        assert root.find("devices/channel/target[@name='org.qemu.guest_agent.0']") is not None
        ports = {c.get("index") for c in root.iterfind("devices/controller")
                 if c.get("model") == "pcie-root-port"}
        used = {int(a.get("bus", "0"), 16) for a in root.iterfind("devices/*/address")
                if a.get("type") == "pci"}
        assert len({p for p in ports if p is not None and int(p) not in used}) >= 4
        [gfx] = domain_xml.graphics_of(ET.tostring(root, encoding="unicode"))
        assert (gfx.listen, gfx.password) == ("127.0.0.1", console_password(cloud.secret,
                                                                            vm_id))
        assert gfx.port is not None and gfx.port >= 5900
        info = cloud.hv.ok(GetConsole(vm_id=vm_id, host_uri=cloud.uri), ConsoleInfo)
        assert [(g.port, g.password, g.password_required) for g in info.graphics] == [
            (gfx.port, None, True)]


def test_hot_plug_live_resize_and_detach_seen_by_the_guest(cloud: Cloud,
                                                           guest_image: GuestImage) -> None:
    vm_id, console = cloud.boot(guest_image.root)
    with console:
        data_ref, data = cloud.volume("data", size=32 * MiB)
        attach = AttachDisk(vm_id=vm_id, host_uri=cloud.uri, disk=DiskSpec(path=data))
        attached = cloud.hv.ok(attach, DiskChanged)
        assert (attached.how, attached.target, attached.live) == ("device", "vdb", True)
        console.wait_status(lambda s: s.disks.get("vdb") == 32 * MiB, since=console.mark())

        # qemu holds the image's write lock: only the domain can grow it
        resized = cloud.storage.ok(ResizeVolume(volume=data_ref, capacity_bytes=48 * MiB),
                                   VolumeResized)
        assert resized.how == "live"
        console.wait_status(lambda s: s.disks.get("vdb") == 48 * MiB, since=console.mark())

        detached = cloud.hv.ok(DetachDisk(vm_id=vm_id, host_uri=cloud.uri,
                                          disk=DiskSpec(path=data)), DiskChanged)
        assert (detached.how, detached.live) == ("device", False)
        console.wait_status(lambda s: "vdb" not in s.disks, since=console.mark())
        config = connection(cloud.uri).lookupByUUIDString(str(vm_id)).XMLDesc(
            libvirt.VIR_DOMAIN_XML_INACTIVE)
        assert data not in config


def test_a_hot_plug_without_a_spare_root_port_fails_for_good(cloud: Cloud) -> None:
    hv = PluginSteps("hypervisor", {"hotplug_ports": 0})
    _ref, root = cloud.volume("root")
    _ref, data = cloud.volume("data", size=8 * MiB)
    vm_id = uuid4()
    hv.ok(DefineDomain(vm_id=vm_id, name="no-spare", host_uri=cloud.uri, cpu_cores=1,
                       cpu_mhz=1000, memory_mib=128, start=True, disks=(DiskSpec(path=root),)),
          DomainDefined)
    refused = hv.fail(AttachDisk(vm_id=vm_id, host_uri=cloud.uri, disk=DiskSpec(path=data)))
    assert (refused.error_code, refused.retryable) == ("no_free_slot", False)
    assert "hotplug_ports" in refused.message


def test_a_guest_that_ignores_requests(cloud: Cloud, guest_image: GuestImage) -> None:
    """A detach the guest ignores fails and leaves the disk attached, live and in the
    definition; a reboot it ignores ends in a reset (a new boot id)."""
    _ref, data = cloud.volume("data", size=16 * MiB)
    vm_id, console = cloud.boot(guest_image.ignore_acpi, data)  # it would not see a hot-plug
    with console:
        first = console.wait_status(lambda s: "vdb" in s.disks, since=console.mark())
        refused = cloud.hv.fail(DetachDisk(vm_id=vm_id, host_uri=cloud.uri,
                                           disk=DiskSpec(path=data)))
        assert (refused.error_code, refused.retryable) == ("detach_refused", True)
        dom = connection(cloud.uri).lookupByUUIDString(str(vm_id))
        assert data in dom.XMLDesc(0) and data in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        assert "vdb" in console.wait_status(since=console.mark()).disks

        reboot = cloud.hv.ok(RebootDomain(vm_id=vm_id, host_uri=cloud.uri,
                                          force_after_seconds=5), PowerChanged)
        assert (reboot.how, reboot.state) == ("reset", "running")
        console.wait_status(lambda s: s.boot_id != first.boot_id, since=console.mark(),
                            timeout=120)


def test_a_willing_guest_reboots_when_asked(cloud: Cloud, guest_image: GuestImage) -> None:
    vm_id, console = cloud.boot(guest_image.root)
    with console:
        first = console.wait_status(since=console.mark())
        reboot = cloud.hv.ok(RebootDomain(vm_id=vm_id, host_uri=cloud.uri,
                                          force_after_seconds=60), PowerChanged)
        assert (reboot.how, reboot.state) == ("rebooted", "running")
        console.wait_status(lambda s: s.boot_id != first.boot_id, since=console.mark(),
                            timeout=120)


def test_snapshots_and_backups_of_a_running_guest(cloud: Cloud,
                                                  guest_image: GuestImage) -> None:
    """Taken by the guest's qemu at one instant while it runs (crash-consistent: this guest
    has no agent to freeze it); each copy holds the disk's content, and reverts."""
    snap, backup = PluginSteps("snapshot"), PluginSteps("backup")
    data_ref, data = cloud.volume("data", size=16 * MiB)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 2M", data], check=True,
                   capture_output=True)
    vm_id, console = cloud.boot(guest_image.root, data)
    with console:
        status: GuestStatus = console.wait_status(since=console.mark())
        assert "vdb" in status.disks
        directory = cloud.pool_dir.parent / f"snapshots-{uuid4().hex[:6]}"
        taken = snap.ok(CreateSnapshot(snapshot_id=uuid4(), volume=data_ref,
                                       directory=str(directory)), SnapshotTaken)
        assert (taken.created, taken.consistency) == (True, "crash")
        same = subprocess.run(["qemu-img", "compare", "-U", taken.path, data],
                              capture_output=True, text=True)
        assert same.returncode == 0, same.stdout + same.stderr
        dom = connection(cloud.uri).lookupByUUIDString(str(vm_id))
        assert dom.blockJobInfo("vdb", 0) == {}  # the copy job ended, the disk unchanged
        assert [d.path for d in domain_xml.disks_of(dom.XMLDesc(0))][1] == data

        [root] = [d.path for d in domain_xml.disks_of(dom.XMLDesc(0))][:1]
        root_ref = VolumeRef(host_uri=cloud.uri, pool="primary", name=Path(root).name)
        made = backup.ok(CreateBackup(
            backup_id=uuid4(), vm_id=vm_id, target_dir=str(directory / "backups"),
            volumes=(BackupVolume(volume_id=uuid4(), volume=root_ref),
                     BackupVolume(volume_id=uuid4(), volume=data_ref))), BackupCreated)
        assert made.consistency == "crash" and len(made.files) == 2
        assert console.wait_status(since=console.mark()).boot_id == status.boot_id  # ran on

    cloud.hv.ok(StopDomain(vm_id=vm_id, host_uri=cloud.uri, force_after_seconds=30),
                PowerChanged)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 1M 2M", data], check=True,
                   capture_output=True)
    reverted = snap.ok(RevertSnapshot(snapshot_id=taken.snapshot_id, volume=data_ref,
                                      directory=str(directory), sha256=taken.sha256,
                                      vm_id=vm_id), SnapshotReverted)
    assert reverted.copied
    check = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "read -P 0x5a 1M 2M", data],
                           capture_output=True, text=True)
    assert "Pattern verification failed" not in check.stdout and check.returncode == 0


def test_snapshots_kept_on_the_host_through_libvirt(cloud: Cloud, guest_image: GuestImage) -> None:
    """The path of hosts whose files the worker cannot see (`on_host`), on this real host:
    the host copies (block copy of the running disk, clone of an idle one), the worker only
    hashes through streams; revert and delete through libvirt too."""
    snap = PluginSteps("snapshot", {"on_host": "always"})
    data_ref, data = cloud.volume("data", size=16 * MiB)
    idle_ref, _idle = cloud.volume("idle", size=8 * MiB)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 2M", data], check=True,
                   capture_output=True)
    vm_id, console = cloud.boot(guest_image.root, data)
    directory = str(cloud.pool_dir.parent / f"snapshots-{uuid4().hex[:6]}")
    with console:
        create = CreateSnapshot(snapshot_id=uuid4(), volume=data_ref, directory=directory)
        taken = snap.ok(create, SnapshotTaken)
        assert (taken.created, taken.consistency) == (True, "crash")
        assert taken.path == f"{directory}/{create.snapshot_id}.snap"
        assert (len(Path(taken.path).read_bytes()), taken.sha256) == (
            taken.size_bytes, hashlib.sha256(Path(taken.path).read_bytes()).hexdigest())
        same = subprocess.run(["qemu-img", "compare", "-U", taken.path, data],
                              capture_output=True, text=True)
        assert same.returncode == 0, same.stdout + same.stderr
        again = snap.ok(create, SnapshotTaken)  # sealed: reported, not copied again
        assert (again.created, again.sha256) == (False, taken.sha256)
        idle = snap.ok(CreateSnapshot(snapshot_id=uuid4(), volume=idle_ref,
                                      directory=directory), SnapshotTaken)
        assert idle.consistency == "offline"

    cloud.hv.ok(StopDomain(vm_id=vm_id, host_uri=cloud.uri, force_after_seconds=30),
                PowerChanged)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 1M 2M", data], check=True,
                   capture_output=True)
    revert = RevertSnapshot(snapshot_id=create.snapshot_id, volume=data_ref,
                            directory=directory, sha256=taken.sha256, vm_id=vm_id)
    assert snap.ok(revert, SnapshotReverted).copied
    assert hashlib.sha256(Path(data).read_bytes()).hexdigest() == taken.sha256
    assert snap.ok(revert, SnapshotReverted).copied is False
    check = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "read -P 0x5a 1M 2M", data],
                           capture_output=True, text=True)
    assert "Pattern verification failed" not in check.stdout and check.returncode == 0
    # the VM starts on the reverted disk
    cloud.hv.ok(StartDomain(vm_id=vm_id, host_uri=cloud.uri), PowerChanged)

    for snapshot_id in (create.snapshot_id, idle.snapshot_id):
        delete = DeleteSnapshot(snapshot_id=snapshot_id, directory=directory,
                                host_uri=cloud.uri)
        assert snap.ok(delete, SnapshotDeleted).existed
        assert not snap.ok(delete, SnapshotDeleted).existed
    assert not list(Path(directory).iterdir())


def test_backups_kept_on_the_host_through_libvirt(cloud: Cloud, guest_image: GuestImage) -> None:
    backup = PluginSteps("backup", {"on_host": "always"})
    data_ref, data = cloud.volume("data", size=16 * MiB)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 2M", data], check=True,
                   capture_output=True)
    vm_id, console = cloud.boot(guest_image.root, data)
    dom = connection(cloud.uri).lookupByUUIDString(str(vm_id))
    root = domain_xml.disks_of(dom.XMLDesc(0))[0].path
    vols = (BackupVolume(volume_id=uuid4(), volume=VolumeRef(
                host_uri=cloud.uri, pool="primary", name=Path(root).name)),
            BackupVolume(volume_id=uuid4(), volume=data_ref))
    target = str(cloud.pool_dir.parent / f"backups-{uuid4().hex[:6]}")
    create = CreateBackup(backup_id=uuid4(), vm_id=vm_id, volumes=vols, target_dir=target)
    with console:
        made = backup.ok(create, BackupCreated)
        assert (made.created, made.consistency, made.path) == (
            True, "crash", f"{target}/{create.backup_id}")
        assert backup.ok(create, BackupCreated).created is False
        for entry in made.files:
            stored = Path(made.path) / entry.file
            assert hashlib.sha256(stored.read_bytes()).hexdigest() == entry.sha256
    cloud.hv.ok(StopDomain(vm_id=vm_id, host_uri=cloud.uri, force_after_seconds=30),
                PowerChanged)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 1M 2M", data], check=True,
                   capture_output=True)
    restore = RestoreBackup(backup_id=create.backup_id, target_dir=target, volumes=vols,
                            vm_id=vm_id)
    restored = backup.ok(restore, BackupRestored)
    assert restored.copied >= 1  # the data disk changed; the root disk may not have
    assert backup.ok(restore, BackupRestored).copied == 0
    check = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "read -P 0x5a 1M 2M", data],
                           capture_output=True, text=True)
    assert "Pattern verification failed" not in check.stdout and check.returncode == 0
    cloud.hv.ok(StartDomain(vm_id=vm_id, host_uri=cloud.uri), PowerChanged)

    delete = DeleteBackup(backup_id=create.backup_id, target_dir=target, host_uri=cloud.uri)
    assert backup.ok(delete, BackupDeleted).existed
    assert not Path(made.path).exists()
    assert not backup.ok(delete, BackupDeleted).existed
