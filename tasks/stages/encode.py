"""encode: normalise the image for its engine; for diffusion, VAE-encode it into the latent
store unless the latent is already there."""

from __future__ import annotations

import torch

from cache.keys import latent_key, pixels_digest
from tasks.celery_app import app
from tasks.jobs import Job
from tasks.runtime import Runtime
from tasks.stages.base import StageResult, load_image, run_stage, save_image
from workers.diffusion import normalise_for_diffusion
from workers.imaging import fit_within


@app.task(name="pixelmill.encode", bind=True)
def encode(self, job_id: str) -> None:
    run_stage(self, job_id, "encode", _encode)


def _encode(job: Job, rt: Runtime) -> StageResult:
    params = job.job_params
    image = load_image(rt, job.input_ref)
    if params.engine == "style":
        return StageResult(outputs={"normalized": save_image(rt, fit_within(image, params.size))})

    loaded = rt.diffusion()
    normalised = normalise_for_diffusion(image, size=params.size, multiple=loaded.engine.vae_scale_factor)
    key = diffusion_latent_key(job, rt, normalised)
    outputs = {"normalized": save_image(rt, normalised), "latent": key}
    if rt.latents.exists(key):
        return StageResult(outputs=outputs, cached=True)
    with torch.inference_mode():
        latent = loaded.engine.encode(normalised)
    rt.latents.save(key, latent.numpy())
    return StageResult(outputs=outputs)


def diffusion_latent_key(job: Job, rt: Runtime, normalised) -> str:
    loaded = rt.diffusion()
    return latent_key(
        pixels=pixels_digest(normalised),
        model=loaded.engine.model,
        revision=loaded.engine.revision,
        size=normalised.shape[:2],
        dtype=loaded.dtype_name,
        scope=f"tenant:{job.tenant}",
    )
