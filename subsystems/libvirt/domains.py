"""Domain lifecycle on one libvirt connection: define, power, disks, console, power report.

Each function checks the real state first, so running it again is harmless: defining a domain
that exists (same UUID) changes nothing, starting a running one reports "already", and
removing what is gone is success.

A reboot is checked against what happened, not against libvirt's return: the guest is asked
(ACPI) and libvirt returns at once; the reboot event (`events.watch_reboot`) says it rebooted.
One that has not after `force_after` seconds is reset, and the result says which (`rebooted`
or `reset`). Disks are in `disks`, beside this module.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from uuid import UUID

import libvirt
import msgspec

from aggregates.errors import StepFailedError
from kernel.steps.hypervisor import (
    ConsoleInfo,
    DefineDomain,
    DomainDefined,
    DomainPower,
    DomainUndefined,
    HostFenced,
    PowerChanged,
    PowerReport,
    PowerState,
)
from subsystems.libvirt import domain_xml, events, host_policy, pools
from subsystems.libvirt.connections import connection
from subsystems.libvirt.faults import code_of, found, is_not_found, translated, wrap
from subsystems.libvirt.host_policy import DomainSettings, DomainShape

__all__ = [
    "INACTIVE_XML",
    "console",
    "define",
    "destroy",
    "fence",
    "lookup",
    "reboot",
    "report_power",
    "require",
    "running_on",
    "shape_of",
    "start",
    "state_of",
    "stop",
    "undefine",
    "undefine_own",
]

_STATES: dict[int, PowerState] = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate", libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked", libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutting_down", libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed", libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}
INACTIVE_XML = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
"""The flags of a domain's persistent definition, passwords included."""
# drivers whose reboot call returns once the domain has rebooted (and send no event)
_REBOOTS_IN_THE_CALL = frozenset({"test"})
# by connection URI, arch and settings: capabilities and /dev/kvm are read once per process
_shapes: dict[tuple[str, str, DomainSettings], DomainShape] = {}


def lookup(conn: libvirt.virConnect, vm_id: UUID) -> libvirt.virDomain | None:
    """The domain whose UUID is the VM's id, or None."""
    return found(lambda: conn.lookupByUUIDString(str(vm_id)), f"look up domain {vm_id}")


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


def shape_of(conn: libvirt.virConnect, arch: str, settings: DomainSettings) -> DomainShape:
    """How a domain for `arch` is defined on this connection's host (`host_policy`)."""
    uri = conn.getURI()
    key = (uri, arch, settings)
    found = _shapes.get(key)
    if found is None:
        with translated("read host capabilities"):
            driver, capabilities = conn.getType(), conn.getCapabilities()
        offered = host_policy.offered_types(capabilities, arch)
        device_ok = None  # a remote host's /dev/kvm cannot be seen from here
        if pools.is_local_uri(uri) and "kvm" in offered:
            device_ok = host_policy.kvm_device_ok(
                host_policy.qemu_user_of(uri, settings.qemu_user))
        domain_type = host_policy.choose_domain_type(driver, offered, settings.domain_type,
                                                     device_ok, arch)
        found = host_policy.decide_shape(domain_type, arch, settings)
        _shapes[key] = found
    return found


def define(conn: libvirt.virConnect, args: DefineDomain, settings: DomainSettings,
           step_id: UUID | None = None) -> DomainDefined:
    """Define the VM's domain unless a domain with its UUID exists already; a new definition
    records `step_id` as the step that made it (see `undefine_own`)."""
    shape = shape_of(conn, args.arch, settings)
    existing = lookup(conn, args.vm_id)
    if existing is None:
        _refuse_taken_name(conn, args.name, args.vm_id)
        console_spec = host_policy.console_for(args.console, args.host_uri, args.vm_id,
                                               settings)
        xml = domain_xml.build_domain_xml(
            msgspec.structs.replace(args, console=console_spec), shape, step_id)
        with translated(f"define domain {args.name}"):
            conn.defineXML(xml)
    elif existing.name() != args.name:
        raise StepFailedError(f"domain {args.vm_id} exists as {existing.name()!r}, not "
                              f"{args.name!r}", retryable=False, code="conflict")
    return DomainDefined(vm_id=args.vm_id, name=args.name, host_uri=args.host_uri,
                         domain_type=shape.domain_type, created=existing is None)


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


def undefine_own(conn: libvirt.virConnect, vm_id: UUID, step_id: UUID) -> bool:
    """Power off and undefine the VM's domain if step `step_id` defined it (an earlier
    attempt of the same step included); a domain another step defined stays. Whether it
    went."""
    dom = lookup(conn, vm_id)
    if dom is None:
        return False
    with translated(f"read definition of domain {vm_id}"):
        xml = dom.XMLDesc(INACTIVE_XML)
    if domain_xml.defined_by(xml) != step_id:
        return False
    return undefine(conn, vm_id).existed


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


def reboot(conn: libvirt.virConnect, vm_id: UUID, force_after: float, *,
           poll: float = 0.2, clock: Callable[[], float] = time.monotonic) -> PowerChanged:
    """Reboot a running domain, resetting it when the guest has not rebooted after
    `force_after` s (a repeat reboots again, which is harmless); start a stopped one, so
    that the domain runs afterwards either way."""
    dom = require(conn, vm_id)
    with translated(f"reboot domain {vm_id}"):
        if not dom.isActive():
            dom.create()
            return PowerChanged(vm_id=vm_id, how="started", state=state_of(dom))
        if force_after > 0 and conn.getType().lower() in _REBOOTS_IN_THE_CALL:
            dom.reboot(0)
            return PowerChanged(vm_id=vm_id, how="rebooted", state=state_of(dom))
        if force_after > 0:
            with events.watch_reboot(conn, dom) as rebooted:
                try:
                    dom.reboot(0)
                except libvirt.libvirtError:
                    pass  # the guest cannot be asked (no ACPI, paused): reset it below
                else:
                    deadline = clock() + force_after
                    while not rebooted.is_set() and dom.isActive():
                        left = deadline - clock()
                        if left <= 0:
                            break
                        rebooted.wait(min(poll, left))
            if rebooted.is_set():
                return PowerChanged(vm_id=vm_id, how="rebooted", state=state_of(dom))
        if not dom.isActive():  # it powered off instead of rebooting: it runs again
            dom.create()
            return PowerChanged(vm_id=vm_id, how="started", state=state_of(dom))
        dom.reset(0)
    return PowerChanged(vm_id=vm_id, how="reset", state=state_of(dom))


def console(conn: libvirt.virConnect, host_uri: str, vm_id: UUID) -> ConsoleInfo:
    """The domain's graphics consoles (with ports once running; whether each asks for a
    password, never the password) and serial pty."""
    dom = require(conn, vm_id)
    with translated(f"read console of domain {vm_id}"):
        xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE)
        hostname = conn.getHostname()
    # the result is an event: the password stays out (kernel.steps.hypervisor.console_password)
    graphics = tuple(msgspec.structs.replace(g, password=None)
                     for g in domain_xml.graphics_of(xml))
    return ConsoleInfo(vm_id=vm_id, host_uri=host_uri, hostname=hostname,
                       state=state_of(dom), graphics=graphics,
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
