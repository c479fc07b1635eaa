"""SD 1.5 on a CPU: pixelmill's engine with the OpenVINO backend vs plain diffusers fp32, same machine, same run.

    .venv/bin/python bench/cpu_backends.py               # ~10 min on 2 cores; writes docs/benchmarks.md
    .venv/bin/python bench/cpu_backends.py --no-write    # prints only
    .venv/bin/python bench/cpu_backends.py --smoke       # the same code path with the tiny model, seconds

Needs no hub: bench/sd15.py builds the SD 1.5 architecture with random weights (same shapes and
kernels as the real model, so the same cost), saved in fp16 and loaded back in fp32.

1. Conversion: `pixelmill models convert --model <folder>` in a subprocess (a fresh models_dir), as
   an operator converts ahead of time: seconds per part (from the conversion's meta.json), the whole
   command (load, convert, parity check, compile), its peak RSS, and the disk size.
2. Whole img2img jobs, 256×256, 10 steps at strength 1.0 (10 UNet calls with classifier-free
   guidance), guidance 7.5, batch 1, rounds interleaved (rotated order), medians:
   raw diffusers fp32 (`StableDiffusionImg2ImgPipeline(...)(image=...)`: VAE encode, loop, decode)
   vs the engine on the CPU device (`DiffusionEngine`: `encode` then `generate`, the two halves a
   job's stages run) with OpenVINO bf16, OpenVINO f32, and torch bf16 autocast (the fallback).
3. One UNet step with CFG (batch 2, 64×64 latent: a 512² image) per backend, interleaved, medians.
4. Parity: the OpenVINO fp32 UNet vs torch fp32 on the job's input (largest |difference|), and the
   engine's images, OpenVINO f32 and bf16 vs torch f32, same seed (largest pixel difference, 0–255).

Every variant shares one set of weights in memory: the engines get shallow copies of the loaded
pipeline's UNet and VAE modules (their wrappers are per object; the weight tensors are shared),
so the run fits in ~12 GB.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import machine, median, table, write_section  # noqa: E402

SECTION = "cpu-backends"
PROMPT = "a photo of an astronaut riding a horse on the moon"
SEED = 7


def build(folder: Path, smoke: bool) -> Path:
    if smoke:
        from workers.tiny_model import build_tiny_pipeline

        return build_tiny_pipeline(folder)
    from bench.sd15 import build_sd15_pipeline

    return build_sd15_pipeline(folder, dtype=torch.float16)


def convert_ahead(model: Path, models_dir: Path, threads: int) -> dict:
    """`pixelmill models convert` in a subprocess: its wall time, peak RSS and the meta it wrote."""
    env = {**os.environ, "PIXELMILL_MODELS_DIR": str(models_dir), "PIXELMILL_TORCH_THREADS": str(threads),
           "PIXELMILL_CPU_PRECISION": "bf16", "PIXELMILL_DIFFUSION_MODEL": str(model)}
    started = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    done = subprocess.run([sys.executable, "-m", "stack.cli", "models", "convert", "--model", str(model)],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"pixelmill models convert failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    (folder,) = [p for p in (models_dir / "openvino").iterdir() if not p.name.startswith(".")]
    meta = json.loads((folder / "meta.json").read_text())
    return {"seconds": seconds, "peak_rss": max(peak, before) * 1024, "meta": meta, "folder": folder,
            "output": done.stdout.strip()}


def engine_on(base, model: Path, *, backend: str, precision: str, cache_dir: Path, threads: int):
    """The engine over a shallow copy of ``base`` (shared weights, its own wrappers)."""
    from diffusers import StableDiffusionImg2ImgPipeline

    from workers.cpu_backend import CpuBackendOptions
    from workers.diffusion import DiffusionEngine, EngineOptions

    pipe = StableDiffusionImg2ImgPipeline(**{**base.components, "unet": copy.copy(base.unet),
                                             "vae": copy.copy(base.vae)})
    pipe.set_progress_bar_config(disable=True)
    options = EngineOptions(vae_slicing="off", cpu=CpuBackendOptions(backend=backend, precision=precision,
                                                                      cache_dir=str(cache_dir), threads=threads))
    started = time.perf_counter()
    engine = DiffusionEngine(pipe, model=str(model), revision=None, device="cpu", dtype=torch.float32, options=options)
    return engine, time.perf_counter() - started


PHASES = {  # engines of each phase; each phase measures raw diffusers again, side by side
    "bf16": ("ov-bf16", "torch-bf16"),
    "f32": ("ov-f32",),
}
BACKENDS = {"ov-bf16": ("openvino", "bf16"), "ov-f32": ("openvino", "f32"), "torch-bf16": ("torch", "bf16"),
            "torch-f32": ("torch", "f32")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--smoke", action="store_true", help="the tiny model: checks the code path in seconds")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started_all = time.perf_counter()
    load_start = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="pixelmill-cpu-backends-"))
    try:
        run_all(args, tmp, started_all=started_all, load_start=load_start)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the model and its conversion: ~6 GB


def run_all(args: argparse.Namespace, tmp: Path, *, started_all: float, load_start: float) -> None:
    from diffusers import StableDiffusionImg2ImgPipeline
    from diffusers.utils import logging as diffusers_logging

    from workers.cpu_backend import cpu_flags, has_bf16_units

    t = time.perf_counter()
    model = build(tmp / ("tiny" if args.smoke else "sd15"), args.smoke)
    print(f"built {model} in {time.perf_counter() - t:.0f} s", flush=True)
    conversion = convert_ahead(model, tmp / "models", args.threads)
    print(conversion["output"], f"(peak RSS {conversion['peak_rss'] / 2**30:.1f} GiB)", flush=True)

    diffusers_logging.set_verbosity_error()  # the safety-checker notice, once per pipeline built
    base = StableDiffusionImg2ImgPipeline.from_pretrained(model, dtype=torch.float32, safety_checker=None,
                                                          requires_safety_checker=False)
    base.set_progress_bar_config(disable=True)
    result: dict = {"args": args, "conversion": conversion, "load_s": {}, "job_s": {}, "job_range": {}, "step_s": {},
                    "unet_diff": {}, "pixel_diff": {}}
    flags = cpu_flags() or frozenset()
    bf16_units = has_bf16_units(flags)
    if not bf16_units:  # the engine runs f32 here (bf16 would be emulated): there is no bf16 path to measure
        print("this CPU has no bf16 units (avx512_bf16, amx_bf16): measuring the f32 phase only", flush=True)
    for phase, keys in PHASES.items():  # one phase at a time: the compiled models of one phase in memory
        if phase == "bf16" and not bf16_units:
            continue
        measure_phase(phase, keys, base=base, model=model, cache_dir=tmp / "models" / "openvino", args=args,
                      result=result)
        gc.collect()
    result.update(bf16_units=bf16_units, amx="amx_bf16" in flags,
                  loads=(load_start, os.getloadavg()[0]), elapsed=time.perf_counter() - started_all)
    report(result)


def measure_phase(phase: str, keys: tuple[str, ...], *, base, model: Path, cache_dir: Path,
                  args: argparse.Namespace, result: dict) -> None:
    from PIL import Image
    from skimage import data

    from workers.cpu_backend import clear_route, last_route
    from workers.diffusion import GenerateParams, normalise_for_diffusion

    engines = {}
    for key in (*keys, "torch-f32"):
        backend, precision = BACKENDS[key]
        engines[key], seconds = engine_on(base, model, backend=backend, precision=precision, cache_dir=cache_dir,
                                          threads=args.threads)
        assert engines[key].backend.label == f"{backend}-{precision}", engines[key].backend
        if backend == "openvino":
            result["load_s"][key] = seconds
            print(f"{key}: compiled and parity-checked in {seconds:.1f} s", flush=True)

    photo = normalise_for_diffusion(data.astronaut(), size=args.size)
    params = GenerateParams(prompt=PROMPT, strength=1.0, steps=args.steps, guidance=7.5, seed=SEED)

    def raw() -> np.ndarray:
        with torch.inference_mode():
            return base(prompt=PROMPT, image=Image.fromarray(photo), strength=1.0, num_inference_steps=args.steps,
                        guidance_scale=7.5, generator=torch.Generator().manual_seed(SEED), output_type="np").images[0]

    def job(key: str) -> Callable[[], np.ndarray]:
        engine = engines[key]

        def run() -> np.ndarray:
            clear_route()
            with torch.inference_mode():
                image = engine.generate(engine.encode(photo), params)
            ran = last_route() or engine.backend.label  # None: an untouched (torch fp32) pipeline
            assert ran == engine.backend.label, (ran, engine.backend.label)
            return image
        return run

    latent = args.size // 8 if args.smoke else 64
    unet_in = (torch.randn(2, 4, latent, latent, generator=torch.Generator().manual_seed(1)),
               torch.tensor(500), torch.randn(2, 77, base.unet.config.cross_attention_dim,
                                                generator=torch.Generator().manual_seed(2)))

    def unet_step(key: str) -> Callable[[], torch.Tensor]:
        unet = engines[key]._pipe.unet

        def run() -> torch.Tensor:
            with torch.inference_mode():
                return unet(*unet_in, return_dict=False)[0]
        return run

    jobs = {f"raw@{phase}": raw, **{key: job(key) for key in keys}}
    steps = {f"torch-f32@{phase}": unet_step("torch-f32"), **{key: unet_step(key) for key in keys}}
    for run in (*jobs.values(), *steps.values()):  # warm every path (first calls prepare kernels for a shape)
        run()
    job_s: dict[str, list[float]] = {k: [] for k in jobs}
    step_s: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(args.rounds):
        for group, times in ((jobs, job_s), (steps, step_s)):
            order = list(group)
            for key in order[r % len(order):] + order[:r % len(order)]:
                t = time.perf_counter()
                group[key]()
                times[key].append(time.perf_counter() - t)
        print(f"{phase} round {r + 1}: jobs " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in job_s.items())
              + "; UNet steps " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in step_s.items()), flush=True)
    result["job_s"].update({k: median(v) for k, v in job_s.items()})
    result["job_range"].update({k: (min(v), max(v)) for k, v in job_s.items()})
    result["step_s"].update({k: median(v) for k, v in step_s.items()})

    # parity: the UNet on the job's own input (CFG batch 2, the job's latent size), then the images
    job_in = (torch.randn(2, 4, args.size // 8, args.size // 8, generator=torch.Generator().manual_seed(3)),
              torch.tensor(901), unet_in[2])
    exact = job("torch-f32")().astype(int)
    with torch.inference_mode():
        reference = base.unet(*job_in, return_dict=False)[0]
        for key in keys:
            got = engines[key]._pipe.unet(*job_in, return_dict=False)[0]
            result["unet_diff"][key] = float((got - reference).abs().max())
            result["pixel_diff"][key] = int(np.abs(job(key)().astype(int) - exact).max())
    engines.clear()


def _s(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds < 100 else f"{seconds:.0f} s"


def report(r: dict) -> None:
    args, conv, js, ss = r["args"], r["conversion"], r["job_s"], r["step_s"]
    meta = conv["meta"]

    def span(key: str) -> str:
        return "–".join(_s(x) for x in r["job_range"][key])

    def ratio(key: str, phase: str) -> float:
        return js[f"raw@{phase}"] / js[key]

    def goal(key: str, phase: str, target: float) -> str:
        got = ratio(key, phase)
        return f"**{got:.2f}×** (goal ≥ {target:g}×: {'met' if got >= target else 'missed'})"

    bf16 = r["bf16_units"]  # phase 1 is not run without them: the engine runs f32 there
    skipped = "not run: this CPU has no bf16 units (the engine runs f32 here, as phase 2 measures)"
    jobs = table(("path (whole img2img job, batch 1)", "median", "range", "vs raw diffusers fp32 (same phase)"), [
        *([("phase 1 — raw diffusers fp32 (the baseline)", _s(js["raw@bf16"]), span("raw@bf16"), "1.00×"),
           ("phase 1 — pixelmill engine, OpenVINO bf16 (the default here)", _s(js["ov-bf16"]), span("ov-bf16"),
            goal("ov-bf16", "bf16", 4)),
           ("phase 1 — pixelmill engine, torch bf16 autocast (the fallback)", _s(js["torch-bf16"]),
            span("torch-bf16"), f"{ratio('torch-bf16', 'bf16'):.2f}×")] if bf16 else
          [("phase 1 — bf16 (OpenVINO bf16, torch bf16 autocast)", "—", "—", skipped)]),
        ("phase 2 — raw diffusers fp32 (the baseline)", _s(js["raw@f32"]), span("raw@f32"), "1.00×"),
        ("phase 2 — pixelmill engine, OpenVINO f32 (exact)", _s(js["ov-f32"]), span("ov-f32"),
         goal("ov-f32", "f32", 1.3)),
    ], align="lrrl")
    steps = table(("UNet step with CFG (batch 2, 64×64 latent)", "median", "vs torch fp32 (same phase)"), [
        *([("phase 1 — torch fp32", _s(ss["torch-f32@bf16"]), "1.00×"),
           ("phase 1 — torch bf16 autocast", _s(ss["torch-bf16"]), f"{ss['torch-f32@bf16'] / ss['torch-bf16']:.2f}×"),
           ("phase 1 — OpenVINO bf16", _s(ss["ov-bf16"]), f"{ss['torch-f32@bf16'] / ss['ov-bf16']:.2f}×")] if bf16 else
          [("phase 1 — bf16", "—", skipped)]),
        ("phase 2 — torch fp32", _s(ss["torch-f32@f32"]), "1.00×"),
        ("phase 2 — OpenVINO f32", _s(ss["ov-f32"]), f"{ss['torch-f32@f32'] / ss['ov-f32']:.2f}×"),
    ], align="lrr")
    parts = meta["parts"]
    convert = table(("conversion (`pixelmill models convert`)", "figure"), [
        ("UNet (trace + convert + save)", f"{parts['unet']['seconds']:.0f} s, {parts['unet']['bytes'] / 2**30:.2f} GiB"),
        ("VAE encoder / decoder", f"{parts['vae_encoder']['seconds']:.0f} s / {parts['vae_decoder']['seconds']:.0f} s, "
                                  f"{(parts['vae_encoder']['bytes'] + parts['vae_decoder']['bytes']) / 2**20:.0f} MiB"),
        ("the whole command (load fp32, convert, parity check, compile)", f"{conv['seconds']:.0f} s"),
        ("its peak memory (RSS)", f"{conv['peak_rss'] / 2**30:.1f} GiB"),
        ("on disk (weights kept in fp32; bf16 and f32 workers share it)", f"{meta['bytes'] / 2**30:.2f} GiB"),
        ("a worker's start with the conversion on disk: compile + parity check, bf16 / f32",
         f"{r['load_s']['ov-bf16']:.1f} s / {r['load_s']['ov-f32']:.1f} s" if bf16 else
         f"— / {r['load_s']['ov-f32']:.1f} s"),
    ])
    parity = table(("parity", "largest difference"), [
        ("OpenVINO f32 UNet vs torch fp32, the job's input (CFG batch 2, "
         f"{args.size // 8}×{args.size // 8} latent)", f"{r['unet_diff']['ov-f32']:.1e} (goal < 1e-4: "
                                                        f"{'met' if r['unet_diff']['ov-f32'] < 1e-4 else 'missed'})"),
        ("image, OpenVINO f32 vs the engine on torch fp32, same seed (0–255)", str(r["pixel_diff"]["ov-f32"])),
        *([("OpenVINO bf16 UNet vs torch fp32, same input", f"{r['unet_diff']['ov-bf16']:.3f}"),
           ("image, OpenVINO bf16 vs torch fp32 (0–255)", str(r["pixel_diff"]["ov-bf16"])),
           ("image, torch bf16 autocast vs torch fp32 (0–255)", str(r["pixel_diff"]["torch-bf16"]))] if bf16 else []),
    ])
    units = ("bf16 units: avx512_bf16" + (" and AMX" if r["amx"] else ", no AMX")) if r["bf16_units"] else "no bf16 units"
    text = f"""## SD 1.5 on a CPU: the OpenVINO backend vs plain diffusers (`make bench-cpu-backends`)

Machine: {machine()}; {units}; OpenVINO {meta['openvino']}; {args.threads} thread(s) on every side. Command:
`.venv/bin/python bench/cpu_backends.py --rounds {args.rounds} --threads {args.threads}` ({time.strftime('%Y-%m-%d')}, {r['elapsed'] / 60:.0f} min; load average
{r['loads'][0]:.1f} at the start, {r['loads'][1]:.1f} at the end). SD 1.5 architecture with random weights
(bench/sd15.py: same shapes and kernels, so the same cost as the real model), {args.size}×{args.size},
{args.steps} steps at strength 1.0 ({args.steps} UNet calls with classifier-free guidance), guidance 7.5; medians of
{args.rounds} interleaved rounds. The engine runs what a job's stages run (`encode`, then `generate`: text
encoder, loop, VAE decode); raw diffusers is one `StableDiffusionImg2ImgPipeline` call on the image. Two
phases, each with its own raw baseline measured in the same rounds: bf16 (OpenVINO bf16, torch autocast),
then f32 (OpenVINO f32), so that only one phase's compiled models are in memory at a time.

{jobs}

{steps}

{convert}

{parity}
"""
    print(text)
    if not args.no_write and not args.smoke:
        write_section(SECTION, text + NOTES)


NOTES = """
What the figures say: bf16 is where the speed is, on a CPU that has bf16 units. The AMD EPYC (Zen 4
class) these figures were first taken on has avx512_bf16 but no AMX: OpenVINO's bf16 kernels use the
AVX-512 BF16 dot products; on a Sapphire Rapids or later Xeon, AMX tiles make bf16 several times faster
again (the machine line above says which units this run had; without them phase 1 is not run). Without bf16 units pixelmill runs f32 (auto picks
torch there; `PIXELMILL_CPU_BACKEND=openvino` still gives the f32 row's gain). The f32 row is what
OpenVINO's kernels and graph fusion give at the same precision; its parity is the start-up check's
bound (1e-4). Torch bf16 autocast is what runs when a model cannot be converted, when the parity check
fails, and for calls the compiled UNet cannot take (a LoRA active, ControlNet) — on the same worker.
These machines are shared and noisy (see the range column); the ratios, measured side by side, are the figures to read.
"""


if __name__ == "__main__":
    main()
