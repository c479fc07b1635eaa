"""encode: normalise the image for its engine; for diffusion, find its latent in the cache (the
same picture, or a near-duplicate of it, encoded before) or VAE-encode it once and store it, and
make the control maps its ControlNets ask for (cached by the pixels they come from)."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from tasks.caching import cache_scope, encoder_spec, expected_latent_bytes
from tasks.celery_app import app
from tasks.generation import control_maps
from tasks.jobs import Job
from tasks.worker_runtime import WorkerRuntime
from tasks.stages.base import StageResult, delivered_from, load_image, run_stage, save_image
from workers.diffusion import DiffusionEngine, normalise_for_diffusion
from workers.imaging import fit_within


@app.task(name="pixelmill.encode", bind=True)
def encode(self, job_id: str) -> None:
    run_stage(self, job_id, "encode", partial(_encode, queue=delivered_from(self)))


def _encode(job: Job, rt: WorkerRuntime, *, queue: str | None = None) -> StageResult:
    params = job.job_params
    image = load_image(rt, job.input_ref)
    if params.engine == "style":
        return StageResult(outputs={"normalized": save_image(rt, fit_within(image, params.size), intermediate=True)})

    loaded = rt.diffusion(params.model, dtype=rt.dtype_for(queue))  # at the dtype of the queue it came from
    engine = loaded.engine
    normalised = normalise_for_diffusion(image, size=params.size, multiple=engine.vae_scale_factor)
    outputs = {"normalized": save_image(rt, normalised, intermediate=True)}  # read by generate and audit
    outcome = rt.cache.fetch_or_compute(
        normalised,
        spec=encoder_spec(params, loaded),
        scope=cache_scope(rt, job),
        compute=lambda: _vae_encode(engine, normalised),
        device=loaded.device,
        expected_bytes=expected_latent_bytes(normalised.shape, factor=engine.vae_scale_factor),
    )
    outputs["latent"] = outcome.ref
    cache = outcome.describe()
    if params.control:
        maps, cache["control"] = control_maps(cache=rt.cache, scope=cache_scope(rt, job), settings=rt.settings,
                                              params=params, image=normalised, save=lambda m: save_image(rt, m),
                                              exists=rt.blobs.exists, depth=rt.depth)
        outputs.update(maps)
    return StageResult(outputs=outputs, cached=outcome.cached, cache=cache, dtype=loaded.dtype_name)


def _vae_encode(engine: DiffusionEngine, normalised: np.ndarray) -> torch.Tensor:
    with torch.inference_mode():
        return engine.encode(normalised)
