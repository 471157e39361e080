"""The real-qemu tier's own fixtures: a private libvirtd + qemu (TCG), and a guest that boots.

Raw libvirt only (no platform): these prove the tier itself, so that a failure of the
platform's tests on real qemu is the platform's.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import libvirt
import pytest
from fixtures.qemu_host import QemuHost
from support.guest_console import GuestConsole
from support.guest_image import GuestImage, plain_domain_xml

pytestmark = pytest.mark.qemu

NETWORK = """<network><name>{name}</name><forward mode='nat'/><bridge name='{bridge}'/>
  <ip address='10.77.0.1' netmask='255.255.255.0'><dhcp>
    <range start='10.77.0.100' end='10.77.0.200'/>
    <host mac='{mac}' ip='10.77.0.42'/></dhcp></ip></network>"""


def test_the_daemon_is_private_and_offers_tcg(qemu_host: QemuHost) -> None:
    conn = qemu_host.connect()
    try:
        capabilities = conn.getCapabilities()
        assert conn.getType() == "QEMU"
        assert conn.getHostname() == qemu_host.name  # its own UTS namespace
        assert qemu_host.uri.startswith("qemu+unix:///system?socket=")
        assert str(qemu_host.base_dir) in qemu_host.uri
    finally:
        conn.close()
    offered = set(re.findall(r"<domain type='(\w+)'", capabilities))
    assert "qemu" in offered
    assert ("kvm" in offered) == qemu_host.kvm  # /dev/kvm is hidden unless asked for
    assert f"<uuid>{qemu_host.host_uuid}</uuid>" in capabilities
    # the machine's own libvirt was not touched: no daemon socket in its usual place
    assert not Path("/run/libvirt/libvirt-sock").exists()


def test_a_guest_boots_leases_its_address_and_powers_off_by_acpi(
        qemu_host: QemuHost, guest_image: GuestImage) -> None:
    disk = qemu_host.storage_dir / f"smoke-{uuid.uuid4().hex[:8]}.qcow2"
    shutil.copy(guest_image.root, disk)
    mac, domain_uuid = "52:54:00:77:00:42", str(uuid.uuid4())
    conn = qemu_host.connect()
    try:
        net = conn.networkDefineXML(NETWORK.format(name="smoke", bridge="cksmoke0", mac=mac))
        net.create()
        dom = conn.defineXML(plain_domain_xml("smoke", domain_uuid, disk, mac=mac,
                                              network="smoke"))
        dom.create()
        with GuestConsole(qemu_host.uri, domain_uuid) as console:
            booted = console.wait_status(lambda s: s.ip is not None, timeout=120)
            assert booted.ip == "10.77.0.42"  # dnsmasq of the daemon's own network
            assert booted.disks == {"vda": 32 << 20}
            started = time.monotonic()
            dom.shutdown()
            while dom.isActive():
                assert time.monotonic() - started < 30, console.text()[-2000:]
                time.sleep(0.2)
            assert any("CK-EVENT power-button" in line for line in console.lines())
        assert dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
        dom.undefine()
        net.destroy()
        net.undefine()
    finally:
        conn.close()
        disk.unlink(missing_ok=True)


def test_the_guest_image_is_built_once_when_two_processes_race(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    script = ("import sys; from pathlib import Path; from support.guest_image import "
              "build_guest_image; print(build_guest_image(Path(sys.argv[1])).folder)")
    tests_dir = Path(__file__).resolve().parents[1]
    racers = [subprocess.Popen([sys.executable, "-c", script, str(cache)], cwd=tests_dir,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    outputs = [racer.communicate(timeout=240) for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0], outputs
    folders = {out.strip() for out, _err in outputs}
    assert len(folders) == 1
    [folder] = [Path(f) for f in folders]
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == [folder.name]
    for image in ("root.qcow2", "ignore-acpi.qcow2"):
        info = subprocess.run(["qemu-img", "info", "--output=json", str(folder / image)],
                              capture_output=True, text=True, check=True).stdout
        assert '"format": "qcow2"' in info


def test_a_running_guest_migrates_live_between_two_daemons(
        qemu_pair: tuple[QemuHost, QemuHost], guest_image: GuestImage) -> None:
    source, target = qemu_pair
    disk = source.storage_dir / "migrating.qcow2"  # one file both daemons see
    shutil.copy(guest_image.root, disk)
    domain_uuid = str(uuid.uuid4())
    src_conn, dst_conn = source.connect(), target.connect()
    try:
        dom = src_conn.defineXML(plain_domain_xml("migrating", domain_uuid, disk))
        dom.create()
        with GuestConsole(source.uri, domain_uuid) as console:
            before = console.wait_status(timeout=120)
        # as the hypervisor plugin migrates (peer to peer: the source daemon reaches the
        # target's socket itself); UNSAFE because the disk is on a local file system, which
        # libvirt cannot know both hosts share
        dom.migrateToURI3(target.uri, {}, libvirt.VIR_MIGRATE_PEER2PEER
                          | libvirt.VIR_MIGRATE_PERSIST_DEST
                          | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE | libvirt.VIR_MIGRATE_LIVE
                          | libvirt.VIR_MIGRATE_UNSAFE)
        assert [d.name() for d in src_conn.listAllDomains(0)] == []
        moved = dst_conn.lookupByUUIDString(domain_uuid)
        assert moved.state()[0] == libvirt.VIR_DOMAIN_RUNNING and moved.isPersistent()
        with GuestConsole(target.uri, domain_uuid) as console:
            after = console.wait_status(since=console.mark(), timeout=60)
        assert after.boot_id == before.boot_id  # the same boot: it moved, it did not restart
        moved.destroy()
        moved.undefine()
    finally:
        src_conn.close()
        dst_conn.close()


def test_a_killed_test_process_leaves_no_daemon_behind() -> None:
    script = ("import os; from fixtures.qemu_host import QemuHost; h = QemuHost('ck-killed'); "
              "h.start(); print(h.base_dir, flush=True); os.kill(os.getpid(), 9)")
    tests_dir = Path(__file__).resolve().parents[1]
    killed = subprocess.run([sys.executable, "-c", script], cwd=tests_dir, capture_output=True,
                            text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    base_dir = Path(killed.stdout.strip())
    try:
        assert (base_dir / "sock").is_dir()  # it did run
        deadline = time.monotonic() + 10
        while survivors := [p for p in Path("/proc").iterdir() if p.name.isdigit()
                            and str(base_dir).encode() in _cmdline(p)]:
            assert time.monotonic() < deadline, f"still running: {survivors}"
            time.sleep(0.1)
    finally:
        shutil.rmtree(base_dir, ignore_errors=True)


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""
