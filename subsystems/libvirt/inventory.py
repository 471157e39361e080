"""Listings of a host's libvirt objects for the reality checker: domains, pools and their
volumes, networks, and the files of a directory.

Each lists what is there, through the process's one connection per host, and tolerates an
object that disappears while it is listed (another step undefined it meanwhile).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from typing import TypeVar
from uuid import UUID
from xml.etree import ElementTree as ET

import libvirt

from aggregates.errors import StepFailedError
from kernel.steps.inventory import (
    DirectoryListing,
    DomainFacts,
    LibvirtPoolFacts,
    LibvirtVolumeFacts,
)
from subsystems.libvirt import domain_xml, pools
from subsystems.libvirt.domains import state_of
from subsystems.libvirt.faults import code_of, is_not_found, translated

__all__ = ["directory_listing", "domain_facts", "network_xmls", "pool_facts"]

T = TypeVar("T")
U = TypeVar("U")
_INACTIVE_XML = libvirt.VIR_DOMAIN_XML_INACTIVE


def domain_facts(conn: libvirt.virConnect) -> tuple[DomainFacts, ...]:
    """Every domain of the host, persistent or transient, sorted by name."""

    def one(dom: libvirt.virDomain) -> DomainFacts:
        _state, max_kib, _mem, vcpus, _cpu = dom.info()
        xml = dom.XMLDesc(_INACTIVE_XML if dom.isPersistent() else 0)
        tree = ET.fromstring(xml)
        disks = tuple(s.get("file") or s.get("dev") or ""
                      for s in tree.iterfind("devices/disk/source"))
        macs = tuple((m.get("address") or "").lower()
                     for m in tree.iterfind("devices/interface/mac"))
        return DomainFacts(uuid=UUID(dom.UUIDString()), name=dom.name(), state=state_of(dom),
                           persistent=bool(dom.isPersistent()), vcpus=vcpus,
                           memory_mib=max_kib // 1024, defined_by=domain_xml.defined_by(xml),
                           disks=disks, macs=macs)

    with translated(f"list domains of {conn.getURI()}"):
        found = _present(conn.listAllDomains(0), one)
    return tuple(sorted(found, key=lambda d: d.name))


def pool_facts(conn: libvirt.virConnect) -> tuple[LibvirtPoolFacts, ...]:
    """Every storage pool of the host with its volumes (an inactive pool lists none), each
    active pool refreshed first, so that libvirt's list is the directory's."""

    def volume(vol: libvirt.virStorageVol) -> LibvirtVolumeFacts:
        _kind, capacity, _allocation = vol.info()
        return LibvirtVolumeFacts(name=vol.name(), path=vol.path(), capacity_bytes=capacity)

    def one(pool: libvirt.virStoragePool) -> LibvirtPoolFacts:
        active = bool(pool.isActive())
        path = ET.fromstring(pool.XMLDesc(0)).findtext("target/path") or ""
        if active:  # files the plugins' fallbacks made or removed behind libvirt's back
            with contextlib.suppress(StepFailedError):
                pools.refresh(pool)
        volumes = _present(pool.listAllVolumes(0), volume) if active else []
        return LibvirtPoolFacts(name=pool.name(), path=path, active=active,
                                volumes=tuple(sorted(volumes, key=lambda v: v.name)))

    with translated(f"list storage pools of {conn.getURI()}"):
        found = _present(conn.listAllStoragePools(0), one)
    return tuple(sorted(found, key=lambda p: p.name))


def network_xmls(conn: libvirt.virConnect) -> list[tuple[str, bool, str]]:
    """Every libvirt network of the host: name, whether it runs, and its XML as it runs (its
    definition when it does not)."""

    def one(net: libvirt.virNetwork) -> tuple[str, bool, str]:
        return net.name(), bool(net.isActive()), net.XMLDesc(0)

    with translated(f"list networks of {conn.getURI()}"):
        found = _present(conn.listAllNetworks(0), one)
    return sorted(found)


def directory_listing(path: str) -> DirectoryListing:
    """The plain files and subdirectories of a directory of this machine, sorted (none: it
    does not exist)."""
    try:
        with os.scandir(path) as entries:
            found = [(e.name, e.is_file(follow_symlinks=False),
                      e.is_dir(follow_symlinks=False)) for e in entries]
    except (FileNotFoundError, NotADirectoryError):
        return DirectoryListing(path=path, exists=False)
    return DirectoryListing(path=path, exists=True,
                            files=tuple(sorted(n for n, f, _d in found if f)),
                            subdirectories=tuple(sorted(n for n, _f, d in found if d)))


def _present(objects: Iterable[T], read: Callable[[T], U]) -> list[U]:
    """`read` of each object that still exists when it is read."""
    found = []
    for obj in objects:
        try:
            found.append(read(obj))
        except libvirt.libvirtError as e:
            if not (is_not_found(e) or code_of(e) == libvirt.VIR_ERR_NO_NETWORK):
                raise
    return found
