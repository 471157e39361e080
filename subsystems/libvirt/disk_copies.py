"""Point-in-time copies of volumes, for snapshots and backups, consistent even while a VM runs.

A plain copy of a disk a running guest writes to is not even crash-consistent: blocks copied
early and late come from different moments. So a volume that a running domain holds is
copied by the domain's own qemu, on the host:

1. `blockCopy` of each of the domain's disks to a new file beside the destination (a full,
   flattened copy in the volume's format; a transient job, so a persistent domain may run
   it), then wait for libvirt's READY event: the copy is in step with the disk and every
   write goes to both;
2. ask the guest agent to freeze the guest's filesystems (`fsFreeze`); it may not answer
   (no agent, or not running yet);
3. end every copy without pivoting (`blockJobAbort`): each file is then the disk as it was at
   that moment, all of them at the same moment;
4. thaw, then hash each copy and rename it to its destination.

Which it was is reported: "filesystem" (frozen: what the guest wrote is on disk), "crash"
(not frozen: as if the power had been cut), or "offline" (no running domain had the disk:
a plain copy is exact). A driver that cannot copy blocks (the test driver) gets the same
freeze around a plain copy of the files.

A retry after a crash finds the copy job of its own destination still running: it is ended and
the copy made again. `copy_volumes` copies to files of this machine, from a host whose files
are this machine's; `copy_on_host` keeps the copies on the volumes' host, made by the host
(its qemu's block copy, or libvirt's volume clone) and hashed through libvirt streams
(`host_dirs`), for a host whose files the worker cannot see.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from xml.etree import ElementTree as ET

import libvirt

from aggregates.errors import StepFailedError
from kernel.steps.storage import VolumeRef
from subsystems.base import StepContext
from subsystems.libvirt import disks, domain_xml, events, files, pools, volumes
from subsystems.libvirt.connections import connection
from subsystems.libvirt.faults import is_unsupported, translated, wrap
from subsystems.libvirt.host_dirs import HostDir

__all__ = ["Consistency", "copy_on_host", "copy_timeout", "copy_volumes"]

Consistency = Literal["offline", "filesystem", "crash"]
_PART = ".copying"


def copy_timeout(ctx: StepContext, default: float = 600.0, margin: float = 30.0) -> float:
    """How long block copies may take to be ready: what the step has left, less a margin
    for hashing and renaming."""
    left = ctx.seconds_left()
    return default if left is None else max(1.0, left - margin)


@dataclass(frozen=True, slots=True)
class _BlockCopy:
    """One running disk to copy with qemu: its name in the domain, the file qemu writes (a
    path on the host), and the disk's format."""

    target: str
    path: str
    format: str


def copy_volumes(items: Sequence[tuple[VolumeRef, Path]], timeout: float
                 ) -> tuple[list[files.Copied], Consistency]:
    """Copy each volume to its local destination at one point in time; the copies (size,
    sha256) in order, and how consistent they are. All volumes are on one host, whose files
    are this machine's; `timeout` bounds the wait for the block copies to be ready."""
    if not items:
        return [], "offline"
    conn = _one_host([ref for ref, _ in items])
    sources = [volumes.volume_file(ref) for ref, _ in items]
    dom, targets = _holder(conn, [str(s) for s in sources])
    for _ref, destination in items:
        destination.parent.mkdir(parents=True, exist_ok=True)
    parts = [d.with_name(f".{d.name}{_PART}") for _ref, d in items]
    if dom is None:
        return [files.copy_file(s, d) for s, (_r, d) in zip(sources, items, strict=True)], \
            "offline"
    running = [_BlockCopy(t, str(p), _format_of(dom, t))
               for t, p in zip(targets, parts, strict=True) if t]
    consistency = _block_copy(conn, dom, running, files.remove_quietly, timeout)
    if consistency is None:  # the driver cannot copy blocks: freeze around a file copy
        with _frozen(dom) as frozen:
            copied = [files.copy_file(s, d) for s, (_r, d) in zip(sources, items, strict=True)]
        return copied, "filesystem" if frozen else "crash"
    return [files.adopt(part, d) if target else files.copy_file(source, d)
            for source, (_r, d), part, target in zip(sources, items, parts, targets,
                                                    strict=True)], consistency


def copy_on_host(items: Sequence[tuple[VolumeRef, HostDir, str]], timeout: float
                 ) -> tuple[list[files.Copied], Consistency]:
    """The same, for a host whose files are not this machine's: each volume is copied into
    file `name` of a directory of its host, by the host (`host_dirs`), and hashed through a
    stream; the copies count once sealed with their checksum."""
    if not items:
        return [], "offline"
    conn = _one_host([ref for ref, _hd, _n in items])
    vols = [pools.require_volume(conn, ref.pool, ref.name) for ref, _hd, _n in items]
    facts = [pools.volume_facts(v) for v in vols]
    dom, targets = _holder(conn, [f.path for f in facts])
    for _ref, hd, name in items:
        hd.remove(f"{name}.sha256")  # from now on not a complete copy
    consistency: Consistency = "offline"
    if dom is not None:
        running = [_BlockCopy(t, hd.file(name), _format_of(dom, t))
                   for t, (_r, hd, name) in zip(targets, items, strict=True) if t]
        by_path = {hd.file(name): (hd, name) for _r, hd, name in items}
        copied = _block_copy(conn, dom, running,
                             lambda path: by_path[path][0].remove(by_path[path][1]), timeout)
        if copied is not None:
            consistency = copied
        else:
            raise StepFailedError(f"{conn.getURI()} cannot copy the disks of a running "
                                  "domain (no block copy), and its files are not here",
                                  retryable=False, code="unsupported")
    for vol, fact, target, (_ref, hd, name) in zip(vols, facts, targets, items, strict=True):
        if not target:
            hd.clone(name, vol, fact.format)
    return [hd.seal(name) for _ref, hd, name in items], consistency


def _one_host(refs: Sequence[VolumeRef]) -> libvirt.virConnect:
    uris = {ref.host_uri for ref in refs}
    if len(uris) != 1:
        raise StepFailedError(f"a copy at one point in time needs one host, got {sorted(uris)}",
                              retryable=False, code="invalid_arguments")
    return connection(uris.pop())


def _holder(conn: libvirt.virConnect, paths: Sequence[str]
            ) -> tuple[libvirt.virDomain | None, list[str]]:
    """The running domain that has any of the files, and each file's disk name in it ("":
    not in it); refused when several running domains share them."""
    holders = [disks.holder_of(conn, path) for path in paths]
    running = {h[0].UUIDString(): h[0] for h in holders if h is not None}
    if len(running) > 1:
        raise StepFailedError("the volumes are held by several running domains: no single "
                              "point in time", retryable=False, code="invalid_arguments")
    return (next(iter(running.values()), None),
            [h[1] if h is not None else "" for h in holders])


def _wait_ready(dom: libvirt.virDomain, jobs: events.BlockJobs, targets: set[str],
                timeout: float) -> dict[str, int]:
    """Until every copy is ready (mirroring in step), one fails, or `timeout` s pass. libvirt's
    READY event is waited for a second at a time; between, a copy whose job says it has
    copied all it must (cur == end) counts as ready too: an event can be missed (seen on a
    loaded machine: none came in 270 s while the copies were long in step)."""
    ready = libvirt.VIR_DOMAIN_BLOCK_JOB_READY
    deadline = time.monotonic() + timeout
    while True:
        status = jobs.wait_for(targets, ready, max(0.0, min(1.0, deadline - time.monotonic())))
        for target in targets - {t for t, s in status.items() if s == ready}:
            if status.get(target) is None and _in_step(dom, target):
                status[target] = ready
        settled = all(status.get(t) == ready for t in targets) or any(
            s is not None and s != ready for s in status.values())
        if settled or time.monotonic() >= deadline:
            return status


def _in_step(dom: libvirt.virDomain, target: str) -> bool:
    try:
        info = dom.blockJobInfo(target, 0)
    except libvirt.libvirtError:
        return False
    return bool(info) and int(info.get("end", 0)) > 0 and info.get("cur") == info.get("end")


def _block_copy(conn: libvirt.virConnect, dom: libvirt.virDomain, disks: list[_BlockCopy],
                discard: Callable[[str], object], timeout: float) -> Consistency | None:
    """Copy the running disks with qemu (steps 1-3 of the module's docstring); None when
    the driver cannot copy blocks. `discard` removes a file qemu left half-written."""
    vm = dom.UUIDString()
    for disk in disks:
        _end_job(dom, disk.target)  # a crashed attempt's copy, made again below
        discard(disk.path)
    with events.watch_block_jobs(conn, dom) as jobs:
        started: list[_BlockCopy] = []
        try:
            for disk in disks:
                try:
                    dom.blockCopy(disk.target, _destination_xml(disk), None,
                                  libvirt.VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB)
                except libvirt.libvirtError as e:
                    if is_unsupported(e) and not started:
                        return None
                    raise wrap(e, f"copy disk {disk.target} of domain {vm}") from e
                started.append(disk)
            targets = {d.target for d in disks}
            ready = libvirt.VIR_DOMAIN_BLOCK_JOB_READY
            status = _wait_ready(dom, jobs, targets, timeout)
            if any(status.get(t) != ready for t in targets):
                raise StepFailedError(f"domain {vm}: block copies of {sorted(targets)} not "
                                      f"ready after {timeout:g} s ({status})", retryable=True,
                                      code="copy_not_ready")
            with _frozen(dom) as frozen, translated(f"end the block copies of domain {vm}"):
                for disk in disks:
                    dom.blockJobAbort(disk.target, 0)  # no pivot: the copy stays as it is now
                started.clear()
        finally:
            for disk in started:  # failed before the point in time: no copy
                _end_job(dom, disk.target)
                discard(disk.path)
    return "filesystem" if frozen else "crash"


def _end_job(dom: libvirt.virDomain, target: str) -> None:
    """End the disk's block job if it has one (a driver without block jobs has none)."""
    try:
        if dom.blockJobInfo(target, 0):
            dom.blockJobAbort(target, 0)
    except libvirt.libvirtError as e:
        if not is_unsupported(e):
            raise wrap(e, f"end block job of disk {target}") from e


@contextlib.contextmanager
def _frozen(dom: libvirt.virDomain) -> Iterator[bool]:
    """Freeze the guest's filesystems for the block; yields whether the agent did."""
    try:
        frozen = dom.fsFreeze() > 0
    except libvirt.libvirtError:  # no agent, or it does not answer: crash-consistent then
        frozen = False
    try:
        yield frozen
    finally:
        if frozen:
            with contextlib.suppress(libvirt.libvirtError):  # it thaws itself on a timeout
                dom.fsThaw()


def _format_of(dom: libvirt.virDomain, target: str) -> str:
    with translated(f"read disks of domain {dom.UUIDString()}"):
        xml = dom.XMLDesc(0)
    for view in domain_xml.disks_of(xml):
        if view.target == target:
            return view.format or "raw"
    return "raw"


def _destination_xml(disk: _BlockCopy) -> str:
    elem = ET.Element("disk", {"type": "file"})
    ET.SubElement(elem, "source", {"file": disk.path})
    ET.SubElement(elem, "driver", {"type": disk.format})
    return ET.tostring(elem, encoding="unicode")

