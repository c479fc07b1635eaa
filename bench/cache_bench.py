"""What the latent cache saves and what it costs, measured side by side in one run.

    make bench-cache                      # prints the table and writes it into docs/benchmarks.md
    .venv/bin/python bench/cache_bench.py [--misses 3] [--no-write]

* encode on a miss (fingerprint, lookup, VAE encode, store) vs on a hit (fingerprint, lookup) with
  the SD 1.5-size VAE (random weights, same cost as the real one) at 512×512;
* the key computation (the fingerprint: pHash, thumbnail, detail map, sha256) for 512/1024/2048-px
  normalised images;
* hot-tier and Redis lookup times;
* the hit ratio over 200 submissions of which half repeat or near-repeat earlier photos (real
  cache code path — fingerprint, index, Redis, single-flight — with a stand-in encoder, so the
  workload takes seconds, not the 27 minutes 100 SD-VAE misses would).

It starts its own private redis-server.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import redis  # noqa: E402
import torch  # noqa: E402

from bench.common import machine, table, write_section  # noqa: E402
from cache.backend import Backend  # noqa: E402
from cache.fingerprint import fingerprint  # noqa: E402
from cache.keys import EncoderSpec  # noqa: E402
from cache.scopes import scope_for  # noqa: E402
from cache.service import CacheConfig, LatentCache  # noqa: E402
from workers.diffusion import normalise_for_diffusion  # noqa: E402
from stack.redis_server import RedisServer  # noqa: E402

SPEC = EncoderSpec(model="sd15-size-random", revision=None, dtype="fp32", size=512)


def sd15_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                        sample_size=512)
    return vae.eval()


def vae_encoder(vae, image: np.ndarray) -> Callable[[], torch.Tensor]:
    def compute() -> torch.Tensor:
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.inference_mode():
            return vae.encode(pixels).latent_dist.mean * 0.18215
    return compute


def timed(fn: Callable[[], object], *, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def ms(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g} µs"
    return f"{seconds * 1000:.3g} ms" if seconds < 1 else f"{seconds:.2f} s"


def run(args: argparse.Namespace, client: redis.Redis) -> list[tuple[str, str]]:
    from tests.corpus import DIFFERENT, SAME, photos

    rows: list[tuple[str, str]] = []
    base = photos()["astronaut"]
    image = normalise_for_diffusion(base, size=512)
    vae = sd15_vae()

    # --- encode: miss vs hit ------------------------------------------------------------------
    misses = []
    for i in range(args.misses):
        cache = LatentCache(Backend(client), config=CacheConfig())
        scope = scope_for(tenant=f"bench-miss-{i}-{time.time_ns()}", mode="tenant")
        start = time.perf_counter()
        outcome = cache.fetch_or_compute(image, spec=SPEC, scope=scope, compute=vae_encoder(vae, image))
        misses.append(time.perf_counter() - start)
        assert not outcome.cached
        print(f"  miss {i + 1}/{args.misses}: {ms(misses[-1])}", flush=True)
    miss = statistics.median(misses) if misses else float("nan")

    worker = LatentCache(Backend(client), config=CacheConfig())
    scope = scope_for(tenant="bench", mode="tenant")
    never = vae_encoder(vae, image)
    ref = worker.fetch_or_compute(image, spec=SPEC, scope=scope, compute=never).ref
    hot_hit = statistics.median(timed(lambda: worker.fetch_or_compute(image, spec=SPEC, scope=scope, compute=never),
                                      runs=30))
    other = LatentCache(Backend(client), config=CacheConfig())  # another worker: its hot tier is empty

    def redis_hit() -> None:
        other.hot.drop(ref)
        assert other.fetch_or_compute(image, spec=SPEC, scope=scope, compute=never).tier == "redis"

    redis_hit_s = statistics.median(timed(redis_hit, runs=30))
    jpeg = normalise_for_diffusion(SAME["jpeg-q80"](base), size=512)

    def near_hit() -> None:
        assert other.fetch_or_compute(jpeg, spec=SPEC, scope=scope, compute=never).match == "near"

    near_hit_s = statistics.median(timed(near_hit, runs=30))
    rows += [
        ("VAE encode 512×512 on a miss (fingerprint + lookup + SD 1.5-size VAE + store), median of "
         f"{args.misses}", ms(miss)),
        ("encode on a hit, hot tier (same worker)", ms(hot_hit)),
        ("encode on a hit, Redis (another worker)", ms(redis_hit_s)),
        ("encode on a near-duplicate hit (JPEG q80 re-save), Redis", ms(near_hit_s)),
        ("miss / hit ratio (hot · Redis · near-duplicate)",
         f"{miss / hot_hit:,.0f}× · {miss / redis_hit_s:,.0f}× · {miss / near_hit_s:,.0f}×"),
    ]

    # --- key computation -----------------------------------------------------------------------
    for side in (512, 1024, 2048):
        big = np.asarray(__import__("PIL.Image", fromlist=["Image"]).fromarray(base).resize((side, side)))
        rows.append((f"key (fingerprint: pHash + thumbnail + detail + sha256) of a {side}×{side} image",
                     ms(statistics.median(timed(lambda big=big: fingerprint(big), runs=10)))))

    # --- lookups ---------------------------------------------------------------------------------
    fp = fingerprint(image)
    rows += [
        ("hot-tier lookup (in-process LRU get)", ms(statistics.median(timed(lambda: worker.hot.get(ref), runs=10_000)))),
        ("Redis lookup: latent exists", ms(statistics.median(timed(lambda: worker.latents.exists(ref), runs=300)))),
        ("Redis fetch: 64 KiB latent (safetensors) → tensor",
         ms(statistics.median(timed(lambda: other.latents.fetch(ref), runs=300)))),
        ("Redis near-duplicate index lookup (MIH buckets + fingerprint compare)",
         ms(statistics.median(timed(lambda: worker.index.find(
             token=scope.token, encoder=_encoder_sig(worker, scope), fp=fp), runs=100)))),
    ]

    # --- workload: 200 submissions, half repeats or near-repeats ---------------------------------
    rows += workload(client, photos(), SAME, DIFFERENT, seed=args.seed)
    return rows


def _encoder_sig(cache: LatentCache, scope) -> str:
    from cache.keys import signature

    return signature({"encoder": SPEC.signature(), "generation": cache.generation(scope)})


def workload(client: redis.Redis, photos: dict, same: dict, different: dict, *, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    kinds = ["original", "flip-lr", "crop-5%-right", "crop-3%-top", "brighter+8", "noise-sigma16"]
    distinct = [(name, kind) for name in sorted(photos) for kind in kinds][:100]
    rng.shuffle(distinct)
    same_kinds = ["exact", "jpeg-q80", "jpeg-q90", "webp-default", "png", "resize-1", "resize+1", "resize-w-1"]
    plan: list[tuple[str, str, str | None]] = []  # (photo, variant, repeat-transform)
    queue, seen = list(distinct), []
    while queue or len(plan) < 200:
        if queue and (not seen or rng.random() < 0.5 or len(plan) - len(seen) >= 100):
            item = queue.pop()
            plan.append((*item, None))
            seen.append(item)
        else:
            plan.append((*rng.choice(seen), rng.choice(same_kinds)))
    workers = [LatentCache(Backend(client), config=CacheConfig()) for _ in range(2)]  # two worker processes
    scope = scope_for(tenant=f"bench-workload-{time.time_ns()}", mode="tenant")
    hits = false_hits = missed_repeats = 0
    tiers: dict[str, int] = {}
    start = time.perf_counter()
    for i, (name, kind, repeat) in enumerate(plan):
        cache = workers[rng.random() < 0.5]
        image = photos[name] if kind == "original" else different[kind](photos[name])
        if repeat and repeat != "exact":
            image = same[repeat](image)
        normalised = normalise_for_diffusion(image, size=512)
        outcome = cache.fetch_or_compute(normalised, spec=SPEC, scope=scope,
                                         compute=lambda: torch.zeros((1, 4, 64, 64)))
        hits += outcome.cached
        false_hits += outcome.cached and repeat is None
        missed_repeats += (not outcome.cached) and repeat is not None
        if outcome.cached:
            tiers[f"{outcome.tier}/{outcome.match}"] = tiers.get(f"{outcome.tier}/{outcome.match}", 0) + 1
    elapsed = time.perf_counter() - start
    repeats = sum(1 for *_, r in plan if r)
    return [
        (f"workload: {len(plan)} submissions at 512 px over 2 workers, {repeats} repeats or near-repeats "
         f"({', '.join(same_kinds)}) of earlier photos", f"hit ratio {hits / len(plan):.1%}"),
        ("workload: hits by tier/match", ", ".join(f"{k} {v}" for k, v in sorted(tiers.items()))),
        ("workload: false hits (a different photo served a cached latent) · repeats missed",
         f"{false_hits} · {missed_repeats}"),
        ("workload: per submission (normalise + key + lookup; stand-in encoder)", ms(elapsed / len(plan))),
    ]


def render(rows: list[tuple[str, str]], *, command: str) -> str:
    return "\n".join([
        "## Latent cache (`make bench-cache`)", "",
        f"Machine: {machine()}, {torch.get_num_threads()} threads. Command: `{command}`; all figures from one run "
        f"({time.strftime('%Y-%m-%d')}).", "",
        table(("what", "figure"), rows),
    ])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--misses", type=int, default=3, help="SD VAE encodes to time (each ~16-18 s on 2 cores)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="pixelmill-cache-bench-"))
    server = RedisServer(data_dir=tmp / "redis", appendonly=False).start()
    client = redis.Redis.from_url(server.url)
    try:
        rows = run(args, client)
    finally:
        client.close()
        server.stop()
    width = max(len(w) for w, _ in rows)
    print()
    for what, figure in rows:
        print(f"{what:<{width}}  {figure}")
    if not args.no_write:
        write_section("cache-bench", render(rows, command="make bench-cache"), path=args.out)
        print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
