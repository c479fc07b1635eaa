"""Validation of an uploaded image before anything is queued.

Everything is decided from the bytes: the format from magic numbers (never a filename or
content type), the size from the header before any pixel is decoded, the file's integrity
from its own structure (PNG chunk CRCs, JPEG markers, the RIFF length) so that a
process-wide ``ImageFile.LOAD_TRUNCATED_IMAGES = True`` cannot let a truncated upload in.
An accepted upload comes back re-encoded as an 8-bit RGB PNG with no metadata.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageOps

from safety.errors import InputRejected
from safety.png import decode_png, encode_png  # noqa: F401 — the blobs' codec, used here and re-exported

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_WHITE = (255, 255, 255)

# Caps on the structure walks: far above what real encoders write, low enough that a
# file made of millions of empty chunks cannot keep a worker busy.
_MAX_PNG_CHUNKS = 100_000
_MAX_JPEG_SEGMENTS = 10_000

# Next JPEG marker after entropy-coded data: 0xFF not followed by stuffing (00), a
# restart marker (D0-D7) or a fill byte (FF).
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})
_JPEG_SOS, _JPEG_EOI = 0xDA, 0xD9

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (_PNG_SIGNATURE, "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"%PDF-", "PDF"),
    (b"PK\x03\x04", "ZIP"),
    (b"PK\x05\x06", "ZIP"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\xff\x0a", "JXL"),
    (b"\x00\x00\x00\x0cJXL ", "JXL"),
)
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})
_DESCRIPTIONS = {
    "PNG": "a PNG",
    "JPEG": "a JPEG",
    "WEBP": "a WebP",
    "GIF": "a GIF",
    "BMP": "a BMP",
    "TIFF": "a TIFF",
    "PDF": "a PDF document",
    "ZIP": "a ZIP archive",
    "PSD": "a Photoshop document",
    "ICO": "an ICO icon",
    "JXL": "a JPEG XL image",
    "HEIF": "a HEIC/HEIF image",
    "AVIF": "an AVIF image",
    "MP4": "a video (MP4/QuickTime container)",
    "SVG": "an SVG drawing",
    "HTML": "an HTML page",
    "TEXT": "a text file",
}
_DISPLAY_NAMES = {"WEBP": "WebP"}
_PREFERRED_ORDER = ("PNG", "JPEG", "WEBP")

_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_METADATA_KEYS = {
    "exif": "EXIF",
    "icc_profile": "ICC profile",
    "xmp": "XMP",
    "XML:com.adobe.xmp": "XMP",
    "comment": "comment",
}


@dataclass(frozen=True)
class UploadLimits:
    """What an upload may be; the defaults suit the web front end."""

    max_bytes: int = 25 * 1024 * 1024
    max_side: int = 8192
    max_pixels: int = 40_000_000
    min_side: int = 16
    allowed_formats: frozenset[str] = frozenset({"PNG", "JPEG", "WEBP"})


@dataclass(frozen=True)
class CleanImage:
    """An accepted upload, re-encoded as an 8-bit RGB PNG without metadata."""

    png: bytes
    width: int
    height: int
    source_format: str
    sha256: str
    notes: list[str]


def validate_image(data: bytes, *, limits: UploadLimits = UploadLimits()) -> CleanImage:
    """Check an uploaded file and return it sanitised, or raise InputRejected."""
    _check_byte_size(data, limits)
    source_format = _allowed_format(data, limits)
    notes: list[str] = []
    image_bytes = _drop_trailing_data(data, source_format, notes)
    image = _decode(image_bytes, source_format=source_format, limits=limits, notes=notes)
    rgb = _to_rgb(_apply_orientation(image, notes), notes)
    png = encode_png(np.asarray(rgb))
    return CleanImage(
        png=png,
        width=rgb.width,
        height=rgb.height,
        source_format=source_format,
        sha256=hashlib.sha256(png).hexdigest(),
        notes=list(dict.fromkeys(notes)),
    )


# --- size and format ---------------------------------------------------------------


def _check_byte_size(data: bytes, limits: UploadLimits) -> None:
    if not data:
        raise InputRejected(
            "empty_file", "the file is empty; choose an image file and upload it again"
        )
    if len(data) > limits.max_bytes:
        raise InputRejected(
            "too_large",
            f"the file is {_human_bytes(len(data))}, over the {_human_bytes(limits.max_bytes)}"
            " limit — compress or resize the image before uploading",
            status=413,
        )


def _allowed_format(data: bytes, limits: UploadLimits) -> str:
    """Return the sniffed format if the limits allow it, else refuse the upload."""
    sniffed = _sniff(data)
    if sniffed in limits.allowed_formats:
        return sniffed
    wanted = _format_list(limits.allowed_formats)
    if sniffed is None:
        message = f"this file is not a recognised image; upload a {wanted} image"
    else:
        message = f"this file is {_DESCRIPTIONS.get(sniffed, sniffed)}; upload a {wanted} image"
    raise InputRejected("unsupported_format", message)


def _sniff(data: bytes) -> str | None:
    """Name the file's format from its magic numbers (or its text), None if unknown."""
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        return "AVIF" if brand in (b"avif", b"avis") else "HEIF" if brand in _HEIF_BRANDS else "MP4"
    text_kind = _sniff_text(data[:4096])
    if text_kind is not None:
        return text_kind
    if data.startswith(b"BM"):  # weak signature: only once text has been ruled out
        return "BMP"
    return None


def _sniff_text(head: bytes) -> str | None:
    """Classify a file that starts with printable UTF-8 as SVG, HTML or plain text."""
    if any(byte < 0x20 and byte not in b"\t\n\r\f" for byte in head):
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not merely a character cut off by the 4 KiB window
            return None
        text = head[: exc.start].decode("utf-8")
    start = text.lstrip("\ufeff \t\r\n").lower()[:1024]
    if "<svg" in start:
        return "SVG"
    if start.startswith("<!doctype html") or "<html" in start:
        return "HTML"
    return "TEXT"


def _format_list(formats: frozenset[str]) -> str:
    """'PNG, JPEG or WebP' for the allowed formats, preferred ones first."""
    preferred = [f for f in _PREFERRED_ORDER if f in formats]
    ordered = preferred + sorted(formats - set(preferred))
    names = [_DISPLAY_NAMES.get(f, f) for f in ordered]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _human_bytes(count: int) -> str:
    if count >= 1024 * 1024:
        return f"{count / (1024 * 1024):.1f} MiB"
    if count >= 1024:
        return f"{count / 1024:.1f} KiB"
    return f"{count} bytes"


# --- structure: truncation, checksums, trailing data ---------------------------------


def _drop_trailing_data(data: bytes, source_format: str, notes: list[str]) -> bytes:
    """Verify the container structure and cut anything after the image's end."""
    end_of = _STRUCTURE_END.get(source_format)
    if end_of is None:
        return data
    end = end_of(data)
    if end < len(data):
        notes.append(f"{len(data) - end} bytes of trailing data after the image dropped")
    return data[:end]


def _png_end(data: bytes) -> int:
    """Walk the PNG chunks, verifying every CRC; return the offset just past IEND."""
    view = memoryview(data)
    position = len(_PNG_SIGNATURE)
    for _ in range(_MAX_PNG_CHUNKS):
        if position + 12 > len(data):
            raise _truncated("PNG")
        length, kind = struct.unpack_from(">I4s", data, position)
        end = position + 12 + length
        if end > len(data):
            raise _truncated("PNG")
        if position == len(_PNG_SIGNATURE) and (kind != b"IHDR" or length != 13):
            raise _corrupt("the PNG file does not start with a valid IHDR header")
        if zlib.crc32(view[position + 4 : end - 4]) != struct.unpack_from(">I", data, end - 4)[0]:
            raise _corrupt(f"the PNG {kind.decode('latin-1')!r} chunk fails its checksum")
        if kind == b"IEND":
            return end
        position = end
    raise _corrupt("the PNG file has an implausible number of chunks")


def _jpeg_end(data: bytes) -> int:
    """Walk the JPEG segments and scans; return the offset just past the EOI marker."""
    position = 2
    for _ in range(_MAX_JPEG_SEGMENTS):
        if not 0 <= position < len(data) - 1:
            raise _truncated("JPEG")
        if data[position] != 0xFF:  # stray bytes before a marker: skip them, as libjpeg does
            position = data.find(b"\xff", position)
            continue
        marker = data[position + 1]
        if marker == _JPEG_EOI:
            return position + 2
        if marker == 0xFF or marker in _JPEG_STANDALONE_MARKERS:
            position += 1 if marker == 0xFF else 2
            continue
        if position + 4 > len(data):
            raise _truncated("JPEG")
        end = position + 2 + struct.unpack_from(">H", data, position + 2)[0]
        if end > len(data):
            raise _truncated("JPEG")
        if marker == _JPEG_SOS:
            found = _JPEG_MARKER.search(data, end)
            if found is None:
                raise _truncated("JPEG")
            end = found.start()
        position = end
    raise _corrupt("the JPEG file has an implausible number of segments")


def _webp_end(data: bytes) -> int:
    """Return the end of the RIFF container, refusing a file shorter than it declares."""
    end = 8 + struct.unpack_from("<I", data, 4)[0]
    if end > len(data):
        raise _truncated("WebP")
    return end


_STRUCTURE_END: dict[str, Callable[[bytes], int]] = {
    "PNG": _png_end,
    "JPEG": _jpeg_end,
    "WEBP": _webp_end,
}


# --- decoding -----------------------------------------------------------------------


def _decode(
    data: bytes, *, source_format: str, limits: UploadLimits, notes: list[str]
) -> Image.Image:
    """Open lazily, check the header's size and frame count, then decode every pixel."""
    name = _DISPLAY_NAMES.get(source_format, source_format)
    with _decoder_errors(f"the {name} header is damaged", limits):
        image = Image.open(io.BytesIO(data), formats=[source_format])
    _check_dimensions(image.size, limits)
    _check_single_frame(image, source_format=source_format, notes=notes)
    if source_format == "PNG" and _png_bit_depth(data) == 16:
        notes.append("16-bit reduced to 8-bit")
    with _decoder_errors(f"the {name} image data is corrupt or truncated", limits):
        image.load()
    metadata = _metadata_note(image)
    if metadata:
        notes.append(metadata)
    return image


def _png_bit_depth(png: bytes) -> int:
    """Bit depth from the IHDR that _png_end has already checked."""
    return png[len(_PNG_SIGNATURE) + 16]


@contextmanager
def _decoder_errors(problem: str, limits: UploadLimits) -> Iterator[None]:
    """Run PIL on untrusted bytes, turning its failures into InputRejected."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InputRejected(
                "decompression_bomb",
                "the image header declares more pixels than can be decoded safely (a possible"
                f" decompression bomb); upload an image of at most {_megapixels(limits.max_pixels)}"
                f" and {limits.max_side} px per side",
            ) from exc
        except MemoryError:
            raise
        except Exception as exc:  # decoders fed hostile bytes raise all kinds of errors
            raise _corrupt(problem) from exc


def _check_dimensions(size: tuple[int, int], limits: UploadLimits) -> None:
    width, height = size
    pixels = width * height
    if pixels > limits.max_pixels:
        raise InputRejected(
            "too_many_pixels",
            f"the image is {width}×{height} ({_megapixels(pixels)}); the limit is"
            f" {_megapixels(limits.max_pixels)} — resize it before uploading",
        )
    if max(size) > limits.max_side:
        raise InputRejected(
            "too_many_pixels",
            f"the image is {width}×{height}; no side may exceed {limits.max_side} px"
            " — resize it before uploading",
        )
    if min(size) < limits.min_side:
        raise InputRejected(
            "image_too_small",
            f"the image is {width}×{height}; each side must be at least {limits.min_side} px"
            " — upload a larger image",
        )


def _check_single_frame(image: Image.Image, *, source_format: str, notes: list[str]) -> None:
    """Refuse animations; a multi-picture JPEG (MPO) keeps only its primary picture."""
    frames = getattr(image, "n_frames", 1)
    if frames <= 1:
        return
    if source_format == "JPEG":
        notes.append("only the primary picture of a multi-picture JPEG kept")
        return
    name = _DISPLAY_NAMES.get(source_format, source_format)
    raise InputRejected(
        "animated_image",
        f"this {name} is animated ({frames} frames); upload a single frame as a still image",
    )


def _metadata_note(image: Image.Image) -> str | None:
    found = {label for key, label in _METADATA_KEYS.items() if image.info.get(key)}
    if getattr(image, "text", None):  # PNG tEXt / zTXt / iTXt chunks
        found.add("text")
    return f"metadata removed ({', '.join(sorted(found))})" if found else None


# --- orientation and colour ------------------------------------------------------------


def _apply_orientation(image: Image.Image, notes: list[str]) -> Image.Image:
    """Rotate/flip the pixels as the EXIF orientation tag says."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # unreadable EXIF: keep the pixels as stored
        return image
    if orientation not in range(2, 9):
        return image
    notes.append("EXIF orientation applied")
    return ImageOps.exif_transpose(image)


def _to_rgb(image: Image.Image, notes: list[str]) -> Image.Image:
    """Convert any decoded mode to 8-bit RGB, flattening transparency onto white."""
    mode = image.mode
    if mode in _HIGH_DEPTH_MODES:
        image = _reduce_depth(image)
        notes.append("16-bit reduced to 8-bit")
    if mode in ("P", "PA"):
        notes.append("palette expanded")
    elif mode == "1":
        notes.append("1-bit expanded to RGB")
    elif mode == "CMYK":
        notes.append("converted from CMYK")
    elif image.mode in ("L", "LA"):
        notes.append("grayscale expanded to RGB")
    elif mode not in ("RGB", "RGBA"):
        notes.append(f"converted from {mode}")
    if "A" in image.getbands() or "transparency" in image.info:
        return _flatten(image.convert("RGBA"), notes)
    return image.convert("RGB")


def _reduce_depth(image: Image.Image) -> Image.Image:
    """Scale a 16-bit single-band image to 8 bits: round(v * 255 / 65535), so 65535 -> 255."""
    values = np.asarray(image)
    if values.dtype.kind == "f":
        values = np.rint(values)
    wide = np.clip(values, 0, 65535).astype(np.uint32)
    return Image.fromarray(((wide + 128) // 257).astype(np.uint8))


def _flatten(rgba: Image.Image, notes: list[str]) -> Image.Image:
    alpha = rgba.getchannel("A")
    if alpha.getextrema()[0] < 255:
        notes.append("alpha flattened onto white")
    background = Image.new("RGB", rgba.size, _WHITE)
    background.paste(rgba, mask=alpha)
    return background


# --- messages -------------------------------------------------------------------------


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1_000_000:.1f} MP"


def _truncated(name: str) -> InputRejected:
    return _corrupt(f"the {name} file is truncated")


def _corrupt(problem: str) -> InputRejected:
    return InputRejected(
        "corrupt_image", f"{problem}; re-save or re-export the image and upload it again"
    )
