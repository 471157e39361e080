"""The backup manifest: what a backup holds, with each file's size and sha256.

`<target_dir>/<backup_id>/manifest.json` is written last and atomically, so a backup directory
with a manifest is complete; one without is an interrupted backup that is simply done again.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import msgspec

from aggregates.errors import StepFailedError
from kernel.steps.backup import BackupFile
from subsystems.libvirt import files

__all__ = ["MANIFEST", "Manifest", "backup_dir", "manifest_bytes", "parse_manifest",
           "read_manifest", "verify", "write_manifest"]

MANIFEST = "manifest.json"


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    """The contents of a backup."""

    format: int = 1
    backup_id: UUID
    vm_id: UUID
    created_at: datetime
    files: tuple[BackupFile, ...]


_manifest_decoder = msgspec.json.Decoder(Manifest)


def backup_dir(target_dir: str, backup_id: UUID) -> Path:
    """The directory of one backup."""
    return Path(target_dir) / str(backup_id)


def manifest_bytes(backup_id: UUID, vm_id: UUID, entries: tuple[BackupFile, ...]
                   ) -> tuple[Manifest, bytes]:
    """A new manifest of these files, and its bytes as written."""
    manifest = Manifest(backup_id=backup_id, vm_id=vm_id, created_at=datetime.now(UTC),
                        files=entries)
    return manifest, msgspec.json.format(msgspec.json.encode(manifest)) + b"\n"


def write_manifest(directory: Path, backup_id: UUID, vm_id: UUID,
                   entries: tuple[BackupFile, ...]) -> Manifest:
    """Record the backup's files; after this the backup is complete."""
    manifest, raw = manifest_bytes(backup_id, vm_id, entries)
    files.write_atomically(directory / MANIFEST, raw)
    return manifest


def read_manifest(directory: Path) -> Manifest | None:
    """The backup's manifest, None when there is none; `backup_corrupt` when unreadable."""
    path = directory / MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    return parse_manifest(raw, str(path))


def parse_manifest(raw: bytes, where: str) -> Manifest:
    """A manifest's bytes read from `where`; `backup_corrupt` when unreadable."""
    try:
        manifest = _manifest_decoder.decode(raw)
    except msgspec.DecodeError as e:
        raise StepFailedError(f"backup manifest {where} is unreadable: {e}", retryable=False,
                              code="backup_corrupt") from e
    for entry in manifest.files:
        if Path(entry.file).name != entry.file:  # a manifest must not point outside its dir
            raise StepFailedError(f"backup manifest {where} names file {entry.file!r}",
                                  retryable=False, code="backup_corrupt")
    return manifest


def verify(directory: Path, manifest: Manifest) -> None:
    """Check every file against the manifest; `backup_corrupt` (not retryable) names the
    first that is missing or differs."""
    for entry in manifest.files:
        path = directory / entry.file
        try:
            found = files.hash_file(path)
        except FileNotFoundError as e:
            raise StepFailedError(f"backup {manifest.backup_id}: {entry.file} is missing",
                                  retryable=False, code="backup_corrupt") from e
        if (found.size, found.sha256) != (entry.size_bytes, entry.sha256):
            raise StepFailedError(
                f"backup {manifest.backup_id}: {entry.file} has {found.size} bytes, sha256 "
                f"{found.sha256}; the manifest says {entry.size_bytes} bytes, sha256 "
                f"{entry.sha256}", retryable=False, code="backup_corrupt")
