"""generate: restyle (style engine) or denoise from the cached latent (diffusion engine)."""

from __future__ import annotations

import time
from functools import partial

import torch

from tasks.batching import GenerateRequest, generate_requests
from tasks.caching import cache_scope, generation_key
from tasks.celery_app import app
from tasks.generation import CONTROL_OUTPUT, generate_params, prompt_lookup
from tasks.jobs import Job
from tasks.worker_runtime import WorkerRuntime
from tasks.stages.base import StageResult, delivered_from, load_image, run_stage, save_image
from tasks.stages.enhance import passes_through
from workers.preview import preview_png
from workers.styles import apply_style

PROGRESS_EVERY_S = 0.25


@app.task(name="pixelmill.generate", bind=True)
def generate(self, job_id: str) -> None:
    run_stage(self, job_id, "generate", partial(_generate, queue=delivered_from(self)))


def _generate(job: Job, rt: WorkerRuntime, *, queue: str | None = None) -> StageResult:
    params = job.job_params
    if params.engine == "style":
        image = load_image(rt, job.outputs["normalized"])
        styled = apply_style(image, params.style, strength=params.style_strength)
        return StageResult(outputs={"generated": save_image(rt, styled, intermediate=not passes_through(params))})

    loaded = rt.diffusion(params.model, dtype=rt.dtype_for(queue))  # at the dtype of the queue it came from
    engine = loaded.engine
    scope = cache_scope(rt, job)
    wanted = generate_params(rt.settings, params)
    key = generation_key(job, loaded, wanted)
    if key is not None:  # an identical request was answered before: serve that result, run nothing
        stored = rt.cache.fetch_result(key, scope_token=scope.token, is_usable=lambda s: rt.blobs.exists(s.generated))
        if stored is not None:
            return StageResult(outputs={"generated": stored.generated}, cached=True,
                               cache={"tier": "results", "match": "exact"}, dtype=loaded.dtype_name)

    latents, tier = rt.cache.fetch_latent(job.outputs["latent"], scope_token=scope.token, device=loaded.device)
    if latents is None:  # evicted, cleared or Redis was unavailable: recompute rather than fail
        with torch.inference_mode():
            latents = engine.encode(load_image(rt, job.outputs["normalized"]))
    maps = [load_image(rt, job.outputs[CONTROL_OUTPUT.format(type=c.type)]) for c in wanted.controls]
    request = GenerateRequest(job_id=job.id, latents=latents, params=wanted, on_step=_progress_reporter(job, rt),
                              model=params.model, control_images=maps, scope=scope, dtype=loaded.dtype_name)
    batcher = rt.generate_batcher()
    cache_info = {"latent_tier": tier or "recomputed"}
    if batcher is None:
        image, device_s = generate_requests(loaded, [request], prompts=prompt_lookup(rt.cache))[0], None
    else:  # shares one pipeline call with compatible requests running in this worker
        batched = batcher.run(request)
        image, device_s = batched.value, batched.share_s
        cache_info["batch_size"] = batched.batch_size
    if request.ran.get("backend"):  # which engine ran it: "openvino-bf16", "torch-f32", "torch-fp16" …
        cache_info["backend"] = request.ran["backend"]
    if request.ran.get("prompt"):  # the prompt embeddings: hot | redis (a hit) or computed
        cache_info["prompt"] = request.ran["prompt"]
    generated = save_image(rt, image)
    if key is not None:
        rt.cache.save_result(key, scope_token=scope.token, generated=generated, job_id=job.id)
    return StageResult(outputs={"generated": generated}, cache=cache_info, device_s=device_s, dtype=loaded.dtype_name)


def _progress_reporter(job: Job, rt: WorkerRuntime):
    last, canceled = 0.0, False

    def on_step(step: int, steps: int, latents: torch.Tensor) -> bool:
        """Report progress, with a cheap latent→RGB preview (no VAE) for live viewers, at most every
        PROGRESS_EVERY_S and at the last step, in one round trip that also says whether the job was
        canceled: the run stops within PROGRESS_EVERY_S of a cancel. A round trip per step would
        cost a GPU running 20 ms steps a few percent."""
        nonlocal last, canceled
        now = time.monotonic()
        if step == steps or now - last >= PROGRESS_EVERY_S:
            canceled = rt.store.save_progress(job.id, stage="generate", step=step, steps=steps,
                                              preview=preview_png(latents) if step < steps else None)
            last = now
        return canceled

    return on_step
