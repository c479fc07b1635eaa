"""The quality policy: what happens to an output whose quality score is below a tenant's threshold.

A policy names one metric — ``clipscore`` (diffusion jobs with a prompt: how well the result
matches it, 0–100) or ``sharpness`` (every job: variance of the Laplacian) — a threshold, and an
action: ``flag`` (served, marked), ``fail`` (the job fails with ``quality_below_threshold``) or
``regenerate`` (the chain runs again from generate with a new seed, at most ``max_retries`` times,
and the best-scoring attempt is kept; still below after the last, it is served flagged). A job
that has no score for the metric (a style job under a CLIPScore policy) is not judged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from safety.quality import Verdict

METRICS = ("clipscore", "sharpness")
MAX_RETRIES = 10
FAIL_CODE = "quality_below_threshold"


class QualityAction(str, Enum):
    FLAG = "flag"              # served, marked, with the reason
    FAIL = "fail"              # the job fails with FAIL_CODE
    REGENERATE = "regenerate"  # generate again with a new seed; keep the best


class Outcome(str, Enum):
    PASS = "pass"              # at or above the threshold
    FLAG = "flag"
    FAIL = "fail"
    REGENERATE = "regenerate"  # this attempt is set aside and the job generates again
    UNSCORED = "unscored"      # the job has no score for the policy's metric: not judged


@dataclass(frozen=True)
class QualityPolicy:
    metric: str
    threshold: float
    action: QualityAction = QualityAction.FLAG
    max_retries: int = 2  # regenerations after the first attempt (action regenerate)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if self.threshold < 0 or (self.metric == "clipscore" and self.threshold > 100):
            raise ValueError(f"a {self.metric} threshold must be in [0, {100 if self.metric == 'clipscore' else '∞'}), "
                             f"got {self.threshold}")
        if not 0 <= self.max_retries <= MAX_RETRIES:
            raise ValueError(f"max_retries must be in [0, {MAX_RETRIES}], got {self.max_retries}")

    @property
    def needs_clip(self) -> bool:
        return self.metric == "clipscore"

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "threshold": self.threshold, "action": self.action.value,
                "max_retries": self.max_retries}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QualityPolicy:
        return cls(metric=data["metric"], threshold=float(data["threshold"]), action=QualityAction(data["action"]),
                   max_retries=int(data.get("max_retries", 2)))


@dataclass(frozen=True)
class QualityJudgement:
    policy: QualityPolicy
    score: float | None
    outcome: Outcome
    reason: str | None
    attempt: int                 # this attempt's number: 1 for the first generation
    kept: int | None = None      # the attempt served, when several were made

    def to_dict(self) -> dict[str, Any]:
        return {**self.policy.to_dict(), "score": self.score, "outcome": self.outcome.value, "reason": self.reason,
                "attempt": self.attempt, "kept": self.kept}


def judge(policy: QualityPolicy, scores: Mapping[str, float], *, attempt: int,
          can_regenerate: bool) -> QualityJudgement:
    """The policy's decision on one attempt's ``scores`` (attempt 1 is the first generation)."""
    metric, threshold = policy.metric, policy.threshold
    score = scores.get(metric)
    if score is None:
        why = "no CLIP model scored it, or it has no prompt" if metric == "clipscore" else "it was not measured"
        return QualityJudgement(policy, None, Outcome.UNSCORED, f"no {metric} for this job ({why}): not judged",
                                attempt)
    if score >= threshold:
        return QualityJudgement(policy, score, Outcome.PASS, None, attempt)
    below = f"{metric} {score:.2f} is below the threshold {threshold:g}"
    if policy.action is QualityAction.FAIL:
        return QualityJudgement(policy, score, Outcome.FAIL, f"{below}: the quality policy fails the job",
                                attempt)
    if policy.action is QualityAction.REGENERATE:
        if not can_regenerate:
            return QualityJudgement(policy, score, Outcome.FLAG, f"{below}; a style job cannot be regenerated (the "
                                                                 "same input gives the same image): flagged", attempt)
        if attempt <= policy.max_retries:
            return QualityJudgement(policy, score, Outcome.REGENERATE,
                                    f"{below}: regenerating with a new seed ({attempt} of {policy.max_retries} "
                                    "regenerations)", attempt)
        return QualityJudgement(policy, score, Outcome.FLAG, f"{below} after {policy.max_retries} regenerations: "
                                                             "flagged", attempt)
    return QualityJudgement(policy, score, Outcome.FLAG, f"{below}: flagged", attempt)


def best_attempt(scores: Sequence[Mapping[str, float]], metric: str) -> int:
    """The index of the best-scoring attempt (the earliest of equals)."""
    values = [s.get(metric, float("-inf")) for s in scores]
    return values.index(max(values))


def keep_best(judgement: QualityJudgement, attempts: Sequence[Mapping[str, float]]) -> tuple[int, QualityJudgement]:
    """The attempt to serve once a job stops regenerating (``attempts``: each one's scores, the
    last being the one just judged) and the judgement that goes with it: the best-scoring."""
    if len(attempts) < 2:
        return len(attempts) - 1, judgement
    best = best_attempt(attempts, judgement.policy.metric)
    score = attempts[best].get(judgement.policy.metric)
    reason = judgement.reason
    if judgement.outcome is Outcome.FLAG:
        reason = (f"{judgement.policy.metric} stayed below the threshold {judgement.policy.threshold:g} in "
                  f"{len(attempts)} attempts ({judgement.policy.max_retries} regenerations): kept the best, attempt "
                  f"{best + 1} ({score:.2f}), flagged")
    return best, replace(judgement, score=score, kept=best + 1, reason=reason)


def with_judgement(audit: dict[str, Any], judgement: QualityJudgement | None) -> dict[str, Any]:
    """An audit record (safety.policy.AuditResult.to_dict) with the quality judgement: under
    ``quality``, and a flag or failure among its reasons (a pass verdict becomes flag)."""
    out = {**audit, "quality": judgement.to_dict() if judgement else None}
    if judgement is not None and judgement.outcome in (Outcome.FLAG, Outcome.FAIL):
        out["reasons"] = [*audit.get("reasons", []), judgement.reason]
        if out.get("verdict") == Verdict.PASS.value:
            out["verdict"] = Verdict.FLAG.value
    return out
