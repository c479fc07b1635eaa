"""Service vs raw diffusers: images/s through pixelmill (submit → encode → generate → enhance →
audit → succeeded, on its real workers with the model resident and dynamic batching on the gpu
queue) vs a loop calling the diffusers img2img pipeline directly in one process, same model,
steps, strength and size, side by side in one run.

On this CPU-only machine the model is the tiny random-weight SD pipeline (workers/tiny_model.py);
on a GPU, point --model at an SD 1.5 folder (bench/gpu_sd15.py builds the random-weight one).

    .venv/bin/python bench/diffusion_service.py [--size 256] [--steps 20] [--rounds 5] [--solo 3] [--threads 1] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import JobWaiter, distinct_photos, machine, median, start_worker, stop, table, wait_ready, write_section  # noqa: E402
from stack.redis_server import RedisServer  # noqa: E402

CONCURRENT = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--strength", type=float, default=0.75)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each measurement, interleaved")
    parser.add_argument("--solo", type=int, default=3, help="one-at-a-time pairs (raw, then service) per round")
    parser.add_argument("--model", default=None, help="a save_pretrained folder (default: build the tiny one)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same for the raw loop and "
                        "each worker process (2 OpenMP threads per process oversubscribe a shared 2-core machine)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)

    tmp = Path(tempfile.mkdtemp(prefix="pixelmill-diffusion-bench-"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    if args.model is None:
        from workers.tiny_model import build_tiny_pipeline

        args.model = str(build_tiny_pipeline(tmp / "tiny-sd"))
    server = RedisServer(data_dir=tmp / "redis", appendonly=False).start()
    os.environ.update(PIXELMILL_REDIS_URL=server.url, PIXELMILL_DATA_DIR=str(tmp / "data"),
                      PIXELMILL_DIFFUSION_MODEL=args.model, PIXELMILL_RATE_LIMIT_PER_MINUTE="1000000",
                      PIXELMILL_GPU_MAX_BATCH=str(CONCURRENT), PIXELMILL_TORCH_THREADS=str(args.threads),
                      # the same engine on both sides (torch fp32): this measures the service, not the CPU
                      # backend (bench/cpu_backends.py does)
                      PIXELMILL_CPU_BACKEND="torch", PIXELMILL_CPU_PRECISION="f32")
    from tasks.celery_app import app
    from stack.supervisor import plan_worker

    procs = []
    try:
        for name, queues in (("bench-gpu", "gpu"), ("bench-cpu", "cpu"), ("bench-io", "io")):
            plan = plan_worker(queues, concurrency=1 if queues == "cpu" else None, gpu_max_batch=CONCURRENT)
            procs.append(start_worker("tasks.celery_app", queues=queues, pool=plan.pool,
                                      concurrency=plan.concurrency, name=name, env=plan.env, log_dir=tmp))
        for proc, name in zip(procs, ("bench-gpu", "bench-cpu", "bench-io"), strict=True):
            wait_ready(app, proc, name=name)
        results = measure(args)
    finally:
        stop(procs)
        server.stop()
    report(results, args)


def measure(args: argparse.Namespace) -> dict[str, float]:
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline
    from PIL import Image

    from safety.validate import encode_png
    from tasks.jobs import JobParams
    from tasks.services import get_services
    from tasks.submit import Upload, submit_job

    rt = get_services()
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(args.model, safety_checker=None,
                                                          requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    images = distinct_photos(args.rounds * (2 * args.solo + 2 * CONCURRENT) + 4, args.size)
    uploads = [encode_png(image) for image in images]
    counter = iter(range(len(images)))

    def raw(batch: int) -> float:
        """Seconds for one call of the pipeline itself on ``batch`` images."""
        picked = [next(counter) for _ in range(batch)]
        started = time.perf_counter()
        with torch.inference_mode():
            pipe(prompt=[f"picture {i}" for i in picked], image=[Image.fromarray(images[i]) for i in picked],
                 strength=args.strength, num_inference_steps=args.steps, guidance_scale=7.5,
                 generator=[torch.Generator().manual_seed(i) for i in picked], output_type="np")
        return time.perf_counter() - started

    solo_ids: list[str] = []  # the one-at-a-time jobs, for the breakdown
    waiter = JobWaiter(rt, tenant="bench")

    def service(concurrent: int) -> float:
        """Seconds from submitting ``concurrent`` jobs at once until the last one succeeded."""
        picked = [next(counter) for _ in range(concurrent)]
        started = time.perf_counter()
        ids = [submit_job(rt, tenant="bench", upload=Upload(f"{i}.png", uploads[i]), params=JobParams(
            engine="diffusion", prompt=f"picture {i}", strength=args.strength, steps=args.steps, guidance=7.5,
            seed=i, size=args.size)).id for i in picked]
        jobs = waiter.wait(ids)
        elapsed = time.perf_counter() - started
        assert all(job.status.value == "succeeded" for job in jobs), "a benchmark job did not succeed"
        if concurrent == 1:
            solo_ids.extend(ids)
        return elapsed

    raw(1), service(1)  # warm both paths
    timings: dict[str, list[float]] = {"raw1": [], "svc1": [], "raw8": [], "svc8": []}
    for _ in range(args.rounds):  # interleaved rounds
        for _ in range(args.solo):  # one call varies by ±10 % on a shared machine: several pairs a round
            timings["raw1"].append(raw(1))
            timings["svc1"].append(service(1))
        timings["raw8"].append(raw(CONCURRENT) / CONCURRENT)
        timings["svc8"].append(service(CONCURRENT) / CONCURRENT)
    cached = sum(1 for job in rt.store.recent("bench", limit=1000) if job.stages["encode"].cached)
    result = {name: 1 / median(values) for name, values in timings.items()}  # images per second
    result["encode_hits"] = cached
    jobs = rt.store.recent("bench", limit=1000)
    result["generate_s"] = median([job.stages["generate"].seconds for job in jobs])
    result["breakdown"] = breakdown([rt.store.fetch(i) for i in solo_ids[1:]])  # the warm-up job left out
    from safety.validate import decode_png

    result["shape"] = decode_png(rt.blobs.fetch(jobs[0].outputs["generated"])).shape
    return result


def breakdown(jobs) -> list[tuple[str, float]]:
    """Where a one-at-a-time job's time goes, from its record: per stage the wait (the previous stage's
    finish to this one's start: the queue hop and the start transition) and the run (the work, its
    blobs and the finish transition); medians."""
    from tasks.settings import STAGES

    parts: dict[str, list[float]] = {}
    for job in jobs:
        previous = job.created_at
        for stage in STAGES:
            record = job.stages[stage]
            parts.setdefault(f"{stage}: wait", []).append(record.started_at - previous)
            parts.setdefault(f"{stage}: run", []).append(record.finished_at - record.started_at)
            previous = record.finished_at
    return [(name, median(values)) for name, values in parts.items()]


def report(r: dict[str, float], args: argparse.Namespace) -> None:
    rows = [
        ("raw diffusers loop, batch 1 (the baseline)", f"{r['raw1']:.2f}", "1.00×"),
        ("pixelmill, one job at a time (submit → succeeded)", f"{r['svc1']:.2f}",
         f"**{r['svc1'] / r['raw1']:.2f}×** (goal ≥ 0.95×)"),
        (f"pixelmill, {CONCURRENT} concurrent jobs (dynamic batching)", f"{r['svc8']:.2f}",
         f"**{r['svc8'] / r['raw1']:.2f}×** (goal ≥ 2×)"),
        (f"raw diffusers, one call with a batch of {CONCURRENT} (the ceiling)", f"{r['raw8']:.2f}",
         f"{r['raw8'] / r['raw1']:.2f}×"),
    ]
    text = table(("path", "images/s", "vs raw batch 1"), rows)
    parts = table(("one job at a time: part", "median"), [(name, f"{seconds * 1000:.1f} ms")
                                                          for name, seconds in r["breakdown"]])
    print(text)
    print(parts)
    print(f"(generate stage median {r['generate_s']:.2f} s; output {r['shape']})")
    print(f"(latent cache hits among the benchmark's jobs: {r['encode_hits']:.0f}; every input is a different photo)")
    if args.no_write:
        return
    write_section("diffusion-service", f"""## Service vs raw diffusers (`make bench-diffusion`)

Machine: {machine()}. Command: `.venv/bin/python bench/diffusion_service.py --size {args.size} --steps {args.steps}
--rounds {args.rounds} --solo {args.solo} --threads {args.threads}` ({time.strftime('%Y-%m-%d')}). Model: the tiny random-weight SD img2img pipeline
(CPU stand-in for SD 1.5), {args.size}×{args.size}, {args.steps} steps at strength {args.strength}
({int(args.steps * args.strength)} denoising steps), guidance 7.5, every input a different photo
(latent cache hits: {r['encode_hits']:.0f}), {args.threads} torch thread(s) on each side. Medians of
{args.rounds} interleaved rounds, each with {args.solo} one-at-a-time pairs (a raw call, then a job) and one
burst of {CONCURRENT} per side; the service's generate stage took {r['generate_s']:.2f} s (median).

{text}

Where one job's time goes (one at a time, from the job records):

{parts}

The service side runs the whole job: upload validation, VAE encode (cached per image), the
denoising loop, enhance, the NSFW audit and PNG blobs between stages, on a gpu-queue worker
(threads pool, model resident and warmed up, batches of up to {CONCURRENT}, 30 ms max wait)
and a cpu worker; the bench waits for each job as a client of the live API does (woken by the
tenant's events, the record of a job's end taken from its event), not in a polling loop that would take CPU from the
workers. The raw side calls the pipeline only (no audit, no files). On this CPU a batch of 8
in one raw call is itself only the last row's ratio faster than batch 1 (the cores are busy at
batch 1 already), so the 2× goal for dynamic batching is above what batching can give here; on a
GPU, where batch 1 leaves most of the chip idle, batching is where the gain is (`bench/gpu_sd15.py`).""")


if __name__ == "__main__":
    main()
