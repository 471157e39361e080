"""Domain XML building and editing, as pure functions."""

from __future__ import annotations

from uuid import uuid4
from xml.etree import ElementTree as ET

import pytest

from aggregates.errors import StepFailedError
from kernel.steps.hypervisor import ConsoleSpec, DefineDomain, DiskSpec, NicSpec
from subsystems.libvirt import domain_xml
from subsystems.libvirt.host_policy import CpuChoice, DomainShape

TEST = DomainShape(domain_type="test")
KVM = DomainShape(domain_type="kvm")

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


def test_the_definition_carries_offering_disks_nics_and_console() -> None:
    a = args(console=ConsoleSpec(graphics="spice", listen="10.0.0.5", password="pw"))
    xml = domain_xml.build_domain_xml(a, KVM)
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
    assert [(g.type, g.listen, g.port, g.password, g.password_required)
            for g in domain_xml.graphics_of(xml)] == [("spice", "10.0.0.5", None, "pw", True)]
    assert root.find("devices/console[@type='pty']") is not None


def test_no_console_and_explicit_targets() -> None:
    a = args(disks=(DiskSpec(path="/a", target="vdc"), DiskSpec(path="/b")),
             console=ConsoleSpec(graphics="none", serial=False))
    xml = domain_xml.build_domain_xml(a, TEST)
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
        domain_xml.build_domain_xml(args(**overrides), TEST)
    assert (info.value.retryable, info.value.code) == (False, "invalid_definition")


def test_target_names_follow_libvirts_scheme() -> None:
    assert domain_xml.target_name("virtio", []) == "vda"
    assert domain_xml.target_name("scsi", ["sda", "sdb"]) == "sdc"
    used = [f"vd{chr(c)}" for c in range(ord("a"), ord("z") + 1)]
    assert domain_xml.target_name("virtio", used) == "vdaa"
    assert domain_xml.target_name("ide", ["vda"]) == "hda"


def test_adding_and_removing_a_disk() -> None:
    xml = domain_xml.build_domain_xml(args(), TEST)
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
    live = domain_xml.build_domain_xml(args(), KVM).replace("<domain type=\"kvm\">",
                                                              "<domain type=\"kvm\" id=\"7\">")
    moved = ET.fromstring(domain_xml.set_domain_type(live, "test"))
    assert moved.get("type") == "test" and moved.get("id") is None


def test_serial_pty_of_a_running_domain() -> None:
    xml = ("<domain><devices><console type='pty'><source path='/dev/pts/4'/>"
           "<target type='serial' port='0'/></console></devices></domain>")
    assert domain_xml.serial_pty_of(xml) == "/dev/pts/4"
    assert domain_xml.serial_pty_of("<domain><devices/></domain>") is None


def test_a_definition_names_the_step_that_made_it() -> None:
    step_id = uuid4()
    xml = domain_xml.build_domain_xml(args(), TEST, step_id)
    assert domain_xml.defined_by(xml) == step_id
    assert domain_xml.defined_by(domain_xml.with_disk(xml, DiskSpec(path="/p/x"))[0]) == step_id
    assert domain_xml.defined_by(domain_xml.build_domain_xml(args(), TEST)) is None


def test_a_q35_shape_gives_machine_cpu_agent_channel_and_spare_root_ports() -> None:
    shape = DomainShape(domain_type="qemu", machine="q35",
                        cpu=CpuChoice(mode="custom", model="Nehalem"), hotplug_ports=4,
                        guest_agent=True)
    a = args()  # two virtio disks, an IDE cdrom, two NICs
    root = ET.fromstring(domain_xml.build_domain_xml(a, shape))
    os_type = root.find("os/type")
    assert os_type is not None and os_type.get("machine") == "q35"
    cpu = root.find("cpu")
    assert cpu is not None and cpu.get("mode") == "custom"
    model = cpu.find("model")
    assert model is not None and (model.text, model.get("fallback")) == ("Nehalem", "forbid")
    [channel] = root.findall("devices/channel")
    target = channel.find("target")
    assert channel.get("type") == "unix" and target is not None
    assert (target.get("type"), target.get("name")) == ("virtio", "org.qemu.guest_agent.0")
    # libvirt refuses q35 unless controller 0 is the root, once any PCI controller is named
    first = root.find("devices/controller")
    assert first is not None and (first.get("index"), first.get("model")) == ("0", "pcie-root")
    ports = root.findall("devices/controller[@model='pcie-root-port']")
    # 2 virtio disks + 2 NICs + the agent's virtio-serial + balloon + USB, and 4 spare
    assert len(ports) == 2 + 2 + 1 + 2 + 4


def test_host_model_and_no_root_ports_off_q35() -> None:
    shape = DomainShape(domain_type="kvm", machine="pc", cpu=CpuChoice(mode="host-model"))
    root = ET.fromstring(domain_xml.build_domain_xml(args(), shape))
    cpu = root.find("cpu")
    assert cpu is not None and cpu.get("mode") == "host-model" and cpu.find("model") is None
    assert root.find("devices/controller") is None and root.find("devices/channel") is None
    plain = ET.fromstring(domain_xml.build_domain_xml(args(), KVM))
    os_type = plain.find("os/type")
    assert os_type is not None and os_type.get("machine") is None
    assert plain.find("cpu") is None


def test_a_console_without_listen_leaves_the_hosts_default() -> None:
    xml = domain_xml.build_domain_xml(args(console=ConsoleSpec()), KVM)
    gfx = ET.fromstring(xml).find("devices/graphics")
    assert gfx is not None and gfx.get("listen") is None and gfx.find("listen") is None


def test_consoles_follow_a_domain_to_its_new_hosts_address() -> None:
    xml = domain_xml.build_domain_xml(args(console=ConsoleSpec(listen="10.0.0.5")), KVM)
    moved = domain_xml.with_listen(xml, "10.0.0.5", "10.0.0.6")
    assert [g.listen for g in domain_xml.graphics_of(moved)] == ["10.0.0.6"]
    gfx = ET.fromstring(moved).find("devices/graphics/listen")
    assert gfx is not None and gfx.get("address") == "10.0.0.6"
    assert domain_xml.with_listen(xml, "10.0.0.9", "10.0.0.6") == xml  # not the source's
    assert domain_xml.arch_of(xml) == "x86_64"
    assert domain_xml.arch_of(domain_xml.build_domain_xml(args(arch="aarch64"), KVM)) == \
        "aarch64"


def test_the_serial_console_is_logged_where_the_shape_says() -> None:
    """virtlogd keeps what the serial console printed, for the console desk's output."""
    a = args()
    logged = domain_xml.build_domain_xml(a, DomainShape(domain_type="kvm",
                                                        serial_log_dir="/var/log/libvirt/"))
    log = ET.fromstring(logged).find("devices/serial/log")
    assert log is not None
    assert (log.get("file"), log.get("append")) == (f"/var/log/libvirt/{a.vm_id}.serial.log",
                                                    "on")
    assert ET.fromstring(domain_xml.build_domain_xml(a, KVM)).find("devices/serial/log") is None
