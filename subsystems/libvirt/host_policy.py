"""What a domain looks like on a given host: the decisions, as functions of what the host says.

A real host is not the test driver. Three traps were met on `qemu:///system` (libvirt 9,
qemu 7.2), and each decision here answers one:

- **KVM that is offered but not usable.** libvirt's capabilities offer domain type `kvm` as
  soon as `/dev/kvm` exists, even when the user qemu runs as (`libvirt-qemu`) cannot open it;
  every start then fails ("Could not access KVM kernel module"). So `auto` picks `kvm` only
  when the capabilities offer it AND the device exists AND that user can open it for reading
  and writing, else TCG (`qemu`). The device can be checked only where the host's files are
  this machine's (`pools.is_local_uri`); on a remote host `auto` trusts the capabilities, and
  the setting `domain_type = "qemu"` forces TCG (also the way out of nested KVM's emulation
  failures, which no check can foresee).
- **The CPU.** Without `<cpu>`, libvirt gives `qemu64`, which current guests (x86-64-v2 and
  later) refuse. On KVM the host's model (`host-model`: migratable, the host's features); on
  TCG a named model qemu can emulate (`tcg_cpu_model`, Nehalem by default: x86-64-v2).
- **The machine.** q35 (PCIe) on x86_64. Its root ports are not hot-pluggable, so a disk
  attached to a running domain needs a free `pcie-root-port`: the definition adds one per
  device that takes a PCIe slot, plus `hotplug_ports` spare ones.

The console listens on the host's management address, the one the platform reaches the host
by (the URI's host; for a host on this machine, `console_listen`), so that a console proxy
elsewhere can reach it; it is guarded by the VM's password (`kernel.steps.hypervisor.
console_password`).
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import stat
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit
from uuid import UUID
from xml.etree import ElementTree as ET

from aggregates.errors import StepFailedError
from kernel.steps.hypervisor import ConsoleSpec, console_password

__all__ = [
    "KVM_DEVICE",
    "CpuChoice",
    "DomainSettings",
    "DomainShape",
    "DomainTypeSetting",
    "choose_domain_type",
    "console_for",
    "cpu_for",
    "decide_shape",
    "device_usable_by",
    "kvm_device_ok",
    "listen_address",
    "offered_types",
    "qemu_user_of",
]

KVM_DEVICE = "/dev/kvm"
DomainTypeSetting = Literal["auto", "kvm", "qemu"]


@dataclass(frozen=True, slots=True)
class DomainSettings:
    """The hypervisor plugin's settings that shape a domain (see `make_hypervisor`)."""

    domain_type: DomainTypeSetting = "auto"
    tcg_cpu_model: str = "Nehalem"
    machine: str = "q35"
    hotplug_ports: int = 4
    guest_agent: bool = True
    console_listen: str = "127.0.0.1"
    console_secret: bytes | None = field(default=None, repr=False)  # never in a log line
    qemu_user: str = "libvirt-qemu"
    console_log_dir: str = "/var/log/libvirt"  # serial logs on the hosts ("": none)


@dataclass(frozen=True, slots=True)
class CpuChoice:
    """The `<cpu>` element: `mode` ("host-model", "custom"), and the model of a custom one."""

    mode: str
    model: str = ""


@dataclass(frozen=True, slots=True)
class DomainShape:
    """The host-dependent parts of a definition: domain type, machine (empty: the driver's
    default), CPU (None: the driver's default), spare PCIe root ports for hot-plug, and
    whether the domain gets a guest agent channel."""

    domain_type: str
    machine: str = ""
    cpu: CpuChoice | None = None
    hotplug_ports: int = 0
    guest_agent: bool = False
    serial_log_dir: str = ""  # where the host's virtlogd logs the serial console ("": not)

    @property
    def pcie(self) -> bool:
        """Whether the machine is q35, whose root ports must be added for hot-plug."""
        return self.machine == "q35" or self.machine.startswith("pc-q35")


def decide_shape(domain_type: str, arch: str, settings: DomainSettings) -> DomainShape:
    """The shape of a domain of `domain_type`: machine and CPU models are x86's, so other
    architectures get their driver's defaults."""
    x86 = arch == "x86_64"
    return DomainShape(domain_type=domain_type, machine=settings.machine if x86 else "",
                       cpu=cpu_for(domain_type, settings.tcg_cpu_model) if x86 else None,
                       hotplug_ports=settings.hotplug_ports, guest_agent=settings.guest_agent,
                       # the test driver runs nothing, so logs nothing
                       serial_log_dir=settings.console_log_dir if domain_type != "test" else "")


def offered_types(capabilities_xml: str, arch: str) -> set[str]:
    """The domain types the host's capabilities offer for `arch`."""
    offered: set[str] = set()
    for guest in ET.fromstring(capabilities_xml).iter("guest"):
        arch_elem = guest.find("arch")
        if arch_elem is not None and arch_elem.get("name") == arch:
            offered.update(d.get("type", "") for d in arch_elem.iter("domain"))
    return offered


def choose_domain_type(driver: str, offered: set[str], setting: DomainTypeSetting,
                       kvm_device_ok: bool | None, arch: str = "x86_64") -> str:
    """The `<domain type>`: "test" on the test driver; else the setting, where "auto" is kvm
    when offered and its device is usable (None: not checkable, trusted), else qemu (TCG)."""
    if driver.lower() == "test":
        return "test"
    wanted = setting
    if setting == "auto":
        wanted = "kvm" if "kvm" in offered and kvm_device_ok is not False else "qemu"
    if wanted not in offered:
        raise StepFailedError(f"host driver {driver} offers no domain type {wanted} for arch "
                              f"{arch} (offered: {sorted(offered) or 'none'}; setting "
                              f"domain_type={setting})", retryable=False,
                              code="invalid_definition")
    return wanted


def device_usable_by(mode: int, owner: int, group: int, uid: int, gids: set[int]) -> bool:
    """Whether a process of `uid` in groups `gids` can open a character device of `mode`,
    owned by `owner`:`group`, for reading and writing (what qemu needs of /dev/kvm)."""
    if not stat.S_ISCHR(mode):
        return False
    if uid == 0:
        return True
    if uid == owner:
        bits = stat.S_IRUSR | stat.S_IWUSR
    elif group in gids:
        bits = stat.S_IRGRP | stat.S_IWGRP
    else:
        bits = stat.S_IROTH | stat.S_IWOTH
    return mode & bits == bits


def qemu_user_of(uri: str, configured: str) -> str:
    """The user a host's qemu runs as: the connecting user on a `/session` URI, else the
    configured one (Debian's qemu.conf default, `libvirt-qemu`)."""
    if urlsplit(uri).path.rstrip("/") == "/session":
        return pwd.getpwuid(os.getuid()).pw_name
    return configured


def kvm_device_ok(user: str, device: str = KVM_DEVICE) -> bool:
    """Whether `device` exists here and `user` (who must exist) can open it read-write."""
    try:
        info = os.stat(device)
        account = pwd.getpwnam(user)
    except (FileNotFoundError, KeyError):
        return False
    gids = {account.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    return device_usable_by(info.st_mode, info.st_uid, info.st_gid, account.pw_uid, gids)


def cpu_for(domain_type: str, tcg_cpu_model: str) -> CpuChoice:
    """host-model under KVM; the named model under TCG (and on the test driver, which only
    records it)."""
    if domain_type == "kvm":
        return CpuChoice(mode="host-model")
    return CpuChoice(mode="custom", model=tcg_cpu_model)


def listen_address(uri: str, local_listen: str) -> str:
    """The host's management address: the address of the URI's host, or `local_listen` for a
    host on this machine. A name that does not resolve here is passed on as it is."""
    host = urlsplit(uri).hostname
    if host is None or host in ("localhost", "127.0.0.1", "::1"):
        return local_listen
    try:
        return str(socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)[0][4][0])
    except OSError:
        return host


def console_for(spec: ConsoleSpec, uri: str, vm_id: UUID,
                settings: DomainSettings) -> ConsoleSpec:
    """The console as defined: an empty `listen` becomes the host's management address, and
    no password becomes the VM's derived one when a console secret is configured. Without a
    secret the console stays on `console_listen` unless the step names an address: a
    console on a reachable address without a password would be anyone's."""
    password = spec.password
    if password is None and settings.console_secret is not None:
        password = console_password(settings.console_secret, vm_id)
    listen = spec.listen
    if not listen:
        listen = listen_address(uri, settings.console_listen) if password is not None \
            else settings.console_listen
    return ConsoleSpec(graphics=spec.graphics, listen=listen, password=password,
                       serial=spec.serial)
