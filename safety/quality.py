"""Quality checks on an output image: black, blank (white), uniform, or unchanged from the input."""

from dataclasses import dataclass
from enum import Enum

import cv2
import numpy as np

_SAMPLE_PIXELS = 512 * 512  # statistics of larger images use a sample this big
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)
_IDENTICAL_MEAN_ABS_DIFF = 0.5


class Verdict(str, Enum):
    PASS = "pass"
    FLAG = "flag"
    BLOCK = "block"  # reserved for the content classifier


@dataclass(frozen=True)
class QualityReport:
    verdict: Verdict
    checks: dict[str, float | bool]
    reasons: list[str]

    def to_dict(self) -> dict:
        """JSON-able form."""
        return {
            "verdict": self.verdict.value,
            "checks": {k: v if isinstance(v, bool) else float(v) for k, v in self.checks.items()},
            "reasons": list(self.reasons),
        }


def _check_array(image: object, *, what: str) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(f"{what} must be a uint8 numpy array")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ValueError(f"{what} must be HxW, HxWx1, HxWx3 or HxWx4, got shape {image.shape}")
    if image.size == 0:
        raise ValueError(f"{what} is empty")
    return image


def _sample_pixels(image: np.ndarray) -> np.ndarray:
    """(N, 1 or 3) float32 pixels, alpha dropped; at most _SAMPLE_PIXELS, with a fixed seed.

    A random sample keeps pixel-level statistics (a resize would average noise away) and,
    unlike a regular stride, cannot alias with periodic patterns.
    """
    channels = 1 if image.ndim == 2 else image.shape[2]
    height, width = image.shape[:2]
    if height * width > _SAMPLE_PIXELS:
        rng = np.random.default_rng(0)
        rows, cols = rng.integers(0, height, _SAMPLE_PIXELS), rng.integers(0, width, _SAMPLE_PIXELS)
        image = image[rows, cols]
    return image.reshape(-1, channels)[:, :3].astype(np.float32)


def _stats(image: np.ndarray) -> tuple[float, float]:
    """(mean luma, max per-channel std)."""
    pixels = _sample_pixels(image)
    luma = pixels[:, 0] if pixels.shape[1] == 1 else pixels @ _LUMA_WEIGHTS
    return float(luma.mean()), float(pixels.std(axis=0).max())


def _mean_abs_diff(image: np.ndarray, reference: np.ndarray) -> float:
    a, b = np.ascontiguousarray(image), np.ascontiguousarray(reference)
    return cv2.norm(a, b, cv2.NORM_L1) / a.size


def _reasons(checks: dict[str, float | bool]) -> list[str]:
    mean, std = checks["mean"], checks["std"]
    reasons = []
    if checks["is_black"]:
        reasons.append(f"the image is almost entirely black (mean {mean:.1f}/255)")
    if checks["is_blank"]:
        reasons.append(f"the image is almost entirely white (mean {mean:.1f}/255)")
    if checks["is_uniform"] and not (checks["is_black"] or checks["is_blank"]):
        reasons.append(f"the image is a single flat colour (std {std:.2f})")
    if checks["identical_to_input"]:
        diff = checks["mean_abs_diff"]
        reasons.append(f"the output is unchanged from the input (mean difference {diff:.2f}/255)")
    return reasons


def check_quality(
    image: np.ndarray,
    *,
    reference: np.ndarray | None = None,
    uniform_std: float = 2.0,
    black_mean: float = 8.0,
    white_mean: float = 247.0,
) -> QualityReport:
    """Flag outputs that are black, blank white, uniform, or identical to `reference`."""
    image = _check_array(image, what="image")
    mean, std = _stats(image)
    checks: dict[str, float | bool] = {
        "mean": round(mean, 2),
        "std": round(std, 2),
        "is_black": mean < black_mean and std < black_mean,
        "is_blank": mean > white_mean and std < 255.0 - white_mean,
        "is_uniform": std < uniform_std,
        "identical_to_input": False,
    }
    if reference is not None:
        reference = _check_array(reference, what="reference")
        if reference.shape == image.shape:
            diff = _mean_abs_diff(image, reference)
            checks["mean_abs_diff"] = round(diff, 3)
            checks["identical_to_input"] = diff < _IDENTICAL_MEAN_ABS_DIFF
    flagged = any(checks[k] for k in ("is_black", "is_blank", "is_uniform", "identical_to_input"))
    return QualityReport(
        verdict=Verdict.FLAG if flagged else Verdict.PASS, checks=checks, reasons=_reasons(checks)
    )
