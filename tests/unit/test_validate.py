"""Upload validation against a corpus of hostile and odd files, all generated here."""

from __future__ import annotations

import functools
import hashlib
import io
import struct
import zipfile
import zlib
from collections.abc import Callable

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import ExifTags, Image, ImageCms, ImageFile

from safety.errors import InputRejected, SafetyError
from safety.validate import CleanImage, UploadLimits, decode_png, encode_png, validate_image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
UPLOAD_HINT = "upload a PNG, JPEG or WebP image"


# --- builders ---------------------------------------------------------------------------


@functools.cache
def photo() -> np.ndarray:
    """A 96x128 RGB crop of a real photograph."""
    return np.ascontiguousarray(skimage.data.astronaut()[::4, ::4][:96])


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def photo_as(fmt: str, **params: object) -> bytes:
    return encode(Image.fromarray(photo()), fmt, **params)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    """(kind, payload) of every chunk of a well-formed PNG."""
    chunks, position = [], len(PNG_SIGNATURE)
    while position < len(png):
        length, kind = struct.unpack_from(">I4s", png, position)
        chunks.append((kind, png[position + 8 : position + 8 + length]))
        position += 12 + length
    return chunks


def assemble_png(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return PNG_SIGNATURE + b"".join(png_chunk(kind, payload) for kind, payload in chunks)


def crafted_png(width: int, height: int) -> bytes:
    """A structurally valid PNG whose IHDR declares width x height over a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return assemble_png([(b"IHDR", ihdr), (b"IDAT", idat), (b"IEND", b"")])


def replace_chunk(png: bytes, kind: bytes, payload: bytes, *, fix_crc: bool) -> bytes:
    """Swap the payload of the first `kind` chunk, with a correct or a stale CRC."""
    chunks = png_chunks(png)
    index = next(i for i, (k, _) in enumerate(chunks) if k == kind)
    crc = zlib.crc32(kind + (payload if fix_crc else chunks[index][1]))
    raw = [png_chunk(k, p) for k, p in chunks]
    raw[index] = struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)
    return PNG_SIGNATURE + b"".join(raw)


def jpeg_segment_offset(jpeg: bytes, marker: int) -> int:
    position = 2
    while jpeg[position + 1] != marker:
        position += 2 + struct.unpack_from(">H", jpeg, position + 2)[0]
    return position


def jpeg_with_declared_size(width: int, height: int) -> bytes:
    """A complete baseline JPEG whose SOF0 claims width x height."""
    jpeg = bytearray(photo_as("JPEG"))
    sof = jpeg_segment_offset(bytes(jpeg), 0xC0)
    struct.pack_into(">HH", jpeg, sof + 5, height, width)
    return bytes(jpeg)


def webp_container(payload: bytes) -> bytes:
    return b"RIFF" + struct.pack("<I", 4 + len(payload)) + b"WEBP" + payload


def frames(fmt: str) -> bytes:
    """Two different pictures saved as one multi-frame file."""
    still = [Image.fromarray(photo()), Image.fromarray(photo()[::-1].copy())]
    return encode(still[0], fmt, save_all=True, append_images=still[1:], duration=100)


def zip_archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("payload.txt", "not an image")
    return buffer.getvalue()


def rgba_with_holes() -> Image.Image:
    """Photo with a fully transparent top-left block and a half-transparent bottom row."""
    rgba = np.dstack([photo(), np.full(photo().shape[:2], 255, np.uint8)])
    rgba[:16, :16, 3] = 0
    rgba[-1, :, :] = (255, 0, 0, 128)
    return Image.fromarray(rgba)


def palette_with_transparency() -> bytes:
    """16-colour palette PNG whose index 15 is transparent, used by the top-left block."""
    image = Image.fromarray(photo()).convert("P", palette=Image.Palette.ADAPTIVE, colors=15)
    image.putpalette(image.getpalette()[: 15 * 3] + [255, 0, 255])
    image.paste(15, (0, 0, 8, 8))
    return encode(image, "PNG", transparency=15)


def rgb_with_color_key() -> Image.Image:
    """Photo with a pure-green top-left block, to be marked transparent by a tRNS colour key."""
    pixels = photo().copy()
    pixels[:10, :10] = (0, 255, 0)
    return Image.fromarray(pixels)


GRAY16_VALUES = np.array([0, 128, 129, 257, 1000, 32896, 40000, 65535], dtype=np.uint16)
GRAY16_EXPECTED = np.array([0, 0, 1, 1, 4, 128, 156, 255], dtype=np.uint8)


def gray16_png() -> bytes:
    return encode(Image.fromarray(np.tile(GRAY16_VALUES, (16, 2))), "PNG")


def rgb16_png() -> bytes:
    bgr16 = cv2.cvtColor(photo(), cv2.COLOR_RGB2BGR).astype(np.uint16) * 257
    ok, png = cv2.imencode(".png", bgr16)
    assert ok
    return png.tobytes()


def oriented_jpeg() -> bytes:
    """64 wide x 32 high as stored, red top-left block, EXIF orientation 6 (rotate 90° CW)."""
    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:, :] = (0, 0, 200)
    stored[:12, :12] = (255, 0, 0)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    return encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())


CAMERA_MAKE = "SpyCam-9000"


def jpeg_with_metadata() -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = CAMERA_MAKE
    exif[ExifTags.IFD.GPSInfo] = {
        ExifTags.GPS.GPSLatitudeRef: "N",
        ExifTags.GPS.GPSLatitude: (52.0, 31.0, 12.0),
    }
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return photo_as("JPEG", exif=exif.tobytes(), icc_profile=icc, comment=b"shot at home")


def png_with_text() -> bytes:
    chunks = png_chunks(photo_as("PNG"))
    extra = [
        (b"tEXt", b"Author\x00Jane Doe"),
        (b"iTXt", b"Location\x00\x00\x00\x00\x00Home address"),
        (b"eXIf", _exif_payload()),
    ]
    return assemble_png(chunks[:1] + extra + chunks[1:])


def _exif_payload() -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = CAMERA_MAKE
    return exif.tobytes()[len(b"Exif\x00\x00") :]


def ztxt_bomb_png() -> bytes:
    """A zTXt chunk of about 10 KB that inflates to 10 MiB, ahead of the pixels."""
    chunks = png_chunks(photo_as("PNG"))
    bomb = (b"zTXt", b"Comment\x00\x00" + zlib.compress(b"A" * 10 * 2**20, 9))
    return assemble_png(chunks[:1] + [bomb] + chunks[1:])


def small_png(width: int, height: int) -> bytes:
    return encode(Image.fromarray(photo()[:height, :width].copy()), "PNG")


def truncated(build: Callable[[], bytes], *, keep: float = 0.5) -> Callable[[], bytes]:
    """A builder for the first `keep` fraction of what `build` makes."""

    def cut() -> bytes:
        data = build()
        return data[: int(len(data) * keep)]

    return cut


# --- rejected corpus ----------------------------------------------------------------------


def _bytes(value: bytes) -> Callable[[], bytes]:
    return lambda: value


REJECTED = [
    pytest.param(_bytes(b""), "empty_file", "empty", id="empty"),
    pytest.param(
        lambda: PNG_SIGNATURE + bytes(25 * 1024 * 1024), "too_large", "over the 25.0 MiB limit",
        id="over-max-bytes",
    ),
    pytest.param(
        lambda: np.random.default_rng(7).bytes(4096), "unsupported_format",
        "not a recognised image", id="random-bytes",
    ),
    pytest.param(
        _bytes(b"holiday photo, renamed to photo.png\n"), "unsupported_format",
        f"this file is a text file; {UPLOAD_HINT}", id="text-named-png",
    ),
    pytest.param(
        _bytes(b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>"),
        "unsupported_format", "an HTML page", id="html",
    ),
    pytest.param(
        _bytes(b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"><script/></svg>'),
        "unsupported_format", "an SVG drawing", id="svg",
    ),
    pytest.param(lambda: photo_as("PDF"), "unsupported_format", "a PDF document", id="pdf"),
    pytest.param(zip_archive, "unsupported_format", "a ZIP archive", id="zip"),
    pytest.param(
        lambda: photo_as("GIF"), "unsupported_format",
        f"this file is a GIF; {UPLOAD_HINT}", id="gif",
    ),
    pytest.param(lambda: frames("GIF"), "unsupported_format", "a GIF", id="animated-gif"),
    pytest.param(lambda: photo_as("BMP"), "unsupported_format", "a BMP", id="bmp"),
    pytest.param(lambda: photo_as("TIFF"), "unsupported_format", "a TIFF", id="tiff"),
    pytest.param(
        _bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)),
        "unsupported_format", "HEIC", id="heic",
    ),
    pytest.param(
        truncated(lambda: photo_as("JPEG")), "corrupt_image", "truncated", id="truncated-jpeg"
    ),
    pytest.param(
        lambda: photo_as("JPEG")[:-2], "corrupt_image", "truncated", id="jpeg-without-eoi"
    ),
    pytest.param(
        truncated(lambda: photo_as("JPEG", progressive=True), keep=0.8), "corrupt_image",
        "truncated", id="truncated-progressive-jpeg",
    ),
    pytest.param(
        lambda: b"\xff\xd8\xff" + np.random.default_rng(1).bytes(2000), "corrupt_image",
        "JPEG", id="jpeg-soi-then-garbage",
    ),
    pytest.param(
        truncated(lambda: photo_as("PNG")), "corrupt_image", "truncated", id="truncated-png"
    ),
    pytest.param(
        lambda: photo_as("PNG")[:-12], "corrupt_image", "truncated", id="png-without-iend"
    ),
    pytest.param(_bytes(PNG_SIGNATURE), "corrupt_image", "truncated", id="png-signature-only"),
    pytest.param(
        lambda: assemble_png(png_chunks(photo_as("PNG"))[1:]), "corrupt_image", "IHDR",
        id="png-without-ihdr",
    ),
    pytest.param(
        lambda: replace_chunk(photo_as("PNG"), b"IDAT", b"\x00" * 40, fix_crc=False),
        "corrupt_image", "checksum", id="png-bad-idat-crc",
    ),
    pytest.param(
        lambda: replace_chunk(
            photo_as("PNG"), b"IDAT", np.random.default_rng(2).bytes(600), fix_crc=True
        ),
        "corrupt_image", "corrupt", id="png-garbage-idat-valid-crc",
    ),
    pytest.param(
        lambda: replace_chunk(photo_as("PNG"), b"IDAT", zlib.compress(b"\x00" * 500), fix_crc=True),
        "corrupt_image", "corrupt", id="png-idat-too-short",
    ),
    pytest.param(ztxt_bomb_png, "corrupt_image", "PNG", id="png-ztxt-bomb"),
    pytest.param(
        truncated(lambda: photo_as("WEBP")), "corrupt_image", "truncated", id="truncated-webp"
    ),
    pytest.param(
        lambda: webp_container(np.random.default_rng(3).bytes(500)), "corrupt_image", "WebP",
        id="webp-garbage-payload",
    ),
    pytest.param(
        lambda: crafted_png(100_000, 100_000), "decompression_bomb", "decompression bomb",
        id="png-header-100000x100000",
    ),
    pytest.param(
        lambda: crafted_png(10_000, 10_000), "decompression_bomb", "decompression bomb",
        id="png-header-100mp-pil-warning",
    ),
    pytest.param(
        lambda: jpeg_with_declared_size(65_000, 65_000), "decompression_bomb", "40.0 MP",
        id="jpeg-header-65000x65000",
    ),
    pytest.param(
        lambda: jpeg_with_declared_size(9000, 7000), "too_many_pixels",
        "the image is 9000×7000 (63.0 MP); the limit is 40.0 MP — resize it before uploading",
        id="jpeg-header-9000x7000",
    ),
    pytest.param(
        lambda: crafted_png(8200, 16), "too_many_pixels", "no side may exceed 8192 px",
        id="png-8200-wide",
    ),
    pytest.param(lambda: small_png(8, 8), "image_too_small", "at least 16 px", id="8x8"),
    pytest.param(lambda: small_png(15, 64), "image_too_small", "15×64", id="15x64"),
    pytest.param(
        lambda: frames("WEBP"), "animated_image", "animated (2 frames); upload a single frame",
        id="animated-webp",
    ),
    pytest.param(lambda: frames("PNG"), "animated_image", "upload a single frame", id="apng"),
]


@pytest.mark.parametrize(("build", "code", "fragment"), REJECTED)
def test_hostile_files_are_rejected(build: Callable[[], bytes], code: str, fragment: str) -> None:
    with pytest.raises(InputRejected) as caught:
        validate_image(build())
    assert caught.value.code == code
    assert fragment in str(caught.value)
    assert caught.value.status == (413 if code == "too_large" else 422)


def test_limits_are_honoured() -> None:
    png_only = UploadLimits(allowed_formats=frozenset({"PNG"}))
    with pytest.raises(InputRejected, match="this file is a WebP; upload a PNG image"):
        validate_image(photo_as("WEBP"), limits=png_only)
    with pytest.raises(InputRejected) as caught:
        validate_image(photo_as("PNG"), limits=UploadLimits(max_bytes=1024))
    assert (caught.value.code, caught.value.status) == ("too_large", 413)
    with pytest.raises(InputRejected, match="at least 100 px") as caught:
        validate_image(photo_as("PNG"), limits=UploadLimits(min_side=100))
    assert caught.value.code == "image_too_small"


def test_input_rejected_is_a_safety_error() -> None:
    error = InputRejected("corrupt_image", "re-export it")
    assert isinstance(error, SafetyError)
    assert (str(error), error.code, error.status) == ("re-export it", "corrupt_image", 422)


def test_pixel_limits_do_not_rely_on_pil_global(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(InputRejected) as caught:
        validate_image(crafted_png(100_000, 100_000))
    assert caught.value.code == "too_many_pixels"


def test_size_is_refused_before_any_pixel_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse_to_decode(self: Image.Image) -> None:
        raise AssertionError("pixels decoded before the size check")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse_to_decode)
    with pytest.raises(InputRejected) as caught:
        validate_image(jpeg_with_declared_size(9000, 7000))
    assert caught.value.code == "too_many_pixels"


@pytest.mark.parametrize(
    "build",
    [
        truncated(lambda: photo_as("JPEG")),
        lambda: photo_as("JPEG")[:-2],
        truncated(lambda: photo_as("PNG")),
        lambda: photo_as("PNG")[:-12],
        truncated(lambda: photo_as("WEBP")),
    ],
    ids=["jpeg", "jpeg-without-eoi", "png", "png-without-iend", "webp"],
)
def test_truncation_is_caught_even_if_pil_tolerates_it(
    build: Callable[[], bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(InputRejected) as caught:
        validate_image(build())
    assert caught.value.code == "corrupt_image"


def test_pil_alone_would_accept_a_truncated_jpeg(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shows why the structural check above matters."""
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    Image.open(io.BytesIO(truncated(lambda: photo_as("JPEG"))())).load()


# --- accepted corpus ------------------------------------------------------------------------

ACCEPTED = [
    pytest.param(lambda: photo_as("PNG"), (128, 96), "PNG", [], id="rgb-png"),
    pytest.param(lambda: photo_as("JPEG"), (128, 96), "JPEG", [], id="baseline-jpeg"),
    pytest.param(
        lambda: photo_as("JPEG", progressive=True), (128, 96), "JPEG", [], id="progressive-jpeg"
    ),
    pytest.param(
        lambda: photo_as("WEBP", lossless=True), (128, 96), "WEBP", [], id="webp-lossless"
    ),
    pytest.param(lambda: photo_as("WEBP", quality=80), (128, 96), "WEBP", [], id="webp-lossy"),
    pytest.param(lambda: small_png(16, 16), (16, 16), "PNG", [], id="exactly-min-side"),
    pytest.param(
        lambda: encode(rgba_with_holes(), "PNG"), (128, 96), "PNG",
        ["alpha flattened onto white"], id="rgba-png",
    ),
    pytest.param(
        lambda: encode(rgba_with_holes(), "WEBP", lossless=True), (128, 96), "WEBP",
        ["alpha flattened onto white"], id="rgba-webp",
    ),
    pytest.param(
        lambda: encode(Image.fromarray(photo()).convert("RGBA"), "PNG"), (128, 96), "PNG", [],
        id="opaque-rgba-png",
    ),
    pytest.param(
        lambda: encode(rgba_with_holes().convert("LA"), "PNG"), (128, 96), "PNG",
        ["grayscale expanded to RGB", "alpha flattened onto white"], id="la-png",
    ),
    pytest.param(
        palette_with_transparency, (128, 96), "PNG",
        ["palette expanded", "alpha flattened onto white"], id="palette-png-transparent",
    ),
    pytest.param(
        lambda: encode(Image.fromarray(photo()).convert("P"), "PNG"), (128, 96), "PNG",
        ["palette expanded"], id="palette-png",
    ),
    pytest.param(
        lambda: encode(rgb_with_color_key(), "PNG", transparency=(0, 255, 0)),
        (128, 96), "PNG", ["alpha flattened onto white"], id="rgb-png-color-key",
    ),
    pytest.param(
        lambda: encode(Image.fromarray(photo()).convert("1"), "PNG"), (128, 96), "PNG",
        ["1-bit expanded to RGB"], id="1-bit-png",
    ),
    pytest.param(
        lambda: encode(Image.fromarray(photo()).convert("L"), "JPEG"), (128, 96), "JPEG",
        ["grayscale expanded to RGB"], id="grayscale-jpeg",
    ),
    pytest.param(
        gray16_png, (16, 16), "PNG", ["16-bit reduced to 8-bit", "grayscale expanded to RGB"],
        id="16-bit-gray-png",
    ),
    pytest.param(rgb16_png, (128, 96), "PNG", ["16-bit reduced to 8-bit"], id="16-bit-rgb-png"),
    pytest.param(
        lambda: encode(Image.fromarray(photo()).convert("CMYK"), "JPEG", quality=95),
        (128, 96), "JPEG", ["converted from CMYK"], id="cmyk-jpeg",
    ),
    pytest.param(
        oriented_jpeg, (32, 64), "JPEG", ["metadata removed (EXIF)", "EXIF orientation applied"],
        id="jpeg-exif-orientation-6",
    ),
    pytest.param(
        jpeg_with_metadata, (128, 96), "JPEG", ["metadata removed (EXIF, ICC profile, comment)"],
        id="jpeg-gps-icc-comment",
    ),
    pytest.param(
        png_with_text, (128, 96), "PNG", ["metadata removed (EXIF, text)"], id="png-text-exif",
    ),
    pytest.param(
        lambda: photo_as("JPEG") + zip_archive(), (128, 96), "JPEG",
        [f"{len(zip_archive())} bytes of trailing data after the image dropped"],
        id="polyglot-jpeg-zip",
    ),
]


@pytest.mark.parametrize(("build", "size", "source_format", "notes"), ACCEPTED)
def test_odd_but_valid_files_are_accepted(
    build: Callable[[], bytes], size: tuple[int, int], source_format: str, notes: list[str]
) -> None:
    clean = validate_image(build())
    assert (clean.width, clean.height) == size
    assert clean.source_format == source_format
    assert clean.notes == notes
    assert clean.sha256 == hashlib.sha256(clean.png).hexdigest()
    assert [kind for kind, _ in png_chunks(clean.png)] == [b"IHDR", b"IDAT", b"IEND"]
    with Image.open(io.BytesIO(clean.png)) as reopened:
        assert (reopened.format, reopened.mode, reopened.size) == ("PNG", "RGB", size)
        assert reopened.info == {}
    assert decode_png(clean.png).shape == (size[1], size[0], 3)


def pixels_of(data: bytes) -> np.ndarray:
    return decode_png(validate_image(data).png).astype(np.int16)


def test_lossless_inputs_keep_their_pixels() -> None:
    assert np.array_equal(pixels_of(photo_as("PNG")), photo())
    assert np.array_equal(pixels_of(photo_as("WEBP", lossless=True)), photo())


def test_lossy_inputs_stay_close_to_the_photo() -> None:
    for data in (photo_as("JPEG", quality=95), photo_as("JPEG", progressive=True, quality=95)):
        assert np.abs(pixels_of(data) - photo()).mean() < 4
    cmyk = encode(Image.fromarray(photo()).convert("CMYK"), "JPEG", quality=95)
    assert np.abs(pixels_of(cmyk) - photo()).mean() < 6


def test_transparency_is_flattened_onto_white() -> None:
    pixels = pixels_of(encode(rgba_with_holes(), "PNG"))
    assert (pixels[:16, :16] == 255).all()
    assert np.array_equal(pixels[20:-1], photo()[20:-1])
    red, green, blue = pixels[-1].mean(axis=0)
    assert red == 255 and 125 <= green <= 129 and 125 <= blue <= 129
    assert (pixels_of(palette_with_transparency())[:8, :8] == 255).all()
    color_keyed = encode(rgb_with_color_key(), "PNG", transparency=(0, 255, 0))
    assert (pixels_of(color_keyed)[:10, :10] == 255).all()


def test_sixteen_bit_grayscale_is_scaled_not_clipped() -> None:
    pixels = decode_png(validate_image(gray16_png()).png)
    assert np.array_equal(pixels[0, : len(GRAY16_VALUES), 0], GRAY16_EXPECTED)
    assert np.array_equal(pixels[..., 0], pixels[..., 2])


def test_sixteen_bit_rgb_keeps_the_photo() -> None:
    assert np.abs(pixels_of(rgb16_png()) - photo()).max() <= 1


def test_one_bit_image_is_black_and_white() -> None:
    values = np.unique(pixels_of(encode(Image.fromarray(photo()).convert("1"), "PNG")))
    assert set(values.tolist()) == {0, 255}


def test_exif_orientation_moves_the_pixels() -> None:
    pixels = pixels_of(oriented_jpeg())
    assert pixels.shape == (64, 32, 3)
    top_right, top_left = pixels[3, -4], pixels[3, 3]
    assert top_right[0] > 200 and top_right[2] < 60
    assert top_left[0] < 60 and top_left[2] > 150


def test_metadata_is_stripped() -> None:
    clean = validate_image(jpeg_with_metadata())
    assert CAMERA_MAKE.encode() not in clean.png
    assert b"shot at home" not in clean.png
    with Image.open(io.BytesIO(clean.png)) as reopened:
        assert "exif" not in reopened.info and "icc_profile" not in reopened.info
        assert not reopened.getexif()
    text = validate_image(png_with_text())
    assert b"Jane Doe" not in text.png and CAMERA_MAKE.encode() not in text.png


def test_polyglot_trailing_data_is_dropped() -> None:
    plain = validate_image(photo_as("JPEG"))
    polyglot = validate_image(photo_as("JPEG") + zip_archive())
    assert polyglot.sha256 == plain.sha256
    assert b"payload.txt" not in polyglot.png


def test_multi_picture_jpeg_keeps_its_primary_picture() -> None:
    clean = validate_image(frames("MPO"))
    assert (clean.width, clean.height, clean.source_format) == (128, 96, "JPEG")
    assert clean.notes[-1] == "only the primary picture of a multi-picture JPEG kept"
    assert clean.notes[0].endswith("bytes of trailing data after the image dropped")
    assert clean.sha256 == validate_image(photo_as("JPEG")).sha256


def test_output_is_deterministic() -> None:
    for data in (photo_as("JPEG"), palette_with_transparency(), oriented_jpeg()):
        first, second = validate_image(data), validate_image(data)
        assert first == second
        assert isinstance(first, CleanImage)


def test_png_helpers_round_trip() -> None:
    assert np.array_equal(decode_png(encode_png(photo())), photo())
    assert encode_png(photo()) == encode_png(photo().copy())
    assert [kind for kind, _ in png_chunks(encode_png(photo()))] == [b"IHDR", b"IDAT", b"IEND"]


@pytest.mark.parametrize(
    "array",
    [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 3), np.uint16)],
    ids=["2d", "rgba", "uint16"],
)
def test_encode_png_refuses_other_arrays(array: np.ndarray) -> None:
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        encode_png(array)


def test_corpus_is_big_enough() -> None:
    assert len(REJECTED) + len(ACCEPTED) >= 25
