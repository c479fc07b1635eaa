"""The maps ControlNets are guided by, computed from the normalised input (HxWx3 uint8 in, the
same size out): canny edges with thresholds from the image's median, tile as a blurred
downsample, depth from a depth-estimation model (workers.depth). Deterministic: the same pixels
give the same map, which is what lets them be cached by content.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from workers.errors import EngineError

CANNY_SIGMA = 0.33  # thresholds at (1 ± sigma) × the median brightness
TILE_FACTOR = 4  # tile: downsample by this, then back up
# Bump a version when its algorithm changes: it is part of the map's cache key.
VERSIONS = {"canny": "canny-median-v1", "tile": "tile-area4-v1"}

DepthFn = Callable[[np.ndarray], np.ndarray]  # HxWx3 uint8 → HxW uint8 (near is bright)


def _check(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise EngineError(f"expected an HxWx3 uint8 RGB image, got shape {image.shape} and dtype {image.dtype}")


def canny_map(image: np.ndarray, *, sigma: float = CANNY_SIGMA) -> np.ndarray:
    """White edges on black; the thresholds follow the image's median, so dark and bright photos
    both give edges (Canny with fixed thresholds finds nothing in one or everything in the other)."""
    _check(image)
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    median = float(np.median(grey))
    lower, upper = int(max(0.0, (1.0 - sigma) * median)), int(min(255.0, (1.0 + sigma) * median))
    edges = cv2.Canny(grey, lower, max(upper, lower + 1))
    return np.ascontiguousarray(np.repeat(edges[:, :, None], 3, axis=2))


def tile_map(image: np.ndarray, *, factor: int = TILE_FACTOR) -> np.ndarray:
    """The image downsampled by ``factor`` (area averaging) and brought back up, then blurred: its
    colours and layout without its detail, which the tile ControlNet fills back in."""
    _check(image)
    height, width = image.shape[:2]
    small = cv2.resize(image, (max(1, width // factor), max(1, height // factor)), interpolation=cv2.INTER_AREA)
    back = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(cv2.GaussianBlur(back, (0, 0), sigmaX=factor / 2))


def depth_map(image: np.ndarray, *, estimate: DepthFn) -> np.ndarray:
    _check(image)
    depth = estimate(image)
    if depth.shape != image.shape[:2] or depth.dtype != np.uint8:
        raise EngineError(f"the depth model gave a {depth.shape} {depth.dtype} map for a {image.shape[:2]} image")
    return np.ascontiguousarray(np.repeat(depth[:, :, None], 3, axis=2))


def control_map(kind: str, image: np.ndarray, *, depth: DepthFn | None = None) -> np.ndarray:
    if kind == "canny":
        return canny_map(image)
    if kind == "tile":
        return tile_map(image)
    if kind == "depth":
        if depth is None:
            raise EngineError("a depth map needs a depth model (depth/ in the model library)")
        return depth_map(image, estimate=depth)
    raise EngineError(f"unknown control type {kind!r}: canny, tile or depth")
