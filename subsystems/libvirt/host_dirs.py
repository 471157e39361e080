"""A directory on a host, reached only through libvirt: for hosts whose files are not here.

A snapshot is kept beside its pool, on the host that holds the volume. When that host is
remote (`qemu+ssh://...`), the worker cannot open the files, so the directory is made a `dir`
storage pool on the host (named after its path) and every file in it a volume: the host copies
(`createXMLFrom`: qemu-img on the host; or the domain's block copy, which writes there), and
the worker reads what it must check through libvirt streams (a sha256 is computed from the
bytes downloaded, the bytes themselves stay on the host), and writes small files (a copy's
checksum) by upload.

libvirt's storage API has no rename, so a copy cannot appear complete at once as a local one
does: a copy counts only once its checksum file (`<name>.sha256`: "<sha256> <size>") exists,
written after it; a copy without one is made again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from xml.etree import ElementTree as ET

import libvirt

from aggregates.errors import StepFailedError
from kernel.steps.storage import VolumeRef
from subsystems.libvirt import files, pools
from subsystems.libvirt.faults import translated, wrap

__all__ = ["HostDir"]

_CHUNK = 1 << 20


class HostDir:
    """One directory of one host, as a libvirt `dir` pool (made on first use)."""

    def __init__(self, conn: libvirt.virConnect, path: str) -> None:
        """Make sure the pool exists and is started (its directory is built on the host)."""
        self.conn, self.path = conn, path.rstrip("/") or "/"
        name = "ck-dir-" + hashlib.sha256(self.path.encode()).hexdigest()[:16]
        self.pool, _created = pools.ensure_pool(conn, name, self.path)

    def file(self, name: str) -> str:
        """The path of a file of the directory, on the host."""
        return f"{self.path}/{name}"

    def find(self, name: str) -> libvirt.virStorageVol | None:
        """The file `name` as a volume (the pool is refreshed first: qemu may have written
        it), or None."""
        with translated(f"refresh {self.path} on {self.conn.getURI()}"):
            self.pool.refresh(0)
        return pools.find_volume(self.conn, self.pool.name(), name)

    def remove(self, name: str) -> bool:
        """Delete a file; False when it was not there."""
        vol = self.find(name)
        return vol is not None and pools.delete_volume(vol)

    def remove_all(self) -> bool:
        """Delete every file, then the directory and its pool; False when it held none."""
        with translated(f"remove {self.path} on {self.conn.getURI()}"):
            self.pool.refresh(0)
            held = self.pool.listAllVolumes(0)
            for vol in held:
                pools.delete_volume(vol)
            self.pool.destroy()
            self.pool.delete(0)  # the (now empty) directory
            self.pool.undefine()
        return bool(held)

    def clone(self, name: str, source: libvirt.virStorageVol, fmt: str
              ) -> libvirt.virStorageVol:
        """Copy a volume (of any pool of the host) into the directory, on the host."""
        self.remove(name)
        root = ET.Element("volume")
        ET.SubElement(root, "name").text = name
        ET.SubElement(root, "capacity", {"unit": "bytes"}).text = str(source.info()[1])
        ET.SubElement(ET.SubElement(root, "target"), "format", {"type": fmt})
        with translated(f"copy volume {source.name()} to {self.file(name)}"):
            return self.pool.createXMLFrom(ET.tostring(root, encoding="unicode"), source, 0)

    def digest(self, vol: libvirt.virStorageVol) -> files.Copied:
        """The size and sha256 of a volume's bytes, read through a libvirt stream."""
        h, size = hashlib.sha256(), 0
        for chunk in _download(self.conn, vol):
            h.update(chunk)
            size += len(chunk)
        return files.Copied(size=size, digests={"sha256": h.hexdigest()})

    def read(self, name: str) -> bytes | None:
        """A small file's bytes, or None when it is not there."""
        vol = self.find(name)
        return None if vol is None else b"".join(_download(self.conn, vol))

    def write(self, name: str, data: bytes) -> None:
        """Write a small file (replacing one of that name)."""
        self.remove(name)
        vol = pools.create_volume(self.conn, self.pool.name(), name, len(data), "raw")
        stream = self.conn.newStream(0)
        with translated(f"write {self.file(name)}"):
            try:
                vol.upload(stream, 0, len(data), 0)
                if data:
                    pools.send_all(stream, data)
                stream.finish()
            except BaseException:
                stream.abort()
                raise

    def put_into(self, name: str, ref: VolumeRef, sha256: str) -> tuple[str, bool]:
        """Make volume `ref` (of this host) hold the bytes of file `name`, whose sha256 must
        be `sha256` before and the volume's after; the volume's path, and whether it had to
        be written (not when it held them already)."""
        source = self.find(name)
        if source is None:
            raise StepFailedError(f"{self.file(name)} is not on {self.conn.getURI()}",
                                  retryable=False, code="copy_missing")
        found = self.digest(source).sha256
        if found != sha256:
            raise StepFailedError(f"{self.file(name)} is corrupt: sha256 {found}, expected "
                                  f"{sha256}", retryable=False, code="checksum_mismatch")
        volume = pools.find_volume(self.conn, ref.pool, ref.name)
        if volume is not None and self.digest(volume).sha256 == sha256:
            return pools.volume_facts(volume).path, False
        # an upload writes over a file without truncating it: the volume is made again,
        # empty (a retry after a crash here finds it missing, and makes it)
        if volume is not None:
            pools.delete_volume(volume)
        volume = pools.create_volume(self.conn, ref.pool, ref.name, 0, "raw")
        if not pools.try_stream_copy(self.conn, source, self.conn, volume):
            raise StepFailedError(f"{self.conn.getURI()} cannot stream volumes: "
                                  f"{self.file(name)} cannot be put back", retryable=False,
                                  code="unsupported")
        pool = pools.require_pool(self.conn, ref.pool)
        with translated(f"refresh pool {ref.pool}"):  # libvirt learns the format it now holds
            pool.refresh(0)
        volume = pools.require_volume(self.conn, ref.pool, ref.name)
        if self.digest(volume).sha256 != sha256:
            raise StepFailedError(f"volume {ref.pool}/{ref.name} does not match "
                                  f"{self.file(name)} after the copy", retryable=True,
                                  code="restore_unverified")
        return pools.volume_facts(volume).path, True

    def checksum(self, name: str) -> files.Copied | None:
        """The recorded size and sha256 of a complete copy `name`, or None."""
        raw = self.read(f"{name}.sha256")
        if raw is None:
            return None
        try:
            sha256, size = raw.decode().split()
            return files.Copied(size=int(size), digests={"sha256": sha256})
        except ValueError as e:
            raise StepFailedError(f"{self.file(name)}.sha256 is unreadable: {raw[:80]!r}",
                                  retryable=False, code="checksum_unreadable") from e

    def seal(self, name: str) -> files.Copied:
        """Hash the copy `name` and record it as complete."""
        vol = self.find(name)
        if vol is None:
            raise StepFailedError(f"{self.file(name)} is not on {self.conn.getURI()}",
                                  retryable=True, code="copy_missing")
        found = self.digest(vol)
        self.write(f"{name}.sha256", f"{found.sha256} {found.size}\n".encode())
        return found


def _download(conn: libvirt.virConnect, vol: libvirt.virStorageVol) -> Iterator[bytes]:
    stream = conn.newStream(0)
    try:
        vol.download(stream, 0, 0, 0)
    except libvirt.libvirtError as e:
        raise wrap(e, f"download volume {vol.name()}") from e
    with translated(f"download volume {vol.name()}"):
        try:
            while True:
                chunk = stream.recv(_CHUNK)
                if not isinstance(chunk, bytes) or not chunk:
                    break
                yield chunk
            stream.finish()
        except BaseException:
            stream.abort()
            raise
