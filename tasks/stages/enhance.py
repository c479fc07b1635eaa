"""enhance: face restoration, then local contrast, upscale and sharpen — each as asked."""

from __future__ import annotations

from typing import Any

import numpy as np

from tasks.celery_app import app
from tasks.jobs import Job, JobParams
from tasks.models import resolve_faces
from tasks.worker_runtime import WorkerRuntime
from tasks.stages.base import StageResult, load_image, run_stage, save_image
from workers.enhance import EnhanceOptions, enhance as enhance_image
from workers.faces import load_detector, load_restorer, restore_faces


@app.task(name="pixelmill.enhance", bind=True)
def enhance(self, job_id: str) -> None:
    run_stage(self, job_id, "enhance", _enhance)


def passes_through(params: JobParams) -> bool:
    """Whether enhance has nothing to do for these parameters: the generated image is then served
    as it is (so generate writes it as a final image, not as an intermediate)."""
    return _options(params) == EnhanceOptions() and params.face_restore is None


def _options(params: JobParams) -> EnhanceOptions:
    return EnhanceOptions(upscale=params.upscale, sharpen=params.sharpen, local_contrast=params.local_contrast)


def _enhance(job: Job, rt: WorkerRuntime) -> StageResult:
    params = job.job_params
    if passes_through(params):
        return StageResult(outputs={"enhanced": job.outputs["generated"]})
    options = _options(params)
    image = load_image(rt, job.outputs["generated"])
    faces = None
    if params.face_restore is not None:  # before the upscale: the restorer sees faces at their own size
        image, faces = _restore_faces(rt, image, weight=params.face_restore)
    result = enhance_image(image, options, max_output_pixels=rt.settings.max_output_pixels)
    return StageResult(outputs={"enhanced": save_image(rt, result)}, faces=faces)


def _restore_faces(rt: WorkerRuntime, image: np.ndarray, *, weight: float) -> tuple[np.ndarray, dict[str, Any]]:
    """The library's restorer and detector (checked again: the settings may have changed since submit),
    loaded once per process; onnxruntime on the worker's device (CUDA when it has the provider)."""
    chosen = resolve_faces(rt.settings)
    detector = load_detector(str(chosen.detector.path), revision=chosen.detector.fingerprint)
    restorer = load_restorer(str(chosen.restorer.path), revision=chosen.restorer.fingerprint,
                             device=rt.settings.device, threads=rt.settings.torch_threads)
    restored, report = restore_faces(image, detector=detector, restorer=restorer, weight=weight)
    return restored, {**report.to_dict(), "weight": weight, "restorer": chosen.restorer.name,
                      "detector": chosen.detector.name}
