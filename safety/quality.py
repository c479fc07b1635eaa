"""Quality checks on an output image: black, blank, uniform, or unchanged from its input."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import cv2
import numpy as np

STATS_SIDE = 512


class Verdict(str, Enum):
    PASS = "pass"
    FLAG = "flag"
    BLOCK = "block"


@dataclass(frozen=True)
class QualityReport:
    verdict: Verdict
    checks: dict[str, float | bool]
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict.value, "checks": dict(self.checks), "reasons": list(self.reasons)}


def check_quality(image: np.ndarray, *, reference: np.ndarray | None = None, uniform_std: float = 2.0,
                  black_mean: float = 8.0, white_mean: float = 247.0) -> QualityReport:
    small = _shrink(image).astype(np.float32)
    mean, std = float(small.mean()), float(small.reshape(-1, small.shape[-1]).std(axis=0).max())
    checks: dict[str, float | bool] = {
        "mean": round(mean, 2),
        "std": round(std, 2),
        "is_black": mean < black_mean and std < 4 * uniform_std,
        "is_blank": mean > white_mean and std < 4 * uniform_std,
        "is_uniform": std < uniform_std,
        "identical_to_input": False,
    }
    reasons = []
    if checks["is_black"]:
        reasons.append(f"the image is almost entirely black (mean {mean:.1f}/255)")
    elif checks["is_blank"]:
        reasons.append(f"the image is almost entirely white (mean {mean:.1f}/255)")
    elif checks["is_uniform"]:
        reasons.append(f"the image is a single flat colour (std {std:.2f})")
    if reference is not None and reference.shape == image.shape:
        diff = float(np.abs(_shrink(reference).astype(np.float32) - small).mean())
        checks["mean_abs_diff_to_input"] = round(diff, 3)
        if diff < 0.5:
            checks["identical_to_input"] = True
            reasons.append("the output is the same as the input: nothing was changed")
    return QualityReport(verdict=Verdict.FLAG if reasons else Verdict.PASS, checks=checks, reasons=reasons)


def _shrink(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    scale = STATS_SIDE / max(height, width)
    if scale >= 1:
        return image
    return cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
