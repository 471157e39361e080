"""A tiny bootable guest for the real-qemu tier, built from Debian packages and cached.

No cirros-like image exists in Debian or PyPI, so the tests build one: the kernel of
`linux-image-cloud-amd64` and the static busybox of `busybox-static` (both fetched with
`apt-get download` and unpacked with `dpkg-deb -x`, never installed: busybox-static conflicts
with the `busybox` a machine may have), an initramfs whose `/init` is `GUEST_INIT` below, both
on a small vfat disk made bootable by syslinux, converted to qcow2 (about 16 MB). It boots in
about ten seconds under TCG.

The guest is made to be watched from the host: every second its init writes one line to the
serial console (ttyS0),

    CK-STATUS boot=<boot id> ip=<eth0 IPv4 or -> disks=vda:<bytes>,vdb:<bytes> end

(`support.guest_console` reads them), and a getty runs on the same port. It loads the virtio
drivers, gets its address by DHCP on eth0, and powers off on an ACPI power-button press.

Two variants share the kernel and initramfs; they differ in the kernel command line only:
`root.qcow2`, and `ignore-acpi.qcow2` (`ck.ignore_acpi=1 acpiphp.disable=1`): a guest that
ignores the power button and ACPI hot-plug requests, as a hung or unwilling guest does.

The build is cached under `~/.cache/cloudkernel/guest/<key>` (`CLOUDKERNEL_TEST_CACHE` moves the
root), keyed by a hash of this recipe and the versions of the two packages. Concurrent test
processes take an exclusive lock on the cache while one of them builds; the finished folder
appears by an atomic rename, so a reader never sees half an image.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["GUEST_INIT", "GuestImage", "build_guest_image", "cache_root", "plain_domain_xml"]

KERNEL_PACKAGE = "linux-image-cloud-amd64"  # a metapackage: it names the versioned kernel
BUSYBOX_PACKAGE = "busybox-static"
DISK_KIB = 32 * 1024
# The drivers the cloud kernel has as modules, in load order (ACPI PCI hot-plug is built in).
# The ACPI power button's two are loaded only by the guest that answers ACPI.
DRIVERS = ("virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
           "virtio_pci", "virtio_blk", "failover", "net_failover", "virtio_net")
POWER_BUTTON = ("button", "evdev")
CMDLINE = "console=ttyS0,115200 loglevel=3 panic=-1"
IGNORE_ACPI = "ck.ignore_acpi=1 acpiphp.disable=1"

GUEST_INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /tmp /run /var/run /etc/acpi/PWRF
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
ignore_acpi=0
grep -q 'ck.ignore_acpi=1' /proc/cmdline && ignore_acpi=1
for m in @DRIVERS@; do
    insmod /lib/modules/$m.ko
done
if [ $ignore_acpi = 0 ]; then
    for m in @POWER_BUTTON@; do
        insmod /lib/modules/$m.ko
    done
    printf '#!/bin/sh\necho CK-EVENT power-button > /dev/ttyS0\nsync\npoweroff -f\n' \
        > /etc/acpi/PWRF/00000080
    chmod +x /etc/acpi/PWRF/00000080
    sleep 1  # the power button's input device appears asynchronously
    acpid -c /etc/acpi -l /tmp/acpid.log
fi
hostname ck-guest
ip link set lo up
ip link set eth0 up 2>/dev/null && udhcpc -f -i eth0 -s /etc/udhcpc.script -T 1 -A 1 \
    >/dev/null 2>&1 &
(while true; do getty -L 115200 ttyS0 vt100; sleep 1; done) &
boot=$(cat /proc/sys/kernel/random/boot_id)
while true; do
    disks=""
    for d in /sys/block/vd*; do
        [ -e "$d/size" ] || continue
        disks="$disks${disks:+,}${d##*/}:$(( $(cat $d/size) * 512 ))"
    done
    ip=$(ip -4 -o addr show dev eth0 2>/dev/null | awk '{split($4, a, "/"); print a[1]; exit}')
    echo "CK-STATUS boot=$boot ip=${ip:--} disks=${disks:--} end" > /dev/ttyS0
    sleep 1
done
""".replace("@DRIVERS@", " ".join(DRIVERS)).replace("@POWER_BUTTON@", " ".join(POWER_BUTTON))

UDHCPC_SCRIPT = r"""#!/bin/sh
case "$1" in
    deconfig) ip -4 addr flush dev "$interface" ;;
    bound|renew)
        ip -4 addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" dev "$interface"
        [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
        ;;
esac
exit 0
"""

SYSLINUX_CFG = """DEFAULT ck
PROMPT 0
TIMEOUT 0
LABEL ck
  KERNEL vmlinuz
  INITRD initrd.gz
  APPEND {append}
"""


@dataclass(frozen=True)
class GuestImage:
    """The built guest: two qcow2 disks (normal, and one that ignores ACPI)."""

    folder: Path
    kernel_version: str

    @property
    def root(self) -> Path:
        """The guest that answers ACPI."""
        return self.folder / "root.qcow2"

    @property
    def ignore_acpi(self) -> Path:
        """The guest that ignores the power button and hot-plug requests."""
        return self.folder / "ignore-acpi.qcow2"


def cache_root() -> Path:
    """Where built guests are kept between runs."""
    configured = os.environ.get("CLOUDKERNEL_TEST_CACHE")
    base = Path(configured) if configured else Path.home() / ".cache" / "cloudkernel"
    return base / "guest"


def build_guest_image(cache: Path | None = None) -> GuestImage:
    """The cached guest for this recipe and these packages, built first if missing."""
    cache = cache or cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    kernel_package = _kernel_package()
    key = _recipe_key(kernel_package)
    folder = cache / key
    if (folder / "ignore-acpi.qcow2").is_file():
        return GuestImage(folder, _version_of(folder))
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same key
        if not (folder / "ignore-acpi.qcow2").is_file():
            _build(folder, kernel_package, cache)
    return GuestImage(folder, _version_of(folder))


def _kernel_package() -> str:
    """The versioned kernel package the metapackage depends on now (from apt's lists)."""
    out = _run(["apt-cache", "depends", "--important", KERNEL_PACKAGE])
    for line in out.splitlines():
        name = line.strip().removeprefix("Depends:").strip()
        if name.startswith("linux-image-") and name != KERNEL_PACKAGE:
            return name
    raise RuntimeError(f"apt-cache names no kernel for {KERNEL_PACKAGE}:\n{out}")


def _recipe_key(kernel_package: str) -> str:
    """This recipe, and the versions apt would download of the two packages."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for package in (kernel_package, BUSYBOX_PACKAGE):
        policy = _run(["apt-cache", "policy", package])
        digest.update(f"\0{package}={policy.split('Candidate:')[-1].split()[0]}".encode())
    return digest.hexdigest()[:16]


def _version_of(folder: Path) -> str:
    return (folder / "kernel-version").read_text().strip()


def _build(folder: Path, kernel_package: str, cache: Path) -> None:
    """Build both disks in a scratch folder of the cache, then rename it into place."""
    with tempfile.TemporaryDirectory(prefix="build-", dir=cache) as scratch_name:
        scratch = Path(scratch_name)
        _run(["apt-get", "download", kernel_package, BUSYBOX_PACKAGE], cwd=scratch)
        unpacked = scratch / "unpacked"
        for deb in scratch.glob("*.deb"):
            _run(["dpkg-deb", "-x", str(deb), str(unpacked)])
        [vmlinuz] = (unpacked / "boot").glob("vmlinuz-*")
        version = vmlinuz.name.removeprefix("vmlinuz-")
        initrd = scratch / "initrd.gz"
        _write_initramfs(initrd, unpacked / "lib" / "modules" / version,
                         unpacked / "bin" / "busybox", scratch / "initramfs")
        out = scratch / "out"
        out.mkdir()
        (out / "kernel-version").write_text(version + "\n")
        for name, append in (("root", CMDLINE), ("ignore-acpi", f"{CMDLINE} {IGNORE_ACPI}")):
            raw = scratch / f"{name}.img"
            _make_boot_disk(raw, vmlinuz, initrd, append)
            _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw),
                  str(out / f"{name}.qcow2")])
        for path in out.iterdir():
            path.chmod(0o644)
        out.chmod(0o755)
        shutil.rmtree(folder, ignore_errors=True)  # a half-built folder of a crashed build
        out.rename(folder)


def _write_initramfs(target: Path, modules_dir: Path, busybox: Path, root: Path) -> None:
    """A gzip'd newc cpio (made by that static busybox's cpio): busybox, /init, the udhcpc
    script and the needed modules."""
    (root / "bin").mkdir(parents=True)
    (root / "lib" / "modules").mkdir(parents=True)
    (root / "etc").mkdir()
    shutil.copy2(busybox, root / "bin" / "busybox")
    for name in (*DRIVERS, *POWER_BUTTON):
        [found] = modules_dir.rglob(f"{name}.ko")
        shutil.copy2(found, root / "lib" / "modules" / found.name)
    for path, text in ((root / "init", GUEST_INIT),
                       (root / "etc" / "udhcpc.script", UDHCPC_SCRIPT)):
        path.write_text(text)
        path.chmod(0o755)
    (root / "etc" / "passwd").write_text("root::0:0:root:/:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    archive = subprocess.run([str(busybox), "cpio", "-o", "-H", "newc"], cwd=root,
                             input="\n".join(names).encode(), capture_output=True, check=True)
    target.write_bytes(gzip.compress(archive.stdout, mtime=0))


def _make_boot_disk(raw: Path, vmlinuz: Path, initrd: Path, append: str) -> None:
    """A vfat 'superfloppy' whose boot sector is syslinux's, with kernel and initramfs."""
    _run(["mkfs.vfat", "-n", "CKGUEST", "-C", str(raw), str(DISK_KIB)])
    config = raw.with_suffix(".cfg")
    config.write_text(SYSLINUX_CFG.format(append=append))
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    for source, name in ((vmlinuz, "vmlinuz"), (initrd, "initrd.gz"),
                         (config, "syslinux.cfg")):
        _run(["mcopy", "-i", str(raw), str(source), f"::/{name}"], env=env)
    _run(["syslinux", "--install", str(raw)], env=env)


def _run(args: list[str], *, cwd: Path | None = None,
         env: dict[str, str] | None = None) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}); run "
                           f"scripts/install.sh if a tool is missing:\n{result.stderr}")
    return result.stdout


def plain_domain_xml(name: str, domain_uuid: str, disk: Path, *, mac: str | None = None,
                     network: str | None = None, memory_mib: int = 128) -> str:
    """The simplest domain that boots the guest from `disk` under TCG, with its serial
    console (and a virtio NIC on a libvirt network when given): what raw-libvirt tests and
    the bench's bare loop define, independent of the hypervisor plugin's XML."""
    nic = (f"<interface type='network'><mac address='{mac}'/><source network='{network}'/>"
           f"<model type='virtio'/></interface>" if network else "")
    return f"""<domain type='qemu'>
  <name>{name}</name><uuid>{domain_uuid}</uuid>
  <memory unit='MiB'>{memory_mib}</memory><vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type><boot dev='hd'/></os>
  <features><acpi/><apic/></features>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='{disk}'/><target dev='vda' bus='virtio'/></disk>
    {nic}
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
  </devices>
</domain>"""
