"""The PNG codec of every image the service stores: sanitised uploads, each stage's output, results.

Each stage writes its output as a PNG and the next reads it back, so encoding and decoding sit on
every job's path (docs/benchmarks.md, "Service vs engines in one process"). Pillow filters each row
adaptively and deflates with zlib; here every row uses the "up" filter (a row minus the one above,
one numpy subtraction) and ISA-L's deflate (python-isal) compresses at level 1: 5–6× faster than
Pillow at level 1 for a 768² image, and a file of about the same size. The output is a plain
8-bit RGB PNG with no ancillary chunks, deterministic for the same pixels.

Decoding takes the fast path for PNGs laid out that way (8-bit RGB, not interlaced, every row
filtered "up": undoing it is a cumulative sum down the columns) and hands anything else to Pillow.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from isal import isal_zlib
from PIL import Image

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IHDR_RGB8 = (8, 2, 0, 0, 0)  # bit depth 8, colour type RGB, deflate, adaptive filtering, no interlace
_UP = 2  # PNG filter type "up"
_LEVEL = 1  # ISA-L levels 0–3; 1 is within 1 % of 2's size and the fastest but 0, which is much larger
_FAST_MAX_PIXELS = 64 * 1024 * 1024  # beyond this (never written by the service) Pillow decodes


def encode_png(image: np.ndarray) -> bytes:
    """Encode an HxWx3 uint8 RGB array as PNG: deterministic, no metadata chunks."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 array, got shape {image.shape} of {image.dtype}")
    height, width, _ = image.shape
    rows = np.ascontiguousarray(image).reshape(height, width * 3)
    filtered = np.empty((height, width * 3 + 1), np.uint8)
    filtered[:, 0] = _UP
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # uint8: wraps modulo 256, as PNG wants
    header = struct.pack(">II5B", width, height, *_IHDR_RGB8)
    return b"".join((SIGNATURE, _chunk(b"IHDR", header),
                     _chunk(b"IDAT", isal_zlib.compress(filtered, _LEVEL)), _chunk(b"IEND", b"")))


def decode_png(png: bytes) -> np.ndarray:
    """Decode PNG bytes into an HxWx3 uint8 RGB array (any PNG; this module's own, fast)."""
    image = _decode_own(png)
    if image is not None:
        return image
    with Image.open(io.BytesIO(png), formats=["PNG"]) as opened:
        return np.array(opened.convert("RGB"))


def _chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(body, zlib.crc32(tag)))


def _decode_own(png: bytes) -> np.ndarray | None:
    """The pixels of a PNG laid out as ``encode_png`` writes it, or None for any other PNG."""
    chunks = _chunks(png)
    if chunks is None or not chunks or chunks[0][0] != b"IHDR" or len(chunks[0][1]) != 13:
        return None
    width, height, *layout = struct.unpack(">II5B", chunks[0][1])
    if tuple(layout) != _IHDR_RGB8 or not 0 < width * height <= _FAST_MAX_PIXELS:
        return None
    if any(tag not in (b"IHDR", b"IDAT", b"IEND") for tag, _ in chunks):
        return None  # a palette, transparency, gamma…: Pillow knows what they mean
    expected = height * (width * 3 + 1)
    inflater = isal_zlib.decompressobj()
    try:
        raw = inflater.decompress(b"".join(body for tag, body in chunks if tag == b"IDAT"), expected + 1)
    except isal_zlib.error:
        return None
    if len(raw) != expected:
        return None
    filtered = np.frombuffer(raw, np.uint8).reshape(height, width * 3 + 1)
    if not (filtered[:, 0] == _UP).all():
        return None
    return np.cumsum(filtered[:, 1:], axis=0, dtype=np.uint8).reshape(height, width, 3)


def _chunks(png: bytes) -> list[tuple[bytes, memoryview]] | None:
    """(tag, body) of each chunk up to IEND, or None when the bytes are not a well-formed PNG."""
    if not png.startswith(SIGNATURE):
        return None
    view, offset, chunks = memoryview(png), len(SIGNATURE), []
    while offset + 12 <= len(png):
        (length,) = struct.unpack_from(">I", png, offset)
        tag = png[offset + 4:offset + 8]
        end = offset + 12 + length
        if end > len(png):
            return None
        chunks.append((tag, view[offset + 8:end - 4]))
        if tag == b"IEND":
            return chunks
        offset = end
    return None
