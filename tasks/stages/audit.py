"""audit: check the output before anyone is served it; the verdict ends the job."""

from __future__ import annotations

import numpy as np
from PIL import Image

from safety.quality import Verdict, check_quality
from tasks.celery_app import app
from tasks.jobs import Job, JobStatus
from tasks.runtime import Runtime
from tasks.stages.base import StageResult, load_image, run_stage


@app.task(name="pixelmill.audit", bind=True)
def audit(self, job_id: str) -> None:
    run_stage(self, job_id, "audit", _audit)


def _audit(job: Job, rt: Runtime) -> StageResult:
    served = load_image(rt, job.outputs["enhanced"])  # audit exactly what would be served
    reference = load_image(rt, job.outputs["normalized"])
    report = check_quality(served, reference=_same_size(reference, served))
    end = JobStatus.BLOCKED if report.verdict is Verdict.BLOCK else JobStatus.SUCCEEDED
    outputs = {} if end is JobStatus.BLOCKED else {"result": job.outputs["enhanced"]}
    return StageResult(outputs=outputs, end=end, audit=report.to_dict())


def _same_size(image: np.ndarray, like: np.ndarray) -> np.ndarray:
    if image.shape == like.shape:
        return image
    height, width = like.shape[:2]
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))
