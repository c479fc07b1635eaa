"""Stable Diffusion img2img engine: encode an image to latents, then denoise latents into an image.

Free of Celery, Redis and Flask: it takes numpy images and torch latents and returns numpy images.
The two halves are split so that a caller can cache the latents of an input image and run many
generations from them (the pipeline accepts 4-channel latents as its `image` and skips the VAE encode).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from PIL import Image

from workers.adapters import LoraSlots, LoraUse
from workers.controlnet import ControlNets, ControlUse, control_tensor
from workers.cpu_backend import CpuBackendOptions, install_cpu_backend
from workers.errors import EngineError, Interrupted, ModelLoadError
from workers.prompts import PromptEmbeds, encode_prompts
from workers.schedule import denoising_steps, no_denoising_reason

# on_step(done, total, latents): called after each denoising step with the current latents of the
# whole batch; returning True stops the run (Interrupted).
StepCallback = Callable[[int, int, torch.Tensor], bool | None]

LATENT_CHANNELS = 4
MAX_STEPS = 200
MAX_GUIDANCE = 50.0
MODEL_SETTING = "PIXELMILL_DIFFUSION_MODEL"


@dataclass(frozen=True)
class EngineOptions:
    """Speed options of a loaded pipeline; each one is a setting and is measured in bench/."""

    attention: str = "sdpa"  # "sdpa": torch's scaled_dot_product_attention; "math": the plain einsum path
    channels_last: bool = False  # UNet and VAE in channels_last memory format (helps convs on GPUs)
    torch_compile: bool = False  # torch.compile the UNet (slow first call; then faster steps)
    vae_slicing: str = "auto"  # decode a batch one image at a time: "auto" (batches of 4 or more), "on", "off"
    cpu: CpuBackendOptions = CpuBackendOptions()  # on a CPU device: OpenVINO or torch, bf16 or f32 (workers/cpu_backend.py)

    def __post_init__(self) -> None:
        if self.attention not in ("sdpa", "math"):
            raise EngineError(f"attention must be 'sdpa' or 'math', got {self.attention!r}")
        if self.vae_slicing not in ("auto", "on", "off"):
            raise EngineError(f"vae_slicing must be 'auto', 'on' or 'off', got {self.vae_slicing!r}")

    def slices_vae(self, batch: int) -> bool:
        return self.vae_slicing == "on" or (self.vae_slicing == "auto" and batch >= 4)


@dataclass(frozen=True)
class GenerateParams:
    """What to generate from a set of latents."""

    prompt: str = ""
    negative_prompt: str = ""
    strength: float = 0.6  # (0, 1]: how much noise is added to the input, so how far the result may stray
    steps: int = 20  # denoising steps for strength 1; only int(steps * strength) of them are run
    guidance: float = 7.5
    seed: int = 0
    clip_skip: int = 0  # skip the text encoder's last layers (0: none; workers.prompts)
    loras: tuple[LoraUse, ...] = ()  # LoRA adapters and their weights (workers.adapters)
    controls: tuple[ControlUse, ...] = ()  # ControlNets; each item brings one map per control

    @property
    def denoising_steps(self) -> int:
        """The number of denoising steps actually run (as diffusers counts them)."""
        return denoising_steps(self.steps, self.strength)

    def batch_key(self) -> tuple[Any, ...]:
        """What must be equal for two requests to share one pipeline call: the schedule (steps and
        strength), the guidance scale, the LoRAs with their weights and the ControlNets with their
        scales and spans. Prompts, clip_skip and seeds may differ within a batch."""
        return (self.steps, self.strength, self.guidance, tuple(u.key() for u in self.loras),
                tuple(c.key() for c in self.controls))

    def validate(self) -> None:
        """Raise EngineError naming the first out-of-range parameter."""
        if not 0 < self.strength <= 1:
            raise EngineError(f"strength must be in (0, 1], got {self.strength}")
        if not 1 <= self.steps <= MAX_STEPS:
            raise EngineError(f"steps must be between 1 and {MAX_STEPS}, got {self.steps}")
        if not 0 <= self.guidance <= MAX_GUIDANCE:
            raise EngineError(f"guidance must be between 0 and {MAX_GUIDANCE:g}, got {self.guidance}")
        if not 0 <= self.seed < 2**64:
            raise EngineError(f"seed must be between 0 and 2**64 - 1, got {self.seed}")
        reason = no_denoising_reason(self.steps, self.strength)
        if reason:
            raise EngineError(reason)
        if self.clip_skip < 0:
            raise EngineError(f"clip_skip must not be negative, got {self.clip_skip}")
        for use in self.loras:
            if not -2 <= use.weight <= 2:
                raise EngineError(f"LoRA {use.name!r}: weight must be between -2 and 2, got {use.weight}")
        for control in self.controls:
            control.validate()


def _check_rgb(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise EngineError(f"expected an HxWx3 uint8 RGB image, got shape {image.shape} and dtype {image.dtype}")


def normalise_for_diffusion(image: np.ndarray, *, size: int, multiple: int = 8) -> np.ndarray:
    """Resize the whole image so the longer side is `size` and each side a `multiple` (rounded down).

    Nothing is cropped: each side is scaled on its own to the multiple below it, so the aspect
    ratio moves by less than one `multiple` (under 2 % for a 512-px working size). Because no
    content is cut off, the same photo resized by a pixel normalises to nearly the same pixels,
    which is what lets the latent cache recognise it.
    """
    _check_rgb(image)
    if size < multiple:
        raise EngineError(f"size must be at least {multiple}, got {size}")
    height, width = image.shape[:2]
    scale = size / max(height, width)
    target_h = int(height * scale + 0.5) // multiple * multiple
    target_w = int(width * scale + 0.5) // multiple * multiple
    if target_h == 0 or target_w == 0:
        raise EngineError(
            f"a {width}x{height} image is too narrow: at size {size} its short side is under {multiple} pixels"
        )
    if (target_h, target_w) == (height, width):
        return np.ascontiguousarray(image)
    resized = Image.fromarray(image).resize((target_w, target_h), Image.Resampling.LANCZOS)
    return np.ascontiguousarray(np.asarray(resized))


def _to_uint8(images: np.ndarray) -> np.ndarray:
    """The first of a batch of float images in [0, 1] as uint8 HxWx3."""
    return (images[0] * 255).round().astype(np.uint8)


def _all_to_uint8(images: np.ndarray) -> list[np.ndarray]:
    """A batch of float images in [0, 1] (NxHxWx3) as a list of uint8 HxWx3 images."""
    return list((images * 255).round().astype(np.uint8))


def _load_failure(model: str, revision: str | None, exc: Exception) -> ModelLoadError:
    text = str(exc).strip()
    reason = text.splitlines()[0].rstrip(".") if text else type(exc).__name__
    at = f" at revision {revision!r}" if revision else ""
    if ".safetensors" in text:
        return ModelLoadError(
            f"could not load diffusion model {model!r}{at}: it has no safetensors weights ({reason}). Only "
            "safetensors weights are loaded: pickled .bin/.ckpt files can run code when opened. Load it once where "
            "you trust it and save_pretrained(folder, safe_serialization=True), or set "
            f"{MODEL_SETTING} to a model that ships .safetensors"
        )
    return ModelLoadError(
        f"could not load diffusion model {model!r}{at}: {reason}. Set {MODEL_SETTING} to a local folder "
        "saved with save_pretrained or a hub id reachable from this machine"
    )


class DiffusionEngine:
    """A loaded Stable Diffusion img2img pipeline."""

    def __init__(
        self,
        pipe: StableDiffusionImg2ImgPipeline,
        *,
        model: str,
        revision: str | None,
        device: str,
        dtype: torch.dtype,
        options: EngineOptions = EngineOptions(),
        lora_slots: int = 8,
    ) -> None:
        self._pipe = pipe
        self._lock = threading.RLock()  # adapters and ControlNets are switched per call: one call at a time
        self.loras = LoraSlots(pipe, slots=lora_slots)
        self.controlnets = ControlNets(pipe, device=device, dtype=dtype, math_attention=options.attention == "math")
        self.model = model
        self.revision = revision
        self.device = device
        self.dtype = dtype
        self.options = options
        self.vae_scale_factor: int = pipe.vae_scale_factor
        _apply_options(pipe, options)
        # on a CPU device: swap OpenVINO (or bf16 autocast) wrappers into the UNet and VAE
        self.backend = install_cpu_backend(pipe, model=model, revision=revision, device=device, dtype=dtype,
                                           options=options.cpu)

    @classmethod
    def load(
        cls,
        model: str,
        *,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        revision: str | None = None,
        options: EngineOptions = EngineOptions(),
        config: str | None = None,
        lora_slots: int = 8,
    ) -> DiffusionEngine:
        """Load `model` (a save_pretrained folder, a hub id, or a single-file .safetensors checkpoint
        with `config`, the diffusers configs of its base) onto `device`; raise ModelLoadError if that fails."""
        try:
            if _is_single_file(model):
                pipe = _load_single_file(model, config=config, dtype=dtype)
            else:
                pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
                    model,
                    dtype=dtype,
                    revision=revision,
                    use_safetensors=True,  # never unpickle weights: a .bin/.ckpt can run code when loaded
                    safety_checker=None,
                    requires_safety_checker=False,
                )
            pipe = pipe.to(device)
        except Exception as exc:  # any failure here means the configured model is unusable
            raise _load_failure(model, revision, exc) from exc
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe, model=model, revision=revision, device=device, dtype=dtype, options=options,
                   lora_slots=lora_slots)

    def warm_up(self, *, size: int = 64, steps: int = 2) -> None:
        """Run one small generation so that lazy initialisation (kernels, allocator, compiled
        graphs) happens before the first real request, not during it."""
        factor = self.vae_scale_factor
        latents = torch.zeros(1, LATENT_CHANNELS, size // factor, size // factor)
        self.generate(latents, GenerateParams(prompt="warm-up", strength=1.0, steps=steps))

    def encode(self, image: np.ndarray) -> torch.Tensor:
        """Encode an HxWx3 uint8 RGB image to scaled latents (1, 4, H/f, W/f), float32 on the CPU."""
        _check_rgb(image)
        height, width = image.shape[:2]
        factor = self.vae_scale_factor
        if height % factor or width % factor:
            raise EngineError(
                f"image sides must be multiples of {factor}, got {width}x{height}; "
                "resize it first (normalise_for_diffusion does)"
            )
        vae = self._pipe.vae
        pixels = self._pipe.image_processor.preprocess(Image.fromarray(image))
        with torch.inference_mode():
            posterior = vae.encode(pixels.to(device=self.device, dtype=vae.dtype)).latent_dist
            latents = posterior.mean * vae.config.scaling_factor
        return latents.to(device="cpu", dtype=torch.float32)

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Decode scaled latents (1, 4, h, w) straight to an HxWx3 uint8 image, without denoising."""
        self._check_latents(latents)
        vae = self._pipe.vae
        with torch.inference_mode():
            scaled = latents.to(device=self.device, dtype=vae.dtype) / vae.config.scaling_factor
            pixels = vae.decode(scaled, return_dict=False)[0]
        return _to_uint8(self._pipe.image_processor.postprocess(pixels, output_type="np"))

    def encode_prompt(self, prompt: str, negative_prompt: str = "", *, clip_skip: int = 0,
                      loras: tuple[LoraUse, ...] = ()) -> PromptEmbeds:
        """The text encoder's outputs for a prompt and its negative with ``loras`` active (those that
        adapt the text encoder change them), as generate_batch takes them back."""
        with self.using(loras):
            return encode_prompts(self._pipe, prompt, negative_prompt, clip_skip=clip_skip)

    @contextmanager
    def using(self, loras: tuple[LoraUse, ...] = ()) -> Iterator[DiffusionEngine]:
        """Hold the engine with exactly ``loras`` active: prompts encoded and images generated inside
        see the same adapters (another thread waits)."""
        with self._lock:
            self.loras.activate(loras)
            yield self

    def generate(
        self,
        latents: torch.Tensor,
        params: GenerateParams,
        *,
        on_step: StepCallback | None = None,
        embeds: PromptEmbeds | None = None,
        control_images: list[np.ndarray] | None = None,
    ) -> np.ndarray:
        """Noise `latents` by params.strength and denoise them towards the prompt into an HxWx3 uint8 image.

        Deterministic for a given seed. `on_step(done, total, latents)` is called after each denoising
        step, with `done` counting from 1 to `total` (params.denoising_steps); if it returns True the run
        stops and Interrupted is raised.
        """
        return self.generate_batch([latents], [params], on_step=on_step,
                                   embeds=None if embeds is None else [embeds],
                                   control_images=None if control_images is None else [control_images])[0]

    def generate_batch(
        self,
        latents: list[torch.Tensor],
        params: list[GenerateParams],
        *,
        on_step: StepCallback | None = None,
        embeds: list[PromptEmbeds] | None = None,
        control_images: list[list[np.ndarray]] | None = None,
    ) -> list[np.ndarray]:
        """Generate several images in one pipeline call: one UNet pass per step for the whole batch.

        Every item keeps its own prompt, negative prompt, clip_skip and seed (one torch.Generator
        each, so an item gives the same image batched or alone); the items must share latent size,
        steps, strength, guidance, LoRAs and ControlNets (GenerateParams.batch_key), or EngineError
        is raised. ``embeds`` (one per item, e.g. from a cache) replace encoding the prompts;
        ``control_images`` give each item one HxWx3 uint8 map per ControlNet, at the latent size × 8.
        """
        if not latents or len(latents) != len(params):
            raise EngineError(f"generate_batch needs as many latents as params, got {len(latents)} and {len(params)}")
        for item, wanted in zip(latents, params, strict=True):
            wanted.validate()
            self._check_latents(item)
        if len({p.batch_key() for p in params}) > 1 or len({tuple(t.shape) for t in latents}) > 1:
            raise EngineError("a batch must share latent size, steps, strength, guidance, LoRAs and ControlNets; "
                              "split it by batch key")
        first = params[0]
        if embeds is not None and len(embeds) != len(params):
            raise EngineError(f"generate_batch needs one prompt embedding per item, got {len(embeds)} for "
                              f"{len(params)}")
        controls = self._control_arguments(first, latents[0], control_images, items=len(params))
        with self.using(first.loras):
            if embeds is None:
                embeds = [encode_prompts(self._pipe, p.prompt, p.negative_prompt, clip_skip=p.clip_skip)
                          for p in params]
            pipe = self.controlnets.pipeline(first.controls) if first.controls else self._pipe
            _set_vae_slicing(pipe, self.options.slices_vae(len(params)))
            result = pipe(
                prompt_embeds=torch.cat([e.prompt for e in embeds]).to(self.device),
                negative_prompt_embeds=torch.cat([e.negative for e in embeds]).to(self.device),
                image=torch.cat(latents),
                strength=first.strength,
                num_inference_steps=first.steps,
                guidance_scale=first.guidance,
                generator=[torch.Generator(device="cpu").manual_seed(p.seed) for p in params],
                output_type="np",
                callback_on_step_end=_step_adapter(on_step) if on_step is not None else None,
                **controls,
            )
        return _all_to_uint8(result.images)

    def _control_arguments(self, first: GenerateParams, latents: torch.Tensor,
                           control_images: list[list[np.ndarray]] | None, *, items: int) -> dict[str, Any]:
        """The ControlNet pipeline's arguments: one (B, 3, H, W) map tensor per ControlNet, and the
        scales and spans (lists for a Multi-ControlNet)."""
        if not first.controls:
            return {}
        wanted = len(first.controls)
        if control_images is None or len(control_images) != items or any(len(m) != wanted for m in control_images):
            raise EngineError(f"each item needs {wanted} control map(s), one per ControlNet")
        size = (latents.shape[2] * self.vae_scale_factor, latents.shape[3] * self.vae_scale_factor)
        if any(m.shape[:2] != size for maps in control_images for m in maps):
            raise EngineError(f"control maps must be {size[1]}x{size[0]} (the latents' size × "
                              f"{self.vae_scale_factor})")
        per_net = [control_tensor([maps[i] for maps in control_images]).to(self.device, self.dtype)
                   for i in range(wanted)]
        one = wanted == 1
        scales = [c.scale for c in first.controls]
        starts = [c.start for c in first.controls]
        ends = [c.end for c in first.controls]
        return {"control_image": per_net[0] if one else per_net,
                "controlnet_conditioning_scale": scales[0] if one else scales,
                "control_guidance_start": starts[0] if one else starts,
                "control_guidance_end": ends[0] if one else ends}

    def _check_latents(self, latents: torch.Tensor) -> None:
        if latents.ndim != 4 or latents.shape[0] != 1 or latents.shape[1] != LATENT_CHANNELS:
            raise EngineError(
                f"expected latents of shape (1, {LATENT_CHANNELS}, h, w) from encode, got {tuple(latents.shape)}"
            )


def _step_adapter(on_step: StepCallback) -> Callable[..., dict[str, Any]]:
    """Wrap `on_step` as a diffusers callback_on_step_end that raises Interrupted when asked to stop."""

    def callback(
        pipe: StableDiffusionImg2ImgPipeline, step: int, timestep: Any, tensors: dict[str, Any]
    ) -> dict[str, Any]:
        total = pipe.num_timesteps
        if on_step(step + 1, total, tensors["latents"]):
            raise Interrupted(f"stopped after {step + 1} of {total} denoising steps")
        return tensors

    return callback


def _apply_options(pipe: StableDiffusionImg2ImgPipeline, options: EngineOptions) -> None:
    if options.attention == "math":
        from diffusers.models.attention_processor import AttnProcessor

        pipe.unet.set_attn_processor(AttnProcessor())
        pipe.vae.set_attn_processor(AttnProcessor())
    if options.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if options.torch_compile:
        pipe.unet.compile()  # in place; each new batch size or latent size compiles once more


def _set_vae_slicing(pipe: StableDiffusionImg2ImgPipeline, on: bool) -> None:
    pipe.vae.use_slicing = on


def _is_single_file(model: str) -> bool:
    return model.endswith(".safetensors") and Path(model).is_file()


def _load_single_file(model: str, *, config: str | None, dtype: torch.dtype) -> StableDiffusionImg2ImgPipeline:
    """A single-file (A1111/ComfyUI layout) checkpoint. Offline, from_single_file needs the diffusers
    configs of its base as a local folder: without one it would fetch them from the hub."""
    if not config:
        raise EngineError("a single-file checkpoint loads offline with the diffusers configs of its base: put them in "
                          "the model library's configs/<base>/ (`pixelmill models pull <hub id> --config-only`)")
    return StableDiffusionImg2ImgPipeline.from_single_file(model, config=config, local_files_only=True, dtype=dtype,
                                                           safety_checker=None, requires_safety_checker=False)
