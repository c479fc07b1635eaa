"""How the stages address the latent cache: the scope a job's lookups run in, and the encoder
spec and result key of a diffusion job (cache/ itself knows nothing of jobs)."""

from __future__ import annotations

from dataclasses import asdict

from cache.keys import EncoderSpec, result_key
from cache.latents import is_shareable
from cache.scopes import Scope, scope_for
from tasks.jobs import Job, JobParams
from tasks.worker_runtime import WorkerRuntime
from workers.diffusion import LATENT_CHANNELS, GenerateParams
from workers.residency import LoadedDiffusion

CROP = "resize"   # normalise_for_diffusion resizes the whole image, it crops nothing
ROTATION = 0      # EXIF orientation is applied at upload; the encoder never rotates


def cache_scope(rt: WorkerRuntime, job: Job) -> Scope:
    return scope_for(tenant=job.tenant, mode=rt.settings.cache_scope)


def encoder_spec(params: JobParams, loaded: LoadedDiffusion) -> EncoderSpec:
    """What, besides the pixels, changes a latent. No prompt, guidance, steps, strength or seed."""
    return EncoderSpec(model=loaded.engine.model, revision=loaded.engine.revision, dtype=loaded.dtype_name,
                       size=params.size, crop=CROP, rotation=ROTATION)


def expected_latent_bytes(shape: tuple[int, ...], *, factor: int) -> int:
    """About what a latent of a normalised image of ``shape`` takes in the cache (float32 + header)."""
    return LATENT_CHANNELS * (shape[0] // factor) * (shape[1] // factor) * 4 + 128


def generation_key(job: Job, loaded: LoadedDiffusion, generate: GenerateParams) -> str | None:
    """The whole-result key of a diffusion job; None when its seed is unknown or its latent is not
    in the cache (then no later request could find the result either)."""
    if not is_shareable(job.outputs["latent"]):
        return None
    params = asdict(generate) | {"seed": job.job_params.seed}
    return result_key(latent_ref=job.outputs["latent"], model=loaded.engine.model, revision=loaded.engine.revision,
                      dtype=loaded.dtype_name, params=params)
