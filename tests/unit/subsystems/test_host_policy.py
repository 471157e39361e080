"""The decisions that shape a domain on a real host: KVM or TCG, CPU, machine, console."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from aggregates.errors import StepFailedError
from kernel.steps.hypervisor import ConsoleSpec, console_password
from subsystems.libvirt import host_policy
from subsystems.libvirt.host_policy import CpuChoice, DomainSettings

CAPS = """<capabilities><host/>
  <guest><os_type>hvm</os_type><arch name='x86_64'>
    <domain type='qemu'/><domain type='kvm'/></arch></guest>
  <guest><os_type>hvm</os_type><arch name='aarch64'><domain type='qemu'/></arch></guest>
</capabilities>"""
CHR = stat.S_IFCHR


def test_offered_types_are_read_per_arch() -> None:
    assert host_policy.offered_types(CAPS, "x86_64") == {"qemu", "kvm"}
    assert host_policy.offered_types(CAPS, "aarch64") == {"qemu"}
    assert host_policy.offered_types(CAPS, "s390x") == set()


@pytest.mark.parametrize(("setting", "device_ok", "offered", "expected"), [
    ("auto", True, {"qemu", "kvm"}, "kvm"),
    ("auto", None, {"qemu", "kvm"}, "kvm"),  # a remote host: the capabilities are trusted
    ("auto", False, {"qemu", "kvm"}, "qemu"),  # offered, but qemu cannot open /dev/kvm
    ("auto", True, {"qemu"}, "qemu"),
    ("qemu", True, {"qemu", "kvm"}, "qemu"),  # forced TCG (nested KVM's emulation failures)
    ("kvm", False, {"qemu", "kvm"}, "kvm"),  # forced: the admin knows better
])
def test_the_domain_type_decision(setting: host_policy.DomainTypeSetting,
                                  device_ok: bool | None, offered: set[str],
                                  expected: str) -> None:
    assert host_policy.choose_domain_type("QEMU", offered, setting, device_ok) == expected


def test_the_test_driver_is_test_whatever_the_setting() -> None:
    assert host_policy.choose_domain_type("Test", set(), "kvm", False) == "test"


@pytest.mark.parametrize(("setting", "offered"), [("kvm", {"qemu"}), ("auto", set())])
def test_a_type_the_host_does_not_offer_fails_for_good(
        setting: host_policy.DomainTypeSetting, offered: set[str]) -> None:
    with pytest.raises(StepFailedError) as info:
        host_policy.choose_domain_type("QEMU", offered, setting, True, "s390x")
    assert (info.value.retryable, info.value.code) == (False, "invalid_definition")
    assert "s390x" in str(info.value) and f"domain_type={setting}" in str(info.value)


@pytest.mark.parametrize(("mode", "owner", "group", "uid", "gids", "usable"), [
    (CHR | 0o600, 0, 0, 64055, {64055}, False),  # this machine: root only
    (CHR | 0o660, 0, 993, 64055, {64055, 993}, True),  # the kvm group
    (CHR | 0o660, 0, 993, 64055, {64055}, False),  # not in the group
    (CHR | 0o640, 0, 993, 64055, {993}, False),  # read-only for the group
    (CHR | 0o666, 0, 993, 64055, set(), True),  # anyone
    (CHR | 0o600, 64055, 0, 64055, set(), True),  # its own device
    (CHR | 0o600, 5, 5, 0, set(), True),  # root opens anything
    (stat.S_IFREG | 0o666, 0, 0, 64055, set(), False),  # not a device
])
def test_who_can_open_the_kvm_device(mode: int, owner: int, group: int, uid: int,
                                     gids: set[int], usable: bool) -> None:
    assert host_policy.device_usable_by(mode, owner, group, uid, gids) is usable


def test_the_device_check_reads_the_file_and_the_user(tmp_path: Path) -> None:
    me = pwd.getpwuid(os.getuid()).pw_name
    assert host_policy.kvm_device_ok(me, str(tmp_path / "kvm")) is False  # no device
    assert host_policy.kvm_device_ok("no-such-user-here", "/dev/null") is False
    assert host_policy.kvm_device_ok(me, "/dev/null") is True  # 0666 character device
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert host_policy.kvm_device_ok(me, str(plain)) is False


def test_the_qemu_user_of_a_session_is_the_caller() -> None:
    me = pwd.getpwuid(os.getuid()).pw_name
    assert host_policy.qemu_user_of("qemu:///session", "libvirt-qemu") == me
    assert host_policy.qemu_user_of("qemu:///system", "libvirt-qemu") == "libvirt-qemu"
    assert host_policy.qemu_user_of("qemu+ssh://h/system", "qemu") == "qemu"


def test_cpu_and_machine_by_domain_type_and_arch() -> None:
    settings = DomainSettings(tcg_cpu_model="Westmere", hotplug_ports=2)
    assert host_policy.cpu_for("kvm", "Westmere") == CpuChoice(mode="host-model")
    assert host_policy.cpu_for("qemu", "Westmere") == CpuChoice(mode="custom",
                                                                model="Westmere")
    tcg = host_policy.decide_shape("qemu", "x86_64", settings)
    assert (tcg.machine, tcg.cpu, tcg.hotplug_ports, tcg.guest_agent, tcg.pcie) == (
        "q35", CpuChoice(mode="custom", model="Westmere"), 2, True, True)
    arm = host_policy.decide_shape("qemu", "aarch64", settings)
    assert (arm.machine, arm.cpu, arm.pcie) == ("", None, False)
    assert host_policy.decide_shape("kvm", "x86_64", DomainSettings(
        machine="pc-q35-7.2")).pcie


def test_serial_consoles_are_logged_on_real_hosts_only() -> None:
    assert host_policy.decide_shape("qemu", "x86_64", DomainSettings()).serial_log_dir == \
        "/var/log/libvirt"
    assert host_policy.decide_shape("test", "x86_64", DomainSettings()).serial_log_dir == ""
    assert host_policy.decide_shape("kvm", "x86_64", DomainSettings(
        console_log_dir="")).serial_log_dir == ""


def test_the_listen_address_is_the_hosts_management_address() -> None:
    assert host_policy.listen_address("qemu:///system", "10.1.1.1") == "10.1.1.1"
    assert host_policy.listen_address("test:///tmp/h.xml", "127.0.0.1") == "127.0.0.1"
    assert host_policy.listen_address("qemu+ssh://root@192.0.2.7/system", "x") == "192.0.2.7"
    assert host_policy.listen_address("qemu+tcp://localhost/system", "10.1.1.1") == "10.1.1.1"
    # a name this machine cannot resolve is passed on as it is
    assert host_policy.listen_address("qemu+ssh://kvm-9.invalid/system", "x") == \
        "kvm-9.invalid"


def test_console_passwords_are_derived_per_vm_and_secret() -> None:
    vm = UUID("7c9e6679-7425-40de-944b-e07fc1f90ae7")
    first = console_password(b"s" * 32, vm)
    assert len(first) == 8 and first == console_password(b"s" * 32, vm)
    assert first != console_password(b"t" * 32, vm)
    assert first != console_password(b"s" * 32, uuid4())


def test_the_console_decision() -> None:
    vm = uuid4()
    remote = "qemu+ssh://192.0.2.7/system"
    with_secret = DomainSettings(console_secret=b"k" * 32, console_listen="10.1.1.1")
    decided = host_policy.console_for(ConsoleSpec(), remote, vm, with_secret)
    assert (decided.listen, decided.password) == ("192.0.2.7",
                                                  console_password(b"k" * 32, vm))
    local = host_policy.console_for(ConsoleSpec(), "qemu:///system", vm, with_secret)
    assert local.listen == "10.1.1.1"
    # without a secret no password: the console stays on the loopback default
    bare = host_policy.console_for(ConsoleSpec(), remote, vm, DomainSettings())
    assert (bare.listen, bare.password) == ("127.0.0.1", None)
    # what the step names wins
    named = host_policy.console_for(ConsoleSpec(listen="0.0.0.0", password="pw",
                                                graphics="spice", serial=False),
                                    remote, vm, with_secret)
    assert (named.listen, named.password, named.graphics, named.serial) == (
        "0.0.0.0", "pw", "spice", False)
