"""Domain XML: built from a DefineDomain step, read back and edited, as pure functions.

The same XML serves libvirt's test driver and qemu/KVM (the test driver records the CPU,
machine, controllers and channel and ignores them); what depends on the host (the `<domain
type>`, CPU, machine, spare PCIe root ports, the guest agent's channel) comes in a
`DomainShape` that `host_policy` decides. CPU speed becomes
`<cputune><shares>` = cores x MHz (CloudStack's mapping), so a host's CPU time is shared in
proportion to the offering. The domain's UUID is the VM's id, and its `<metadata>` names the
step that defined it (`defined_by`), so that a define step can tell its own domain from one
another step left.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from uuid import UUID
from xml.etree import ElementTree as ET

from aggregates.errors import StepFailedError
from kernel.steps.hypervisor import ConsoleSpec, DefineDomain, DiskSpec, GraphicsInfo, NicSpec
from subsystems.libvirt.host_policy import DomainShape

__all__ = [
    "GUEST_AGENT_CHANNEL",
    "METADATA_NS",
    "DiskView",
    "NicView",
    "arch_of",
    "build_domain_xml",
    "defined_by",
    "disk_element",
    "disk_xml",
    "disks_of",
    "find_disk_xml",
    "graphics_of",
    "nics_of",
    "serial_log_file",
    "serial_pty_of",
    "set_domain_type",
    "target_name",
    "with_disk",
    "with_listen",
    "without_disk",
]

METADATA_NS = "urn:cloudkernel:hypervisor"
_DEFINED_BY = f"{{{METADATA_NS}}}defined-by"
ET.register_namespace("cloudkernel", METADATA_NS)
_BUS_PREFIX = {"virtio": "vd", "scsi": "sd", "sata": "sd", "ide": "hd"}
GUEST_AGENT_CHANNEL = "org.qemu.guest_agent.0"
# devices of ours besides disks and NICs that take a PCIe slot on q35: the memory balloon and
# the USB controller libvirt adds (the guest agent's virtio-serial controller is counted apart)
_OTHER_PCIE_DEVICES = 2


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


def build_domain_xml(args: DefineDomain, shape: DomainShape,
                     step_id: UUID | None = None) -> str:
    """The persistent definition of a VM's domain (naming the step that defines it)."""
    dom = ET.Element("domain", {"type": shape.domain_type})
    _text(dom, "name", args.name)
    _text(dom, "uuid", str(args.vm_id))
    if step_id is not None:
        ET.SubElement(ET.SubElement(dom, "metadata"), _DEFINED_BY, {"step": str(step_id)})
    _text(dom, "memory", str(args.memory_mib), unit="MiB")
    _text(dom, "currentMemory", str(args.memory_mib), unit="MiB")
    _text(dom, "vcpu", str(args.cpu_cores), placement="static")
    tune = ET.SubElement(dom, "cputune")
    _text(tune, "shares", str(args.cpu_cores * args.cpu_mhz))
    os_elem = ET.SubElement(dom, "os")
    machine = {"machine": shape.machine} if shape.machine else {}
    _text(os_elem, "type", "hvm", arch=args.arch, **machine)
    ET.SubElement(os_elem, "boot", {"dev": "hd"})
    features = ET.SubElement(dom, "features")
    ET.SubElement(features, "acpi")  # a graceful shutdown is an ACPI power button press
    ET.SubElement(features, "apic")
    if shape.cpu is not None:
        cpu = ET.SubElement(dom, "cpu", {"mode": shape.cpu.mode})
        if shape.cpu.model:
            _text(cpu, "model", shape.cpu.model, fallback="forbid")
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
    if shape.guest_agent:
        channel = ET.SubElement(devices, "channel", {"type": "unix"})
        ET.SubElement(channel, "target", {"type": "virtio", "name": GUEST_AGENT_CHANNEL})
    if shape.pcie:
        taken = sum(d.bus == "virtio" for d in args.disks) + len(args.nics) \
            + shape.guest_agent + _OTHER_PCIE_DEVICES
        # libvirt numbers controllers without an index from 0, and 0 must be the root
        ET.SubElement(devices, "controller", {"type": "pci", "index": "0", "model": "pcie-root"})
        for _ in range(taken + shape.hotplug_ports):
            ET.SubElement(devices, "controller", {"type": "pci", "model": "pcie-root-port"})
    _add_console(devices, args.console, serial_log_file(shape.serial_log_dir, args.vm_id))
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


def defined_by(xml: str) -> UUID | None:
    """The step that defined this domain, as its metadata says (None: not ours, or older)."""
    mark = ET.fromstring(xml).find(f"metadata/{_DEFINED_BY}")
    try:
        return UUID(mark.get("step", "")) if mark is not None else None
    except ValueError:
        return None


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
    """The graphics consoles of a domain XML (pass the live XML for allocated ports, the
    secure one for passwords)."""
    found = []
    for gfx in ET.fromstring(xml).iterfind("devices/graphics"):
        port = int(gfx.get("port", "-1"))
        password = gfx.get("passwd")
        found.append(GraphicsInfo(type=gfx.get("type", ""), listen=gfx.get("listen", ""),
                                  port=port if port > 0 else None, password=password,
                                  password_required=password is not None))
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


def arch_of(xml: str) -> str:
    """The guest architecture a definition names (x86_64 when it names none)."""
    os_type = ET.fromstring(xml).find("os/type")
    return (os_type.get("arch") if os_type is not None else None) or "x86_64"


def with_listen(xml: str, old: str, new: str) -> str:
    """The XML with graphics that listened on address `old` listening on `new` (unchanged
    text when none did)."""
    if old == new:
        return xml
    root = ET.fromstring(xml)
    changed = False
    for gfx in root.iterfind("devices/graphics"):
        if gfx.get("listen") == old:
            gfx.set("listen", new)
            changed = True
        for listen in gfx.iterfind("listen"):
            if listen.get("address") == old:
                listen.set("address", new)
                changed = True
    return ET.tostring(root, encoding="unicode") if changed else xml


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


def serial_log_file(log_dir: str, vm_id: UUID) -> str | None:
    """Where the host logs the VM's serial console (None: `log_dir` is empty, no log)."""
    return f"{log_dir.rstrip('/')}/{vm_id}.serial.log" if log_dir else None


def _add_console(devices: ET.Element, console: ConsoleSpec, serial_log: str | None) -> None:
    if console.serial:
        serial = ET.SubElement(devices, "serial", {"type": "pty"})
        if serial_log is not None:  # virtlogd keeps what it printed, for the console desk
            ET.SubElement(serial, "log", {"file": serial_log, "append": "on"})
        ET.SubElement(serial, "target", {"port": "0"})
        cons = ET.SubElement(devices, "console", {"type": "pty"})
        ET.SubElement(cons, "target", {"type": "serial", "port": "0"})
    if console.graphics != "none":
        attrs = {"type": console.graphics, "port": "-1", "autoport": "yes"}
        if console.listen:  # else the host's default (qemu.conf: vnc_listen, loopback)
            attrs["listen"] = console.listen
        if console.password is not None:
            attrs["passwd"] = console.password
        gfx = ET.SubElement(devices, "graphics", attrs)
        if console.listen:
            ET.SubElement(gfx, "listen", {"type": "address", "address": console.listen})


def _devices(root: ET.Element) -> ET.Element:
    devices = root.find("devices")
    return devices if devices is not None else ET.SubElement(root, "devices")


def _text(parent: ET.Element, tag: str, text: str, **attrs: str) -> ET.Element:
    elem = ET.SubElement(parent, tag, attrs)
    elem.text = text
    return elem
