"""What each speed option of the diffusion engine does on this machine, side by side in one run.

    .venv/bin/python bench/engine_options.py [--size 256] [--steps 10] [--rounds 5] [--threads 1] [--no-write]

The tiny random-weight pipeline (workers.tiny_model) is saved to a temporary folder and loaded once
per option set with DiffusionEngine.load(..., options=EngineOptions(...)) under HF_HUB_OFFLINE=1,
exactly as a worker loads it. Every engine then generates from the same latents (a random image
encoded once) with the same seed, strength 1.0 (so `steps` UNet calls with classifier-free
guidance, batch 2 inside the UNet per image), in interleaved rounds — each round runs every variant
once, in a rotated order — and the table shows medians:

* baseline: sdpa attention, contiguous tensors, eager UNet, VAE slicing off;
* attention=math, channels_last, torch_compile (compile + first call reported once, apart from
  the steady-state per-image time) — each at batch 1, compared with the baseline at batch 1;
* batch 8 via generate_batch (images/s compared with batch 1) and vae_slicing=on at batch 8
  (compared with the baseline at batch 8).

It also checks that each option changes the pixels by at most rounding (max |Δ| vs the baseline).
On a CPU these options are expected to matter little or to hurt: they are meant for GPUs, and
bench/gpu_sd15.py measures them there with the SD 1.5-size model.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
# A fresh inductor cache, so the compile time is a cold compile every run — what a new worker on a new
# machine pays — not a hit on an earlier run's cache. Set before torch is imported (importing it may
# fix the cache folder), removed at exit.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), f"pixelmill-inductor-{os.getpid()}")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import machine, table as markdown_table, write_section  # noqa: E402
from workers.diffusion import DiffusionEngine, EngineOptions, GenerateParams  # noqa: E402
from workers.tiny_model import build_tiny_pipeline  # noqa: E402

SECTION = "engine-options"
PROMPT = "a watercolor painting of a lighthouse at dusk"


@dataclass
class Variant:
    name: str
    short: str  # how other rows name it
    engine: DiffusionEngine
    batch: int
    versus: str | None  # the variant this one is compared with; None for the reference itself
    times: list[float] = field(default_factory=list)
    first_s: float = 0.0
    image: np.ndarray | None = None

    def per_image(self) -> float:
        return statistics.median(self.times) / self.batch


def load(folder: Path, options: EngineOptions) -> DiffusionEngine:
    return DiffusionEngine.load(str(folder), device="cpu", dtype=torch.float32, options=options)


def call(variant: Variant, latents: torch.Tensor, params: list[GenerateParams]) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    images = variant.engine.generate_batch([latents] * variant.batch, params[: variant.batch])
    return time.perf_counter() - start, images[0]


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def measure(args: argparse.Namespace, folder: Path) -> tuple[list[Variant], dict[str, float]]:
    off = EngineOptions(vae_slicing="off")
    engines = {
        "baseline": load(folder, off),
        "math": load(folder, EngineOptions(attention="math", vae_slicing="off")),
        "channels_last": load(folder, EngineOptions(channels_last=True, vae_slicing="off")),
        "compile": load(folder, EngineOptions(torch_compile=True, vae_slicing="off")),
        "slicing": load(folder, EngineOptions(vae_slicing="on")),
    }
    b = args.batch
    variants = [
        Variant("baseline: sdpa, contiguous, eager, VAE slicing off", "baseline", engines["baseline"], 1, None),
        Variant("attention=math", "math", engines["math"], 1, "baseline"),
        Variant("channels_last", "channels_last", engines["channels_last"], 1, "baseline"),
        Variant("torch_compile (steady state)", "compile", engines["compile"], 1, "baseline"),
        Variant(f"baseline at batch {b} (generate_batch)", f"baseline@{b}", engines["baseline"], b, "baseline"),
        Variant(f"vae_slicing=on at batch {b}", f"slicing@{b}", engines["slicing"], b, f"baseline@{b}"),
    ]
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    latents = engines["baseline"].encode(image)
    params = [GenerateParams(prompt=PROMPT, strength=1.0, steps=args.steps, seed=i) for i in range(b)]

    extra: dict[str, float] = {}
    for variant in variants:  # first calls, untimed except compile's (that is the compile cost)
        variant.first_s, variant.image = call(variant, latents, params)
        if variant.engine is engines["compile"]:
            extra["compile_first_s"] = variant.first_s
        print(f"  first call  {variant.name:<52} {fmt_s(variant.first_s)}", flush=True)
    for round_ in range(args.rounds):
        shift = round_ % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            elapsed, _ = call(variant, latents, params)
            variant.times.append(elapsed)
        print(f"  round {round_ + 1}/{args.rounds}: "
              + ", ".join(f"{v.short} {fmt_s(v.times[-1])}" for v in variants), flush=True)
    return variants, extra


def rows_for(variants: list[Variant], extra: dict[str, float]) -> list[tuple[str, ...]]:
    by_short = {v.short: v for v in variants}
    rows: list[tuple[str, ...]] = []
    for variant in variants:
        per = variant.per_image()
        spread = f"{fmt_s(min(variant.times) / variant.batch)}–{fmt_s(max(variant.times) / variant.batch)}"
        if variant.versus is None:
            ratio, delta = "1.00× (reference)", "—"
        else:
            ref = by_short[variant.versus]
            ratio = f"{ref.per_image() / per:.2f}× vs {ref.short if ref.batch == variant.batch else 'batch 1'}"
            delta = str(int(np.abs(variant.image.astype(int) - ref.image.astype(int)).max()))
        rows.append((variant.name, str(variant.batch), fmt_s(per), spread, f"{1 / per:.2f}", ratio, delta))
        if variant.name.startswith("torch_compile"):
            rows.append(("torch_compile: compile + first call (cold inductor cache), once", "1",
                         fmt_s(extra["compile_first_s"]), "—", "—",
                         f"{extra['compile_first_s'] / per:.0f}× a steady call", "—"))
    return rows


HEADER = ("variant", "batch", "per image (median)", "range", "images/s", "speed vs reference", "max pixel Δ")


def verdict_of(variants: list[Variant]) -> str:
    """One clause per option: its median ratio and in how many of the interleaved rounds it beat its
    reference (a paired count: both ran in the same round, seconds apart), e.g.
    "attention=math 0.86× (slower in 5 of 5 rounds)"."""
    by_short = {v.short: v for v in variants}
    clauses = []
    for variant in variants:
        if variant.versus is None:
            continue
        ref = by_short[variant.versus]
        ratio = ref.per_image() / variant.per_image()
        wins = sum(mine / variant.batch < theirs / ref.batch for mine, theirs in zip(variant.times, ref.times))
        rounds = len(variant.times)
        if wins in (0, rounds):
            word = "faster in every round" if wins else "slower in every round"
        elif ratio >= 1:
            word = f"faster in {wins} of {rounds} rounds: no clear difference"
        else:
            word = f"slower in {rounds - wins} of {rounds} rounds: no clear difference"
        name = {"compile": "torch_compile (steady state)",
                f"baseline@{variant.batch}": f"batch {variant.batch} vs batch 1"}.get(variant.short, variant.name)
        clauses.append(f"{name} {ratio:.2f}× ({word})")
    return "; ".join(clauses)


def render(args: argparse.Namespace, table: str, *, verdict: str, loads: tuple[float, float],
           elapsed: float) -> str:
    command = " ".join([".venv/bin/python bench/engine_options.py", *sys.argv[1:]])
    return "\n".join([
        "## Engine speed options on CPU (`bench/engine_options.py`)",
        "",
        f"Machine: {machine()}, {args.threads} intra-op thread(s); load average {loads[0]:.1f} at the start, "
        f"{loads[1]:.1f} at the end. Command: `{command}`; all figures from one run "
        f"({time.strftime('%Y-%m-%d')}, {elapsed:.0f} s).",
        "",
        f"Tiny random-weight pipeline (workers/tiny_model.py) loaded with `DiffusionEngine.load` once per "
        f"option set; {args.size}×{args.size} px, {args.steps} steps at strength 1.0, guidance 7.5, fp32; the "
        f"variants interleaved in {args.rounds} rounds (rotated order), medians. \"speed vs reference\" is the "
        "reference's time per image over this variant's: above 1× is faster, below 1× slower. \"max pixel Δ\" is "
        "the largest pixel difference (0–255) from the reference's first image, same seed.",
        "",
        table,
        "",
        f"This run, per image against its reference: {verdict}. On a CPU these options matter "
        "little or hurt: the differences are of the order of what moves between rounds and runs on this "
        "shared 2-core machine (see the range column; on another run of the same command, minutes "
        "apart, a ratio here can move by 0.15), and compiling costs most of a minute before the first "
        "image. They are meant for "
        "GPUs — sdpa picks fused flash / memory-efficient attention kernels there, channels_last feeds "
        "cuDNN's tensor-core convolutions, torch.compile fuses the UNet's small kernels and cuts launch "
        "overhead, and VAE slicing caps the decoder's peak memory for big batches (here, decoding one "
        "image at a time was even a little faster: a smaller working set for the caches). The figures "
        "for GPUs, with the SD 1.5-size model, come from `bench/gpu_sd15.py` (section below). One "
        "intra-op thread is the default because with two on a loaded machine every op waits at a "
        "thread barrier: a 256-px generation measured 0.6 s with one thread and 1.4–9 s with two under "
        "load average 9.",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (latent side = size / 8)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8, help="the big batch for generate_batch and VAE slicing")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: stable figures on a shared 2-core machine)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="pixelmill-engine-options-") as scratch:
        folder = build_tiny_pipeline(Path(scratch) / "tiny")
        variants, extra = measure(args, folder)
    elapsed = time.perf_counter() - started
    table = markdown_table(HEADER, rows_for(variants, extra), align="lrrrrlr")
    verdict = verdict_of(variants)
    print()
    print(table)
    print(f"\n{verdict}\n{machine()}, {args.threads} thread(s), {elapsed:.0f} s")
    if not args.no_write:
        write_section(SECTION, render(args, table, verdict=verdict, loads=(load_start, os.getloadavg()[0]), elapsed=elapsed),
                      path=args.out)
        print(f"written to {args.out} (section {SECTION})")


if __name__ == "__main__":
    main()
