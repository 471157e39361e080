"""The hypervisor plugin against libvirt's test driver, checked through libvirt's own view."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import UUID, uuid4
from xml.etree import ElementTree as ET

import libvirt
import msgspec
import pytest
from fixtures.libvirt_host import LibvirtTestDomain
from support.plugin_steps import PluginSteps

from kernel.steps.hypervisor import (
    AttachDisk,
    ConsoleInfo,
    ConsoleSpec,
    DefineDomain,
    DestroyDomain,
    DetachDisk,
    DiskChanged,
    DiskSpec,
    DomainDefined,
    DomainUndefined,
    GetConsole,
    Migrated,
    MigrateDomain,
    NicSpec,
    PowerChanged,
    PowerReport,
    RebootDomain,
    ReportPower,
    StartDomain,
    StopDomain,
    UndefineDomain,
    console_password,
)
from subsystems.libvirt import domain_xml
from subsystems.libvirt.connections import close_all, connection

HostFactory = Callable[..., str]


@pytest.fixture(autouse=True)
def _fresh_connections() -> Iterator[None]:
    yield
    close_all()


@pytest.fixture
def hv() -> PluginSteps:
    return PluginSteps("hypervisor", {"poll_seconds": 0.05})


def define_args(uri: str, vm_id: UUID | None = None, name: str = "i-2-10-VM") -> DefineDomain:
    return DefineDomain(
        vm_id=vm_id or uuid4(), name=name, host_uri=uri, cpu_cores=2, cpu_mhz=1500,
        memory_mib=1024,
        disks=(DiskSpec(path="/pool/root.qcow2"),
               DiskSpec(path="/pool/data.raw", format="raw", bus="scsi")),
        nics=(NicSpec(mac="52:54:00:12:34:56", network="guest-net"),
              NicSpec(mac="52:54:00:12:34:57", bridge="cloudbr0", model="e1000")),
        console=ConsoleSpec(graphics="vnc", listen="0.0.0.0", password="s3cret"))


def libvirt_domain(uri: str, vm_id: UUID) -> libvirt.virDomain:
    return connection(uri).lookupByUUIDString(str(vm_id))


def test_define_builds_the_domain_libvirt_reports_and_a_repeat_changes_nothing(
        hv: PluginSteps, libvirt_uri: str) -> None:
    args = define_args(libvirt_uri)
    step_id = uuid4()
    first = hv.ok(args, DomainDefined, step_id=step_id)
    assert (first.created, first.domain_type) == (True, "test")
    again = hv.ok(args, DomainDefined, step_id=step_id)
    assert again.created is False

    assert [d.name() for d in connection(libvirt_uri).listAllDomains()] == ["i-2-10-VM"]
    dom = libvirt_domain(libvirt_uri, args.vm_id)
    xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE)
    assert dom.name() == "i-2-10-VM" and not dom.isActive() and dom.isPersistent()
    assert dom.info()[1] == 1024 * 1024 and dom.info()[3] == 2  # KiB, vcpus
    assert "<shares>3000</shares>" in xml
    assert [(d.path, d.target, d.bus, d.format) for d in domain_xml.disks_of(xml)] == [
        ("/pool/root.qcow2", "vda", "virtio", "qcow2"), ("/pool/data.raw", "sda", "scsi", "raw")]
    assert [(n.mac, n.type, n.source, n.model) for n in domain_xml.nics_of(xml)] == [
        ("52:54:00:12:34:56", "network", "guest-net", "virtio"),
        ("52:54:00:12:34:57", "bridge", "cloudbr0", "e1000")]
    graphics = domain_xml.graphics_of(xml)
    assert [(g.type, g.listen, g.password) for g in graphics] == [("vnc", "0.0.0.0", "s3cret")]


def test_define_refuses_a_name_held_by_another_vm(hv: PluginSteps, libvirt_uri: str) -> None:
    hv.ok(define_args(libvirt_uri), DomainDefined)
    outcome = hv.fail(define_args(libvirt_uri))  # same name, new vm_id
    assert (outcome.error_code, outcome.retryable) == ("conflict", False)


def test_power_cycle_and_its_repeats(hv: PluginSteps, libvirt_uri: str) -> None:
    args = define_args(libvirt_uri)
    hv.ok(args, DomainDefined)
    start = StartDomain(vm_id=args.vm_id, host_uri=libvirt_uri)
    assert hv.ok(start, PowerChanged).how == "started"
    assert hv.ok(start, PowerChanged).how == "already"
    dom = libvirt_domain(libvirt_uri, args.vm_id)
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING

    reboot = hv.ok(RebootDomain(vm_id=args.vm_id, host_uri=libvirt_uri), PowerChanged)
    assert (reboot.how, reboot.state) == ("rebooted", "running")  # the test driver: in the call
    reset = hv.ok(RebootDomain(vm_id=args.vm_id, host_uri=libvirt_uri, force_after_seconds=0),
                  PowerChanged)
    assert (reset.how, reset.state) == ("reset", "running")

    stop = StopDomain(vm_id=args.vm_id, host_uri=libvirt_uri, force_after_seconds=5)
    assert hv.ok(stop, PowerChanged).how == "graceful"  # the test driver obeys ACPI at once
    assert dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
    assert hv.ok(stop, PowerChanged).how == "already"

    hv.ok(start, PowerChanged)
    forced = hv.ok(StopDomain(vm_id=args.vm_id, host_uri=libvirt_uri, force_after_seconds=0),
                   PowerChanged, compensation=True)
    assert (forced.how, forced.state) == ("forced", "shutoff")

    hv.ok(start, PowerChanged)
    destroy = DestroyDomain(vm_id=args.vm_id, host_uri=libvirt_uri)
    assert hv.ok(destroy, PowerChanged).how == "forced"
    assert hv.ok(destroy, PowerChanged).how == "already"
    assert not dom.isActive() and dom.isPersistent()


def test_undefine_powers_off_first_and_gone_is_success(hv: PluginSteps,
                                                       libvirt_uri: str) -> None:
    args = define_args(libvirt_uri)
    hv.ok(args, DomainDefined)
    hv.ok(StartDomain(vm_id=args.vm_id, host_uri=libvirt_uri), PowerChanged)
    undefine = UndefineDomain(vm_id=args.vm_id, host_uri=libvirt_uri)
    first = hv.ok(undefine, DomainUndefined, compensation=True)
    assert (first.existed, first.powered_off) == (True, True)
    assert connection(libvirt_uri).listAllDomains() == []
    assert hv.ok(undefine, DomainUndefined).existed is False
    missing = hv.fail(StartDomain(vm_id=args.vm_id, host_uri=libvirt_uri))
    assert (missing.error_code, missing.retryable) == ("not_found", False)
    # undoing a start of a domain that is gone is success; a forward stop of it is not
    stop = StopDomain(vm_id=args.vm_id, host_uri=libvirt_uri, force_after_seconds=0)
    assert hv.ok(stop, PowerChanged, compensation=True).how == "gone"
    assert hv.fail(stop).error_code == "not_found"


def test_attach_and_detach_fall_back_to_redefining(hv: PluginSteps, libvirt_uri: str) -> None:
    args = define_args(libvirt_uri)
    hv.ok(args, DomainDefined)
    hv.ok(StartDomain(vm_id=args.vm_id, host_uri=libvirt_uri), PowerChanged)
    disk = DiskSpec(path="/pool/extra.qcow2")
    attach = AttachDisk(vm_id=args.vm_id, host_uri=libvirt_uri, disk=disk)
    attached = hv.ok(attach, DiskChanged)
    # the test driver answers VIR_ERR_NO_SUPPORT: the persistent definition was rewritten
    assert (attached.how, attached.target, attached.live) == ("redefined", "vdb", False)
    assert hv.ok(attach, DiskChanged).how == "already"
    dom = libvirt_domain(libvirt_uri, args.vm_id)
    config = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert sorted((d.target, d.path) for d in domain_xml.disks_of(config)) == [
        ("sda", "/pool/data.raw"), ("vda", "/pool/root.qcow2"), ("vdb", "/pool/extra.qcow2")]
    assert "/pool/extra.qcow2" not in dom.XMLDesc(0)  # live: only after the next start

    hv.ok(StopDomain(vm_id=args.vm_id, host_uri=libvirt_uri), PowerChanged)
    hv.ok(StartDomain(vm_id=args.vm_id, host_uri=libvirt_uri), PowerChanged)
    assert "/pool/extra.qcow2" in dom.XMLDesc(0)

    detach = DetachDisk(vm_id=args.vm_id, host_uri=libvirt_uri, disk=disk)
    detached = hv.ok(detach, DiskChanged, compensation=True)
    assert (detached.how, detached.target) == ("redefined", "vdb")
    assert hv.ok(detach, DiskChanged).how == "already"
    config = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert "/pool/extra.qcow2" not in [d.path for d in domain_xml.disks_of(config)]


def test_migrate_falls_back_to_define_start_undefine(hv: PluginSteps,
                                                     libvirt_host_factory: HostFactory) -> None:
    source, target = libvirt_host_factory("host-a"), libvirt_host_factory("host-b")
    args = define_args(source)
    hv.ok(args, DomainDefined)
    hv.ok(StartDomain(vm_id=args.vm_id, host_uri=source), PowerChanged)
    migrate = MigrateDomain(vm_id=args.vm_id, source_uri=source, target_uri=target)
    moved = hv.ok(migrate, Migrated)
    assert (moved.how, moved.host_uri, moved.state) == ("redefined", target, "running")
    assert connection(source).listAllDomains() == []
    dom = libvirt_domain(target, args.vm_id)
    assert dom.isActive() and dom.isPersistent() and dom.name() == args.name
    assert len(domain_xml.disks_of(dom.XMLDesc(0))) == 2
    assert len(domain_xml.nics_of(dom.XMLDesc(0))) == 2
    assert hv.ok(migrate, Migrated).how == "already"

    back = hv.ok(MigrateDomain(vm_id=args.vm_id, source_uri=target, target_uri=source),
                 Migrated, compensation=True)
    assert (back.how, back.host_uri) == ("redefined", source)
    assert libvirt_domain(source, args.vm_id).isActive()


def test_migrate_resumes_after_an_interruption(hv: PluginSteps,
                                               libvirt_host_factory: HostFactory) -> None:
    source, target = libvirt_host_factory("host-a"), libvirt_host_factory("host-b")
    args = define_args(source)
    hv.ok(args, DomainDefined)
    hv.ok(StartDomain(vm_id=args.vm_id, host_uri=source), PowerChanged)
    # as if a first attempt died after defining on the target
    xml = libvirt_domain(source, args.vm_id).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    connection(target).defineXML(xml)
    moved = hv.ok(MigrateDomain(vm_id=args.vm_id, source_uri=source, target_uri=target),
                  Migrated)
    assert (moved.how, moved.state) == ("redefined", "running")
    assert connection(source).listAllDomains() == []


def test_console_and_power_report(hv: PluginSteps, libvirt_host_factory: HostFactory) -> None:
    old = LibvirtTestDomain(name="legacy-vm", running=False)
    uri = libvirt_host_factory(domains=[old])
    args = define_args(uri)
    hv.ok(args, DomainDefined)
    hv.ok(StartDomain(vm_id=args.vm_id, host_uri=uri), PowerChanged)
    outcome = hv.run(GetConsole(vm_id=args.vm_id, host_uri=uri))
    info = msgspec.json.decode(outcome.result, type=ConsoleInfo)
    assert (info.state, info.hostname) == ("running", connection(uri).getHostname())
    # the result is an event: it says a password is needed, never which
    assert [(g.type, g.listen, g.password, g.password_required) for g in info.graphics] == [
        ("vnc", "0.0.0.0", None, True)]
    assert b"s3cret" not in bytes(outcome.result)

    report = hv.ok(ReportPower(host_uri=uri), PowerReport)
    assert [(d.name, str(d.uuid), d.state) for d in report.domains] == [
        (args.name, str(args.vm_id), "running"), ("legacy-vm", old.uuid, "shutoff")]
    # a domain started behind the kernel's back shows up as it is
    connection(uri).lookupByName("legacy-vm").create()
    states = {d.name: d.state for d in hv.ok(ReportPower(host_uri=uri), PowerReport).domains}
    assert states == {args.name: "running", "legacy-vm": "running"}


def test_an_unreachable_host_is_a_retryable_failure(hv: PluginSteps, tmp_path: object) -> None:
    outcome = hv.fail(ReportPower(host_uri="test:///nonexistent/host.xml"))
    assert (outcome.error_code, outcome.retryable) == ("host_unreachable", True)


def _failing_create(monkeypatch: pytest.MonkeyPatch) -> list[UUID]:
    """Make every domain start fail as a busy host would (retryable); the tried VMs' ids."""
    tried: list[UUID] = []

    def create(self: libvirt.virDomain, *args: object) -> int:
        tried.append(UUID(self.UUIDString()))
        raise libvirt.libvirtError("injected: the host could not start the domain")

    monkeypatch.setattr(libvirt.virDomain, "create", create)
    return tried


def test_a_define_and_start_that_fails_to_start_leaves_no_domain(
        hv: PluginSteps, libvirt_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    tried = _failing_create(monkeypatch)
    args = msgspec.structs.replace(define_args(libvirt_uri), start=True)
    outcome = hv.fail(args)
    assert tried == [args.vm_id]  # it was defined, then the start failed
    assert (outcome.error_code, outcome.retryable) == ("libvirt_error", True)
    assert connection(libvirt_uri).listAllDomains() == []  # its step's undo never runs


def test_a_retried_define_and_start_removes_what_its_first_attempt_defined(
        hv: PluginSteps, libvirt_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The first attempt defined the domain, then its worker died before starting it; the
    # retry (same step id) finds the domain, cannot start it, and removes it: it was its own.
    args = define_args(libvirt_uri)
    step_id = uuid4()
    hv.ok(args, DomainDefined, step_id=step_id)
    _failing_create(monkeypatch)
    hv.fail(msgspec.structs.replace(args, start=True), step_id=step_id)
    assert connection(libvirt_uri).listAllDomains() == []


def test_a_define_and_start_that_fails_keeps_a_domain_it_did_not_define(
        hv: PluginSteps, libvirt_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    args = define_args(libvirt_uri)
    hv.ok(args, DomainDefined)  # another step defined it
    _failing_create(monkeypatch)
    hv.fail(msgspec.structs.replace(args, start=True))
    assert [d.UUIDString() for d in connection(libvirt_uri).listAllDomains()] == \
        [str(args.vm_id)]


def test_a_domain_for_real_hosts_on_the_test_driver(libvirt_uri: str, tmp_path: Path) -> None:
    """The whole definition (q35 and its spare root ports, CPU model, agent channel, console
    on the host's address with the VM's derived password) is accepted by the test driver;
    the password is in libvirt's secure XML only."""
    secret_file = tmp_path / "console.secret"
    hv = PluginSteps("hypervisor", {"poll_seconds": 0.05, "console_listen": "192.0.2.10",
                                    "console_secret_file": str(secret_file),
                                    "hotplug_ports": 3, "tcg_cpu_model": "Westmere"})
    assert secret_file.stat().st_mode & 0o777 == 0o600
    secret = secret_file.read_text().strip().encode()
    args = msgspec.structs.replace(define_args(libvirt_uri), console=ConsoleSpec())
    assert hv.ok(args, DomainDefined).domain_type == "test"
    hv.ok(StartDomain(vm_id=args.vm_id, host_uri=libvirt_uri), PowerChanged)
    dom = libvirt_domain(libvirt_uri, args.vm_id)
    root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE))
    os_type = root.find("os/type")
    assert os_type is not None and os_type.get("machine") == "q35"
    assert root.findtext("cpu/model") == "Westmere"
    assert root.find("devices/channel/target[@name='org.qemu.guest_agent.0']") is not None
    # 1 virtio disk (the other is scsi) + 2 NICs + agent + balloon + USB, and 3 spare
    assert len(root.findall("devices/controller[@model='pcie-root-port']")) == 6 + 3
    [gfx] = domain_xml.graphics_of(ET.tostring(root, encoding="unicode"))
    assert (gfx.listen, gfx.password) == ("192.0.2.10", console_password(secret, args.vm_id))
    assert "passwd" not in dom.XMLDesc(0)  # libvirt hides it from a plain read
    info = hv.ok(GetConsole(vm_id=args.vm_id, host_uri=libvirt_uri), ConsoleInfo)
    assert [(g.listen, g.password, g.password_required) for g in info.graphics] == [
        ("192.0.2.10", None, True)]
    # a second worker with the same file derives the same passwords
    assert PluginSteps("hypervisor", {"console_secret_file": str(secret_file)}) \
        .plugin.settings.console_secret == secret
