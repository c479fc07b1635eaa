"""Small image helpers shared by engines (arrays in, arrays out)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def fit_within(image: np.ndarray, size: int) -> np.ndarray:
    """Shrink so the longer side is at most ``size`` (Lanczos, aspect kept); never enlarges."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    if scale >= 1:
        return image
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(new_size, Image.Resampling.LANCZOS))
