"""Disk image files: their virtual size (what a guest sees), and growing them to a size.

A qcow2 image says its virtual size in its header, whatever the file's length (a sparse 2 KiB
file can be a 1 MiB disk); anything else is taken as raw, whose virtual size is its length.
These functions are the fallbacks for hosts whose libvirt driver cannot resize a volume (the
test driver) and work on files of this machine.

Growing a raw image extends the file with a hole. Growing a qcow2 image needs its L1 table to
cover the new size: when the clusters the table already has leave room for the entries, the
header's size and table length are rewritten in place (the new entries zeroed: unallocated,
read as zeros), which is what `qemu-img resize` amounts to then. Otherwise `qemu-img resize`
does it if it is installed, else the grow fails for good (`unsupported`). Shrinking is refused.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from aggregates.errors import StepFailedError

__all__ = ["Qcow2Header", "empty_qcow2", "grow", "qcow2_header", "resized_from",
           "virtual_size"]

QCOW2_MAGIC = b"QFI\xfb"
_V2_HEADER = struct.Struct(">4sIQIIQIIQQIIQ")  # up to snapshots_offset: 72 bytes
_V3_FEATURES = struct.Struct(">QQQII")  # incompatible, compatible, autoclear, refcount, length
_SIZE_AT, _L1_SIZE_AT = 24, 36
_EXTENDED_L2 = 1 << 4
# incompatible features a header rewrite can leave alone: compression type (bit 3)
_IN_PLACE_INCOMPATIBLE = 1 << 3
_BITMAPS = 1  # autoclear bit 0: persistent bitmaps record the size too


@dataclass(frozen=True, slots=True)
class Qcow2Header:
    """The fields of a qcow2 header that sizing needs."""

    version: int
    cluster_bits: int
    size: int
    l1_size: int
    l1_table_offset: int
    incompatible: int
    autoclear: int

    @property
    def cluster_size(self) -> int:
        """Bytes per cluster."""
        return 1 << self.cluster_bits

    @property
    def bytes_per_l1_entry(self) -> int:
        """How much of the disk one L1 entry (one L2 table) maps."""
        l2_entry = 16 if self.incompatible & _EXTENDED_L2 else 8
        return self.cluster_size * (self.cluster_size // l2_entry)

    def l1_entries_for(self, size: int) -> int:
        """The L1 table length a disk of `size` bytes needs."""
        return -(-size // self.bytes_per_l1_entry)

    @property
    def l1_room(self) -> int:
        """How many L1 entries the clusters the table occupies can hold."""
        clusters = max(1, -(-self.l1_size * 8 // self.cluster_size))
        return clusters * self.cluster_size // 8


def qcow2_header(path: str | os.PathLike[str]) -> Qcow2Header | None:
    """The file's qcow2 header, or None when it is not a qcow2 image (version 2 or 3)."""
    with open(path, "rb") as f:
        head = f.read(_V2_HEADER.size + _V3_FEATURES.size)
    if len(head) < _V2_HEADER.size or not head.startswith(QCOW2_MAGIC):
        return None
    (_magic, version, _backing_offset, _backing_size, cluster_bits, size, _crypt, l1_size,
     l1_offset, _refcount_offset, _refcount_clusters, _snapshots, _snapshots_offset
     ) = _V2_HEADER.unpack_from(head)
    if version not in (2, 3) or not 9 <= cluster_bits <= 21 or size <= 0:
        return None
    incompatible = autoclear = 0
    if version == 3:
        if len(head) < _V2_HEADER.size + _V3_FEATURES.size:
            return None
        incompatible, _compatible, autoclear, _order, _length = \
            _V3_FEATURES.unpack_from(head, _V2_HEADER.size)
    return Qcow2Header(version=version, cluster_bits=cluster_bits, size=size, l1_size=l1_size,
                       l1_table_offset=l1_offset, incompatible=incompatible,
                       autoclear=autoclear)


def virtual_size(path: str | os.PathLike[str]) -> int:
    """The size of the disk the file holds: a qcow2 header's, else the file's length."""
    header = qcow2_header(path)
    return header.size if header is not None else os.path.getsize(path)


def grow(path: str | os.PathLike[str], size: int) -> str:
    """Make the disk in `path` `size` bytes; how: "already", "extended" (raw), "header"
    (qcow2, in place) or "qemu-img"."""
    current = virtual_size(path)
    if current == size:
        return "already"
    if size < current:
        raise StepFailedError(f"disk {path} is {current} bytes: shrinking it to {size} is "
                              "refused", retryable=False, code="shrink_refused")
    header = qcow2_header(path)
    if header is None:
        with open(path, "r+b") as f:
            f.truncate(size)
            os.fsync(f.fileno())
        return "extended"
    if _grows_in_place(header, size):
        _rewrite_header(path, header, size)
        return "header"
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        raise StepFailedError(
            f"qcow2 disk {path} cannot grow to {size} bytes here: its L1 table has room for "
            f"{header.l1_room * header.bytes_per_l1_entry} bytes, the host's libvirt driver "
            "cannot resize and qemu-img is not installed", retryable=False, code="unsupported")
    done = subprocess.run([qemu_img, "resize", "-f", "qcow2", str(path), str(size)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise StepFailedError(f"qemu-img resize {path} to {size}: {done.stderr.strip()}",
                              retryable=False, code="resize_failed")
    return "qemu-img"


def resized_from(template: str | os.PathLike[str], candidate: str | os.PathLike[str]) -> bool:
    """Whether `candidate` is `template` grown in place by `grow` (its header's size and
    table length, and the table's new entries, are all that differ)."""
    header, grown = qcow2_header(template), qcow2_header(candidate)
    if header is None or grown is None or grown.size <= header.size \
            or not _grows_in_place(header, grown.size):
        return False
    skip = [(_SIZE_AT, _SIZE_AT + 8), (_L1_SIZE_AT, _L1_SIZE_AT + 4),
            (header.l1_table_offset + header.l1_size * 8,
             header.l1_table_offset + grown.l1_size * 8)]
    with open(template, "rb") as ref, open(candidate, "rb") as cand:
        offset = 0
        while chunk := ref.read(1 << 20):
            other = cand.read(len(chunk))
            if len(other) != len(chunk):
                return False
            if chunk != other:
                a, b = bytearray(chunk), bytearray(other)
                for start, end in skip:
                    lo, hi = max(start - offset, 0), min(end - offset, len(chunk))
                    if lo < hi:
                        a[lo:hi] = b[lo:hi]
                if a != b:
                    return False
            offset += len(chunk)
    return True


def _grows_in_place(header: Qcow2Header, size: int) -> bool:
    return (header.incompatible & ~_IN_PLACE_INCOMPATIBLE == 0
            and not header.autoclear & _BITMAPS and header.l1_size > 0
            and header.l1_entries_for(size) <= header.l1_room)


def _rewrite_header(path: str | os.PathLike[str], header: Qcow2Header, size: int) -> None:
    """The size and L1 length in the header, the new L1 entries zeroed (written first, so
    that an interrupted rewrite leaves the old, consistent image)."""
    entries = header.l1_entries_for(size)
    with open(path, "r+b") as f:
        f.seek(header.l1_table_offset + header.l1_size * 8)
        f.write(bytes((entries - header.l1_size) * 8))
        f.flush()
        os.fsync(f.fileno())
        f.seek(_SIZE_AT)
        f.write(struct.pack(">Q", size))
        f.seek(_L1_SIZE_AT)
        f.write(struct.pack(">I", entries))
        f.flush()
        os.fsync(f.fileno())


def empty_qcow2(path: str | os.PathLike[str], size: int, *, cluster_bits: int = 16) -> None:
    """Write an empty qcow2 (version 3) image of `size` bytes: header, L1 table, refcount
    table and block, one cluster each (for tests and sample templates)."""
    cs = 1 << cluster_bits
    header = Qcow2Header(version=3, cluster_bits=cluster_bits, size=size, l1_size=1,
                         l1_table_offset=cs, incompatible=0, autoclear=0)
    l1 = header.l1_entries_for(size)
    if l1 > header.l1_room:
        raise ValueError(f"{size} bytes need more than one L1 cluster of {cs} bytes")
    image = bytearray(4 * cs)
    _V2_HEADER.pack_into(image, 0, QCOW2_MAGIC, 3, 0, 0, cluster_bits, size, 0, l1, cs,
                         2 * cs, 1, 0, 0)
    _V3_FEATURES.pack_into(image, _V2_HEADER.size, 0, 0, 0, 4, 104)
    struct.pack_into(">Q", image, 2 * cs, 3 * cs)  # refcount table -> the block
    for cluster in range(4):  # 16-bit refcounts: every cluster is used once
        struct.pack_into(">H", image, 3 * cs + 2 * cluster, 1)
    Path(path).write_bytes(bytes(image))
