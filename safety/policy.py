"""The audit policy: what happens to an output whose NSFW score reaches the threshold."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import cv2
import numpy as np

from safety.quality import QualityReport, Verdict


class Action(str, Enum):
    BLOCK = "block"  # never served; the job ends blocked
    FLAG = "flag"    # served, marked
    BLUR = "blur"    # served blurred


@dataclass(frozen=True)
class AuditPolicy:
    threshold: float = 0.8
    action: Action = Action.BLOCK

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")


@dataclass(frozen=True)
class AuditResult:
    verdict: Verdict
    action: Action | None  # the policy action taken, when the score reached the threshold
    nsfw_score: float
    model: str
    policy: AuditPolicy
    quality: QualityReport

    @property
    def reasons(self) -> list[str]:
        reasons = list(self.quality.reasons)
        if self.action is not None:
            reasons.insert(0, f"NSFW score {self.nsfw_score:.3f} ≥ threshold {self.policy.threshold:.3f}: {self.action.value}")
        return reasons

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "action": self.action.value if self.action else None,
            "scores": {"nsfw": self.nsfw_score},
            "model": self.model,
            "policy": {"threshold": self.policy.threshold, "action": self.policy.action.value},
            "checks": dict(self.quality.checks),
            "reasons": self.reasons,
        }


def decide(*, nsfw_score: float, quality: QualityReport, policy: AuditPolicy, model: str) -> AuditResult:
    """Combine the classifier's score with the quality checks under a tenant's policy."""
    action = policy.action if nsfw_score >= policy.threshold else None
    if action is Action.BLOCK:
        verdict = Verdict.BLOCK
    elif action is not None or quality.verdict is not Verdict.PASS:
        verdict = Verdict.FLAG
    else:
        verdict = Verdict.PASS
    return AuditResult(verdict=verdict, action=action, nsfw_score=nsfw_score, model=model, policy=policy,
                       quality=quality)


def blur(image: np.ndarray) -> np.ndarray:
    """A blur strong enough that nothing can be made out, whatever the image size."""
    sigma = max(image.shape[:2]) / 25
    small = cv2.resize(image, (16, 16), interpolation=cv2.INTER_AREA)
    pixelated = cv2.resize(small, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
    return cv2.GaussianBlur(pixelated, (0, 0), sigma)
