"""File copies with checksums, shared by the storage, snapshot and backup plugins.

A copy is written to a temporary file beside its destination, hashed while it is read,
fsynced, and only then renamed over the destination: a reader never sees half a copy, a
crash leaves at most a `.part` file, and a copy whose bytes do not match the expected sha256
never replaces anything. Runs of zeros are skipped instead of written, so sparse volumes stay
sparse.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from aggregates.errors import StepFailedError

__all__ = [
    "CHUNK",
    "Copied",
    "adopt",
    "copy_file",
    "hash_file",
    "parse_checksum",
    "remove_quietly",
    "same_prefix",
    "write_atomically",
    "write_stream",
]

CHUNK = 1 << 20
_CHECKSUM = re.compile(r"^(sha256|md5):([0-9a-fA-F]+)$")
_DIGEST_LENGTH = {"sha256": 64, "md5": 32}
_ZEROS = bytes(CHUNK)


@dataclass(frozen=True, slots=True)
class Copied:
    """What a copy wrote: its size and the hex digests of its bytes, by algorithm."""

    size: int
    digests: dict[str, str]

    @property
    def sha256(self) -> str:
        """The sha256 of the bytes copied."""
        return self.digests["sha256"]


def parse_checksum(text: str) -> tuple[str, str]:
    """`"sha256:<hex>"` or `"md5:<hex>"` as (algorithm, lower-case hex)."""
    match = _CHECKSUM.match(text.strip())
    if match is None or len(match.group(2)) != _DIGEST_LENGTH[match.group(1)]:
        raise StepFailedError(f"checksum {text!r} is not 'sha256:<64 hex>' or 'md5:<32 hex>'",
                              retryable=False, code="invalid_arguments")
    return match.group(1), match.group(2).lower()


def hash_file(path: str | os.PathLike[str], algorithms: Iterable[str] = ("sha256",)
              ) -> Copied:
    """Read a file once and return its size and digests."""
    hashers = {name: hashlib.new(name) for name in algorithms}
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            size += len(chunk)
            for h in hashers.values():
                h.update(chunk)
    return Copied(size=size, digests={n: h.hexdigest() for n, h in hashers.items()})


def copy_file(source: str | os.PathLike[str], destination: str | os.PathLike[str], *,
              expect_sha256: str | None = None, min_size: int = 0) -> Copied:
    """Copy `source` over `destination` atomically; with `expect_sha256`, only if the bytes
    read have that digest (else a non-retryable `checksum_mismatch`, destination untouched).
    `min_size` extends the copy with a hole up to that many bytes."""
    with open(source, "rb") as src:
        return write_stream(src, destination, expect={"sha256": expect_sha256}
                            if expect_sha256 else None, min_size=min_size)


def write_stream(stream: BinaryIO, destination: str | os.PathLike[str], *,
                 expect: dict[str, str] | None = None, expect_size: int | None = None,
                 min_size: int = 0, algorithms: Iterable[str] = ("sha256",)) -> Copied:
    """Write what `stream` yields over `destination` atomically, verifying `expect`
    ({algorithm: hex}) and `expect_size` before the rename (a short read is retryable)."""
    dest = Path(destination)
    names = {*algorithms, *(expect or {})}
    hashers = {name: hashlib.new(name) for name in names}
    part = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
    size = 0
    try:
        with open(part, "wb") as out:
            while chunk := stream.read(CHUNK):
                size += len(chunk)
                for h in hashers.values():
                    h.update(chunk)
                if chunk == _ZEROS[:len(chunk)]:
                    out.seek(len(chunk), os.SEEK_CUR)  # leave a hole
                else:
                    out.write(chunk)
            out.truncate(max(size, min_size))  # a trailing hole needs the length set
            out.flush()
            os.fsync(out.fileno())
        if expect_size is not None and size != expect_size:
            raise StepFailedError(f"{dest.name}: read {size} of {expect_size} bytes",
                                  retryable=True, code="short_read")
        digests = {n: h.hexdigest() for n, h in hashers.items()}
        for name, wanted in (expect or {}).items():
            if digests[name] != wanted.lower():
                raise StepFailedError(f"{dest.name}: {name} is {digests[name]}, expected "
                                      f"{wanted.lower()}", retryable=False,
                                      code="checksum_mismatch")
        os.replace(part, dest)
    except BaseException:
        remove_quietly(part)
        raise
    _fsync_dir(dest.parent)
    return Copied(size=size, digests=digests)


def adopt(made: str | os.PathLike[str], destination: str | os.PathLike[str]) -> Copied:
    """Make a file another process wrote (qemu's block copy) the destination: flushed,
    hashed, then renamed over it, so that a reader sees all of it or nothing."""
    with open(made, "rb") as f:
        os.fsync(f.fileno())
    found = hash_file(made)
    os.replace(made, destination)
    _fsync_dir(Path(destination).parent)
    return found


def same_prefix(reference: str | os.PathLike[str], candidate: str | os.PathLike[str]) -> bool:
    """Whether `candidate` starts with all of `reference`'s bytes (stops at the first
    difference)."""
    with open(reference, "rb") as ref, open(candidate, "rb") as cand:
        while chunk := ref.read(CHUNK):
            if cand.read(len(chunk)) != chunk:
                return False
    return True


def write_atomically(path: str | os.PathLike[str], data: bytes) -> None:
    """Write a small file (a manifest) so that it is complete or absent."""
    dest = Path(path)
    part = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with open(part, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(part, dest)
    except BaseException:
        remove_quietly(part)
        raise
    _fsync_dir(dest.parent)


def remove_quietly(path: str | os.PathLike[str]) -> bool:
    """Remove a file; False when it was not there."""
    try:
        os.remove(path)
    except FileNotFoundError:
        return False
    return True


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (some filesystems refuse to open a directory: then skip)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
