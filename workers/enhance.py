"""Enhance stage: Lanczos upscaling, local contrast (CLAHE on Lab lightness) and unsharp mask."""

from dataclasses import dataclass

import cv2
import numpy as np

from workers.errors import EngineError
from workers.styles import validate_rgb

UPSCALE_FACTORS = (1, 2, 4)


@dataclass(frozen=True)
class EnhanceOptions:
    upscale: int = 1  # 1, 2 or 4 (Lanczos)
    sharpen: bool = False  # unsharp mask
    local_contrast: bool = False  # CLAHE on L of Lab


def _check_options(options: EnhanceOptions) -> None:
    upscale = options.upscale
    is_integer = isinstance(upscale, int | np.integer) and not isinstance(upscale, bool)
    if not is_integer or upscale not in UPSCALE_FACTORS:
        choices = ", ".join(str(f) for f in UPSCALE_FACTORS)
        raise EngineError(f"upscale must be one of {choices}, got {upscale!r}")


def _check_output_size(width: int, height: int, *, max_output_pixels: int) -> None:
    pixels = width * height
    if pixels > max_output_pixels:
        raise EngineError(
            f"the result would be {width}x{height} ({pixels / 1e6:.1f} MP), over the limit of "
            f"{max_output_pixels / 1e6:.1f} MP; pick a smaller upscale or size"
        )


def _local_contrast(image: np.ndarray) -> np.ndarray:
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    lab[..., 0] = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(lab[..., 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def _sharpen(image: np.ndarray) -> np.ndarray:
    blurred = cv2.GaussianBlur(image, (0, 0), 1.2)
    return cv2.addWeighted(image, 1.6, blurred, -0.6, 0)


def enhance(
    image: np.ndarray, options: EnhanceOptions, *, max_output_pixels: int = 64_000_000
) -> np.ndarray:
    """Apply the enabled enhancements to an HxWx3 uint8 RGB image; returns a new array."""
    validate_rgb(image)
    _check_options(options)
    height, width = image.shape[:2]
    factor = int(options.upscale)
    out_w, out_h = width * factor, height * factor
    _check_output_size(out_w, out_h, max_output_pixels=max_output_pixels)
    result = image.copy()
    if options.local_contrast:
        result = _local_contrast(result)
    if factor != 1:
        result = cv2.resize(result, (out_w, out_h), interpolation=cv2.INTER_LANCZOS4)
    if options.sharpen:
        result = _sharpen(result)
    return result
