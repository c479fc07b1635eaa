"""How the stages address the latent cache: the scope a job's lookups run in, and the encoder
spec, prompt spec, control-map key and result key of a diffusion job (cache/ itself knows nothing
of jobs)."""

from __future__ import annotations

from dataclasses import asdict

from cache.keys import EncoderSpec, PromptSpec, control_key, result_key
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
    model, revision = model_identity(loaded)
    return EncoderSpec(model=model, revision=revision, dtype=key_dtype(loaded), size=params.size, crop=CROP,
                       rotation=ROTATION)


def model_identity(loaded: LoadedDiffusion) -> tuple[str, str | None]:
    """The model as keys name it: its library name and files' fingerprint, else what the engine
    loaded (a path or hub id) and its revision."""
    name = getattr(loaded, "name", None)
    if name:
        return name, loaded.revision
    return loaded.engine.model, loaded.engine.revision


def prompt_spec(loaded: LoadedDiffusion, generate: GenerateParams) -> PromptSpec:
    """What changes a prompt's text-encoder output: the model, its dtype, both prompts, clip_skip
    and the LoRAs that adapt the text encoder, with their weights."""
    text_loras = tuple(use.key() for use in generate.loras if use.text_encoder)
    model, revision = model_identity(loaded)
    return PromptSpec(model=model, revision=revision, dtype=key_dtype(loaded),
                      prompt=generate.prompt, negative_prompt=generate.negative_prompt, clip_skip=generate.clip_skip,
                      text_loras=text_loras)


def control_map_key(*, pixels: str, kind: str, annotator: str, shape: tuple[int, ...]) -> str:
    return control_key(pixels=pixels, kind=kind, annotator=annotator, shape=shape)


def key_dtype(loaded: LoadedDiffusion) -> str:
    """The precision a key names: the dtype, or the CPU backend that ran ("openvino-bf16", …)."""
    backend = getattr(loaded.engine, "backend", None)
    return (backend.key_dtype if backend is not None else None) or loaded.dtype_name


def expected_latent_bytes(shape: tuple[int, ...], *, factor: int) -> int:
    """About what a latent of a normalised image of ``shape`` takes in the cache (float32 + header)."""
    return LATENT_CHANNELS * (shape[0] // factor) * (shape[1] // factor) * 4 + 128


def generation_key(job: Job, loaded: LoadedDiffusion, generate: GenerateParams) -> str | None:
    """The whole-result key of a diffusion job; None when its seed is unknown or its latent is not
    in the cache (then no later request could find the result either)."""
    if not is_shareable(job.outputs["latent"]):
        return None
    params = asdict(generate) | {"seed": job.job_params.seed}
    # LoRAs and ControlNets by name, file fingerprint and weight (not by path); the control maps by
    # their content-addressed blobs (a near-duplicate's latent is shared, its maps are its own)
    params["loras"] = [list(use.key()) for use in generate.loras]
    params["controls"] = [list(c.key()) + [job.outputs.get(f"control_{c.type}")] for c in generate.controls]
    model, revision = model_identity(loaded)
    return result_key(latent_ref=job.outputs["latent"], model=model, revision=revision, dtype=key_dtype(loaded),
                      params=params)
