"""Checksummed, atomic, sparse-preserving file copies and the backup manifest."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from uuid import uuid4

import pytest

from aggregates.errors import StepFailedError
from kernel.steps.backup import BackupFile
from subsystems.backup.manifest import backup_dir, read_manifest, verify, write_manifest
from subsystems.libvirt import files

MiB = 1 << 20


def test_parse_checksum() -> None:
    assert files.parse_checksum("sha256:" + "AB" * 32) == ("sha256", "ab" * 32)
    assert files.parse_checksum("md5:" + "0" * 32) == ("md5", "0" * 32)
    for bad in ("sha256:abc", "sha1:" + "0" * 40, "md5:" + "0" * 64, "0" * 64):
        with pytest.raises(StepFailedError) as info:
            files.parse_checksum(bad)
        assert info.value.code == "invalid_arguments" and not info.value.retryable


def test_copy_hashes_what_it_writes_and_keeps_holes(tmp_path: Path) -> None:
    data = os.urandom(100_000) + bytes(3 * MiB) + b"tail"
    source, dest = tmp_path / "src", tmp_path / "dst"
    source.write_bytes(data)
    copied = files.copy_file(source, dest)
    assert (copied.size, copied.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert dest.read_bytes() == data
    assert dest.stat().st_blocks * 512 < 2 * MiB  # the zero run became a hole
    assert files.hash_file(dest, ("sha256", "md5")).digests == {
        "sha256": hashlib.sha256(data).hexdigest(), "md5": hashlib.md5(data).hexdigest()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]


def test_min_size_extends_with_a_hole(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"abc")
    copied = files.copy_file(tmp_path / "src", tmp_path / "dst", min_size=MiB)
    assert copied.size == 3 and (tmp_path / "dst").stat().st_size == MiB


def test_a_mismatch_leaves_the_destination_untouched(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"new bytes")
    (tmp_path / "dst").write_bytes(b"old bytes")
    with pytest.raises(StepFailedError) as info:
        files.copy_file(tmp_path / "src", tmp_path / "dst", expect_sha256="0" * 64)
    assert (info.value.code, info.value.retryable) == ("checksum_mismatch", False)
    assert (tmp_path / "dst").read_bytes() == b"old bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]  # no .part left


def test_a_short_stream_is_retryable(tmp_path: Path) -> None:
    with pytest.raises(StepFailedError) as info:
        files.write_stream(io.BytesIO(b"12345"), tmp_path / "dst", expect_size=10)
    assert (info.value.code, info.value.retryable) == ("short_read", True)
    assert list(tmp_path.iterdir()) == []


def test_same_prefix(tmp_path: Path) -> None:
    (tmp_path / "ref").write_bytes(b"abc")
    (tmp_path / "longer").write_bytes(b"abcdef")
    (tmp_path / "other").write_bytes(b"abX")
    assert files.same_prefix(tmp_path / "ref", tmp_path / "longer")
    assert not files.same_prefix(tmp_path / "ref", tmp_path / "other")
    assert not files.same_prefix(tmp_path / "longer", tmp_path / "ref")


def test_manifest_round_trip_and_verification(tmp_path: Path) -> None:
    directory = backup_dir(str(tmp_path), uuid4())
    directory.mkdir()
    assert read_manifest(directory) is None
    (directory / "a.img").write_bytes(b"volume a")
    entry = BackupFile(volume_id=uuid4(), file="a.img", size_bytes=8,
                       sha256=hashlib.sha256(b"volume a").hexdigest())
    written = write_manifest(directory, uuid4(), uuid4(), (entry,))
    manifest = read_manifest(directory)
    assert manifest == written
    verify(directory, manifest)
    (directory / "a.img").write_bytes(b"volume b")  # same size, other bytes
    with pytest.raises(StepFailedError) as info:
        verify(directory, manifest)
    assert (info.value.code, info.value.retryable) == ("backup_corrupt", False)
    (directory / "a.img").unlink()
    with pytest.raises(StepFailedError, match="missing"):
        verify(directory, manifest)


@pytest.mark.parametrize("content", [b"{not json", b'{"format": 1}'])
def test_an_unreadable_manifest_is_corrupt(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "manifest.json").write_bytes(content)
    with pytest.raises(StepFailedError) as info:
        read_manifest(tmp_path)
    assert info.value.code == "backup_corrupt"


def test_a_manifest_cannot_point_outside_its_backup(tmp_path: Path) -> None:
    entry = BackupFile(volume_id=uuid4(), file="../../etc/passwd", size_bytes=1, sha256="0")
    write_manifest(tmp_path, uuid4(), uuid4(), (entry,))
    with pytest.raises(StepFailedError) as info:
        read_manifest(tmp_path)
    assert info.value.code == "backup_corrupt"
