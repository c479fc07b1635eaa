"""The OpenVINO backend: convert a pipeline's UNet and VAE once, keep the model files, compile them.

A conversion is three OpenVINO model files (unet, vae_encoder, vae_decoder: .xml + .bin, weights
kept in fp32) and a meta.json, in ``<cache_dir>/<model>-<hash>-ov<version>-f32/``: the hash is of
the model's UNet and VAE configs and their weight files' names, sizes and modification times, so
a changed model converts again, and so does a new OpenVINO. Every worker and every restart reuses
it. The inference precision (bf16 or f32) is a compile hint on these same files, so bf16 and f32
workers share one conversion. Written atomically (a temporary folder, then a rename) under a file
lock: one process converts while the others wait, then load what it wrote.

The UNet is traced with a latent size that is not a multiple of its upsampling factor, so the
graph sizes each upsampling from its skip connection: one converted graph runs every batch size,
latent size and prompt length (dynamic shapes).

``conversion_status()`` says what this process is converting, for the worker's heartbeat.
"""

from __future__ import annotations

import fcntl
import gc
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.cpu_backend import ConversionError, ParityError

log = logging.getLogger(__name__)

PARTS = ("unet", "vae_encoder", "vae_decoder")
WEIGHTS = "f32"  # the precision the model files keep; bf16 is chosen when compiling
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".ckpt")
TEXT_TOKENS = 77  # the prompt length the UNet is traced (and parity-checked) with

_status_lock = threading.Lock()
_status: dict[str, Any] | None = None


def conversion_status() -> dict[str, Any] | None:
    """What this process is converting now: {"model", "part", "step", "steps", "elapsed_s",
    "waiting"} (waiting: for another process that converts the same model), or None."""
    with _status_lock:
        if _status is None:
            return None
        return {**{k: v for k, v in _status.items() if k != "since"},
                "elapsed_s": round(time.monotonic() - _status["since"], 1)}


def _set_status(**fields: Any) -> None:
    global _status
    with _status_lock:
        _status = None if not fields else {**fields, "since": (_status or {}).get("since", time.monotonic())}


# --- where a conversion lives ------------------------------------------------------------------

def openvino_version() -> str:
    import openvino

    return openvino.__version__.split("-")[0]


def default_cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / "pixelmill-openvino"


def model_folder(model: str, revision: str | None) -> Path | None:
    """The local folder of ``model``: itself, or its snapshot in the hub cache (never downloads)."""
    if Path(model).is_dir():
        return Path(model)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, revision=revision, local_files_only=True))
    except Exception:  # not a cached hub model either: the caller hashes the weights themselves
        return None


def _config_text(module: Any) -> str:
    config = {k: v for k, v in dict(module.config).items() if not k.startswith("_")}
    return json.dumps(config, sort_keys=True, default=str)


def model_fingerprint(pipe: Any, *, model: str, revision: str | None) -> str:
    """sha256 of the UNet's and VAE's configs and their weight files (name, size, mtime); of the
    weights' bytes when the model has no local folder."""
    digest = hashlib.sha256()
    if Path(model).is_file():  # a single-file checkpoint: the file stands for the weights of both
        stat = Path(model).resolve().stat()
        digest.update(f"{Path(model).name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    folder = model_folder(model, revision)
    for name in ("unet", "vae"):
        module = getattr(pipe, name)
        digest.update(f"{name}\n{_config_text(module)}\n".encode())
        files = sorted(p for p in (folder / name).glob("*") if p.suffix in WEIGHT_SUFFIXES) if folder else []
        if Path(model).is_file():
            continue
        if files:
            for path in files:
                stat = path.resolve().stat()
                digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        else:
            for key, tensor in sorted(module.state_dict().items()):
                digest.update(key.encode())
                digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def conversion_key(model: str, fingerprint: str, version: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model.rstrip("/")).name or "model").strip("-.")[:40] or "model"
    return f"{slug}-{fingerprint[:16]}-ov{version}-{WEIGHTS}"


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def read_meta(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None


@contextmanager
def _locked(path: Path, *, model: str) -> Iterator[None]:
    """An exclusive lock on ``path`` (across processes, and threads of this one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("openvino: another process is converting %s; waiting for it", model)
            _set_status(model=model, part=None, step=0, steps=len(PARTS), waiting=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- converting ----------------------------------------------------------------------------

def _export_modules(pipe: Any) -> dict[str, tuple[Any, tuple[Any, ...]]]:
    """Each part as a module with plain tensor inputs and one output, with its example inputs."""
    import torch

    unet, vae = pipe.unet, pipe.vae
    blocks = len(unet.config.block_out_channels)
    up_factor = 2 ** max(blocks - 1, 0)
    side = up_factor + 1 if up_factor > 1 else 9  # not a multiple: upsampling sized from the skips
    cross = unet.config.cross_attention_dim
    generator = torch.Generator().manual_seed(0)

    class UNetPart(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states):
            return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]

    class EncoderPart(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vae = vae

        def forward(self, pixels):
            moments = self.vae.encoder(pixels)
            return self.vae.quant_conv(moments) if self.vae.quant_conv is not None else moments

    class DecoderPart(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vae = vae

        def forward(self, latents):
            if self.vae.post_quant_conv is not None:
                latents = self.vae.post_quant_conv(latents)
            return self.vae.decoder(latents)

    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    latent_channels = vae.config.latent_channels
    return {
        "unet": (UNetPart(), (torch.randn(2, unet.config.in_channels, side, side, generator=generator),
                              torch.tensor(500.0), torch.randn(2, TEXT_TOKENS, cross, generator=generator))),
        "vae_encoder": (EncoderPart(), (torch.randn(1, vae.config.in_channels, 8 * factor, 8 * factor,
                                                    generator=generator),)),
        "vae_decoder": (DecoderPart(), (torch.randn(1, latent_channels, 8, 8, generator=generator),)),
    }


def convert(pipe: Any, target: Path, *, model: str, fingerprint: str) -> dict[str, Any]:
    """Convert ``pipe``'s parts into ``target`` (which must not exist yet): written into a
    temporary folder beside it, then renamed. Returns the meta written."""
    import openvino as ov
    import torch

    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    meta: dict[str, Any] = {"model": model, "fingerprint": fingerprint, "openvino": openvino_version(),
                            "weights": WEIGHTS, "parts": {}, "created_at": time.time()}
    try:
        for step, (name, (module, example)) in enumerate(_export_modules(pipe).items(), start=1):
            _set_status(model=model, part=name, step=step, steps=len(PARTS), waiting=False)
            started = time.monotonic()
            with torch.no_grad():
                traced = torch.jit.trace(module.eval(), example, check_trace=False, strict=False)
                converted = ov.convert_model(traced)
            ov.save_model(converted, scratch / f"{name}.xml", compress_to_fp16=False)
            del traced, converted
            meta["parts"][name] = {"seconds": round(time.monotonic() - started, 2),
                                   "bytes": sum((scratch / f"{name}{ext}").stat().st_size for ext in (".xml", ".bin"))}
            log.info("openvino: converted the %s of %s in %.1f s", name, model, meta["parts"][name]["seconds"])
        meta["bytes"] = folder_bytes(scratch)
        (scratch / "meta.json").write_text(json.dumps(meta, indent=1))
        os.rename(scratch, target)
    except Exception as e:
        shutil.rmtree(scratch, ignore_errors=True)
        raise ConversionError(f"converting {model} for OpenVINO failed: {e}") from e
    return meta


def ensure_converted(pipe: Any, *, model: str, revision: str | None, cache_dir: str | Path | None) -> tuple[Path, dict[str, Any], bool]:
    """The conversion folder of ``pipe`` (converting it if no process has yet), its meta, and
    whether this call converted it."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    fingerprint = model_fingerprint(pipe, model=model, revision=revision)
    target = root / conversion_key(model, fingerprint, openvino_version())
    meta = read_meta(target)
    if meta is not None:
        return target, meta, False
    try:
        with _locked(root / f".{target.name}.lock", model=model):
            meta = read_meta(target)
            if meta is not None:  # another process finished it while this one waited
                return target, meta, False
            if target.exists():  # a partial folder without meta.json (older crash): replace it
                shutil.rmtree(target, ignore_errors=True)
            return target, convert(pipe, target, model=model, fingerprint=fingerprint), True
    finally:
        _set_status()


# --- compiling and running -------------------------------------------------------------------

_core_lock = threading.Lock()
_core: Any = None


def core() -> Any:
    global _core
    with _core_lock:
        if _core is None:
            import openvino as ov

            _core = ov.Core()
        return _core


class CompiledPart:
    """One compiled model as a callable on torch tensors; thread-safe (an infer request per thread)."""

    def __init__(self, compiled: Any, *, name: str) -> None:
        self.compiled = compiled
        self.name = name
        self._local = threading.local()

    def _request(self) -> Any:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def run(self, *inputs: Any) -> Any:
        import numpy as np
        import torch

        arrays = [np.ascontiguousarray(x.detach().cpu().numpy()) if isinstance(x, torch.Tensor) else x
                  for x in inputs]
        request = self._request()
        request.infer(arrays, share_inputs=True)
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    def __call__(self, *inputs: Any) -> Any:
        return self.run(*inputs)


class CompiledUNet(CompiledPart):
    def __call__(self, sample: Any, timestep: Any, encoder_hidden_states: Any) -> Any:
        import numpy as np
        import torch

        step = float(timestep.flatten()[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
        return self.run(sample, np.array(step, dtype=np.float32), encoder_hidden_states)


def compile_part(folder: Path, name: str, *, precision: str, threads: int | None) -> Any:
    config = {"INFERENCE_NUM_THREADS": int(threads or os.cpu_count() or 1), "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_PRECISION_HINT": precision}
    return core().compile_model(str(folder / f"{name}.xml"), "CPU", config)


def parity_diff(unet: Any, compiled_f32: CompiledUNet) -> float:
    """Largest |OpenVINO fp32 − torch fp32| of the UNet's output on a fixed input (batch 1, an
    8×8 latent, 77 tokens: cheap even for SD 1.5)."""
    import torch

    generator = torch.Generator().manual_seed(1234)
    sample = torch.randn(1, unet.config.in_channels, 8, 8, generator=generator)
    hidden = torch.randn(1, TEXT_TOKENS, unet.config.cross_attention_dim, generator=generator)
    timestep = torch.tensor(500.0)
    with torch.inference_mode():
        expected = unet.forward(sample, timestep, hidden, return_dict=False)[0]
    got = compiled_f32(sample, timestep, hidden)
    return float((got - expected).abs().max())


@dataclass
class Compiled:
    unet: CompiledUNet
    vae_encoder: CompiledPart
    vae_decoder: CompiledPart
    folder: Path
    meta: dict[str, Any]
    converted_now: bool
    parity: float
    version: str


def prepare(pipe: Any, *, model: str, revision: str | None, cache_dir: str | Path | None, precision: str,
            threads: int | None, tolerance: float) -> Compiled:
    """Convert (once) and compile ``pipe``'s parts at ``precision``, after checking the fp32 UNet
    against torch (ParityError beyond ``tolerance``). Call before the pipeline's forwards are
    wrapped: the parity check runs the original torch UNet."""
    folder, meta, converted_now = ensure_converted(pipe, model=model, revision=revision, cache_dir=cache_dir)
    started = time.monotonic()
    unet_f32 = CompiledUNet(compile_part(folder, "unet", precision="f32", threads=threads), name="unet")
    diff = parity_diff(pipe.unet, unet_f32)
    if not diff <= tolerance:  # NaN fails too
        raise ParityError(f"its fp32 UNet differs from torch by {diff:.3g} on the parity input "
                          f"(limit {tolerance:g}; conversion {folder})")
    if precision == "f32":
        unet = unet_f32
    else:  # let the f32 compile go before the bf16 one is made: a worker's peak memory is one UNet less
        del unet_f32
        gc.collect()
        unet = CompiledUNet(compile_part(folder, "unet", precision=precision, threads=threads), name="unet")
    encoder = CompiledPart(compile_part(folder, "vae_encoder", precision=precision, threads=threads), name="vae_encoder")
    decoder = CompiledPart(compile_part(folder, "vae_decoder", precision=precision, threads=threads), name="vae_decoder")
    log.info("openvino: compiled %s at %s in %.1f s; fp32 parity %.2g", model, precision,
             time.monotonic() - started, diff)
    return Compiled(unet=unet, vae_encoder=encoder, vae_decoder=decoder, folder=folder, meta=meta,
                    converted_now=converted_now, parity=diff, version=openvino_version())
