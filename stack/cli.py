"""The ``pixelmill`` command: up, worker, web, redis, submit, tiny-model."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pixelmill", description="pixelmill image-generation job service")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start Redis (if needed), the workers and the web server")
    up.add_argument("--host", help="default: the host setting (PIXELMILL_HOST, 127.0.0.1)")
    up.add_argument("--port", type=int, help="default: the port setting (PIXELMILL_PORT, 8000)")
    up.add_argument("--cpu-concurrency", type=int, default=2)
    up.add_argument("--data-dir", type=Path, help="default: the data_dir setting (PIXELMILL_DATA_DIR, var)")

    worker = sub.add_parser("worker", help="run a Celery worker for some queues")
    worker.add_argument("--queues", default="cpu", help="comma-separated: cpu, gpu, io")
    worker.add_argument("--concurrency", type=int, default=None)

    web = sub.add_parser("web", help="run the web server (gunicorn)")
    web.add_argument("--host", help="default: the host setting (PIXELMILL_HOST, 127.0.0.1)")
    web.add_argument("--port", type=int, help="default: the port setting (PIXELMILL_PORT, 8000)")

    redis_cmd = sub.add_parser("redis", help="run an embedded redis-server in the foreground")
    redis_cmd.add_argument("--port", type=int, default=6390)
    redis_cmd.add_argument("--data-dir", type=Path, default=Path("var/redis"))

    submit = sub.add_parser("submit", help="upload images, folders and zip archives as batches; with --wait, "
                                           "download each result as it finishes (rerun to resume)")
    submit.add_argument("paths", nargs="+", type=Path, help="image files, folders (recursively) and .zip archives")
    submit.add_argument("--url", default=os.environ.get("PIXELMILL_URL", "http://127.0.0.1:8000"),
                        help="the server (env PIXELMILL_URL)")
    submit.add_argument("--api-key", default=os.environ.get("PIXELMILL_API_KEY"),
                        help="sent as 'Authorization: Bearer …' (env PIXELMILL_API_KEY)")
    submit.add_argument("--style", default="cartoon")
    submit.add_argument("--engine", default="style", choices=["style", "diffusion"])
    submit.add_argument("--prompt", default="")
    submit.add_argument("--negative-prompt", default=None)
    submit.add_argument("--strength", type=float, default=None, help="diffusion: 0 < strength ≤ 1")
    submit.add_argument("--steps", type=int, default=None, help="diffusion: denoising steps")
    submit.add_argument("--seed", type=int, default=None, help="the same seed for every image (default: random)")
    submit.add_argument("--size", type=int, default=None, help="working size in pixels (server default 512)")
    submit.add_argument("--upscale", type=int, default=1, choices=[1, 2, 4])
    submit.add_argument("--wait", action="store_true", help="wait, showing progress, and download the results")
    submit.add_argument("--out", type=Path, default=Path("results"),
                        help="results mirror the inputs' paths here; the resume state is kept here too")
    submit.add_argument("--no-progress", action="store_true", help="a line per result instead of a progress bar")
    submit.add_argument("--batch-size", type=int, default=100, help="at most this many files per upload request")
    submit.add_argument("--retry-failed", action="store_true",
                        help="submit again the inputs whose jobs failed, were blocked or canceled in an earlier run")

    tiny = sub.add_parser("tiny-model", help="build a tiny random-weight SD pipeline (for demos and tests)")
    tiny.add_argument("path", type=Path)

    sub.add_parser("reaper", help="fail expired jobs and re-enqueue stuck ones, every reaper_interval_s")

    keys = sub.add_parser("keys", help="manage API keys (stored hashed; a new key is shown once)")
    keys.add_argument("action", choices=["create", "list", "revoke"])
    keys.add_argument("--tenant", required=True)
    keys.add_argument("--name", default="")
    keys.add_argument("--id", dest="key_id", help="the key id to revoke")

    policy = sub.add_parser("policy", help="show or set a tenant's audit policy")
    policy.add_argument("--tenant", required=True)
    policy.add_argument("--threshold", type=float)
    policy.add_argument("--action", choices=["block", "flag", "blur"])

    args = parser.parse_args(argv)
    return COMMANDS[args.command](args)


def _up(args: argparse.Namespace) -> int:
    from stack.supervisor import run_stack
    from tasks.settings import get_settings

    s = get_settings()
    return run_stack(host=args.host or s.host, port=args.port or s.port, cpu_concurrency=args.cpu_concurrency,
                     data_dir=args.data_dir or s.data_dir)


def _worker(args: argparse.Namespace) -> int:
    from tasks.settings import get_settings
    from stack.supervisor import plan_worker, worker_argv

    plan = plan_worker(args.queues, concurrency=args.concurrency, gpu_max_batch=get_settings().gpu_max_batch)
    for name, value in plan.env.items():
        os.environ.setdefault(name, value)
    argv = worker_argv(queues=plan.queues, concurrency=plan.concurrency, pool=plan.pool)
    os.execv(argv[0], argv)
    return 0  # not reached


def _web(args: argparse.Namespace) -> int:
    from stack.supervisor import web_argv
    from tasks.settings import get_settings

    s = get_settings()
    argv = web_argv(host=args.host or s.host, port=args.port or s.port)
    os.execv(argv[0], argv)
    return 0  # not reached


def _redis(args: argparse.Namespace) -> int:
    from stack.redis_server import RedisServer

    from stack.lock import FolderInUse, FolderLock

    server = RedisServer(data_dir=args.data_dir, port=args.port)
    try:  # held by the redis-server itself after exec: the descriptor is inherited
        lock = FolderLock(args.data_dir).acquire(what="redis-server", redis_url=server.url)
    except FolderInUse as e:
        print(f"pixelmill: {e}", file=sys.stderr)
        return 1
    os.set_inheritable(lock.fd, True)
    os.execv(server.command()[0], server.command())
    return 0  # not reached


def _submit(args: argparse.Namespace) -> int:
    from client.submit import SubmitOptions, run_submit

    params = {"engine": args.engine, "style": args.style, "prompt": args.prompt, "upscale": args.upscale}
    optional = {"negative_prompt": args.negative_prompt, "strength": args.strength, "steps": args.steps,
                "seed": args.seed, "size": args.size}
    params.update({name: value for name, value in optional.items() if value is not None})
    options = SubmitOptions(url=args.url, api_key=args.api_key, params=params, out=args.out, wait=args.wait,
                            progress=not args.no_progress, batch_size=args.batch_size,
                            retry_failed=args.retry_failed, resume_command=_resume_command())
    return run_submit(args.paths, options=options)


def _resume_command() -> str:
    """This command line, to print when a submit is interrupted (an API key given inline is hidden)."""
    import shlex

    argv, shown, hide_next = sys.argv[1:], [], False
    for arg in argv:
        if hide_next:
            arg, hide_next = "…", False
        elif arg == "--api-key":
            hide_next = True
        elif arg.startswith("--api-key="):
            arg = "--api-key=…"
        shown.append(arg)
    return shlex.join(["pixelmill", *shown])


def _tiny_model(args: argparse.Namespace) -> int:
    from workers.tiny_model import build_tiny_pipeline

    path = build_tiny_pipeline(args.path)
    print(f"tiny random-weight pipeline saved to {path}; use PIXELMILL_DIFFUSION_MODEL={path}")
    return 0


def _reaper(args: argparse.Namespace) -> int:
    import logging

    from tasks.reaper import run_forever
    from tasks.services import get_services

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_forever(get_services())
    return 0


def _keys(args: argparse.Namespace) -> int:
    from tasks.services import get_services

    tenants = get_services().tenants
    if args.action == "create":
        key, plaintext = tenants.create_key(tenant=args.tenant, name=args.name)
        print(f"key id {key.id} for tenant {key.tenant}:\n{plaintext}\n(store it now: it is not shown again)")
    elif args.action == "list":
        for key in tenants.list_keys(args.tenant):
            print(f"{key.id}  {key.name or '-':20}  {'revoked' if key.revoked_at else 'active'}")
    else:
        if not args.key_id:
            print("give the key to revoke with --id")
            return 2
        tenants.revoke(tenant=args.tenant, key_id=args.key_id)
        print(f"revoked {args.key_id}")
    return 0


def _policy(args: argparse.Namespace) -> int:
    from safety.policy import Action, AuditPolicy
    from tasks.services import get_services

    rt = get_services()
    current = rt.audit_policy(args.tenant)
    if args.threshold is not None or args.action:
        current = AuditPolicy(threshold=current.threshold if args.threshold is None else args.threshold,
                              action=Action(args.action) if args.action else current.action)
        rt.tenants.save_policy(args.tenant, current)
    print(f"tenant {args.tenant}: threshold {current.threshold}, action {current.action.value}")
    return 0


COMMANDS = {"up": _up, "worker": _worker, "web": _web, "redis": _redis, "submit": _submit, "tiny-model": _tiny_model,
            "keys": _keys, "policy": _policy, "reaper": _reaper}

if __name__ == "__main__":
    sys.exit(main())
