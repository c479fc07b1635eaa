"""``pixelmill autotune``, ``pixelmill watch`` and ``pixelmill beat`` (stack/cli.py adds them)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_arguments(sub: argparse._SubParsersAction) -> None:
    autotune = sub.add_parser("autotune", help="measure images/s and p95 latency of each dtype and batch size on "
                                               "this machine's device and write the plan gpu workers start with")
    autotune.add_argument("--size", type=int, default=None, help="the working size in pixels (default: the jobs' "
                                                                 "default, 512)")
    autotune.add_argument("--steps", type=int, default=None, help="denoising steps per image (default: the jobs' "
                                                                  "default, 20)")
    autotune.add_argument("--dtypes", default=None, help="comma-separated, in order of preference (default: "
                                                         "fp16,bf16,fp32 on CUDA; fp32,bf16 on CPU)")
    autotune.add_argument("--max-batch", type=int, default=64, help="the largest batch tried (1, 2, 4, … up to it)")
    autotune.add_argument("--repeats", type=int, default=3, help="timed calls per point, after one warm-up call")
    autotune.add_argument("--model", help="default: the diffusion_model setting (PIXELMILL_DIFFUSION_MODEL)")

    watch = sub.add_parser("watch", help="a hot folder: submit each new image once it stops changing and "
                                         "download its result (state kept in --out: a restart submits nothing twice)")
    watch.add_argument("folder", type=Path, help="the folder watched (and its subfolders)")
    watch.add_argument("--out", type=Path, default=None, help="results mirror the folder here (default: "
                                                               "FOLDER/results); the resume state is kept here too")
    watch.add_argument("--settle-s", type=float, default=2.0,
                       help="a file is submitted once its size and mtime have not changed for this long")
    watch.add_argument("--interval-s", type=float, default=1.0, help="how often the folder is looked at")
    watch.add_argument("--url", default=os.environ.get("PIXELMILL_URL", "http://127.0.0.1:8000"),
                       help="the server (env PIXELMILL_URL)")
    watch.add_argument("--api-key", default=os.environ.get("PIXELMILL_API_KEY"),
                       help="sent as 'Authorization: Bearer …' (env PIXELMILL_API_KEY)")
    watch.add_argument("--style", default="cartoon")
    watch.add_argument("--engine", default="style", choices=["style", "diffusion"])
    watch.add_argument("--prompt", default="")
    watch.add_argument("--negative-prompt", default=None)
    watch.add_argument("--strength", type=float, default=None, help="diffusion: 0 < strength ≤ 1")
    watch.add_argument("--steps", type=int, default=None, help="diffusion: denoising steps")
    watch.add_argument("--seed", type=int, default=None, help="the same seed for every image (default: random)")
    watch.add_argument("--size", type=int, default=None, help="working size in pixels (server default 512)")
    watch.add_argument("--upscale", type=int, default=1, choices=[1, 2, 4])
    watch.add_argument("--batch-size", type=int, default=100, help="at most this many files per upload request")

    beat = sub.add_parser("beat", help="run Celery beat: it fires the scheduled batches of PIXELMILL_SCHEDULES "
                                       "(run exactly one)")
    beat.add_argument("--loglevel", default="INFO")


def settings_with_model(model: str | None, *, doing: str):
    """The settings with ``--model`` in place of PIXELMILL_DIFFUSION_MODEL; None (said on stderr) when
    neither names a model."""
    from tasks.settings import get_settings

    settings = get_settings()
    if model:
        settings = settings.model_copy(update={"diffusion_model": model})
    if not settings.diffusion_model:
        print(f"pixelmill: no model to {doing}: pass --model or set PIXELMILL_DIFFUSION_MODEL", file=sys.stderr)
        return None
    return settings


def _autotune(args: argparse.Namespace) -> int:
    import logging

    from tasks.autotune import run_autotune
    from tasks.jobs import JobParams

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = settings_with_model(args.model, doing="tune")
    if settings is None:
        return 2
    size = args.size or JobParams.model_fields["size"].default
    steps = args.steps or JobParams.model_fields["steps"].default
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()] if args.dtypes else None
    print(f"autotune: {settings.diffusion_model} at {size} px, {steps} steps (device setting: {settings.device})",
          flush=True)
    try:
        plan = run_autotune(settings, size=size, steps=steps, dtypes=dtypes, max_batch=max(1, args.max_batch),
                            repeats=max(1, args.repeats), on_point=lambda m: print(f"  {m.row()}", flush=True))
    except ValueError as e:
        print(f"pixelmill: {e}", file=sys.stderr)
        return 1
    for dtype, why in plan["stops"].items():
        print(f"  {dtype}: stopped: {why}")
    from tasks.autotune import plan_file

    print(f"plan for {plan['device']}: dtype {plan['dtype']}, max batch {plan['max_batch']} "
          f"({plan['images_per_s']:.2f} images/s, "
          f"p95 {plan['p95_s']:.3f} s)\n  for {plan['key']}\n  saved in {plan_file(settings).path}: gpu workers "
          "started from now on use it, unless PIXELMILL_DTYPE / PIXELMILL_GPU_MAX_BATCH are set")
    return 0


def _watch(args: argparse.Namespace) -> int:
    from client.submit import SubmitOptions
    from client.watch import WatchOptions, run_watch

    params = {"engine": args.engine, "style": args.style, "prompt": args.prompt, "upscale": args.upscale}
    optional = {"negative_prompt": args.negative_prompt, "strength": args.strength, "steps": args.steps,
                "seed": args.seed, "size": args.size}
    params.update({name: value for name, value in optional.items() if value is not None})
    out = args.out or args.folder / "results"
    submit = SubmitOptions(url=args.url, api_key=args.api_key, params=params, out=out, wait=True, progress=False,
                           batch_size=args.batch_size)
    return run_watch(WatchOptions(folder=args.folder, submit=submit, settle_s=max(0.0, args.settle_s),
                                  interval_s=max(0.05, args.interval_s)))


def _beat(args: argparse.Namespace) -> int:
    from tasks.schedules import parse_schedules
    from tasks.settings import get_settings

    settings = get_settings()
    try:
        schedules = parse_schedules(settings.schedules)
    except ValueError as e:
        print(f"pixelmill: {e}", file=sys.stderr)
        return 2
    if not schedules:
        print("pixelmill: beat runs with no schedule: set PIXELMILL_SCHEDULES (README: scheduled batches)",
              file=sys.stderr)
    from tasks.beat import beat_argv

    argv = beat_argv(settings, loglevel=args.loglevel)
    os.execv(argv[0], argv)
    return 0  # not reached


COMMANDS = {"autotune": _autotune, "watch": _watch, "beat": _beat}
