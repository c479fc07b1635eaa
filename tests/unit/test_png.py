"""The blobs' PNG codec (safety/png.py): lossless, a PNG that every decoder reads, deterministic,
and any other PNG still decoded (by Pillow)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from safety.png import decode_png, encode_png


def _random(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (9, 1), (171, 256), (333, 129), (200, 400)])
def test_round_trip_is_lossless(shape, compress):
    image = _random(*shape)
    assert np.array_equal(decode_png(encode_png(image, compress=compress)), image)


@pytest.mark.parametrize("compress", [True, False])
def test_pillow_reads_what_it_writes(compress):
    image = _random(250, 300, seed=3)  # uncompressed: 225,250 bytes of rows, four stored deflate blocks
    with Image.open(io.BytesIO(encode_png(image, compress=compress)), formats=["PNG"]) as opened:
        opened.load()
        assert opened.mode == "RGB" and opened.info == {}  # no metadata chunks
        assert np.array_equal(np.asarray(opened), image)


def test_an_intermediate_is_stored_uncompressed():
    y, x = np.mgrid[0:256, 0:256]
    smooth = np.stack([x, y, (x + y) // 2], axis=-1).astype(np.uint8)
    raw = 256 * (256 * 3 + 1)  # each row and its filter byte
    assert raw < len(encode_png(smooth, compress=False)) < raw + 100  # headers, block headers, checksums
    assert len(encode_png(smooth)) < raw / 10
    assert encode_png(smooth, compress=False) == encode_png(smooth.copy(), compress=False)


def test_same_pixels_same_bytes():
    image = _random(40, 40, seed=5)
    assert encode_png(image) == encode_png(image.copy())
    assert encode_png(image) != encode_png(_random(40, 40, seed=6))


def test_compresses_a_smooth_image():
    y, x = np.mgrid[0:256, 0:256]
    smooth = np.stack([x, y, (x + y) // 2], axis=-1).astype(np.uint8)
    assert len(encode_png(smooth)) < smooth.nbytes / 10


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_other_pngs_decode_as_pillow_does(mode):
    image = Image.fromarray(_random(30, 20, seed=7)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    assert np.array_equal(decode_png(buffer.getvalue()), np.asarray(image.convert("RGB")))


def test_refuses_what_is_not_an_rgb_uint8_array():
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        encode_png(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        encode_png(np.zeros((4, 4, 3), np.float32))


@pytest.mark.parametrize("compress", [True, False])
def test_damaged_data_is_not_decoded_as_pixels(compress):
    png = bytearray(encode_png(_random(32, 32), compress=compress))
    png[60:70] = bytes(255 - b for b in png[60:70])  # inside the deflate stream
    with pytest.raises(Exception):
        decode_png(bytes(png))
