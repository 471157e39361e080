"""Step contracts of the `hypervisor` subsystem: libvirt domains on a host URI.

The domain's libvirt UUID is the VM's id, so every action finds its domain by `vm_id` and a
repeated step sees the state the first one left. Compensations: define -> undefine,
start -> stop (force_after_seconds=0), stop -> start, attach_disk -> detach_disk (and back),
migrate -> migrate with the hosts swapped. reboot, console and report_power change nothing
that can be undone, or nothing at all.
"""

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec

from kernel.contracts.console import console_password

__all__ = [
    "AttachDisk",
    "ConsoleInfo",
    "ConsoleSpec",
    "DefineDomain",
    "DestroyDomain",
    "DetachDisk",
    "DiskChanged",
    "DiskSpec",
    "DomainDefined",
    "DomainPower",
    "DomainUndefined",
    "FenceHost",
    "GetConsole",
    "GraphicsInfo",
    "HostFenced",
    "MigrateDomain",
    "Migrated",
    "NicSpec",
    "PowerChanged",
    "PowerReport",
    "RebootDomain",
    "ReportPower",
    "StartDomain",
    "StopDomain",
    "UndefineDomain",
    "console_password",
]

DiskBus = Literal["virtio", "scsi", "sata", "ide"]
DiskFormat = Literal["raw", "qcow2"]
PowerState = Literal["nostate", "running", "blocked", "paused", "shutting_down", "shutoff",
                     "crashed", "suspended", "unknown"]
Positive = Annotated[int, msgspec.Meta(ge=1)]


class _Args(msgspec.Struct, frozen=True, kw_only=True):
    """Common base of the hypervisor step arguments."""


class DiskSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One disk of a domain: a file on the host (a storage volume's path)."""

    path: str
    device: Literal["disk", "cdrom"] = "disk"
    bus: DiskBus = "virtio"
    format: DiskFormat = "qcow2"
    target: str = ""  # e.g. "vda"; empty: the first free name for the bus
    read_only: bool = False
    volume_id: UUID | None = None


class NicSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One NIC: a MAC on a libvirt network or on a host bridge (set exactly one)."""

    mac: str
    network: str = ""
    bridge: str = ""
    model: str = "virtio"
    nic_id: UUID | None = None


class ConsoleSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Remote console: a graphics device and, optionally, a serial console on a pty.

    `listen` empty and `password` None let the hypervisor plugin decide: the host's
    management address, guarded by `console_password` of the VM (see its docstring for why
    the password is derived and never sent).
    """

    graphics: Literal["vnc", "spice", "none"] = "vnc"
    listen: str = ""
    password: str | None = None
    serial: bool = True


class DefineDomain(_Args, frozen=True, kw_only=True, tag="hypervisor.define"):
    """Define (persistently, not start) the domain of a VM on a host."""

    vm_id: UUID
    name: str
    host_uri: str
    cpu_cores: Positive
    cpu_mhz: Positive
    memory_mib: Positive
    disks: tuple[DiskSpec, ...] = ()
    nics: tuple[NicSpec, ...] = ()
    console: ConsoleSpec = msgspec.field(default_factory=ConsoleSpec)
    arch: str = "x86_64"
    start: bool = False  # then start it too: a deploy saves a round trip


class UndefineDomain(_Args, frozen=True, kw_only=True, tag="hypervisor.undefine"):
    """Remove a domain's definition, powering it off first; gone already is success."""

    vm_id: UUID
    host_uri: str


class StartDomain(_Args, frozen=True, kw_only=True, tag="hypervisor.start"):
    """Power a defined domain on (resume it when paused)."""

    vm_id: UUID
    host_uri: str


class StopDomain(_Args, frozen=True, kw_only=True, tag="hypervisor.stop"):
    """Shut down gracefully; power off after `force_after_seconds` (0: power off at once)."""

    vm_id: UUID
    host_uri: str
    force_after_seconds: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 60.0


class RebootDomain(_Args, frozen=True, kw_only=True, tag="hypervisor.reboot"):
    """Reboot a running domain (a stopped one is started): ask the guest, and reset it when
    it has not rebooted after `force_after_seconds` (0: reset at once)."""

    vm_id: UUID
    host_uri: str
    force_after_seconds: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 60.0


class DestroyDomain(_Args, frozen=True, kw_only=True, tag="hypervisor.destroy"):
    """Power a domain off at once (libvirt's destroy); keeps its definition."""

    vm_id: UUID
    host_uri: str


class MigrateDomain(_Args, frozen=True, kw_only=True, tag="hypervisor.migrate"):
    """Move a domain from one host to another; a running one keeps running.
    `shared_storage`: the platform vouches that both hosts reach the domain's disks (a pool
    of their cluster or zone), which libvirt cannot tell for a folder a cluster file system
    or NFS mount it does not recognise serves, and refuses a live migration as unsafe."""

    vm_id: UUID
    source_uri: str
    target_uri: str
    shared_storage: bool = False


class AttachDisk(_Args, frozen=True, kw_only=True, tag="hypervisor.attach_disk"):
    """Attach a disk (a volume's file) to a domain, live if it runs, and persistently."""

    vm_id: UUID
    host_uri: str
    disk: DiskSpec


class DetachDisk(_Args, frozen=True, kw_only=True, tag="hypervisor.detach_disk"):
    """Detach the disk whose source is `disk.path`; not attached is success."""

    vm_id: UUID
    host_uri: str
    disk: DiskSpec


class GetConsole(_Args, frozen=True, kw_only=True, tag="hypervisor.console"):
    """Tell how to reach a domain's console."""

    vm_id: UUID
    host_uri: str


class ReportPower(_Args, frozen=True, kw_only=True, tag="hypervisor.report_power"):
    """Report the actual power state of every domain of a host."""

    host_uri: str


class FenceHost(_Args, frozen=True, kw_only=True, tag="hypervisor.fence"):
    """Make sure no domain of a host runs any more (before its VMs start elsewhere): power
    off every active domain, keeping the definitions. A host that cannot be reached cannot
    be fenced, and the step fails (retryably)."""

    host_uri: str


# --------------------------------------------------------------------------- results


class DomainDefined(msgspec.Struct, frozen=True, kw_only=True):
    """The defined domain; `created` is False when it was defined already."""

    vm_id: UUID
    name: str
    host_uri: str
    domain_type: str
    created: bool
    started: bool = False  # asked to start, and it runs


class DomainUndefined(msgspec.Struct, frozen=True, kw_only=True):
    """Whether a domain was there to remove, and whether it had to be powered off."""

    vm_id: UUID
    existed: bool
    powered_off: bool = False


class PowerChanged(msgspec.Struct, frozen=True, kw_only=True):
    """A power action's outcome: `how` it happened and the state after it.

    `how`: "started", "resumed", "graceful", "forced", "rebooted" (the guest rebooted when
    asked: libvirt reported its reset), "reset" (it had not after the reboot's
    `force_after_seconds`, and was reset), "already" (nothing to do: the domain was in the
    wanted state) or "gone" (a stop or destroy run as a compensation found no domain at all).
    """

    vm_id: UUID
    how: str
    state: PowerState


class Migrated(msgspec.Struct, frozen=True, kw_only=True):
    """Where the domain is now and how it got there ("live", "redefined" or "already")."""

    vm_id: UUID
    host_uri: str
    how: str
    state: PowerState


class DiskChanged(msgspec.Struct, frozen=True, kw_only=True):
    """An attach or detach: the disk's target, and how it was done.

    `how`: "device" (attachDeviceFlags/detachDeviceFlags), "redefined" (the persistent
    definition was rewritten; a running domain sees the change after its next start) or
    "already".
    """

    vm_id: UUID
    path: str
    target: str
    how: str
    live: bool


class GraphicsInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One graphics console of a domain; port None means not allocated yet.

    `password` is never filled in a result (results are events: see `console_password`);
    `password_required` says that the console asks for one, which a console proxy computes
    with `console_password`.
    """

    type: str
    listen: str
    port: int | None
    password: str | None = None
    password_required: bool = False


class ConsoleInfo(msgspec.Struct, frozen=True, kw_only=True):
    """How to reach a domain's consoles."""

    vm_id: UUID
    host_uri: str
    hostname: str
    state: PowerState
    graphics: tuple[GraphicsInfo, ...] = ()
    serial_pty: str | None = None


class DomainPower(msgspec.Struct, frozen=True, kw_only=True):
    """The observed power state of one domain (`reason` is libvirt's state reason code)."""

    name: str
    uuid: UUID
    state: PowerState
    reason: int
    persistent: bool
    vcpus: int = 0
    memory_mib: int = 0


class PowerReport(msgspec.Struct, frozen=True, kw_only=True):
    """Every domain of a host, as libvirt sees it, sorted by name; as an observation on NATS
    it also says when it was taken."""

    host_uri: str
    domains: tuple[DomainPower, ...]
    observed_at: datetime | None = None


class HostFenced(msgspec.Struct, frozen=True, kw_only=True):
    """The host runs no domain: the ones that were powered off."""

    host_uri: str
    powered_off: tuple[UUID, ...]
