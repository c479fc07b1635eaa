"""Stable Diffusion img2img engine: encode an image to latents, then denoise latents into an image.

Free of Celery, Redis and Flask: it takes numpy images and torch latents and returns numpy images.
The two halves are split so that a caller can cache the latents of an input image and run many
generations from them (the pipeline accepts 4-channel latents as its `image` and skips the VAE encode).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from PIL import Image

from workers.errors import EngineError, Interrupted, ModelLoadError
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

    @property
    def denoising_steps(self) -> int:
        """The number of denoising steps actually run (as diffusers counts them)."""
        return denoising_steps(self.steps, self.strength)

    def batch_key(self) -> tuple[int, float, float]:
        """What must be equal for two requests to share one pipeline call: the schedule (steps and
        strength) and the guidance scale. Prompts and seeds may differ within a batch."""
        return (self.steps, self.strength, self.guidance)

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
    ) -> None:
        self._pipe = pipe
        self.model = model
        self.revision = revision
        self.device = device
        self.dtype = dtype
        self.options = options
        self.vae_scale_factor: int = pipe.vae_scale_factor
        _apply_options(pipe, options)

    @classmethod
    def load(
        cls,
        model: str,
        *,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        revision: str | None = None,
        options: EngineOptions = EngineOptions(),
    ) -> DiffusionEngine:
        """Load `model` (a save_pretrained folder or hub id) onto `device`; raise ModelLoadError if that fails."""
        try:
            pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
                model,
                dtype=dtype,
                revision=revision,
                safety_checker=None,
                requires_safety_checker=False,
            )
            pipe = pipe.to(device)
        except Exception as exc:  # any failure here means the configured model is unusable
            raise _load_failure(model, revision, exc) from exc
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe, model=model, revision=revision, device=device, dtype=dtype, options=options)

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

    def generate(
        self,
        latents: torch.Tensor,
        params: GenerateParams,
        *,
        on_step: StepCallback | None = None,
    ) -> np.ndarray:
        """Noise `latents` by params.strength and denoise them towards the prompt into an HxWx3 uint8 image.

        Deterministic for a given seed. `on_step(done, total, latents)` is called after each denoising
        step, with `done` counting from 1 to `total` (params.denoising_steps); if it returns True the run
        stops and Interrupted is raised.
        """
        return self.generate_batch([latents], [params], on_step=on_step)[0]

    def generate_batch(
        self,
        latents: list[torch.Tensor],
        params: list[GenerateParams],
        *,
        on_step: StepCallback | None = None,
    ) -> list[np.ndarray]:
        """Generate several images in one pipeline call: one UNet pass per step for the whole batch.

        Every item keeps its own prompt, negative prompt and seed (one torch.Generator each, so an
        item gives the same image batched or alone); the items must share latent size, steps,
        strength and guidance (GenerateParams.batch_key), or EngineError is raised.
        """
        if not latents or len(latents) != len(params):
            raise EngineError(f"generate_batch needs as many latents as params, got {len(latents)} and {len(params)}")
        for item, wanted in zip(latents, params, strict=True):
            wanted.validate()
            self._check_latents(item)
        if len({p.batch_key() for p in params}) > 1 or len({tuple(t.shape) for t in latents}) > 1:
            raise EngineError("a batch must share latent size, steps, strength and guidance; split it by batch key")
        first = params[0]
        _set_vae_slicing(self._pipe, self.options.slices_vae(len(params)))
        result = self._pipe(
            prompt=[p.prompt for p in params],
            negative_prompt=[p.negative_prompt for p in params],
            image=torch.cat(latents),
            strength=first.strength,
            num_inference_steps=first.steps,
            guidance_scale=first.guidance,
            generator=[torch.Generator(device="cpu").manual_seed(p.seed) for p in params],
            output_type="np",
            callback_on_step_end=_step_adapter(on_step) if on_step is not None else None,
        )
        return _all_to_uint8(result.images)

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
