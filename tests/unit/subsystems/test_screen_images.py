"""Screenshots as PNG: PPM (what qemu answers) converted with the standard library only."""

from __future__ import annotations

import struct
import zlib

import pytest

from subsystems.libvirt.screen_images import (
    PNG_SIGNATURE,
    ImageError,
    png_size,
    ppm_to_png,
    rgb_to_png,
    to_png,
)


def decode_png(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and RGB bytes of a PNG of 8-bit RGB rows with filter None, checking
    every chunk's CRC."""
    assert data.startswith(PNG_SIGNATURE)
    pos, chunks = len(PNG_SIGNATURE), dict[bytes, bytes]()
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + length
    width, height, depth, colour, _c, _f, _i = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert (depth, colour) == (8, 2) and b"IEND" in chunks
    rows = zlib.decompress(chunks[b"IDAT"])
    stride = width * 3 + 1
    assert all(rows[y * stride] == 0 for y in range(height))
    return width, height, b"".join(rows[y * stride + 1:(y + 1) * stride] for y in range(height))


PIXELS = bytes(range(2 * 3 * 3))  # 3 wide, 2 high


def test_a_binary_ppm_becomes_the_same_pixels_in_png() -> None:
    ppm = b"P6\n# made by qemu\n3 2\n255\n" + PIXELS
    png = to_png("image/x-portable-pixmap", ppm)
    assert decode_png(png) == (3, 2, PIXELS)
    assert png_size(png) == (3, 2)


def test_sixteen_bit_and_small_maxval_samples_are_scaled() -> None:
    wide = b"P6 1 1 65535\n" + b"\xff\xff\x80\x00\x00\x00"
    assert decode_png(ppm_to_png(wide)) == (1, 1, bytes([255, 127, 0]))
    small = b"P6 1 1 15\n" + bytes([15, 0, 5])
    assert decode_png(ppm_to_png(small)) == (1, 1, bytes([255, 0, 85]))


def test_a_plain_ppm_is_read_too() -> None:
    assert decode_png(ppm_to_png(b"P3\n2 1\n255\n1 2 3  4 5 6\n")) == (2, 1, bytes(range(1, 7)))


def test_a_png_passes_through() -> None:
    png = rgb_to_png(1, 1, b"\x01\x02\x03")
    assert to_png("image/png", png) is png


@pytest.mark.parametrize("data", [
    b"P6\n3 2\n255\n" + PIXELS[:-1],  # short
    b"P6\n0 2\n255\n",  # empty
    b"P6\n3 x\n255\n" + PIXELS,  # malformed
    b"P6\n3 2\n255",  # no pixels
    b"GIF89a...",  # another format
])
def test_what_is_not_a_readable_image_is_refused(data: bytes) -> None:
    with pytest.raises(ImageError):
        to_png("application/octet-stream", data)


def test_png_size_refuses_what_is_not_a_png() -> None:
    with pytest.raises(ImageError):
        png_size(b"P6 1 1 255\n...")
