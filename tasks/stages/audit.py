"""audit: classify and check the output before anyone is served it; the tenant's policy
decides (block, flag or blur) and the verdict ends the job."""

from __future__ import annotations

import numpy as np
from PIL import Image

from safety.nsfw import get_classifier
from safety.policy import Action, blur, decide
from safety.quality import Verdict, check_quality
from tasks.celery_app import app
from tasks.jobs import Job, JobStatus
from tasks.worker_runtime import WorkerRuntime
from tasks.stages.base import StageResult, load_image, run_stage, save_image


@app.task(name="pixelmill.audit", bind=True)
def audit(self, job_id: str) -> None:
    run_stage(self, job_id, "audit", _audit)


def _audit(job: Job, rt: WorkerRuntime) -> StageResult:
    served = load_image(rt, job.outputs["enhanced"])  # audit exactly what would be served
    reference = load_image(rt, job.outputs["normalized"])
    quality = check_quality(served, reference=_same_size(reference, served))
    classifier = get_classifier()
    result = decide(nsfw_score=classifier.score(served), quality=quality,
                    policy=rt.audit_policy(job.tenant), model=classifier.name)
    if result.verdict is Verdict.BLOCK:
        return StageResult(end=JobStatus.BLOCKED, audit=result.to_dict())
    final = save_image(rt, blur(served)) if result.action is Action.BLUR else job.outputs["enhanced"]
    return StageResult(outputs={"result": final}, end=JobStatus.SUCCEEDED, audit=result.to_dict())


def _same_size(image: np.ndarray, like: np.ndarray) -> np.ndarray:
    if image.shape == like.shape:
        return image
    height, width = like.shape[:2]
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))
