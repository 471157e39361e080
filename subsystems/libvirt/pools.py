"""Storage pools and volumes through libvirt: the storage, snapshot and backup plugins' driver.

Only libvirt calls live here; the file-level fallbacks live in `volumes`, beside it.
Calls a driver may not implement return False instead of raising when libvirt answers
VIR_ERR_NO_SUPPORT (`try_resize`, `try_upload`, `try_stream_copy`): libvirt's test driver
implements none of resize, upload, download or wipe, and keeps volumes in memory only (it
creates no file and ignores the files in a pool's directory). A caller then falls back to
working on the volume's file directly, which is only possible when the host's files are this
machine's files: `is_local_uri` says whether they are.

A pool may be shared: several hosts define it on one directory (NFS, or one directory of this
machine for test-driver hosts), and a volume made through one host is resized or deleted
through another. libvirt lists a dir pool's volumes as it last scanned them, so a volume not
found is looked up again after `refresh`, which rescans. The test driver's refresh rescans
nothing; for its pools on this machine `refresh` brings the list in line with the directory
itself, as libvirt's scan would: a volume whose file is gone is dropped, and a file no volume
names is added with the format and size its header says. A volume this process is making
(`making`: the test driver's record exists before the fallback writes its file) is left alone.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit
from xml.etree import ElementTree as ET

import libvirt

from aggregates.errors import StepFailedError
from subsystems.libvirt import disk_images
from subsystems.libvirt.faults import found, is_not_found, is_unsupported, translated, wrap

__all__ = [
    "PoolFacts",
    "VolumeFacts",
    "create_volume",
    "delete_volume",
    "ensure_pool",
    "find_pool",
    "find_volume",
    "is_local_uri",
    "pool_facts",
    "refresh",
    "remove_pool",
    "require_pool",
    "require_volume",
    "send_all",
    "try_resize",
    "try_stream_copy",
    "try_upload",
    "volume_facts",
]

_CHUNK = 1 << 20
_making: Counter[str] = Counter()
_making_lock = threading.Lock()
_refresh_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class PoolFacts:
    """A pool's directory and sizes, in bytes."""

    path: str
    capacity: int
    available: int


@dataclass(frozen=True, slots=True)
class VolumeFacts:
    """A volume's file, sizes in bytes, and format."""

    path: str
    capacity: int
    allocation: int
    format: str


def is_local_uri(uri: str) -> bool:
    """Whether a host URI names this machine (`test:///...`, `qemu:///system`), so that its
    volume files are files here."""
    return (urlsplit(uri).hostname or "localhost") in ("localhost", "127.0.0.1", "::1")


def find_pool(conn: libvirt.virConnect, name: str) -> libvirt.virStoragePool | None:
    """The pool named `name`, or None."""
    return found(lambda: conn.storagePoolLookupByName(name), f"look up pool {name}")


def require_pool(conn: libvirt.virConnect, name: str) -> libvirt.virStoragePool:
    """The pool named `name`; a non-retryable `not_found` failure when there is none."""
    pool = find_pool(conn, name)
    if pool is None:
        raise StepFailedError(f"storage pool {name} does not exist on {conn.getURI()}",
                              retryable=False, code="not_found")
    return pool


def ensure_pool(conn: libvirt.virConnect, name: str, path: str
                ) -> tuple[libvirt.virStoragePool, bool]:
    """Define, build, start and autostart a `dir` pool; True when it was defined now.

    `pool.build()` makes the directory on qemu hosts; the test driver's build does nothing,
    so on a local host the directory is made here too.
    """
    pool = find_pool(conn, name)
    created = pool is None
    with translated(f"create pool {name} at {path}"):
        if pool is None:
            root = ET.Element("pool", {"type": "dir"})
            ET.SubElement(root, "name").text = name
            ET.SubElement(ET.SubElement(root, "target"), "path").text = path
            pool = conn.storagePoolDefineXML(ET.tostring(root, encoding="unicode"), 0)
            pool.build(0)
        if is_local_uri(conn.getURI()):
            Path(path).mkdir(parents=True, exist_ok=True)
        if not pool.isActive():
            pool.create(0)
        if not pool.autostart():
            pool.setAutostart(1)
    return pool, created


def pool_facts(pool: libvirt.virStoragePool) -> PoolFacts:
    """The pool's directory and its capacity and free bytes."""
    with translated(f"read pool {pool.name()}"):
        _state, capacity, _allocation, available = pool.info()
        target = ET.fromstring(pool.XMLDesc(0)).find("target/path")
    return PoolFacts(path=(target.text or "") if target is not None else "",
                     capacity=capacity, available=available)


def remove_pool(conn: libvirt.virConnect, name: str) -> bool:
    """Stop and undefine a pool, leaving its directory; False when it did not exist."""
    pool = find_pool(conn, name)
    if pool is None:
        return False
    with translated(f"remove pool {name}"):
        if pool.isActive():
            pool.destroy()
        pool.undefine()
    return True


def find_volume(conn: libvirt.virConnect, pool: str, name: str
                ) -> libvirt.virStorageVol | None:
    """The volume `name` of pool `pool`, or None; the pool itself must exist. A volume
    libvirt does not list is looked for again after a `refresh` (another host of a shared
    pool may have made it)."""
    found = require_pool(conn, pool)
    vol = _lookup(found, name)
    if vol is None and found.isActive():
        refresh(found)
        vol = _lookup(found, name)
    return vol


def _lookup(pool: libvirt.virStoragePool, name: str) -> libvirt.virStorageVol | None:
    return found(lambda: pool.storageVolLookupByName(name),
                 f"look up volume {pool.name()}/{name}")


@contextlib.contextmanager
def making(name: str) -> Iterator[None]:
    """While volume `name`'s record exists before its file (or its file is moved aside), a
    `refresh` in this process must not take it for a volume whose file was deleted."""
    with _making_lock:
        _making[name] += 1
    try:
        yield
    finally:
        with _making_lock:
            _making[name] -= 1
            if not _making[name]:
                del _making[name]


def refresh(pool: libvirt.virStoragePool) -> None:
    """Make the pool's list of volumes its directory's (the pool must be active)."""
    with translated(f"refresh pool {pool.name()}"):
        pool.refresh(0)
        conn = pool.connect()
        if conn.getType() != "TEST" or not is_local_uri(conn.getURI()):
            return  # libvirt rescanned the directory
        path = Path(pool_facts(pool).path)
        if not path.is_dir():
            return  # a pool of the driver's own sample, on no directory of this machine
        with _refresh_lock:  # one rescan at a time: two would adopt a file twice
            _rescan(pool, path)


def _rescan(pool: libvirt.virStoragePool, path: Path) -> None:
    """Bring the test driver's volumes of `pool` in line with the files of `path`."""
    listed = {vol.name(): vol for vol in pool.listAllVolumes(0)}
    with os.scandir(path) as entries:
        files = {e.name: e.path for e in entries if e.is_file(follow_symlinks=False)}
    with _making_lock:
        busy = set(_making)
    for name, vol in listed.items():
        # its file was deleted through another host of the pool
        if name not in files and name not in busy:
            delete_volume(vol)  # (gone meanwhile: a delete step beat it to it)
    for name, file in files.items():
        if name in busy:
            continue  # being written: its record is its maker's to set
        seen = _disk_of(file)
        if seen is None:
            continue  # gone (or unreadable) meanwhile: libvirt's scan skips it too
        vol = listed.get(name)
        try:
            if vol is not None and vol.info()[1] == seen[0]:
                continue
        except libvirt.libvirtError as e:
            if not is_not_found(e):
                raise
            vol = None  # deleted meanwhile (a delete step): adopted again if its file stays
        if vol is not None:  # grown through another host: the record is made again
            delete_volume(vol)
        _adopt(pool, name, *seen)


def _disk_of(path: str) -> tuple[int, str] | None:
    """The size and format of the disk a file holds, as libvirt's scan reads them."""
    try:
        header = disk_images.qcow2_header(path)
        return (header.size, "qcow2") if header is not None else (os.path.getsize(path), "raw")
    except OSError:
        return None


def _adopt(pool: libvirt.virStoragePool, name: str, capacity: int, fmt: str) -> None:
    """Record a file of the pool's directory as a volume of the test driver."""
    root = ET.Element("volume")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "capacity", {"unit": "bytes"}).text = str(capacity)
    ET.SubElement(ET.SubElement(root, "target"), "format", {"type": fmt})
    try:
        pool.createXML(ET.tostring(root, encoding="unicode"), 0)
    except libvirt.libvirtError:
        if _lookup(pool, name) is None:  # made meanwhile by a create step: it stands
            raise


def require_volume(conn: libvirt.virConnect, pool: str, name: str) -> libvirt.virStorageVol:
    """The volume; a non-retryable `not_found` failure when it does not exist."""
    vol = find_volume(conn, pool, name)
    if vol is None:
        raise StepFailedError(f"volume {pool}/{name} does not exist on {conn.getURI()}",
                              retryable=False, code="not_found")
    return vol


def create_volume(conn: libvirt.virConnect, pool: str, name: str, capacity: int,
                  fmt: str) -> libvirt.virStorageVol:
    """Create a volume of `capacity` bytes (sparse: no allocation asked for)."""
    root = ET.Element("volume")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "capacity", {"unit": "bytes"}).text = str(capacity)
    ET.SubElement(root, "allocation", {"unit": "bytes"}).text = "0"
    ET.SubElement(ET.SubElement(root, "target"), "format", {"type": fmt})
    with translated(f"create volume {pool}/{name}"):
        return require_pool(conn, pool).createXML(ET.tostring(root, encoding="unicode"), 0)


def volume_facts(vol: libvirt.virStorageVol) -> VolumeFacts:
    """The volume's path, capacity, allocation and format."""
    with translated(f"read volume {vol.name()}"):
        _kind, capacity, allocation = vol.info()
        fmt = ET.fromstring(vol.XMLDesc(0)).find("target/format")
        path = vol.path()
    return VolumeFacts(path=path, capacity=capacity, allocation=allocation,
                       format=fmt.get("type", "raw") if fmt is not None else "raw")


def delete_volume(vol: libvirt.virStorageVol) -> bool:
    """Delete a volume; False when it was gone already."""
    try:
        vol.delete(0)
    except libvirt.libvirtError as e:
        if is_not_found(e):
            return False
        raise wrap(e, f"delete volume {vol.name()}") from e
    return True


def try_resize(vol: libvirt.virStorageVol, capacity: int) -> bool:
    """Grow the volume with `vol.resize`; False when the driver cannot resize."""
    try:
        vol.resize(capacity, 0)
    except libvirt.libvirtError as e:
        if is_unsupported(e):
            return False
        raise wrap(e, f"resize volume {vol.name()} to {capacity} bytes") from e
    return True


def try_upload(conn: libvirt.virConnect, vol: libvirt.virStorageVol, source: str) -> bool:
    """Stream a local file into the volume; False when the driver cannot upload."""
    size = os.path.getsize(source)
    stream = conn.newStream(0)
    try:
        vol.upload(stream, 0, size, 0)
    except libvirt.libvirtError as e:
        if is_unsupported(e):
            return False
        raise wrap(e, f"upload {source} into volume {vol.name()}") from e
    with translated(f"upload {source} into volume {vol.name()}"), open(source, "rb") as f:
        try:
            while chunk := f.read(_CHUNK):
                send_all(stream, chunk)
            stream.finish()
        except BaseException:
            stream.abort()
            raise
    return True


def try_stream_copy(src_conn: libvirt.virConnect, src: libvirt.virStorageVol,
                    dst_conn: libvirt.virConnect, dst: libvirt.virStorageVol) -> bool:
    """Copy a volume's content into another (any two hosts) through libvirt streams;
    False when either driver cannot stream volumes."""
    out_stream = dst_conn.newStream(0)
    try:
        dst.upload(out_stream, 0, 0, 0)
    except libvirt.libvirtError as e:
        if is_unsupported(e):
            return False
        raise wrap(e, f"upload into volume {dst.name()}") from e
    in_stream = src_conn.newStream(0)
    try:
        src.download(in_stream, 0, 0, 0)
    except libvirt.libvirtError as e:
        out_stream.abort()
        if is_unsupported(e):
            return False
        raise wrap(e, f"download volume {src.name()}") from e
    with translated(f"copy volume {src.name()} into {dst.name()}"):
        try:
            while True:
                chunk = in_stream.recv(_CHUNK)
                if not isinstance(chunk, bytes) or not chunk:
                    break  # b"" is the end; blocking streams never answer -2
                send_all(out_stream, chunk)
            in_stream.finish()
            out_stream.finish()
        except BaseException:
            in_stream.abort()
            out_stream.abort()
            raise
    return True


def send_all(stream: libvirt.virStream, chunk: bytes) -> None:
    """Send all of `chunk` on a blocking stream."""
    view = memoryview(chunk)
    while view:
        sent = stream.send(bytes(view))
        if sent < 0:
            raise StepFailedError("libvirt stream refused data", retryable=True,
                                  code="libvirt_error")
        view = view[sent:]
