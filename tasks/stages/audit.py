"""audit: classify, check and score the output before anyone is served it. The tenant's NSFW
policy decides (block, flag or blur); its quality policy (safety.quality_policy) may flag the job,
fail it, or send it back to generate with a new seed — keeping the best-scoring attempt — and the
verdict ends the job."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import cv2
import numpy as np

from safety.nsfw import NsfwClassifier, get_classifier
from safety.policy import Action, blur, decide
from safety.quality import Verdict, check_quality
from safety.quality_policy import FAIL_CODE, Outcome, judge, keep_best, with_judgement
from safety.scores import measure
from tasks.caching import cache_scope
from tasks.celery_app import app
from tasks.errors import PixelmillError
from tasks.jobs import Job, JobStatus
from tasks.scoring import has_prompt, next_seed, policy_for
from tasks.worker_runtime import WorkerRuntime
from tasks.stages.base import Restart, StageResult, load_image, run_stage, save_image
from workers.errors import EngineError

log = logging.getLogger(__name__)


@app.task(name="pixelmill.audit", bind=True)
def audit(self, job_id: str) -> None:
    run_stage(self, job_id, "audit", _audit)


def _audit(job: Job, rt: WorkerRuntime) -> StageResult:
    served = load_image(rt, job.outputs["enhanced"])  # audit exactly what would be served
    reference = load_image(rt, job.outputs["normalized"])
    quality = check_quality(served, reference=_same_size(reference, served))
    classifier = get_classifier()
    nsfw, reused = _nsfw_score(rt, classifier, job, served)
    result = decide(nsfw_score=nsfw, quality=quality, policy=rt.audit_policy(job.tenant), model=classifier.name)
    policy = policy_for(rt, tenant=job.tenant, params=job.params)
    audit = result.to_dict()
    if reused:
        audit["nsfw_reused"] = True
    audit["scores"].update(_scores(job, rt, served, reference, needs_clip=policy is not None and policy.needs_clip))
    if result.verdict is Verdict.BLOCK:  # never served, whatever came before
        return StageResult(end=JobStatus.BLOCKED, audit=with_judgement(audit, None), attempts=job.attempts or None)
    final = save_image(rt, blur(served)) if result.action is Action.BLUR else job.outputs["enhanced"]
    if policy is None:
        return StageResult(outputs={"result": final}, end=JobStatus.SUCCEEDED, audit=with_judgement(audit, None))

    number = len(job.attempts) + 1
    judgement = judge(policy, audit["scores"], attempt=number, can_regenerate=job.params["engine"] == "diffusion")
    this = {"attempt": number, "seed": job.params.get("seed"), "scores": audit["scores"],
            "generated": job.outputs["generated"], "enhanced": job.outputs["enhanced"], "result": final,
            "audit": audit}
    if judgement.outcome is Outcome.REGENERATE:
        first_seed = job.attempts[0]["seed"] if job.attempts else job.params.get("seed")
        return StageResult(restart=Restart(stage="generate", params={"seed": next_seed(first_seed, number)},
                                           attempt={**this, "outcome": judgement.outcome.value}))
    if not job.attempts:
        return _end(audit, judgement, outputs={"result": final})
    attempts = [*job.attempts, {**this, "outcome": judgement.outcome.value}]
    best, judgement = keep_best(judgement, [a["scores"] for a in attempts])
    kept = attempts[best]
    for i, attempt in enumerate(attempts):
        attempt["kept"] = i == best
    outputs = {name: kept[name] for name in ("generated", "enhanced", "result")}
    return _end(kept["audit"], judgement, outputs=outputs, attempts=attempts, params={"seed": kept["seed"]})


def _end(audit: dict[str, Any], judgement, *, outputs: dict[str, str], **kept: Any) -> StageResult:
    """Succeed (passed or flagged), or fail when the quality policy says so (the scores recorded)."""
    record = with_judgement(audit, judgement)
    if judgement.outcome is Outcome.FAIL:
        return StageResult(end=JobStatus.FAILED, audit=record, error={"code": FAIL_CODE, "message": judgement.reason},
                           **kept)
    return StageResult(outputs=outputs, end=JobStatus.SUCCEEDED, audit=record, **kept)


def _nsfw_score(rt: WorkerRuntime, classifier: NsfwClassifier, job: Job, image: np.ndarray) -> tuple[float, bool]:
    """The classifier's score of the image audited (stored as ``enhanced``), and whether it was
    reused: an image the job's cache scope had scored before (a job run again, a result served from
    the results cache, a style job on a photo seen before) keeps its score with the results
    (cache.results: result_ttl_s, per tenant unless PIXELMILL_CACHE_SCOPE shares it — a reused score
    shows on the job, and must not tell one tenant that another made the same image)."""
    token, ref = cache_scope(rt, job).token, job.outputs["enhanced"]
    model = hashlib.sha256(classifier.name.encode()).hexdigest()[:16]
    kept = rt.cache.results.fetch_score(token=token, model=model, ref=ref)
    if kept is not None:
        return kept, True
    score = classifier.score(image)
    rt.cache.results.save_score(token=token, model=model, ref=ref, score=score)
    return score, False


def _scores(job: Job, rt: WorkerRuntime, served: np.ndarray, reference: np.ndarray, *,
            needs_clip: bool) -> dict[str, float]:
    """Sharpness and pHash distance to the input for every job; CLIPScore against the prompt for a
    diffusion job with one, when a CLIP model is configured. A CLIP model that cannot be loaded fails
    the job only when its quality policy needs the score."""
    scores = measure(served, reference=reference)
    if not has_prompt(job.params):
        return scores
    try:
        scorer = rt.clip_scorer()
        if scorer is not None:
            scores["clipscore"] = scorer.score(served, job.params["prompt"])
    except (PixelmillError, EngineError) as e:
        if needs_clip:
            raise
        log.warning("job %s: no CLIPScore (%s)", job.id, e)
    return scores


def _same_size(image: np.ndarray, like: np.ndarray) -> np.ndarray:
    """``image`` resized to ``like``'s size (the reference of an upscaled result): OpenCV, bilinear
    up, area down (a 384² → 768² resize in ~1 ms where Pillow took ~7)."""
    if image.shape == like.shape:
        return image
    height, width = like.shape[:2]
    interpolation = cv2.INTER_LINEAR if height >= image.shape[0] else cv2.INTER_AREA
    return cv2.resize(image, (width, height), interpolation=interpolation)
