"""Domain lifecycle on one libvirt connection: define, power, disks, console, power report.

Each function checks the real state first, so running it again is harmless: defining a domain
that exists (same UUID) changes nothing, starting a running one reports "already", and
removing what is gone is success.

Attach and detach try `attachDeviceFlags`/`detachDeviceFlags` first (qemu/KVM: live and
persistent at once). Where libvirt answers VIR_ERR_NO_SUPPORT (the test driver), the fallback
rewrites the persistent definition with the disk added or removed (`defineXML` of the
inactive XML). A running domain keeps its live configuration until it is next started
(stop, then start): the result says `how="redefined"` and `live=False` then.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

import libvirt

from aggregates.errors import StepFailedError
from kernel.steps.hypervisor import (
    ConsoleInfo,
    DefineDomain,
    DiskChanged,
    DiskSpec,
    DomainDefined,
    DomainPower,
    DomainUndefined,
    HostFenced,
    PowerChanged,
    PowerReport,
    PowerState,
)
from subsystems.hypervisor import domain_xml
from subsystems.hypervisor.connections import connection
from subsystems.hypervisor.faults import code_of, is_not_found, is_unsupported, translated, wrap

__all__ = [
    "attach_disk",
    "console",
    "define",
    "destroy",
    "detach_disk",
    "domain_type_of",
    "fence",
    "lookup",
    "reboot",
    "report_power",
    "require",
    "running_on",
    "start",
    "state_of",
    "stop",
    "undefine",
]

_STATES: dict[int, PowerState] = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate", libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked", libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutting_down", libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed", libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}
_INACTIVE_XML = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
_domain_types: dict[str, str] = {}  # by connection URI: capabilities do not change


def lookup(conn: libvirt.virConnect, vm_id: UUID) -> libvirt.virDomain | None:
    """The domain whose UUID is the VM's id, or None."""
    try:
        return conn.lookupByUUIDString(str(vm_id))
    except libvirt.libvirtError as e:
        if is_not_found(e):
            return None
        raise wrap(e, f"look up domain {vm_id}") from e


def require(conn: libvirt.virConnect, vm_id: UUID) -> libvirt.virDomain:
    """The VM's domain; a non-retryable `not_found` failure when it is not defined."""
    dom = lookup(conn, vm_id)
    if dom is None:
        raise StepFailedError(f"domain {vm_id} is not defined on {conn.getURI()}",
                              retryable=False, code="not_found")
    return dom


def running_on(uri: str, vm_id: UUID) -> bool:
    """Whether the VM's domain is active on the host (for guards of other plugins)."""
    dom = lookup(connection(uri), vm_id)
    if dom is None:
        return False
    with translated(f"state of domain {vm_id}"):
        return bool(dom.isActive())


def state_of(dom: libvirt.virDomain) -> PowerState:
    """The domain's power state as a name."""
    with translated(f"state of domain {dom.UUIDString()}"):
        return _STATES.get(dom.state()[0], "unknown")


def domain_type_of(conn: libvirt.virConnect, arch: str = "x86_64") -> str:
    """The `<domain type>` this connection's driver runs ("test", "kvm" or "qemu")."""
    key = f"{conn.getURI()}#{arch}"
    found = _domain_types.get(key)
    if found is None:
        with translated("read host capabilities"):
            found = domain_xml.choose_domain_type(conn.getType(), conn.getCapabilities(), arch)
        _domain_types[key] = found
    return found


def define(conn: libvirt.virConnect, args: DefineDomain) -> DomainDefined:
    """Define the VM's domain unless a domain with its UUID exists already."""
    domain_type = domain_type_of(conn, args.arch)
    existing = lookup(conn, args.vm_id)
    if existing is None:
        _refuse_taken_name(conn, args.name, args.vm_id)
        xml = domain_xml.build_domain_xml(args, domain_type)
        with translated(f"define domain {args.name}"):
            conn.defineXML(xml)
    elif existing.name() != args.name:
        raise StepFailedError(f"domain {args.vm_id} exists as {existing.name()!r}, not "
                              f"{args.name!r}", retryable=False, code="conflict")
    return DomainDefined(vm_id=args.vm_id, name=args.name, host_uri=args.host_uri,
                         domain_type=domain_type, created=existing is None)


def undefine(conn: libvirt.virConnect, vm_id: UUID) -> DomainUndefined:
    """Power the domain off if it runs, then remove its definition."""
    dom = lookup(conn, vm_id)
    if dom is None:
        return DomainUndefined(vm_id=vm_id, existed=False)
    powered_off = _destroy_if_active(dom)
    with translated(f"undefine domain {vm_id}"):
        try:
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                              | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                              | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        except libvirt.libvirtError as e:
            if is_not_found(e):
                return DomainUndefined(vm_id=vm_id, existed=False, powered_off=powered_off)
            if code_of(e) not in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT):
                raise
            # drivers without NVRAM (the test driver) reject the flag: plain undefine
            dom.undefine()
    return DomainUndefined(vm_id=vm_id, existed=True, powered_off=powered_off)


def start(conn: libvirt.virConnect, vm_id: UUID) -> PowerChanged:
    """Start a shut-off domain, resume a paused one; a running one is left alone."""
    dom = require(conn, vm_id)
    state = state_of(dom)
    how = "already"
    with translated(f"start domain {vm_id}"):
        if state in ("paused", "suspended"):
            dom.resume()
            how = "resumed"
        elif not dom.isActive():
            dom.create()
            how = "started"
    return PowerChanged(vm_id=vm_id, how=how, state=state_of(dom))


def stop(dom: libvirt.virDomain, vm_id: UUID, force_after: float, *, poll: float = 0.2,
         clock: Callable[[], float] = time.monotonic,
         sleep: Callable[[float], None] = time.sleep) -> PowerChanged:
    """Ask the guest to shut down, wait up to `force_after` s, then power it off.

    `how` says which ended it: "graceful", "forced", or "already" (it was not running).
    """
    with translated(f"stop domain {vm_id}"):
        if not dom.isActive():
            return PowerChanged(vm_id=vm_id, how="already", state=state_of(dom))
        if force_after > 0:
            try:
                dom.shutdown()
            except libvirt.libvirtError:
                if not dom.isActive():  # it went down by itself meanwhile
                    return PowerChanged(vm_id=vm_id, how="graceful", state=state_of(dom))
                # the guest cannot be asked (no ACPI, paused): power it off below
            else:
                deadline = clock() + force_after
                while dom.isActive():
                    left = deadline - clock()
                    if left <= 0:
                        break
                    sleep(min(poll, left))
                else:
                    return PowerChanged(vm_id=vm_id, how="graceful", state=state_of(dom))
        if not _destroy_if_active(dom):
            return PowerChanged(vm_id=vm_id, how="graceful", state=state_of(dom))
    return PowerChanged(vm_id=vm_id, how="forced", state=state_of(dom))


def destroy(conn: libvirt.virConnect, vm_id: UUID) -> PowerChanged:
    """Power the domain off at once; its definition stays."""
    dom = require(conn, vm_id)
    how = "forced" if _destroy_if_active(dom) else "already"
    return PowerChanged(vm_id=vm_id, how=how, state=state_of(dom))


def reboot(conn: libvirt.virConnect, vm_id: UUID) -> PowerChanged:
    """Reboot a running domain (a repeat reboots again, which is harmless); start a stopped
    one, so that the domain runs afterwards either way."""
    dom = require(conn, vm_id)
    with translated(f"reboot domain {vm_id}"):
        if not dom.isActive():
            dom.create()
            return PowerChanged(vm_id=vm_id, how="started", state=state_of(dom))
        dom.reboot(0)
    return PowerChanged(vm_id=vm_id, how="rebooted", state=state_of(dom))


def attach_disk(conn: libvirt.virConnect, vm_id: UUID, disk: DiskSpec) -> DiskChanged:
    """Attach a disk, live and persistently; redefine where the driver cannot attach."""
    dom = require(conn, vm_id)
    with translated(f"read definition of domain {vm_id}"):
        config = dom.XMLDesc(_INACTIVE_XML)
    for view in domain_xml.disks_of(config):
        if view.path == disk.path:
            return DiskChanged(vm_id=vm_id, path=disk.path, target=view.target,
                               how="already", live=_live_has(dom, disk.path))
    new_config, target = domain_xml.with_disk(config, disk)
    try:
        dom.attachDeviceFlags(domain_xml.disk_xml(disk, target), _affect(dom))
        how = "device"
    except libvirt.libvirtError as e:
        if not is_unsupported(e):
            raise wrap(e, f"attach {disk.path} to domain {vm_id}") from e
        with translated(f"redefine domain {vm_id} with {disk.path}"):
            conn.defineXML(new_config)
        how = "redefined"
    return DiskChanged(vm_id=vm_id, path=disk.path, target=target, how=how,
                       live=_live_has(dom, disk.path))


def detach_disk(conn: libvirt.virConnect, vm_id: UUID, disk: DiskSpec) -> DiskChanged:
    """Detach the disk whose source is `disk.path`; redefine where the driver cannot."""
    dom = lookup(conn, vm_id)
    if dom is None:  # no domain, no disk: a compensation after undefine is fine
        return DiskChanged(vm_id=vm_id, path=disk.path, target=disk.target, how="already",
                           live=False)
    with translated(f"read definition of domain {vm_id}"):
        config = dom.XMLDesc(_INACTIVE_XML)
    attached = [v for v in domain_xml.disks_of(config) if v.path == disk.path]
    new_config = domain_xml.without_disk(config, disk.path)
    element = domain_xml.find_disk_xml(config, disk.path)
    if not attached or new_config is None or element is None:
        return DiskChanged(vm_id=vm_id, path=disk.path, target=disk.target, how="already",
                           live=_live_has(dom, disk.path))
    view = attached[0]
    try:
        dom.detachDeviceFlags(element, _affect(dom))
        how = "device"
    except libvirt.libvirtError as e:
        if not is_unsupported(e):
            raise wrap(e, f"detach {disk.path} from domain {vm_id}") from e
        with translated(f"redefine domain {vm_id} without {disk.path}"):
            conn.defineXML(new_config)
        how = "redefined"
    return DiskChanged(vm_id=vm_id, path=disk.path, target=view.target, how=how,
                       live=_live_has(dom, disk.path))


def console(conn: libvirt.virConnect, host_uri: str, vm_id: UUID) -> ConsoleInfo:
    """The domain's graphics consoles (with ports once running) and serial pty."""
    dom = require(conn, vm_id)
    with translated(f"read console of domain {vm_id}"):
        xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE)
        hostname = conn.getHostname()
    return ConsoleInfo(vm_id=vm_id, host_uri=host_uri, hostname=hostname,
                       state=state_of(dom), graphics=domain_xml.graphics_of(xml),
                       serial_pty=domain_xml.serial_pty_of(xml))


def report_power(conn: libvirt.virConnect, host_uri: str) -> PowerReport:
    """Every domain of the host with its actual state, persistent or transient."""
    found = []
    with translated(f"list domains of {host_uri}"):
        for dom in conn.listAllDomains(0):
            try:
                state, reason = dom.state()
                _state, max_kib, _mem, vcpus, _cpu_time = dom.info()
                found.append(DomainPower(name=dom.name(), uuid=UUID(dom.UUIDString()),
                                         state=_STATES.get(state, "unknown"), reason=reason,
                                         persistent=bool(dom.isPersistent()), vcpus=vcpus,
                                         memory_mib=max_kib // 1024))
            except libvirt.libvirtError as e:
                if not is_not_found(e):  # undefined while we listed: not there any more
                    raise
    return PowerReport(host_uri=host_uri, domains=tuple(sorted(found, key=lambda d: d.name)))


def fence(conn: libvirt.virConnect, host_uri: str) -> HostFenced:
    """Power off every active domain of the host; their definitions stay."""
    off = []
    with translated(f"fence {host_uri}"):
        for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            if _destroy_if_active(dom):
                off.append(UUID(dom.UUIDString()))
    return HostFenced(host_uri=host_uri, powered_off=tuple(sorted(off)))


def _refuse_taken_name(conn: libvirt.virConnect, name: str, vm_id: UUID) -> None:
    try:
        other = conn.lookupByName(name)
    except libvirt.libvirtError as e:
        if is_not_found(e):
            return
        raise wrap(e, f"look up domain {name}") from e
    raise StepFailedError(f"domain name {name!r} is taken by {other.UUIDString()} on "
                          f"{conn.getURI()}, not VM {vm_id}", retryable=False, code="conflict")


def _destroy_if_active(dom: libvirt.virDomain) -> bool:
    """Power off; False when it was not running (also when it stopped just before)."""
    if not dom.isActive():
        return False
    try:
        dom.destroy()
    except libvirt.libvirtError as e:
        if dom.isActive():
            raise wrap(e, f"power off domain {dom.UUIDString()}") from e
        return False
    return True


def _affect(dom: libvirt.virDomain) -> int:
    flags: Any = libvirt.VIR_DOMAIN_AFFECT_CONFIG
    if dom.isActive():
        flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
    return int(flags)


def _live_has(dom: libvirt.virDomain, path: str) -> bool:
    """Whether the running domain has the disk now (False when not running)."""
    with translated(f"read live definition of domain {dom.UUIDString()}"):
        if not dom.isActive():
            return False
        return any(v.path == path for v in domain_xml.disks_of(dom.XMLDesc(0)))
