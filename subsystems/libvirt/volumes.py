"""Volume operations: libvirt first, the volume's file where the driver cannot.

libvirt's test driver keeps volumes in memory only: no file is made, none is deleted, and it
cannot resize, upload or download. Where a call answers VIR_ERR_NO_SUPPORT, and the host is
this machine (`pools.is_local_uri`), these fallbacks work on the volume's file (`vol.path()`):

- create: a blank volume whose file libvirt did not make gets a sparse file of its capacity,
  so that snapshots, backups and migrations have a file to copy, as on a qemu host.
- from a template: `vol.upload` streams the template in; the fallback copies the file
  (sparse, atomically) and, for raw, extends it to the capacity with a hole.
- resize: `vol.resize` grows it; the fallback grows the file (truncate: a real resize for raw
  images; a qcow2's virtual size is NOT changed by it) and re-creates the volume's libvirt
  record with the new capacity, the file moved aside meanwhile so a driver that deletes files
  cannot lose it. Shrinking is refused.
- migrate: libvirt streams (download from the source, upload to the target) copy between any
  two hosts; the fallback copies the file when both hosts are local.
- delete: a file left behind by a driver that does not delete files is removed.

Without local files a fallback is impossible and the step fails for good (`unsupported`).
Idempotence: an existing volume is reported, not made again; a template volume that exists is
accepted only if its file starts with the template's bytes (else `volume_exists`, which the
kernel's compensation deletes). On a remote host that check is not possible and an existing
volume is trusted.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

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
from subsystems.hypervisor import pools
from subsystems.hypervisor.connections import connection
from subsystems.storage import files

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
    """Create the volume, blank or from its template, unless it exists."""
    ref = args.volume
    conn = connection(ref.host_uri)
    local = pools.is_local_uri(ref.host_uri)
    template = Path(args.template_path) if args.template_path else None
    if template is not None and not template.is_file():
        raise StepFailedError(f"template file {template} does not exist", retryable=False,
                              code="source_missing")
    existing = pools.find_volume(conn, ref.pool, ref.name)
    if existing is not None:
        path = pools.volume_facts(existing).path
        if template is not None and local and not _starts_with(path, template):
            raise StepFailedError(f"volume {ref.pool}/{ref.name} exists and does not hold "
                                  f"template {template}", retryable=False,
                                  code="volume_exists")
        return info(ref, created=False)
    capacity = args.capacity_bytes
    if template is not None and args.format == "raw":
        capacity = max(capacity, template.stat().st_size)  # a raw disk holds its template
    vol = pools.create_volume(conn, ref.pool, ref.name, capacity, args.format)
    path = pools.volume_facts(vol).path
    if template is not None:
        if not pools.try_upload(conn, vol, str(template)):
            _require_local(ref.host_uri, f"copy template into {ref.pool}/{ref.name}")
            files.copy_file(template, path,
                            min_size=capacity if args.format == "raw" else 0)
    elif local and not os.path.exists(path):
        _sparse_file(path, capacity)
    return info(ref, created=True)


def resize(args: ResizeVolume) -> VolumeResized:
    """Grow the volume to the asked capacity."""
    ref, capacity = args.volume, args.capacity_bytes
    conn = connection(ref.host_uri)
    pool_dir = Path(pools.pool_facts(pools.require_pool(conn, ref.pool)).path)
    vol = pools.find_volume(conn, ref.pool, ref.name)
    kept = sorted(pool_dir.glob(f".{glob.escape(ref.name)}.resize-keep.*"))
    if vol is None and kept:  # an interrupted fallback: finish it
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
    if pools.try_resize(vol, capacity):
        return VolumeResized(volume=ref, capacity_bytes=capacity, how="resize")
    _require_local(ref.host_uri, f"resize {ref.pool}/{ref.name}")
    keep = pool_dir / f".{ref.name}.resize-keep.{facts.format}"
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
    path = pools.volume_facts(vol).path
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
        with open(keep, "r+b") as f:
            if os.fstat(f.fileno()).st_size < capacity:
                f.truncate(capacity)
        os.replace(keep, path)
    elif not os.path.exists(path):
        _sparse_file(path, capacity)
    return VolumeResized(volume=ref, capacity_bytes=capacity, how="recreated")


def _sparse_file(path: str, size: int) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        f.truncate(size)


def _starts_with(path: str, template: Path) -> bool:
    try:
        return files.same_prefix(template, path)
    except FileNotFoundError:
        return False


def _require_local(uri: str, what: str) -> None:
    if not pools.is_local_uri(uri):
        raise StepFailedError(f"{what}: the driver of {uri} cannot do it and the host's files "
                              "are not on this machine", retryable=False, code="unsupported")
