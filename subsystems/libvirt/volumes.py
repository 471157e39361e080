"""Volume operations: libvirt first, the volume's file where the driver cannot.

libvirt's test driver keeps volumes in memory only: no file is made, none is deleted, and it
cannot resize, upload or download. Where a call answers VIR_ERR_NO_SUPPORT, and the host is
this machine (`pools.is_local_uri`), these fallbacks work on the volume's file (`vol.path()`):

- create: a blank volume whose file libvirt did not make gets a sparse file of its capacity,
  so that snapshots, backups and migrations have a file to copy, as on a qemu host.
- from a template: `vol.upload` streams the template in; the fallback copies the file
  (sparse, atomically). Either replaces the sized file with the template's disk, so the
  volume is then grown to its capacity: `vol.resize`, or the fallback `disk_images.grow`
  (raw: a hole; qcow2: its header, or qemu-img). The capacity reported is what the file
  holds when it is on this machine.
- resize: a volume a running domain holds is grown through the domain (`blockResize`: qemu
  holds the image's write lock, so neither `vol.resize` nor `qemu-img resize` can); any other
  volume by `vol.resize`; the fallback grows the file (`disk_images.grow`) and
  re-creates the volume's libvirt record with the new capacity, the file moved aside
  meanwhile so a driver that deletes files cannot lose it. Shrinking is refused.
- migrate: libvirt streams (download from the source, upload to the target) copy between any
  two hosts; the fallback copies the file when both hosts are local.
- delete: a file left behind by a driver that does not delete files is removed.

Without local files a fallback is impossible and the step fails for good (`unsupported`).
Idempotence: an existing volume is reported, not made again; a template volume that exists is
accepted only if its file is the template's bytes, grown or not (else `volume_exists`, which
the kernel's compensation deletes), and is grown if it is not yet. On a remote host that
check is not possible and an existing volume is trusted.
"""

from __future__ import annotations

import contextlib
import glob
import os
from pathlib import Path

import libvirt
import msgspec

from aggregates.errors import StepFailedError
from kernel.steps.storage import (
    CreateVolume,
    Deleted,
    MigrateVolume,
    ResizeVolume,
    VolumeInfo,
    VolumeMigrated,
    VolumeRef,
    VolumeResized,
)
from subsystems.libvirt import disk_images, disks, files, pools
from subsystems.libvirt.connections import connection

__all__ = ["create", "delete", "info", "migrate", "resize", "volume_file"]


def info(ref: VolumeRef, *, created: bool) -> VolumeInfo:
    """The volume as libvirt reports it."""
    facts = pools.volume_facts(pools.require_volume(connection(ref.host_uri), ref.pool,
                                                    ref.name))
    return VolumeInfo(volume=ref, path=facts.path, capacity_bytes=facts.capacity,
                      allocation_bytes=facts.allocation, format=facts.format, created=created)


def volume_file(ref: VolumeRef) -> Path:
    """The volume's file on this machine, for plugins that copy it (snapshot, backup)."""
    _require_local(ref.host_uri, f"read volume {ref.pool}/{ref.name}")
    path = Path(pools.volume_facts(pools.require_volume(
        connection(ref.host_uri), ref.pool, ref.name)).path)
    if not path.is_file():
        raise StepFailedError(f"volume {ref.pool}/{ref.name} has no file at {path}",
                              retryable=False, code="not_found")
    return path


def create(args: CreateVolume) -> VolumeInfo:
    """Create the volume, blank or from its template, unless it exists. A volume from a
    template is a disk of exactly `capacity_bytes`: the template's content, grown to it (a
    capacity smaller than the template's disk is refused)."""
    ref = args.volume
    conn = connection(ref.host_uri)
    local = pools.is_local_uri(ref.host_uri)
    template = Path(args.template_path) if args.template_path else None
    capacity = args.capacity_bytes
    if template is not None:
        if not template.is_file():
            raise StepFailedError(f"template file {template} does not exist",
                                  retryable=False, code="source_missing")
        needed = disk_images.virtual_size(template)
        if capacity < needed:
            raise StepFailedError(f"volume {ref.pool}/{ref.name}: {capacity} bytes cannot hold "
                                  f"template {template}, a disk of {needed} bytes",
                                  retryable=False, code="capacity_too_small")
    with pools.making(ref.name):
        return _create(args, conn, local, template, capacity)


def _create(args: CreateVolume, conn: libvirt.virConnect, local: bool, template: Path | None,
            capacity: int) -> VolumeInfo:
    ref = args.volume
    vol = pools.find_volume(conn, ref.pool, ref.name)
    created = vol is None
    if vol is not None:
        path = pools.volume_facts(vol).path
        if template is not None and local and not _holds(path, template):
            raise StepFailedError(f"volume {ref.pool}/{ref.name} exists and does not hold "
                                  f"template {template}", retryable=False,
                                  code="volume_exists")
    else:
        vol = pools.create_volume(conn, ref.pool, ref.name, capacity, args.format)
        path = pools.volume_facts(vol).path
    try:
        if template is None:
            if created and local and not os.path.exists(path):
                _sparse_file(path, capacity)
        else:
            # the upload (or copy) replaces the sized file: the disk is the template's size
            if created and not pools.try_upload(conn, vol, str(template)):
                _require_local(ref.host_uri, f"copy template into {ref.pool}/{ref.name}")
                files.copy_file(template, path)
            _grow(ref, vol, path, capacity, local)
    except Exception:
        # a failed step is never undone by the kernel: leave no half-made volume (it is
        # named for the kernel's volume, so this step, or an earlier attempt, made it)
        with contextlib.suppress(StepFailedError, OSError):
            delete(ref)
        raise
    made = info(ref, created=created)
    if local and os.path.exists(made.path):  # what the file holds, whatever libvirt recorded
        made = msgspec.structs.replace(made,
                                       capacity_bytes=disk_images.virtual_size(made.path))
    return made


def _grow(ref: VolumeRef, vol: libvirt.virStorageVol, path: str, capacity: int,
          local: bool) -> None:
    """Grow a volume made from a template to `capacity`: libvirt's resize, else its file."""
    if local and os.path.exists(path) and disk_images.virtual_size(path) == capacity:
        return
    if not pools.try_resize(vol, capacity):
        _require_local(ref.host_uri, f"grow {ref.pool}/{ref.name} to {capacity} bytes")
        disk_images.grow(path, capacity)


def resize(args: ResizeVolume) -> VolumeResized:
    """Grow the volume to the asked capacity."""
    ref, capacity = args.volume, args.capacity_bytes
    conn = connection(ref.host_uri)
    pool_dir = Path(pools.pool_facts(pools.require_pool(conn, ref.pool)).path)
    vol = pools.find_volume(conn, ref.pool, ref.name)
    kept = sorted(pool_dir.glob(f".{glob.escape(ref.name)}.resize-keep.*"))
    if vol is None and kept:  # an interrupted fallback: finish it
        with pools.making(ref.name):
            return _recreate(ref, kept[0], capacity, kept[0].suffix.lstrip("."))
    if vol is None:
        raise StepFailedError(f"volume {ref.pool}/{ref.name} does not exist", retryable=False,
                              code="not_found")
    facts = pools.volume_facts(vol)
    if facts.capacity == capacity:
        return VolumeResized(volume=ref, capacity_bytes=capacity, how="already")
    if capacity < facts.capacity:
        raise StepFailedError(f"volume {ref.pool}/{ref.name} is {facts.capacity} bytes: "
                              f"shrinking to {capacity} is refused", retryable=False,
                              code="shrink_refused")
    if disks.try_block_resize(conn, facts.path, capacity):
        return VolumeResized(volume=ref, capacity_bytes=capacity, how="live")
    if pools.try_resize(vol, capacity):
        return VolumeResized(volume=ref, capacity_bytes=capacity, how="resize")
    _require_local(ref.host_uri, f"resize {ref.pool}/{ref.name}")
    keep = pool_dir / f".{ref.name}.resize-keep.{facts.format}"
    with pools.making(ref.name):
        if os.path.exists(facts.path):
            os.replace(facts.path, keep)
        pools.delete_volume(vol)
        return _recreate(ref, keep, capacity, facts.format)


def delete(ref: VolumeRef) -> Deleted:
    """Delete the volume and its file; gone already is success."""
    conn = connection(ref.host_uri)
    if pools.find_pool(conn, ref.pool) is None:
        return Deleted(existed=False)  # no pool, no volume: a late compensation
    vol = pools.find_volume(conn, ref.pool, ref.name)
    if vol is None:
        return Deleted(existed=False)
    try:
        path = pools.volume_facts(vol).path
    except StepFailedError as e:
        if e.code != "not_found":
            raise
        return Deleted(existed=False)  # deleted meanwhile (a second delivery of this step)
    existed = pools.delete_volume(vol)
    if pools.is_local_uri(ref.host_uri):
        files.remove_quietly(path)  # the test driver leaves the file it never made
    return Deleted(existed=existed)


def migrate(args: MigrateVolume) -> VolumeMigrated:
    """Copy the volume to its target pool, then delete the source."""
    source, target = args.source, args.target
    if (source.host_uri, source.pool) == (target.host_uri, target.pool):
        raise StepFailedError("migrate volume: source and target pool are the same",
                              retryable=False, code="invalid_arguments")
    src_conn, dst_conn = connection(source.host_uri), connection(target.host_uri)
    src = pools.find_volume(src_conn, source.pool, source.name)
    dst = pools.find_volume(dst_conn, target.pool, target.name)
    if src is None:
        if dst is None:
            raise StepFailedError(f"volume {source.pool}/{source.name} is in neither pool",
                                  retryable=False, code="not_found")
        return VolumeMigrated(volume=info(target, created=False), how="already")
    facts = pools.volume_facts(src)
    with pools.making(target.name):
        if dst is None:
            dst = pools.create_volume(dst_conn, target.pool, target.name, facts.capacity,
                                      facts.format)
        # a copy interrupted before the source was deleted is simply done again: the target
        # is not in use until this step succeeds
        sha256 = None
        if pools.try_stream_copy(src_conn, src, dst_conn, dst):
            how = "stream"
        else:
            for uri in (source.host_uri, target.host_uri):
                _require_local(uri, f"copy volume {source.name} to {target.pool}")
            how = "file"
            sha256 = files.copy_file(facts.path, pools.volume_facts(dst).path,
                                     min_size=facts.capacity if facts.format == "raw" else 0
                                     ).sha256
    delete(source)
    return VolumeMigrated(volume=info(target, created=True), how=how, sha256=sha256)


def _recreate(ref: VolumeRef, keep: Path, capacity: int, fmt: str) -> VolumeResized:
    """Re-create the volume's record with the new capacity and put its grown file back."""
    vol = pools.create_volume(connection(ref.host_uri), ref.pool, ref.name, capacity, fmt)
    path = pools.volume_facts(vol).path
    if keep.exists():
        if disk_images.virtual_size(keep) < capacity:
            disk_images.grow(keep, capacity)
        os.replace(keep, path)
    elif not os.path.exists(path):
        _sparse_file(path, capacity)
    return VolumeResized(volume=ref, capacity_bytes=capacity, how="recreated")


def _sparse_file(path: str, size: int) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        f.truncate(size)


def _holds(path: str, template: Path) -> bool:
    """Whether the volume's file is the template's content, grown or not."""
    try:
        return files.same_prefix(template, path) or disk_images.resized_from(template, path)
    except FileNotFoundError:
        return False


def _require_local(uri: str, what: str) -> None:
    if not pools.is_local_uri(uri):
        raise StepFailedError(f"{what}: the driver of {uri} cannot do it and the host's files "
                              "are not on this machine", retryable=False, code="unsupported")
