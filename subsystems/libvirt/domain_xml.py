"""Domain XML: built from a DefineDomain step, read back and edited, as pure functions.

The same XML serves libvirt's test driver and qemu/KVM; only the `<domain type>` differs, and
`choose_domain_type` picks it from the connection's driver and capabilities. CPU speed becomes
`<cputune><shares>` = cores x MHz (CloudStack's mapping), so a host's CPU time is shared in
proportion to the offering. The domain's UUID is the VM's id.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from xml.etree import ElementTree as ET

from aggregates.errors import StepFailedError
from kernel.steps.hypervisor import ConsoleSpec, DefineDomain, DiskSpec, GraphicsInfo, NicSpec

__all__ = [
    "DiskView",
    "NicView",
    "build_domain_xml",
    "choose_domain_type",
    "disk_element",
    "disk_xml",
    "disks_of",
    "find_disk_xml",
    "graphics_of",
    "nics_of",
    "serial_pty_of",
    "set_domain_type",
    "target_name",
    "with_disk",
    "without_disk",
]

_BUS_PREFIX = {"virtio": "vd", "scsi": "sd", "sata": "sd", "ide": "hd"}
_TYPE_PREFERENCE = ("kvm", "qemu", "test")


@dataclass(frozen=True, slots=True)
class DiskView:
    """A disk as a domain's XML describes it."""

    path: str
    target: str
    bus: str
    format: str
    device: str


@dataclass(frozen=True, slots=True)
class NicView:
    """A NIC as a domain's XML describes it."""

    mac: str
    type: str
    source: str
    model: str


def choose_domain_type(driver: str, capabilities_xml: str, arch: str = "x86_64") -> str:
    """The `<domain type>` for a connection: "test" on the test driver, else the best the
    host's capabilities offer for `arch` (kvm before qemu)."""
    if driver.lower() == "test":
        return "test"
    offered: set[str] = set()
    root = ET.fromstring(capabilities_xml)
    for guest in root.iter("guest"):
        arch_elem = guest.find("arch")
        if arch_elem is not None and arch_elem.get("name") == arch:
            offered.update(d.get("type", "") for d in arch_elem.iter("domain"))
    for candidate in _TYPE_PREFERENCE:
        if candidate in offered:
            return candidate
    raise StepFailedError(f"host driver {driver} offers no domain type for arch {arch} "
                          f"(offered: {sorted(offered) or 'none'})", retryable=False,
                          code="invalid_definition")


def build_domain_xml(args: DefineDomain, domain_type: str) -> str:
    """The persistent definition of a VM's domain."""
    dom = ET.Element("domain", {"type": domain_type})
    _text(dom, "name", args.name)
    _text(dom, "uuid", str(args.vm_id))
    _text(dom, "memory", str(args.memory_mib), unit="MiB")
    _text(dom, "currentMemory", str(args.memory_mib), unit="MiB")
    _text(dom, "vcpu", str(args.cpu_cores), placement="static")
    tune = ET.SubElement(dom, "cputune")
    _text(tune, "shares", str(args.cpu_cores * args.cpu_mhz))
    os_elem = ET.SubElement(dom, "os")
    _text(os_elem, "type", "hvm", arch=args.arch)
    ET.SubElement(os_elem, "boot", {"dev": "hd"})
    features = ET.SubElement(dom, "features")
    ET.SubElement(features, "acpi")  # a graceful shutdown is an ACPI power button press
    ET.SubElement(features, "apic")
    ET.SubElement(dom, "clock", {"offset": "utc"})
    _text(dom, "on_poweroff", "destroy")
    _text(dom, "on_reboot", "restart")
    _text(dom, "on_crash", "destroy")
    devices = ET.SubElement(dom, "devices")
    used: set[str] = set()
    for disk in args.disks:
        target = disk.target or target_name(disk.bus, used)
        if target in used:
            raise StepFailedError(f"domain {args.name}: disk target {target} is used twice",
                                  retryable=False, code="invalid_definition")
        used.add(target)
        devices.append(disk_element(disk, target))
    for nic in args.nics:
        devices.append(_nic_element(nic))
    _add_console(devices, args.console)
    return ET.tostring(dom, encoding="unicode")


def disk_element(disk: DiskSpec, target: str) -> ET.Element:
    """The `<disk>` element of a file-backed disk."""
    elem = ET.Element("disk", {"type": "file", "device": disk.device})
    ET.SubElement(elem, "driver", {"name": "qemu", "type": disk.format})
    ET.SubElement(elem, "source", {"file": disk.path})
    ET.SubElement(elem, "target", {"dev": target, "bus": disk.bus})
    if disk.read_only or disk.device == "cdrom":
        ET.SubElement(elem, "readonly")
    return elem


def disk_xml(disk: DiskSpec, target: str) -> str:
    """The `<disk>` element as text, for attachDeviceFlags."""
    return ET.tostring(disk_element(disk, target), encoding="unicode")


def find_disk_xml(xml: str, path: str) -> str | None:
    """The `<disk>` element whose source is `path`, as text, or None (for detachDeviceFlags)."""
    for disk in ET.fromstring(xml).iterfind("devices/disk"):
        source = disk.find("source")
        if source is not None and source.get("file") == path:
            return ET.tostring(disk, encoding="unicode")
    return None


def target_name(bus: str, used: Iterable[str]) -> str:
    """The first free device name for a bus: vda, vdb, ... vdz, vdaa, ..."""
    prefix = _BUS_PREFIX.get(bus)
    if prefix is None:
        raise StepFailedError(f"unknown disk bus {bus!r}", retryable=False,
                              code="invalid_definition")
    taken = set(used)
    index = 0
    while True:
        name = prefix + _suffix(index)
        if name not in taken:
            return name
        index += 1


def disks_of(xml: str) -> list[DiskView]:
    """The file-backed disks of a domain XML, in order."""
    found = []
    for disk in ET.fromstring(xml).iterfind("devices/disk"):
        source, target, driver = disk.find("source"), disk.find("target"), disk.find("driver")
        found.append(DiskView(
            path=source.get("file", "") if source is not None else "",
            target=target.get("dev", "") if target is not None else "",
            bus=target.get("bus", "") if target is not None else "",
            format=driver.get("type", "") if driver is not None else "",
            device=disk.get("device", "disk"),
        ))
    return found


def nics_of(xml: str) -> list[NicView]:
    """The NICs of a domain XML, in order."""
    found = []
    for nic in ET.fromstring(xml).iterfind("devices/interface"):
        mac, source, model = nic.find("mac"), nic.find("source"), nic.find("model")
        kind = nic.get("type", "")
        found.append(NicView(
            mac=mac.get("address", "") if mac is not None else "",
            type=kind,
            source=source.get(kind, "") if source is not None else "",
            model=model.get("type", "") if model is not None else "",
        ))
    return found


def graphics_of(xml: str) -> tuple[GraphicsInfo, ...]:
    """The graphics consoles of a domain XML (pass the live XML for allocated ports)."""
    found = []
    for gfx in ET.fromstring(xml).iterfind("devices/graphics"):
        port = int(gfx.get("port", "-1"))
        found.append(GraphicsInfo(type=gfx.get("type", ""), listen=gfx.get("listen", ""),
                                  port=port if port > 0 else None,
                                  password=gfx.get("passwd")))
    return tuple(found)


def serial_pty_of(xml: str) -> str | None:
    """The host pty of the domain's serial console, once the running domain has one."""
    for console in ET.fromstring(xml).iterfind("devices/console"):
        source = console.find("source")
        if console.get("type") == "pty" and source is not None and source.get("path"):
            return source.get("path")
    return None


def with_disk(xml: str, disk: DiskSpec) -> tuple[str, str]:
    """The XML with `disk` appended (on the first free target unless it names one), and the
    target it got."""
    root = ET.fromstring(xml)
    devices = _devices(root)
    used = {d.target for d in disks_of(xml)}
    target = disk.target or target_name(disk.bus, used)
    if target in used:
        raise StepFailedError(f"disk target {target} is in use", retryable=False,
                              code="invalid_definition")
    devices.append(disk_element(disk, target))
    return ET.tostring(root, encoding="unicode"), target


def without_disk(xml: str, path: str) -> str | None:
    """The XML without the disk whose source is `path`, or None when it has no such disk."""
    root = ET.fromstring(xml)
    devices = _devices(root)
    for disk in devices.findall("disk"):
        source = disk.find("source")
        if source is not None and source.get("file") == path:
            devices.remove(disk)
            return ET.tostring(root, encoding="unicode")
    return None


def set_domain_type(xml: str, domain_type: str) -> str:
    """The same definition with another `<domain type>` (to move it to another driver)."""
    root = ET.fromstring(xml)
    root.set("type", domain_type)
    root.attrib.pop("id", None)  # a live id means nothing on another host
    return ET.tostring(root, encoding="unicode")


def _suffix(index: int) -> str:
    """0 -> a, 25 -> z, 26 -> aa: libvirt's disk name scheme."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return letters


def _nic_element(nic: NicSpec) -> ET.Element:
    if bool(nic.network) == bool(nic.bridge):
        raise StepFailedError(f"NIC {nic.mac}: set exactly one of network or bridge",
                              retryable=False, code="invalid_definition")
    kind = "network" if nic.network else "bridge"
    elem = ET.Element("interface", {"type": kind})
    ET.SubElement(elem, "mac", {"address": nic.mac})
    ET.SubElement(elem, "source", {kind: nic.network or nic.bridge})
    ET.SubElement(elem, "model", {"type": nic.model})
    return elem


def _add_console(devices: ET.Element, console: ConsoleSpec) -> None:
    if console.serial:
        serial = ET.SubElement(devices, "serial", {"type": "pty"})
        ET.SubElement(serial, "target", {"port": "0"})
        cons = ET.SubElement(devices, "console", {"type": "pty"})
        ET.SubElement(cons, "target", {"type": "serial", "port": "0"})
    if console.graphics != "none":
        attrs = {"type": console.graphics, "port": "-1", "autoport": "yes",
                 "listen": console.listen}
        if console.password is not None:
            attrs["passwd"] = console.password
        gfx = ET.SubElement(devices, "graphics", attrs)
        ET.SubElement(gfx, "listen", {"type": "address", "address": console.listen})


def _devices(root: ET.Element) -> ET.Element:
    devices = root.find("devices")
    return devices if devices is not None else ET.SubElement(root, "devices")


def _text(parent: ET.Element, tag: str, text: str, **attrs: str) -> ET.Element:
    elem = ET.SubElement(parent, tag, attrs)
    elem.text = text
    return elem
