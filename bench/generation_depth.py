"""What generation depth costs, side by side in one run: a denoising step with a ControlNet (one,
and two at once) and with a LoRA against a plain step; a LoRA switch that loads the adapter against
one that finds it loaded; a prompt-cache hit (hot tier, Redis) against running the text encoder.

    .venv/bin/python bench/generation_depth.py [--size 256] [--steps 10] [--rounds 5] [--no-write]

On this CPU-only machine it runs the tiny library (workers/tiny_model.py build_tiny_library, offline,
random weights) through the engine exactly as a worker does (DiffusionEngine.load, LoraSlots,
ControlNets, LatentCache with a private redis-server). Step times come from the step callback
(seconds between the first and the last callback over the steps between them); the variants are
interleaved in rounds (rotated order) and the table shows medians. bench/gpu_sd15.py runs the same
measurements (``measure_depth``) on the SD 1.5-size model on a GPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import machine, table as markdown_table, write_section  # noqa: E402
from workers.adapters import LoraUse  # noqa: E402
from workers.controlnet import ControlUse  # noqa: E402
from workers.diffusion import DiffusionEngine, GenerateParams  # noqa: E402

SECTION = "generation-depth"
PROMPT = "a watercolor painting of a lighthouse at dusk"
NEGATIVE = "blurry, low quality"


@dataclass
class DepthSetup:
    """What ``measure_depth`` runs on: an engine, two LoRA files, ControlNet folders, a device."""

    engine: DiffusionEngine
    loras: tuple[LoraUse, LoraUse]
    controls: dict[str, ControlUse]  # canny, tile
    size: int
    steps: int
    rounds: int
    device: str = "cpu"


@dataclass
class Timed:
    name: str
    seconds: list[float] = field(default_factory=list)

    def median(self) -> float:
        return statistics.median(self.seconds)

    def spread(self) -> str:
        return f"{min(self.seconds) * 1000:.2f}–{max(self.seconds) * 1000:.2f}"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def step_seconds(engine: DiffusionEngine, latents: torch.Tensor, params: GenerateParams, *, device: str,
                 control_images: list[np.ndarray] | None = None) -> float:
    """Seconds per denoising step of one call (between the first and the last step callback)."""
    stamps: list[float] = []

    def on_step(done: int, total: int, _latents: torch.Tensor) -> bool:
        sync(device)
        stamps.append(time.perf_counter())
        return False

    engine.generate(latents, params, on_step=on_step, control_images=control_images)
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def measure_depth(setup: DepthSetup, *, cache=None, scope=None, fresh_cache: Callable[[], object] | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Timed]:
    """Every measurement of the section, as medians over interleaved rounds."""
    from workers.control_maps import canny_map, tile_map

    engine, device = setup.engine, setup.device
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (setup.size, setup.size, 3), dtype=np.uint8)
    with torch.inference_mode():
        latents = engine.encode(image).to(device)
    maps = {"canny": canny_map(image), "tile": tile_map(image)}
    base = GenerateParams(prompt=PROMPT, negative_prompt=NEGATIVE, strength=1.0, steps=setup.steps, seed=1)
    canny, tile = setup.controls["canny"], setup.controls["tile"]
    lora_a, lora_b = setup.loras
    variants: dict[str, tuple[GenerateParams, list[np.ndarray] | None]] = {
        "plain step": (base, None),
        "ControlNet step (canny)": (replace(base, controls=(canny,)), [maps["canny"]]),
        "Multi-ControlNet step (canny + tile)": (replace(base, controls=(canny, tile)), [maps["canny"], maps["tile"]]),
        "LoRA step (1 adapter)": (replace(base, loras=(lora_a,)), None),
    }
    results = {name: Timed(name) for name in variants}
    for name, (params, control) in variants.items():  # warm-up: loads, first-call kernels
        step_seconds(engine, latents, params, device=device, control_images=control)
    for r in range(setup.rounds):
        names = list(variants)
        for name in names[r % len(names):] + names[:r % len(names)]:
            params, control = variants[name]
            results[name].seconds.append(step_seconds(engine, latents, params, device=device, control_images=control))
        log(f"round {r + 1}/{setup.rounds}: " + ", ".join(f"{n.split(' (')[0]} {results[n].seconds[-1] * 1000:.1f} ms"
                                                         for n in names))

    # LoRA switches: with one slot every switch loads the file; with two, both stay loaded
    load, cached = Timed("LoRA switch, adapter loaded from its file"), Timed("LoRA switch, adapter already loaded")
    slots = engine.loras
    slots.slots = 1
    slots.activate((lora_b,))  # untimed: now only B is loaded, so every switch below loads one
    for _ in range(setup.rounds * 2):
        for use in (lora_a, lora_b):
            sync(device)
            started = time.perf_counter()
            slots.activate((use,))
            sync(device)
            load.seconds.append(time.perf_counter() - started)
    slots.slots = 2
    slots.activate((lora_a,))
    slots.activate((lora_b,))
    for _ in range(setup.rounds * 2):
        for use in (lora_a, lora_b):
            sync(device)
            started = time.perf_counter()
            slots.activate((use,))
            sync(device)
            cached.seconds.append(time.perf_counter() - started)
    slots.activate(())
    results[load.name], results[cached.name] = load, cached

    # the prompt: the text encoder against the prompt cache's tiers
    encode = Timed("prompt: text encoder (prompt + negative)")
    for _ in range(setup.rounds * 4):
        sync(device)
        started = time.perf_counter()
        engine.encode_prompt(PROMPT, NEGATIVE)
        sync(device)
        encode.seconds.append(time.perf_counter() - started)
    results[encode.name] = encode
    if cache is not None:
        from cache.keys import PromptSpec

        spec = PromptSpec(model="bench", revision=None, dtype=str(engine.dtype), prompt=PROMPT,
                          negative_prompt=NEGATIVE)
        compute = lambda: engine.encode_prompt(PROMPT, NEGATIVE).as_dict()  # noqa: E731
        cache.fetch_or_compute_prompt(spec, scope=scope, compute=compute, device=device)
        hot = Timed("prompt: cache hit, hot tier")
        for _ in range(setup.rounds * 4):
            started = time.perf_counter()
            assert cache.fetch_or_compute_prompt(spec, scope=scope, compute=compute, device=device).tier == "hot"
            hot.seconds.append(time.perf_counter() - started)
        results[hot.name] = hot
        if fresh_cache is not None:
            others = [fresh_cache() for _ in range(setup.rounds * 4)]  # each with an empty hot tier
            redis_hit = Timed("prompt: cache hit, Redis (another worker)")
            for other in others:
                started = time.perf_counter()
                assert other.fetch_or_compute_prompt(spec, scope=scope, compute=compute, device=device).tier == "redis"
                redis_hit.seconds.append(time.perf_counter() - started)
            results[redis_hit.name] = redis_hit
    return results


VERSUS = {
    "ControlNet step (canny)": "plain step",
    "Multi-ControlNet step (canny + tile)": "plain step",
    "LoRA step (1 adapter)": "plain step",
    "LoRA switch, adapter loaded from its file": "LoRA switch, adapter already loaded",
    "prompt: cache hit, hot tier": "prompt: text encoder (prompt + negative)",
    "prompt: cache hit, Redis (another worker)": "prompt: text encoder (prompt + negative)",
}
HEADER = ("what", "median ms", "range ms", "against", "ratio")


def rows_for(results: dict[str, Timed]) -> list[tuple[str, ...]]:
    rows = []
    for name, timed in results.items():
        versus = VERSUS.get(name)
        if versus and versus in results:
            ratio = timed.median() / results[versus].median()
            if name.startswith(("prompt: cache", "LoRA switch, adapter loaded")):
                ratio_text = (f"{1 / ratio:,.1f}× faster" if ratio < 1 else f"{ratio:,.1f}× slower") \
                    if name.startswith("prompt") else f"{ratio:,.1f}× the cached switch"
            else:
                ratio_text = f"{ratio:.2f}× a plain step"
            rows.append((name, f"{timed.median() * 1000:.2f}", timed.spread(), versus, ratio_text))
        else:
            rows.append((name, f"{timed.median() * 1000:.2f}", timed.spread(), "—", "—"))
    return rows


def reading_of(results: dict[str, Timed], *, tiny: bool = True) -> str:
    """What the figures of this run say, in words (the ratios come from the run); ``tiny``: the tiny
    model on a CPU (else the SD 1.5-size one, bench/gpu_sd15.py)."""
    m = {name: timed.median() for name, timed in results.items()}
    plain = m["plain step"]
    load, cached = m["LoRA switch, adapter loaded from its file"], m["LoRA switch, adapter already loaded"]
    text = (f"Reading it: a ControlNet is a second, smaller UNet encoder run at every step (and its conditioning "
            f"embedding at full image resolution), so {'on the tiny model' if tiny else 'at SD 1.5 size'} a ControlNet step costs "
            f"{m['ControlNet step (canny)'] / plain:.1f}× a plain one and two ControlNets "
            f"{m['Multi-ControlNet step (canny + tile)'] / plain:.1f}×; a LoRA through PEFT adds two thin matrix "
            f"products beside each adapted projection, {m['LoRA step (1 adapter)'] / plain:.2f}× here. Loading an "
            f"adapter from its file costs {load / plain:.1f} plain steps ({load / cached:.0f}× a switch between "
            "loaded adapters, which is `set_adapters` walking the model's modules), which is why each worker keeps "
            "up to PIXELMILL_LORA_SLOTS adapters loaded and batches only requests with the same set.")
    if "prompt: cache hit, hot tier" in m:
        encode = m["prompt: text encoder (prompt + negative)"]
        text += (f" A prompt-cache hit takes {m['prompt: cache hit, hot tier'] * 1000:.2f} ms from the hot tier "
                 f"against {encode * 1000:.1f} ms for the text encoder.")
        if tiny:
            text += (" The tiny encoder is five layers of width 32, so the saving is small in absolute terms here; "
                     "on SD 1.5's 123 M-parameter text encoder a hit saves a full encoder pass per request "
                     "(`bench/gpu_sd15.py --depth` runs these rows on the SD 1.5-size model).")
    return text


def render(args: argparse.Namespace, table: str, *, elapsed: float, loads: tuple[float, float],
           reading: str) -> str:
    command = " ".join([".venv/bin/python bench/generation_depth.py", *sys.argv[1:]])
    return "\n".join([
        "## Generation depth: ControlNet, LoRA and the prompt cache (`bench/generation_depth.py`)",
        "",
        f"Machine: {machine()}, {args.threads} intra-op thread(s); load average {loads[0]:.1f} at the start, "
        f"{loads[1]:.1f} at the end. Command: `{command}` (`make bench-depth`); all figures from one run "
        f"({time.strftime('%Y-%m-%d')}, {elapsed:.0f} s).",
        "",
        f"The tiny library (workers/tiny_model.py `build_tiny_library`: random weights, offline) through the "
        f"engine as a worker runs it: {args.size}×{args.size} px, {args.steps} steps at strength 1.0, guidance 7.5 "
        f"(a UNet batch of 2 per step), fp32. Step times are read from the step callback; the four step variants "
        f"are interleaved in {args.rounds} rounds (rotated order); medians and the range over rounds. The LoRA "
        "switch is `LoraSlots.activate` between two adapters: with one slot each switch deletes one adapter and "
        "loads the other from its .safetensors file (`load_lora_weights` + `set_adapters`), with two slots both "
        "stay loaded and a switch is `set_adapters` alone. The prompt rows are the text encoder on the prompt and "
        "the negative prompt against `LatentCache.fetch_or_compute_prompt` answering from this process's hot tier "
        "(one Redis GETEX for the scope's generation included) and from a private redis-server (another worker: "
        "an empty hot tier, the safetensors bytes fetched and decoded).",
        "",
        table,
        "",
        reading,
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (latent side = size / 8)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: stable figures on a shared 2-core machine)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    from cache.backend import Backend
    from cache.scopes import scope_for
    from cache.service import CacheConfig, LatentCache
    from stack.redis_server import RedisServer
    from workers.tiny_model import build_tiny_library, build_tiny_lora

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="pixelmill-depth-bench-") as scratch:
        library = build_tiny_library(Path(scratch) / "models")
        second = build_tiny_lora(library / "loras" / "second.safetensors", seed=7)
        engine = DiffusionEngine.load(str(library / "tiny"), lora_slots=2)
        loras = (LoraUse(name="tiny-style", path=str(library / "loras" / "tiny-style.safetensors"), fingerprint="a",
                         text_encoder=True),
                 LoraUse(name="second", path=str(second), fingerprint="b", text_encoder=True))
        controls = {kind: ControlUse(name=kind, path=str(library / "controlnets" / kind), fingerprint=kind, type=kind)
                    for kind in ("canny", "tile")}
        redis_server = RedisServer(data_dir=Path(scratch) / "redis", appendonly=False).start()
        try:
            import redis

            client = redis.Redis.from_url(redis_server.url)

            def fresh_cache() -> LatentCache:
                return LatentCache(Backend(client), config=CacheConfig())

            setup = DepthSetup(engine=engine, loras=loras, controls=controls, size=args.size, steps=args.steps,
                               rounds=args.rounds)
            results = measure_depth(setup, cache=fresh_cache(), scope=scope_for(tenant="bench", mode="tenant"),
                                    fresh_cache=fresh_cache)
        finally:
            redis_server.stop()
    elapsed = time.perf_counter() - started
    table = markdown_table(HEADER, rows_for(results), align="lrrll")
    print()
    print(table)
    print(f"\n{machine()}, {args.threads} thread(s), {elapsed:.0f} s")
    if not args.no_write:
        write_section(SECTION, render(args, table, elapsed=elapsed, loads=(load_start, os.getloadavg()[0]),
                                      reading=reading_of(results)), path=args.out)
        print(f"written to {args.out} (section {SECTION})")


if __name__ == "__main__":
    main()
