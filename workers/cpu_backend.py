"""Which engine runs a diffusion pipeline on a CPU device, and the hook that installs it.

Two backends (setting ``cpu_backend``): ``openvino`` — the UNet and the VAE converted once to
OpenVINO model files and run by its CPU plugin (workers/openvino_backend.py) — and ``torch``.
``auto`` picks OpenVINO where the CPU has bf16 units (avx512_bf16 or AMX) and the package is
installed, else torch. Two precisions (setting ``cpu_precision``): ``bf16`` (the fast default; on
torch, autocast) and ``f32`` (exact). A CPU without bf16 units runs f32 whatever is asked.

The hook keeps the ordinary diffusers pipeline and swaps thin wrappers in: the UNet's ``forward``
and the VAE's ``encode``/``decode`` become instance attributes that run the compiled parts and
return what diffusers' own methods return. So every pipeline feature keeps working (step
callbacks and cancel, prompt_embeds, latents passed as the image, per-item generators in a batch),
and a call the compiled UNet cannot take — a PEFT adapter (LoRA) loaded on the UNet, ControlNet
residuals, any extra conditioning, a latent size the compiled graph cannot run — goes to the
original torch forward, at the same precision, on the same worker.

Safety nets: the CPU flags pick the precision; a missing ``openvino`` package is a clear error
when it was asked for by name; a conversion that fails falls back to torch; and before the
backend is used, the fp32 UNet must match torch within ``PARITY_TOLERANCE`` on a fixed input,
or the worker refuses it (one log line) and runs torch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from workers.errors import EngineError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "openvino", "torch")
PRECISIONS = ("bf16", "f32")
PARITY_TOLERANCE = 1e-4  # largest |OpenVINO fp32 − torch fp32| of the UNet on the parity input
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with bf16 units
OPENVINO_PIN = "openvino==2026.4.1"  # pyproject.toml's pin, named in the error when it is missing


class BackendUnavailable(EngineError):
    """The backend named in the settings cannot run here; the message says what to change."""


class ConversionError(EngineError):
    """A model could not be converted for the backend (the worker then runs torch)."""


class ParityError(EngineError):
    """The converted fp32 UNet does not match torch (the worker then runs torch)."""


@dataclass(frozen=True)
class CpuBackendOptions:
    """How an engine on a CPU device runs. The defaults are plain torch fp32 (what a library
    caller gets); the service passes its settings (``auto`` and ``bf16`` by default)."""

    backend: str = "torch"  # "auto" | "openvino" | "torch"
    precision: str = "f32"  # "bf16" | "f32"
    cache_dir: str | None = None  # where conversions are kept (the model library's openvino/ folder)
    threads: int | None = None  # inference threads of the compiled parts (None: every core)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise EngineError(f"cpu backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.precision not in PRECISIONS:
            raise EngineError(f"cpu precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


@dataclass(frozen=True)
class BackendInfo:
    """What an engine runs on: ``label`` ("openvino-bf16", "torch-f32", "torch-fp16" on a GPU …)
    goes to the heartbeat and, per call, to the job record."""

    name: str  # "openvino" | "torch"
    precision: str  # "bf16" | "f32" on a CPU backend; the torch dtype name ("fp16", …) otherwise
    patched: bool = False  # wrappers are installed (else the pipeline is untouched)
    reason: str = ""  # why this backend, when it is not the one asked for
    conversion: str | None = None  # the folder of the OpenVINO conversion in use

    @property
    def label(self) -> str:
        return f"{self.name}-{self.precision}"

    @property
    def key_dtype(self) -> str | None:
        """What stands for "dtype" in cache keys when wrappers run (OpenVINO or autocast latents and
        results differ a little from torch fp32's): the label; None for an untouched pipeline, whose
        keys keep the dtype name they always had."""
        return self.label if self.patched else None


@dataclass(frozen=True)
class Choice:
    backend: str  # "openvino" | "torch"
    precision: str  # "bf16" | "f32"
    notes: tuple[str, ...] = field(default_factory=tuple)


# --- the CPU and the package -----------------------------------------------------------------

@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (x86 "flags", Arm "Features"); None elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


def has_bf16_units(flags: frozenset[str] | None) -> bool:
    return bool(flags) and any(flag in flags for flag in BF16_FLAGS)


def openvino_problem() -> str | None:
    """Why the openvino package cannot be used here, or None when it imports."""
    try:
        import openvino  # noqa: F401
    except ImportError as e:
        return f"the openvino package is not installed ({e})"
    return None


def choose(options: CpuBackendOptions, *, flags: frozenset[str] | None, openvino_missing: str | None) -> Choice:
    """The backend and precision to run, from the settings, the CPU's flags and the package."""
    notes: list[str] = []
    bf16 = has_bf16_units(flags)
    precision = options.precision
    if precision == "bf16" and not bf16:
        precision = "f32"
        notes.append("this CPU has no bf16 units (no avx512_bf16 or amx_bf16 flag): running f32, "
                     "as bf16 would be emulated and slower")
    backend = options.backend
    if backend == "openvino" and openvino_missing:
        raise BackendUnavailable(
            f"PIXELMILL_CPU_BACKEND=openvino but {openvino_missing}: install it "
            f"(pip install {OPENVINO_PIN}, pixelmill's pin) or set PIXELMILL_CPU_BACKEND=torch")
    if backend == "auto":
        if openvino_missing:
            backend = "torch"
            notes.append(f"auto picked torch: {openvino_missing}")
        elif not bf16:
            backend = "torch"
            notes.append("auto picked torch: no bf16 units on this CPU (PIXELMILL_CPU_BACKEND=openvino "
                         "still runs OpenVINO f32, faster than torch fp32)")
        else:
            backend = "openvino"
    return Choice(backend=backend, precision=precision, notes=tuple(notes))


# --- which route each call took (the job record says which backend ran) -----------------------

_route = threading.local()


def clear_route() -> None:
    """Forget the route of this thread's last UNet call (before a pipeline call)."""
    _route.last = None


def last_route() -> str | None:
    """The label of the backend that ran this thread's last UNet call, or None (an untouched
    pipeline, e.g. on a GPU)."""
    return getattr(_route, "last", None)


def _record(label: str) -> None:
    _route.last = label


# --- the hook --------------------------------------------------------------------------------

def install_cpu_backend(pipe: Any, *, model: str, revision: str | None, device: str, dtype: Any,
                        options: CpuBackendOptions) -> BackendInfo:
    """Install the CPU backend ``options`` ask for on ``pipe`` (in place) and say what runs.

    Nothing is touched on a GPU, for a dtype other than fp32 (the weights are then what was asked
    for), for a torch.compile'd UNet, or for torch f32. Raises BackendUnavailable only when
    OpenVINO is asked for by name and is not installed; every other problem falls back to torch.
    """
    import torch

    from workers.devices import dtype_name

    if device != "cpu":
        return BackendInfo(name="torch", precision=dtype_name(dtype))
    if dtype != torch.float32:
        if options.backend == "openvino":
            log.warning("cpu backend: dtype %s asked for: running torch with it (OpenVINO needs the fp32 "
                        "model; leave PIXELMILL_DTYPE at auto)", dtype_name(dtype))
        return BackendInfo(name="torch", precision=dtype_name(dtype), reason="dtype is not fp32")
    if options.backend == "torch" and options.precision == "f32":
        return BackendInfo(name="torch", precision="f32")
    if getattr(pipe.unet, "_compiled_call_impl", None) is not None:
        return BackendInfo(name="torch", precision="f32", reason="torch_compile is on")
    choice = choose(options, flags=cpu_flags(), openvino_missing=openvino_problem()
                    if options.backend != "torch" else None)
    for note in choice.notes:
        log.info("cpu backend: %s", note)
    reason = "; ".join(choice.notes)
    if choice.backend == "openvino":
        from workers import openvino_backend

        try:
            compiled = openvino_backend.prepare(pipe, model=model, revision=revision, cache_dir=options.cache_dir,
                                                precision=choice.precision, threads=options.threads,
                                                tolerance=PARITY_TOLERANCE)
        except ParityError as e:
            log.error("cpu backend: refusing OpenVINO for %s: %s; running torch %s instead", model, e,
                      choice.precision)
            reason = f"OpenVINO refused: {e}"
        except BackendUnavailable:
            raise
        except Exception as e:  # a model the converter cannot take: torch runs it
            log.warning("cpu backend: could not convert %s for OpenVINO (%s: %s); running torch %s instead",
                        model, type(e).__name__, e, choice.precision)
            reason = f"OpenVINO conversion failed: {e}"
        else:
            label = f"openvino-{choice.precision}"
            patch_pipeline(pipe, unet=compiled.unet, encode=compiled.vae_encoder, decode=compiled.vae_decoder,
                           fast_label=label, precision=choice.precision)
            log.info("cpu backend: %s runs on OpenVINO %s (%s; conversion %s)", model, choice.precision,
                     compiled.version, compiled.folder)
            return BackendInfo(name="openvino", precision=choice.precision, patched=True, reason=reason,
                               conversion=str(compiled.folder))
    if choice.precision == "f32":
        return BackendInfo(name="torch", precision="f32", reason=reason)
    patch_pipeline(pipe, unet=None, encode=None, decode=None, fast_label=None, precision="bf16")
    log.info("cpu backend: %s runs on torch with bf16 autocast", model)
    return BackendInfo(name="torch", precision="bf16", patched=True, reason=reason)


# --- the wrappers ----------------------------------------------------------------------------

UNetRunner = Callable[[Any, Any, Any], Any]  # (sample, timestep, encoder_hidden_states) → noise prediction
PartRunner = Callable[[Any], Any]


def has_adapters(module: Any) -> bool:
    """A PEFT adapter (LoRA) is active on ``module``: its forward is no longer the converted one.
    Adapters that are loaded but switched off (``disable_lora()``) leave the plain model's output."""
    if not getattr(module, "peft_config", None):
        return False
    modules = getattr(module, "modules", None)
    if modules is None:  # not a torch module: assume they are on
        return True
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(layer, BaseTunerLayer) and not layer.disable_adapters and layer.active_adapters
               for layer in modules())


def is_plain_unet_call(unet: Any, sample: Any, timestep: Any, encoder_hidden_states: Any, args: tuple,
                       kwargs: dict[str, Any], *, up_factor: int) -> bool:
    """The compiled UNet computes exactly this call: no adapter, no ControlNet residuals or other
    extra inputs, fp32 tensors, one timestep for the whole batch, a latent size it can run."""
    import torch

    if args or has_adapters(unet):
        return False
    for name, value in kwargs.items():
        if name == "return_dict":
            continue
        if value is not None and not (isinstance(value, dict) and not value):
            return False  # ControlNet residuals, cross_attention_kwargs (LoRA scale), timestep_cond, …
    if not (isinstance(sample, torch.Tensor) and sample.ndim == 4 and sample.dtype == torch.float32):
        return False
    if not (isinstance(encoder_hidden_states, torch.Tensor) and encoder_hidden_states.ndim == 3
            and encoder_hidden_states.dtype == torch.float32):
        return False
    if isinstance(timestep, torch.Tensor) and timestep.numel() > 1 and not bool((timestep == timestep.flatten()[0]).all()):
        return False
    return sample.shape[-1] >= up_factor and sample.shape[-2] >= up_factor


def _autocast(precision: str):
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def patch_pipeline(pipe: Any, *, unet: UNetRunner | None, encode: PartRunner | None, decode: PartRunner | None,
                   fast_label: str | None, precision: str) -> None:
    """Swap the wrappers into ``pipe``'s UNet and VAE (instance attributes; the modules, their
    weights and every other method stay). A runner of None means: torch at ``precision``."""
    _patch_unet(pipe.unet, unet, fast_label=fast_label, precision=precision)
    _patch_vae(pipe.vae, encode, decode, precision=precision)


def _patch_unet(module: Any, runner: UNetRunner | None, *, fast_label: str | None, precision: str) -> None:
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

    original = module.forward
    torch_label = f"torch-{precision}"
    up_factor = 2 ** max(len(getattr(module.config, "block_out_channels", ())) - 1, 0)

    def forward(sample, timestep, encoder_hidden_states=None, *args, **kwargs):
        return_dict = kwargs.get("return_dict", True)
        if runner is not None and is_plain_unet_call(module, sample, timestep, encoder_hidden_states, args, kwargs,
                                                     up_factor=up_factor):
            _record(fast_label)
            out = runner(sample, timestep, encoder_hidden_states)
        else:
            _record(torch_label)
            with _autocast(precision):
                result = original(sample, timestep, encoder_hidden_states, *args, **kwargs)
            if precision == "f32":
                return result
            out = (result.sample if return_dict else result[0]).float()
        return UNet2DConditionOutput(sample=out) if return_dict else (out,)

    module.forward = forward


def _patch_vae(vae: Any, encode: PartRunner | None, decode: PartRunner | None, *, precision: str) -> None:
    import torch
    from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
    from diffusers.models.modeling_outputs import AutoencoderKLOutput

    original_encode, original_decode = vae.encode, vae.decode

    def per_item(run: PartRunner, x: torch.Tensor) -> torch.Tensor:
        if vae.use_slicing and x.shape[0] > 1:
            return torch.cat([run(item) for item in x.split(1)])
        return run(x)

    def usable(x: Any) -> bool:
        return isinstance(x, torch.Tensor) and x.dtype == torch.float32 and not vae.use_tiling

    def patched_encode(x, return_dict: bool = True):
        if encode is not None and usable(x):
            moments = per_item(encode, x)
        else:
            with _autocast(precision):
                posterior = original_encode(x, return_dict=True).latent_dist
            if precision == "f32":
                return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)
            moments = posterior.parameters.float()
        posterior = DiagonalGaussianDistribution(moments)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def patched_decode(z, return_dict: bool = True, generator=None):
        if decode is not None and usable(z):
            pixels = per_item(decode, z)
        else:
            with _autocast(precision):
                pixels = original_decode(z, return_dict=True, generator=generator).sample
            pixels = pixels.float()
        return DecoderOutput(sample=pixels) if return_dict else (pixels,)

    vae.encode = patched_encode
    vae.decode = patched_decode
