"""The enhance engine: Lanczos upscale, unsharp-mask sharpening, local contrast (CLAHE)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from workers.errors import EngineError

UPSCALES = (1, 2, 4)


@dataclass(frozen=True)
class EnhanceOptions:
    upscale: int = 1
    sharpen: bool = False
    local_contrast: bool = False


def enhance(image: np.ndarray, options: EnhanceOptions, *, max_output_pixels: int = 64_000_000) -> np.ndarray:
    if options.upscale not in UPSCALES:
        raise EngineError(f"upscale must be one of 1, 2, 4; got {options.upscale}")
    height, width = image.shape[:2]
    out_w, out_h = width * options.upscale, height * options.upscale
    if out_w * out_h > max_output_pixels:
        raise EngineError(
            f"the result would be {out_w}×{out_h} ({out_w * out_h / 1e6:.1f} MP), over the limit of "
            f"{max_output_pixels / 1e6:.1f} MP; pick a smaller upscale or size"
        )
    result = image.copy()
    if options.upscale > 1:
        result = cv2.resize(result, (out_w, out_h), interpolation=cv2.INTER_LANCZOS4)
    if options.local_contrast:
        result = _local_contrast(result)
    if options.sharpen:
        result = _sharpen(result)
    return result


def _sharpen(image: np.ndarray, *, amount: float = 0.6, sigma: float = 1.2) -> np.ndarray:
    blurred = cv2.GaussianBlur(image, (0, 0), sigma)
    return cv2.addWeighted(image, 1 + amount, blurred, -amount, 0)


def _local_contrast(image: np.ndarray) -> np.ndarray:
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
    lab[..., 0] = clahe.apply(lab[..., 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
