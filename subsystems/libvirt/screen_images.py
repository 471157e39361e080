"""Screenshots as PNG: libvirt's screenshot call answers in the hypervisor's format (qemu: a
binary PPM, `P6`), and the console desk always replies `image/png`.

Pure functions on bytes, with the standard library only (zlib and struct): a PPM is a short
text header and raw RGB rows, and a PNG of 8-bit RGB rows is a signature and three chunks.
"""

from __future__ import annotations

import struct
import zlib

__all__ = ["PNG_SIGNATURE", "ImageError", "png_size", "ppm_to_png", "rgb_to_png", "to_png"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_PIXELS = 64 * 1024 * 1024  # a screen is far smaller; a larger header is garbage


class ImageError(ValueError):
    """The bytes are not an image this module can read."""


def to_png(mime: str, data: bytes) -> bytes:
    """The screenshot `data` (of MIME type `mime`, as libvirt names it) as a PNG."""
    if data.startswith(PNG_SIGNATURE):
        png_size(data)  # checks the header
        return data
    if data[:2] in (b"P6", b"P3") or "portable-pixmap" in mime:
        return ppm_to_png(data)
    raise ImageError(f"screenshot in an unknown format ({mime or 'no type'}, "
                     f"{data[:8]!r}...)")


def ppm_to_png(data: bytes, *, level: int = 6) -> bytes:
    """A binary (P6) or plain (P3) PPM as a PNG of 8-bit RGB."""
    magic, width, height, maxval, offset = _ppm_header(data)
    samples = width * height * 3
    if magic == b"P6":
        size = 2 if maxval > 255 else 1
        raw = data[offset:offset + samples * size]
        if len(raw) < samples * size:
            raise ImageError(f"PPM: {len(raw)} bytes of pixels, {samples * size} expected")
        if size == 2:  # 16-bit samples, big-endian
            raw = bytes((raw[i] << 8 | raw[i + 1]) * 255 // maxval
                        for i in range(0, len(raw), 2))
        elif maxval != 255:
            raw = bytes(v * 255 // maxval for v in raw)
    else:
        values = data[offset:].split()
        if len(values) < samples:
            raise ImageError(f"PPM: {len(values)} samples, {samples} expected")
        raw = bytes(min(int(v), maxval) * 255 // maxval for v in values[:samples])
    return rgb_to_png(width, height, raw, level=level)


def rgb_to_png(width: int, height: int, rgb: bytes, *, level: int = 6) -> bytes:
    """A PNG of `height` rows of `width` 8-bit RGB pixels (filter type None on each row)."""
    stride = width * 3
    if len(rgb) != stride * height:
        raise ImageError(f"RGB: {len(rgb)} bytes for {width}x{height}")
    rows = b"".join(b"\x00" + rgb[y * stride:(y + 1) * stride] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (PNG_SIGNATURE + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(rows, level)) + _chunk(b"IEND", b""))


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's header (its first chunk, IHDR)."""
    if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR" or len(data) < 24:
        raise ImageError("not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _chunk(kind: bytes, body: bytes) -> bytes:
    return (struct.pack(">I", len(body)) + kind + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))


def _ppm_header(data: bytes) -> tuple[bytes, int, int, int, int]:
    """Magic, width, height, maxval, and the offset of the pixels (after one whitespace)."""
    magic = data[:2]
    if magic not in (b"P6", b"P3"):
        raise ImageError(f"not a PPM (starts {data[:8]!r})")
    fields: list[int] = []
    pos = 2
    while len(fields) < 3:
        while pos < len(data) and data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":  # a comment runs to the end of its line
            end = data.find(b"\n", pos)
            pos = len(data) if end < 0 else end + 1
            continue
        start = pos
        while pos < len(data) and data[pos:pos + 1].isdigit():
            pos += 1
        if start == pos:
            raise ImageError("PPM: malformed header")
        fields.append(int(data[start:pos]))
    if pos >= len(data) or not data[pos:pos + 1].isspace():
        raise ImageError("PPM: no pixels after the header")
    width, height, maxval = fields
    if not (width > 0 and height > 0 and width * height <= _MAX_PIXELS and 0 < maxval < 65536):
        raise ImageError(f"PPM: bad size {width}x{height} or maxval {maxval}")
    return magic, width, height, maxval, pos + 1
