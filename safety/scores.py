"""Cheap quality signals of an output image, computed for every job (a few ms at 512 px):

- ``sharpness``: the variance of the Laplacian of its luma (higher is sharper; a blurred or flat
  image scores near 0). It depends on the size and the content, so compare it across jobs of one
  kind (a style, a size), as a per-tenant threshold does.
- ``phash_distance``: the Hamming distance (0–64) between the perceptual hashes (imagehash pHash)
  of the output and the input: 0 is the same picture, ~32 unrelated ones.

The style engine has no prompt, so these are its quality scores; diffusion jobs get them beside
their CLIPScore (workers.clip_score).
"""

from __future__ import annotations

import cv2
import imagehash
import numpy as np
from PIL import Image

_SHARPNESS_SIDE = 512  # larger images are measured at this longer side: the figure then depends less on size


def sharpness(image: np.ndarray) -> float:
    """Variance of the Laplacian of an HxW or HxWxC uint8 image's luma (at most 512 px on its longer side)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim not in (2, 3) or image.size == 0:
        raise ValueError("image must be a non-empty HxW or HxWxC uint8 numpy array")
    gray = image if image.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2GRAY)
    longest = max(gray.shape)
    if longest > _SHARPNESS_SIDE:
        scale = _SHARPNESS_SIDE / longest
        gray = cv2.resize(gray, (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale))),
                          interpolation=cv2.INTER_AREA)
    return round(float(cv2.Laplacian(gray, cv2.CV_64F).var()), 3)


def phash(image: np.ndarray) -> imagehash.ImageHash:
    return imagehash.phash(Image.fromarray(np.ascontiguousarray(image[..., :3] if image.ndim == 3 else image)))


def phash_distance(image: np.ndarray, reference: np.ndarray) -> int:
    """Hamming distance between the pHashes of two images (any sizes): 0 for the same picture."""
    return int(phash(image) - phash(reference))


def measure(image: np.ndarray, *, reference: np.ndarray | None = None) -> dict[str, float]:
    """The cheap scores of an output: sharpness, and its pHash distance to ``reference`` (the input)."""
    scores = {"sharpness": sharpness(image)}
    if reference is not None:
        scores["phash_distance"] = float(phash_distance(image, reference))
    return scores
