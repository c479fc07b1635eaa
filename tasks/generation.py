"""What a diffusion job asks of the engine, put together for the stages: its GenerateParams with
the LoRAs and ControlNets the library resolves, its control maps (computed once per input and
cached by content), and its prompt embeddings through the prompt cache."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from cache.keys import pixels_digest
from cache.scopes import Scope
from cache.service import LatentCache
from tasks.batching import GenerateRequest, PromptLookup
from tasks.caching import control_map_key, prompt_spec
from tasks.jobs import JobParams
from tasks.models import resolve_controls, resolve_depth, resolve_loras, resolve_model
from tasks.settings import Settings
from workers.adapters import LoraUse
from workers.control_maps import VERSIONS, control_map
from workers.controlnet import ControlUse
from workers.diffusion import GenerateParams
from workers.prompts import PromptEmbeds
from workers.residency import LoadedDiffusion

CONTROL_OUTPUT = "control_{type}"  # the job output holding a control map's blob


def generate_params(settings: Settings, params: JobParams) -> GenerateParams:
    """The engine's parameters of a diffusion job, its LoRAs and ControlNets found in the library."""
    model = resolve_model(settings, params.model)
    loras = tuple(LoraUse(name=c.name, path=c.path, weight=c.weight, fingerprint=c.fingerprint,
                          text_encoder=c.text_encoder) for c in resolve_loras(settings, params.loras, model=model))
    controls = tuple(ControlUse(name=c.name, path=c.path, scale=c.scale, start=c.start, end=c.end,
                                fingerprint=c.fingerprint, type=c.type)
                     for c in resolve_controls(settings, params.control, model=model))
    return GenerateParams(prompt=params.prompt, negative_prompt=params.negative_prompt, strength=params.strength,
                          steps=params.steps, guidance=params.guidance, seed=params.seed or 0,
                          clip_skip=params.clip_skip, loras=loras, controls=controls)


def control_maps(*, cache: LatentCache, scope: Scope, settings: Settings, params: JobParams, image: np.ndarray,
                 save: Callable[[np.ndarray], str], exists: Callable[[str], bool],
                 depth: Callable[[], Callable[[np.ndarray], np.ndarray]]) -> tuple[dict[str, str], dict[str, Any]]:
    """The control maps a job asks for, of its normalised ``image``: each found by its pixels in the
    cache, else computed, saved as a blob (``save``) and remembered. Returns the job outputs
    (``control_<type>`` → blob) and what the cache did, per type."""
    outputs: dict[str, str] = {}
    info: dict[str, Any] = {}
    pixels = pixels_digest(image)
    for control in params.control:
        annotator = VERSIONS.get(control.type)
        if control.type == "depth":
            entry = resolve_depth(settings)
            annotator = f"depth:{entry.name}:{entry.fingerprint}"
        key = control_map_key(pixels=pixels, kind=control.type, annotator=str(annotator), shape=image.shape)
        ref = cache.fetch_control(key, scope_token=scope.token, is_usable=exists)
        if ref is None:
            ref = save(control_map(control.type, image, depth=depth() if control.type == "depth" else None))
            cache.save_control(key, scope_token=scope.token, ref=ref)
            info[control.type] = "computed"
        else:
            info[control.type] = "cached"
        outputs[CONTROL_OUTPUT.format(type=control.type)] = ref
    return outputs, info


def prompt_lookup(cache: LatentCache) -> PromptLookup:
    """Prompt embeddings through the prompt cache (hot tier, Redis, else the text encoder), in the
    request's scope; the tier that answered goes to ``request.ran["prompt"]``."""

    def lookup(loaded: LoadedDiffusion, request: GenerateRequest) -> PromptEmbeds:
        engine, p = loaded.engine, request.params
        if request.scope is None:
            request.ran["prompt"] = "computed"
            return engine.encode_prompt(p.prompt, p.negative_prompt, clip_skip=p.clip_skip, loras=p.loras)
        def compute() -> dict[str, Any]:
            return engine.encode_prompt(p.prompt, p.negative_prompt, clip_skip=p.clip_skip, loras=p.loras).as_dict()

        outcome = cache.fetch_or_compute_prompt(prompt_spec(loaded, p), scope=request.scope, device=loaded.device,
                                                compute=compute)
        request.ran["prompt"] = outcome.tier or "computed"
        return PromptEmbeds.from_dict(outcome.tensors, device=engine.device, dtype=engine.dtype)

    return lookup
