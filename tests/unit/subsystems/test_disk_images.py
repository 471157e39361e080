"""Disk image files: the virtual size a guest sees, and growing a disk to a size."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

from aggregates.errors import StepFailedError
from subsystems.libvirt import disk_images

MiB, GiB = 1 << 20, 1 << 30
SAMPLE = Path(__file__).resolve().parents[3] / "examples" / "templates" / "empty-1m.qcow2"


def test_the_virtual_size_of_a_qcow2_is_its_headers_of_anything_else_its_length(
        tmp_path: Path) -> None:
    qcow2 = tmp_path / "a.qcow2"
    disk_images.empty_qcow2(qcow2, MiB)
    assert disk_images.virtual_size(qcow2) == MiB and qcow2.stat().st_size == 256 * 1024
    assert disk_images.virtual_size(SAMPLE) == MiB and SAMPLE.stat().st_size == 2048
    raw = tmp_path / "a.raw"
    raw.write_bytes(b"boot" * 1000)
    assert disk_images.virtual_size(raw) == 4000
    fake = tmp_path / "fake.qcow2"  # a magic with no header behind it is not a qcow2
    fake.write_bytes(b"QFI\xfb" + bytes(65532))
    assert disk_images.qcow2_header(fake) is None and disk_images.virtual_size(fake) == 65536


def test_a_qcow2_grows_in_place_when_its_l1_table_has_room(tmp_path: Path) -> None:
    template, disk = tmp_path / "t.qcow2", tmp_path / "d.qcow2"
    disk_images.empty_qcow2(template, MiB)
    shutil.copy(template, disk)
    assert disk_images.grow(disk, GiB) == "header"
    header = disk_images.qcow2_header(disk)
    assert header is not None and (header.size, header.l1_size) == (GiB, 2)
    assert disk.stat().st_size == template.stat().st_size  # no data written
    assert disk_images.grow(disk, GiB) == "already"
    assert disk_images.resized_from(template, disk)
    assert not disk_images.resized_from(disk, template)
    with pytest.raises(StepFailedError) as info:
        disk_images.grow(disk, MiB)
    assert (info.value.code, info.value.retryable) == ("shrink_refused", False)


def test_a_qcow2_whose_table_is_full_needs_qemu_img(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    disk = tmp_path / "sample.qcow2"
    shutil.copy(SAMPLE, disk)  # 512-byte clusters: one L1 cluster maps 2 MiB
    assert disk_images.grow(disk, 2 * MiB) == "header"
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    before = disk.read_bytes()
    with pytest.raises(StepFailedError) as info:
        disk_images.grow(disk, GiB)
    assert (info.value.code, info.value.retryable) == ("unsupported", False)
    assert "qemu-img" in str(info.value) and disk.read_bytes() == before


def test_a_raw_disk_grows_with_a_hole_and_an_unusual_qcow2_is_not_rewritten(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = tmp_path / "a.raw"
    raw.write_bytes(b"boot" * 1000)
    assert disk_images.grow(raw, MiB) == "extended"
    assert raw.stat().st_size == MiB and raw.read_bytes()[:4000] == b"boot" * 1000
    bitmaps = tmp_path / "bitmaps.qcow2"
    disk_images.empty_qcow2(bitmaps, MiB)
    data = bytearray(bitmaps.read_bytes())
    struct.pack_into(">Q", data, 88, 1)  # autoclear: persistent bitmaps
    bitmaps.write_bytes(bytes(data))
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(StepFailedError, match="qemu-img"):
        disk_images.grow(bitmaps, GiB)
