"""What an image looks like, compactly: the fingerprint that finds and confirms near-duplicates.

A perceptual hash (imagehash's 64-bit pHash) picks the bucket; it alone collides — a photo with
its colours shifted or noise added keeps its pHash — and a false hit would serve someone a
picture made from a different image. So a hit is decided by comparing two small summaries of
the *normalised* image within tight tolerances:

* a 32×32 YCbCr thumbnail (area-averaged). Re-encoding (JPEG ≥ 80, WebP) and resizing by a pixel
  barely move it; crops and flips move its structure (``residual``), colour edits move it by a
  global colour transform (``colour``: the part of the change that one affine colour map over the
  whole picture explains, which compression errors do not have);
* a luma *detail* map: the standard deviation of each block of a grid (8×8-pixel blocks at
  512 px). Added noise raises it, above all in the smooth blocks (``smooth``, ``detail_p90``);
  re-encoding lowers it a little.

Tolerances were tuned on a corpus built from the photos that scikit-image and scikit-learn ship
(see tests/unit/test_cache_keys.py and docs/cache.md); every figure is in 8-bit levels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import imagehash
import numpy as np
from PIL import Image
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from cache.errors import BadCacheEntry
from cache.keys import pixels_digest

HASH_BITS = 64
THUMB_SIDE = 32
_YCBCR = np.array([[0.299, 0.587, 0.114],
                   [-0.168736, -0.331264, 0.5],
                   [0.5, -0.418688, -0.081312]], dtype=np.float32)


@dataclass(frozen=True)
class Tolerance:
    """How far two normalised images may differ and still count as the same picture."""

    colour: float = 0.35      # RMS levels explained by one global affine colour map (any channel)
    residual: float = 0.7     # RMS levels left after that map (structure: crops, flips, edits)
    residual_p99: float = 2.0  # 99th percentile of the same
    smooth: float = 1.7       # median change of block std-dev over the smoothest quarter (noise)
    detail_p90: float = 2.8   # 90th percentile of the change of block std-dev
    cell: int = 8             # the shapes may differ by up to one latent cell (pixels per side)


@dataclass(frozen=True)
class Fingerprint:
    digest: str               # sha256 of the exact normalised pixels
    phash: int                # 64-bit perceptual hash: int(str(imagehash.phash(...)), 16)
    shape: tuple[int, int]    # normalised (height, width)
    thumb: np.ndarray         # (32, 32, 3) float32, YCbCr levels
    detail: np.ndarray        # (g, g) float32, luma block std-dev

    def to_bytes(self) -> bytes:
        """safetensors bytes (never pickle)."""
        return st_save({
            "digest": np.frombuffer(bytes.fromhex(self.digest), dtype=np.uint8),
            "thumb": self.thumb.astype(np.float32),
            "detail": self.detail.astype(np.float32),
            "phash": np.array([self.phash], dtype=np.uint64),
            "shape": np.array(self.shape, dtype=np.int64),
        })

    @classmethod
    def from_bytes(cls, data: bytes) -> "Fingerprint":
        try:
            t = st_load(data)
            return cls(digest=t["digest"].tobytes().hex(), phash=int(t["phash"][0]), shape=(int(t["shape"][0]), int(t["shape"][1])),
                       thumb=t["thumb"], detail=t["detail"])
        except Exception as e:  # noqa: BLE001 — any decoding fault means the same thing
            raise BadCacheEntry(f"a stored fingerprint could not be decoded: {e}") from e


@dataclass(frozen=True)
class Similarity:
    distance: int          # pHash Hamming distance
    colour: float
    residual: float
    residual_p99: float
    smooth: float
    detail_p90: float
    score: float           # the largest measure/tolerance ratio; ≤ 1 means the same picture
    same: bool

    def to_dict(self) -> dict[str, float | int | bool]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def detail_grid(shape: tuple[int, int]) -> int:
    """Blocks per side of the detail map: 8-pixel blocks, at least 8 and at most 64 per side."""
    return int(min(64, max(8, max(shape) // 8)))


def phash_of(image: np.ndarray) -> int:
    """imagehash's pHash as an int (``hash(h)`` truncates on purpose; this does not)."""
    return int(str(imagehash.phash(Image.fromarray(image))), 16)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def fingerprint(image: np.ndarray) -> Fingerprint:
    """The fingerprint of a normalised HxWx3 uint8 RGB image."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"fingerprint needs an HxWx3 uint8 image, got {image.shape} {image.dtype}")
    ycc = image.astype(np.float32) @ _YCBCR.T
    thumb = cv2.resize(ycc, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA)
    luma = np.ascontiguousarray(ycc[..., 0])
    g = detail_grid(image.shape[:2])
    mean = cv2.resize(luma, (g, g), interpolation=cv2.INTER_AREA)
    mean_sq = cv2.resize(luma * luma, (g, g), interpolation=cv2.INTER_AREA)
    detail = np.sqrt(np.maximum(mean_sq - mean * mean, 0.0)).astype(np.float32)
    return Fingerprint(digest=pixels_digest(image), phash=phash_of(image), shape=(image.shape[0], image.shape[1]),
                       thumb=thumb.astype(np.float32), detail=detail)


def compare(a: Fingerprint, b: Fingerprint, *, tolerance: Tolerance = Tolerance()) -> Similarity:
    """How alike two fingerprints are, and whether they are the same picture within ``tolerance``."""
    distance = hamming(a.phash, b.phash)
    shapes_fit = all(abs(x - y) <= tolerance.cell for x, y in zip(a.shape, b.shape, strict=True))
    if a.digest == b.digest:
        return Similarity(distance, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, True)
    if not shapes_fit or a.detail.shape != b.detail.shape:
        return Similarity(distance, np.inf, np.inf, np.inf, np.inf, np.inf, np.inf, False)

    src = a.thumb.reshape(-1, 3).astype(np.float64)
    dst = b.thumb.reshape(-1, 3).astype(np.float64)
    affine = np.hstack([src, np.ones((len(src), 1))])
    fit, *_ = np.linalg.lstsq(affine, dst, rcond=None)
    predicted = affine @ fit
    colour = float(np.sqrt(((predicted - src) ** 2).mean(axis=0)).max())
    leftover = np.abs(dst - predicted)
    residual = float(np.sqrt((leftover ** 2).mean()))
    residual_p99 = float(np.percentile(leftover, 99))

    change = np.abs(a.detail - b.detail)
    flattest = np.minimum(a.detail, b.detail)
    smooth_blocks = flattest <= np.percentile(flattest, 25)
    smooth = float(np.median(change[smooth_blocks]))
    detail_p90 = float(np.percentile(change, 90))

    score = max(colour / tolerance.colour, residual / tolerance.residual, residual_p99 / tolerance.residual_p99,
                smooth / tolerance.smooth, detail_p90 / tolerance.detail_p90)
    return Similarity(distance, colour, residual, residual_p99, smooth, detail_p90, float(score), score <= 1.0)


def chunks(phash: int, *, radius: int) -> list[tuple[int, int]]:
    """Multi-index hashing: split the 64 bits into ``radius + 1`` chunks, as (index, value).

    Any hash within Hamming distance ``radius`` equals this one exactly in at least one chunk
    (pigeonhole), so looking each chunk up exactly finds every candidate.
    """
    if not 0 <= radius < HASH_BITS // 2:
        raise ValueError(f"hash radius must be between 0 and {HASH_BITS // 2 - 1}, got {radius}")
    parts = radius + 1
    out, start = [], 0
    for i in range(parts):
        width = HASH_BITS // parts + (1 if i < HASH_BITS % parts else 0)
        out.append((i, (phash >> start) & ((1 << width) - 1)))
        start += width
    return out
