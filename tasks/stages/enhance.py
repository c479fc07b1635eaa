"""enhance: upscale, sharpen, local contrast — each as asked."""

from __future__ import annotations

from tasks.celery_app import app
from tasks.jobs import Job
from tasks.worker_runtime import WorkerRuntime
from tasks.stages.base import StageResult, load_image, run_stage, save_image
from workers.enhance import EnhanceOptions, enhance as enhance_image


@app.task(name="pixelmill.enhance", bind=True)
def enhance(self, job_id: str) -> None:
    run_stage(self, job_id, "enhance", _enhance)


def _enhance(job: Job, rt: WorkerRuntime) -> StageResult:
    params = job.job_params
    options = EnhanceOptions(upscale=params.upscale, sharpen=params.sharpen, local_contrast=params.local_contrast)
    if options == EnhanceOptions():
        return StageResult(outputs={"enhanced": job.outputs["generated"]})
    image = load_image(rt, job.outputs["generated"])
    result = enhance_image(image, options, max_output_pixels=rt.settings.max_output_pixels)
    return StageResult(outputs={"enhanced": save_image(rt, result)})
