"""Domain XML building and editing, as pure functions."""

from __future__ import annotations

from uuid import uuid4
from xml.etree import ElementTree as ET

import pytest

from aggregates.errors import StepFailedError
from kernel.steps.hypervisor import ConsoleSpec, DefineDomain, DiskSpec, NicSpec
from subsystems.hypervisor import domain_xml

CAPS = """<capabilities><host/>
  <guest><os_type>hvm</os_type><arch name='x86_64'>
    <domain type='qemu'/><domain type='kvm'/></arch></guest>
  <guest><os_type>hvm</os_type><arch name='aarch64'><domain type='qemu'/></arch></guest>
</capabilities>"""


def args(**overrides: object) -> DefineDomain:
    base: dict[str, object] = dict(
        vm_id=uuid4(), name="i-2-10-VM", host_uri="qemu:///system", cpu_cores=4, cpu_mhz=2000,
        memory_mib=2048,
        disks=(DiskSpec(path="/p/root.qcow2"), DiskSpec(path="/p/data", format="raw"),
               DiskSpec(path="/iso/x.iso", device="cdrom", bus="ide", format="raw")),
        nics=(NicSpec(mac="52:54:00:00:00:01", network="guest"),
              NicSpec(mac="52:54:00:00:00:02", bridge="br0")))
    base.update(overrides)
    return DefineDomain(**base)  # type: ignore[arg-type]


def test_domain_type_follows_the_driver_and_capabilities() -> None:
    assert domain_xml.choose_domain_type("Test", "<capabilities/>") == "test"
    assert domain_xml.choose_domain_type("QEMU", CAPS) == "kvm"
    assert domain_xml.choose_domain_type("QEMU", CAPS, arch="aarch64") == "qemu"
    with pytest.raises(StepFailedError) as info:
        domain_xml.choose_domain_type("QEMU", CAPS, arch="s390x")
    assert not info.value.retryable


def test_the_definition_carries_offering_disks_nics_and_console() -> None:
    a = args(console=ConsoleSpec(graphics="spice", listen="10.0.0.5", password="pw"))
    xml = domain_xml.build_domain_xml(a, "kvm")
    root = ET.fromstring(xml)
    assert root.get("type") == "kvm" and root.findtext("uuid") == str(a.vm_id)
    assert (root.findtext("name"), root.findtext("vcpu")) == ("i-2-10-VM", "4")
    memory = root.find("memory")
    assert memory is not None and (memory.text, memory.get("unit")) == ("2048", "MiB")
    assert root.findtext("cputune/shares") == "8000"  # cores x MHz
    assert root.find("features/acpi") is not None  # graceful shutdown needs ACPI
    assert [(d.path, d.target, d.bus, d.format, d.device) for d in domain_xml.disks_of(xml)] == [
        ("/p/root.qcow2", "vda", "virtio", "qcow2", "disk"),
        ("/p/data", "vdb", "virtio", "raw", "disk"),
        ("/iso/x.iso", "hda", "ide", "raw", "cdrom")]
    cdrom = root.findall("devices/disk")[2]
    assert cdrom.find("readonly") is not None
    assert [(n.mac, n.type, n.source, n.model) for n in domain_xml.nics_of(xml)] == [
        ("52:54:00:00:00:01", "network", "guest", "virtio"),
        ("52:54:00:00:00:02", "bridge", "br0", "virtio")]
    assert [(g.type, g.listen, g.port, g.password) for g in domain_xml.graphics_of(xml)] == [
        ("spice", "10.0.0.5", None, "pw")]
    assert root.find("devices/console[@type='pty']") is not None


def test_no_console_and_explicit_targets() -> None:
    a = args(disks=(DiskSpec(path="/a", target="vdc"), DiskSpec(path="/b")),
             console=ConsoleSpec(graphics="none", serial=False))
    xml = domain_xml.build_domain_xml(a, "test")
    assert [(d.path, d.target) for d in domain_xml.disks_of(xml)] == [("/a", "vdc"),
                                                                       ("/b", "vda")]
    assert domain_xml.graphics_of(xml) == () and "<serial" not in xml


@pytest.mark.parametrize("overrides", [
    {"disks": (DiskSpec(path="/a", target="vda"), DiskSpec(path="/b", target="vda"))},
    {"nics": (NicSpec(mac="52:54:00:00:00:01"),)},
    {"nics": (NicSpec(mac="52:54:00:00:00:01", network="n", bridge="b"),)},
])
def test_bad_definitions_fail_for_good(overrides: dict[str, object]) -> None:
    with pytest.raises(StepFailedError) as info:
        domain_xml.build_domain_xml(args(**overrides), "test")
    assert (info.value.retryable, info.value.code) == (False, "invalid_definition")


def test_target_names_follow_libvirts_scheme() -> None:
    assert domain_xml.target_name("virtio", []) == "vda"
    assert domain_xml.target_name("scsi", ["sda", "sdb"]) == "sdc"
    used = [f"vd{chr(c)}" for c in range(ord("a"), ord("z") + 1)]
    assert domain_xml.target_name("virtio", used) == "vdaa"
    assert domain_xml.target_name("ide", ["vda"]) == "hda"


def test_adding_and_removing_a_disk() -> None:
    xml = domain_xml.build_domain_xml(args(), "test")
    more, target = domain_xml.with_disk(xml, DiskSpec(path="/p/extra"))
    assert target == "vdc"
    assert [d.path for d in domain_xml.disks_of(more)][-1] == "/p/extra"
    found = domain_xml.find_disk_xml(more, "/p/extra")
    assert found is not None and "vdc" in found
    less = domain_xml.without_disk(more, "/p/extra")
    assert less is not None and "/p/extra" not in less
    assert domain_xml.without_disk(less, "/p/extra") is None
    with pytest.raises(StepFailedError):
        domain_xml.with_disk(xml, DiskSpec(path="/p/other", target="vda"))


def test_moving_a_definition_to_another_driver() -> None:
    live = domain_xml.build_domain_xml(args(), "kvm").replace("<domain type=\"kvm\">",
                                                              "<domain type=\"kvm\" id=\"7\">")
    moved = ET.fromstring(domain_xml.set_domain_type(live, "test"))
    assert moved.get("type") == "test" and moved.get("id") is None


def test_serial_pty_of_a_running_domain() -> None:
    xml = ("<domain><devices><console type='pty'><source path='/dev/pts/4'/>"
           "<target type='serial' port='0'/></console></devices></domain>")
    assert domain_xml.serial_pty_of(xml) == "/dev/pts/4"
    assert domain_xml.serial_pty_of("<domain><devices/></domain>") is None
