"""Disks of running and defined domains: attach, detach, and the calls on a disk in use.

Attach tries `attachDeviceFlags` first (qemu/KVM: live and persistent at once). Where libvirt
answers VIR_ERR_NO_SUPPORT (the test driver), the fallback rewrites the persistent definition
with the disk added or removed (`defineXML` of the inactive XML). A running domain keeps its
live configuration until it is next started (stop, then start): the result says
`how="redefined"` and `live=False` then.

A detach is checked against what happened, not against libvirt's return: qemu asks the guest
to release the device and libvirt returns once the request is sent (after waiting 5 s),
whether or not the guest let go. So the live detach comes first, and the disk must be gone
from the live definition within `wait` seconds; else the step fails (retryably: the guest may
still release it) before the persistent definition is touched, so the disk stays attached in
both, as the platform believes.

A disk file a running domain holds is the domain's qemu's to change: `holder_of` finds it,
and `try_block_resize` grows it through the domain (qemu holds the image's write lock).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

import libvirt

from aggregates.errors import StepFailedError
from kernel.steps.hypervisor import DiskChanged, DiskSpec
from subsystems.libvirt import domain_xml
from subsystems.libvirt.domains import INACTIVE_XML, lookup, require
from subsystems.libvirt.faults import is_not_found, is_unsupported, translated, wrap

__all__ = ["attach_disk", "detach_disk", "holder_of", "try_block_resize"]

# libvirt says this with VIR_ERR_INTERNAL_ERROR, which is retryable otherwise
_NO_SLOT = "No more available PCI slots"

def attach_disk(conn: libvirt.virConnect, vm_id: UUID, disk: DiskSpec) -> DiskChanged:
    """Attach a disk, live and persistently; redefine where the driver cannot attach."""
    dom = require(conn, vm_id)
    with translated(f"read definition of domain {vm_id}"):
        config = dom.XMLDesc(INACTIVE_XML)
    for view in domain_xml.disks_of(config):
        if view.path == disk.path:
            return DiskChanged(vm_id=vm_id, path=disk.path, target=view.target,
                               how="already", live=_live_has(dom, disk.path))
    new_config, target = domain_xml.with_disk(config, disk)
    try:
        dom.attachDeviceFlags(domain_xml.disk_xml(disk, target), _affect(dom))
        how = "device"
    except libvirt.libvirtError as e:
        if _NO_SLOT in (e.get_error_message() or ""):  # retrying cannot free one
            raise StepFailedError(f"attach {disk.path} to running domain {vm_id}: no free "
                                  "PCI slot (on q35, a spare root port: see the hypervisor's "
                                  "hotplug_ports)", retryable=False, code="no_free_slot") from e
        if not is_unsupported(e):
            raise wrap(e, f"attach {disk.path} to domain {vm_id}") from e
        with translated(f"redefine domain {vm_id} with {disk.path}"):
            conn.defineXML(new_config)
        how = "redefined"
    return DiskChanged(vm_id=vm_id, path=disk.path, target=target, how=how,
                       live=_live_has(dom, disk.path))


def detach_disk(conn: libvirt.virConnect, vm_id: UUID, disk: DiskSpec, wait: float, *,
                poll: float = 0.2, clock: Callable[[], float] = time.monotonic,
                sleep: Callable[[float], None] = time.sleep) -> DiskChanged:
    """Detach the disk whose source is `disk.path`: from the running domain first, checked
    to be gone within `wait` s (`detach_refused`, retryable, when the guest keeps it), then
    from the definition; redefine where the driver cannot detach."""
    dom = lookup(conn, vm_id)
    if dom is None:  # no domain, no disk: a compensation after undefine is fine
        return DiskChanged(vm_id=vm_id, path=disk.path, target=disk.target, how="already",
                           live=False)
    with translated(f"read definition of domain {vm_id}"):
        config = dom.XMLDesc(INACTIVE_XML)
        live = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE) if dom.isActive() else None
    in_config = [v for v in domain_xml.disks_of(config) if v.path == disk.path]
    in_live = [v for v in domain_xml.disks_of(live) if v.path == disk.path] if live else []
    if not in_config and not in_live:
        return DiskChanged(vm_id=vm_id, path=disk.path, target=disk.target, how="already",
                           live=False)
    target = (in_live or in_config)[0].target
    how = "already"  # the test driver's running domain keeps it until restarted
    if live is not None and in_live:
        element = domain_xml.find_disk_xml(live, disk.path)
        try:
            dom.detachDeviceFlags(element, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as e:
            if not is_unsupported(e):
                raise wrap(e, f"detach {disk.path} from running domain {vm_id}") from e
        else:
            _await_release(dom, vm_id, disk.path, wait, poll, clock, sleep)
            how = "device"
    if in_config:
        how = _detach_from_definition(conn, dom, vm_id, disk.path, config)
    return DiskChanged(vm_id=vm_id, path=disk.path, target=target, how=how,
                       live=_live_has(dom, disk.path))


def _await_release(dom: libvirt.virDomain, vm_id: UUID, path: str, wait: float,
                   poll: float, clock: Callable[[], float],
                   sleep: Callable[[float], None]) -> None:
    """Wait until the running domain no longer has the disk; `detach_refused` if it still
    has it after `wait` s."""
    deadline = clock() + wait
    while _live_has(dom, path):
        left = deadline - clock()
        if left <= 0:
            raise StepFailedError(
                f"domain {vm_id}: the guest did not release disk {path} within {wait:g} s "
                "of the detach request; it stays attached", retryable=True,
                code="detach_refused")
        sleep(min(poll, left))


def _detach_from_definition(conn: libvirt.virConnect, dom: libvirt.virDomain, vm_id: UUID,
                            path: str, config: str) -> str:
    """Remove the disk from the persistent definition: libvirt's detach ("device"), or a
    redefine ("redefined")."""
    element = domain_xml.find_disk_xml(config, path)
    new_config = domain_xml.without_disk(config, path)
    try:
        dom.detachDeviceFlags(element, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        return "device"
    except libvirt.libvirtError as e:
        if not is_unsupported(e) or new_config is None:
            raise wrap(e, f"detach {path} from the definition of domain {vm_id}") from e
    with translated(f"redefine domain {vm_id} without {path}"):
        conn.defineXML(new_config)
    return "redefined"


def holder_of(conn: libvirt.virConnect, path: str) -> tuple[libvirt.virDomain, str] | None:
    """The running domain that has the disk file `path`, and the disk's target, or None."""
    with translated(f"list running domains of {conn.getURI()}"):
        for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            try:
                xml = dom.XMLDesc(0)
            except libvirt.libvirtError as e:
                if is_not_found(e):  # undefined while we listed
                    continue
                raise
            for view in domain_xml.disks_of(xml):
                if view.path == path:
                    return dom, view.target
    return None


def try_block_resize(conn: libvirt.virConnect, path: str, capacity: int) -> bool:
    """Grow the disk file `path` of a running domain through the domain (qemu resizes the
    image it holds open, and tells the guest); False when no running domain has it, or its
    driver cannot (the test driver)."""
    held = holder_of(conn, path)
    if held is None:
        return False
    dom, target = held
    try:
        dom.blockResize(target, capacity, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
    except libvirt.libvirtError as e:
        if is_unsupported(e):
            return False
        raise wrap(e, f"resize disk {target} of running domain {dom.UUIDString()} to "
                      f"{capacity} bytes") from e
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
