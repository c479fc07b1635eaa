"""The PNG codec of every image the service stores: sanitised uploads, each stage's output, results.

Each stage writes its output as a PNG and the next reads it back, so encoding and decoding sit on
every job's path (docs/benchmarks.md, "Service vs engines in one process"). Pillow filters each row
adaptively and deflates with zlib; here every row uses the "up" filter (a row minus the one above,
one numpy subtraction) and ISA-L's deflate (python-isal) compresses at level 1: 5–6× faster than
Pillow at level 1 for a 768² image, and a file of about the same size. The output is a plain
8-bit RGB PNG with no ancillary chunks, deterministic for the same pixels.

An intermediate — a stage's output that the next stage reads back and nobody downloads (the
normalised input, a style job's restyled image) — is written with ``compress=False``: rows
unfiltered, deflate's "stored" blocks (no compression at all), so encoding is little more than one
copy and a checksum (~0.1 ms for a 384² image where compressing takes ~1.5), at about 1.7× the file
size. It is still a plain PNG that any decoder reads.

Decoding takes the fast path for PNGs laid out these ways (8-bit RGB, not interlaced, every row
filtered "up" — undoing it is a cumulative sum down the columns — or every row unfiltered) and
hands anything else to Pillow.
"""

from __future__ import annotations

import io
import struct

import numpy as np
from isal import isal_zlib
from PIL import Image

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IHDR_RGB8 = (8, 2, 0, 0, 0)  # bit depth 8, colour type RGB, deflate, adaptive filtering, no interlace
_NONE, _UP = 0, 2  # PNG filter types "none" and "up"
_LEVEL = 1  # ISA-L levels 0–3; 1 is within 1 % of 2's size and the fastest but 0, which is much larger
_FAST_MAX_PIXELS = 64 * 1024 * 1024  # beyond this (never written by the service) Pillow decodes
_STORED_BLOCK = 65535  # the most bytes one stored deflate block holds


def encode_png(image: np.ndarray, *, compress: bool = True) -> bytes:
    """Encode an HxWx3 uint8 RGB array as PNG: deterministic, no metadata chunks. ``compress=False``
    writes the pixels uncompressed (an intermediate: fast to write and to read, larger)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 array, got shape {image.shape} of {image.dtype}")
    height, width, _ = image.shape
    rows = np.ascontiguousarray(image).reshape(height, width * 3)
    filtered = np.empty((height, width * 3 + 1), np.uint8)
    if compress:
        filtered[:, 0] = _UP
        filtered[0, 1:] = rows[0]
        np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # uint8: wraps modulo 256, as PNG wants
        data = [isal_zlib.compress(filtered, _LEVEL)]
    else:
        filtered[:, 0] = _NONE
        filtered[:, 1:] = rows
        data = _stored(memoryview(filtered).cast("B"))
    header = struct.pack(">II5B", width, height, *_IHDR_RGB8)
    return b"".join((SIGNATURE, *_chunk(b"IHDR", [header]), *_chunk(b"IDAT", data), *_chunk(b"IEND", [])))


def decode_png(png: bytes) -> np.ndarray:
    """Decode PNG bytes into an HxWx3 uint8 RGB array (any PNG; this module's own, fast)."""
    image = _decode_own(png)
    if image is not None:
        return image
    with Image.open(io.BytesIO(png), formats=["PNG"]) as opened:
        return np.array(opened.convert("RGB"))


def _stored(data: memoryview) -> list[bytes | memoryview]:
    """The parts of a zlib stream of ``data`` in stored (uncompressed) deflate blocks (RFC 1950/1951)."""
    parts: list[bytes | memoryview] = [b"\x78\x01"]  # deflate, 32 KiB window, no dictionary
    for start in range(0, max(len(data), 1), _STORED_BLOCK):
        block = data[start:start + _STORED_BLOCK]
        final = start + _STORED_BLOCK >= len(data)
        parts += (struct.pack("<BHH", final, len(block), len(block) ^ 0xFFFF), block)
    parts.append(struct.pack(">I", isal_zlib.adler32(data)))
    return parts


def _chunk(tag: bytes, body: list[bytes | memoryview]) -> list[bytes | memoryview]:
    """The parts of a chunk whose body is ``body``'s parts, joined (copied) once, by the caller."""
    crc = isal_zlib.crc32(tag)
    for part in body:
        crc = isal_zlib.crc32(part, crc)
    return [struct.pack(">I", sum(len(part) for part in body)) + tag, *body, struct.pack(">I", crc)]


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
    if (filtered[:, 0] == _UP).all():
        return _undo_up(filtered[:, 1:]).reshape(height, width, 3)
    if (filtered[:, 0] == _NONE).all():
        return np.ascontiguousarray(filtered[:, 1:]).reshape(height, width, 3)
    return None


def _undo_up(rows: np.ndarray) -> np.ndarray:
    """Undo the "up" filter: each row plus the one above it once restored (uint8, modulo 256). One
    numpy add per row: ~0.4 ms for a 512² image, where ``np.cumsum(axis=0)`` took ~2.4."""
    out = np.empty(rows.shape, np.uint8)
    out[0] = rows[0]
    for i in range(1, len(out)):
        np.add(out[i - 1], rows[i], out=out[i])
    return out


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
