"""Template download into an image store: `file://` or `http(s)://`, checksum verified.

The file is streamed into a `.part` file beside its destination, hashed on the way, and
renamed into place only when the checksum matches. A template already in place with the right
checksum is not fetched again, so a repeated step only reads the file. Failures: a checksum
mismatch, a missing file or an HTTP 4xx are not retryable (the same URL fails again); a
refused connection, a timeout, an HTTP 5xx or a short body are. The answer says the size
of the disk the file holds (`disk_images.virtual_size`) beside the file's own length.
"""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from aggregates.errors import StepFailedError
from kernel.steps.storage import Deleted, DeleteTemplate, DownloadTemplate, TemplateDownloaded
from subsystems.libvirt import disk_images, files

__all__ = ["delete_template", "download_template", "template_path"]


def template_path(directory: str, file_name: str) -> Path:
    """Where a template lives in an image store; the name must be a plain file name."""
    if not file_name or file_name in (".", "..") or "/" in file_name or "\0" in file_name:
        raise StepFailedError(f"template file name {file_name!r} must be a plain file name",
                              retryable=False, code="invalid_arguments")
    return Path(directory) / file_name


def download_template(args: DownloadTemplate) -> TemplateDownloaded:
    """Fetch the template unless it is in place with the expected checksum."""
    algorithm, expected = files.parse_checksum(args.checksum)
    dest = template_path(args.directory, args.file_name)
    if dest.is_file():
        found = files.hash_file(dest, {algorithm, "sha256"})
        if found.digests[algorithm] == expected:
            return TemplateDownloaded(path=str(dest), size_bytes=found.size,
                                      checksum=f"{algorithm}:{expected}", sha256=found.sha256,
                                      downloaded=False,
                                      virtual_size_bytes=disk_images.virtual_size(dest))
    dest.parent.mkdir(parents=True, exist_ok=True)
    stream, length = _open(args.url, args.timeout_seconds)
    try:
        copied = files.write_stream(stream, dest, expect={algorithm: expected},
                                    expect_size=length, algorithms=("sha256",))
    except (OSError, http.client.HTTPException) as e:
        raise StepFailedError(f"download {args.url}: {e}", retryable=True,
                              code="download_failed") from e
    finally:
        stream.close()
    return TemplateDownloaded(path=str(dest), size_bytes=copied.size,
                              checksum=f"{algorithm}:{expected}", sha256=copied.sha256,
                              downloaded=True, virtual_size_bytes=disk_images.virtual_size(dest))


def delete_template(args: DeleteTemplate) -> Deleted:
    """Remove the template file; gone already is success."""
    return Deleted(existed=files.remove_quietly(template_path(args.directory, args.file_name)))


def _open(url: str, timeout: float) -> tuple[BinaryIO, int | None]:
    """The source as a binary stream, with its length when the server tells it."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise StepFailedError(f"{url}: a file URL must name a local file",
                                  retryable=False, code="invalid_arguments")
        path = unquote(parts.path)
        try:
            return open(path, "rb"), os.path.getsize(path)
        except FileNotFoundError as e:
            raise StepFailedError(f"template source {path} does not exist", retryable=False,
                                  code="source_missing") from e
        except OSError as e:
            raise StepFailedError(f"template source {path}: {e}", retryable=True,
                                  code="download_failed") from e
    if parts.scheme not in ("http", "https"):
        raise StepFailedError(f"{url}: only file://, http:// and https:// URLs are supported",
                              retryable=False, code="invalid_arguments")
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as e:
        raise StepFailedError(f"download {url}: HTTP {e.code} {e.reason}",
                              retryable=e.code >= 500 or e.code in (408, 429),
                              code="download_failed") from e
    except (urllib.error.URLError, OSError) as e:
        raise StepFailedError(f"download {url}: {getattr(e, 'reason', e)}", retryable=True,
                              code="download_failed") from e
    length = response.headers.get("Content-Length")
    return response, int(length) if length and length.isdigit() else None
