"""The ``pixelmill`` command: up, worker, web, redis, submit, tiny-model, models, webhooks."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from stack import models_cli, service_cli


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

    flower = sub.add_parser("flower", help="Celery's monitor (Flower) behind a login (PIXELMILL_FLOWER_AUTH)")
    flower.add_argument("--host", default="127.0.0.1")
    flower.add_argument("--port", type=int, default=5555)

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

    tiny = sub.add_parser("tiny-model", help="build the tiny random-weight model library: an SD checkpoint (folder "
                                             "and single file), ControlNets, a LoRA, a depth model, a CLIP (demos, tests)")
    tiny.add_argument("path", type=Path, nargs="?", help="the library (default: PIXELMILL_MODELS_DIR, var/models)")

    sub.add_parser("reaper", help="fail expired jobs and re-enqueue stuck ones, every reaper_interval_s")
    service_cli.add_arguments(sub)  # autotune, watch, beat

    keys = sub.add_parser("keys", help="manage API keys (stored hashed; a new key is shown once)")
    keys.add_argument("action", choices=["create", "list", "revoke"])
    keys.add_argument("--tenant", required=True)
    keys.add_argument("--name", default="")
    keys.add_argument("--id", dest="key_id", help="the key id to revoke")
    keys.add_argument("--admin", action="store_true", help="create: the key may create and revoke the tenant's keys")
    keys.add_argument("--expires-in-days", type=float, metavar="DAYS", help="create: the key is refused after this")

    policy = sub.add_parser("policy", help="show or set a tenant's audit policy")
    policy.add_argument("--tenant", required=True)
    policy.add_argument("--threshold", type=float)
    policy.add_argument("--action", choices=["block", "flag", "blur"])
    policy.add_argument("--max-priority", choices=["high", "normal", "low"],
                        help="the highest priority this tenant's jobs may ask for")
    policy.add_argument("--quality-metric", choices=["clipscore", "sharpness", "off", "default"],
                        help="the quality policy's score (clipscore needs PIXELMILL_CLIP_MODEL); off: no quality "
                             "policy for this tenant; default: back to the quality_* settings")
    policy.add_argument("--quality-threshold", type=float, help="below this score the quality policy acts")
    policy.add_argument("--quality-action", choices=["flag", "fail", "regenerate"],
                        help="flag (served, marked), fail (quality_below_threshold) or regenerate (a new seed, "
                             "keeping the best)")
    policy.add_argument("--quality-retries", type=int, metavar="N", help="regenerations at most (action regenerate)")

    models = sub.add_parser("models", help="the model library")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    convert = models_sub.add_parser("convert", help="convert the diffusion model for OpenVINO now (CPU workers "
                                                    "otherwise convert it at their first job; README: running "
                                                    "diffusion on CPUs)")
    convert.add_argument("--model", help="default: the diffusion_model setting (PIXELMILL_DIFFUSION_MODEL)")
    models_cli.add_arguments(models_sub)  # list, add, pull

    webhooks = sub.add_parser("webhooks", help="webhook tools for local development")
    webhooks_sub = webhooks.add_subparsers(dest="webhooks_command", required=True)
    listen = webhooks_sub.add_parser(
        "listen", help="follow your tenant's webhook events over an authenticated stream and print each as a "
                       "line, or sign it with a secret of this session and POST it to --forward-to")
    listen.add_argument("--forward-to", metavar="URL", help="a local receiver, e.g. http://localhost:5000/hook")
    listen.add_argument("--events", default="", help="comma-separated event types (default: every event)")
    listen.add_argument("--url", default=os.environ.get("PIXELMILL_URL", "http://127.0.0.1:8000"),
                        help="the server (env PIXELMILL_URL)")
    listen.add_argument("--api-key", default=os.environ.get("PIXELMILL_API_KEY"),
                        help="sent as 'Authorization: Bearer …' (env PIXELMILL_API_KEY)")

    args = parser.parse_args(argv)
    return COMMANDS[args.command](args)


def _up(args: argparse.Namespace) -> int:
    from stack.supervisor import run_stack
    from tasks.settings import get_settings

    s = get_settings()
    if problem := exposure_problem(args.host or s.host, auth_enabled=s.auth_enabled, allow_open=s.allow_open):
        print(f"pixelmill: {problem}", file=sys.stderr)
        return 2
    return run_stack(host=args.host or s.host, port=args.port or s.port, cpu_concurrency=args.cpu_concurrency,
                     data_dir=args.data_dir or s.data_dir)


def _worker(args: argparse.Namespace) -> int:
    from tasks.autotune import pool_max_batch
    from tasks.settings import get_settings
    from stack.supervisor import plan_worker, worker_argv

    plan = plan_worker(args.queues, concurrency=args.concurrency, gpu_max_batch=pool_max_batch(get_settings()))
    for name, value in plan.env.items():
        os.environ.setdefault(name, value)
    argv = worker_argv(queues=plan.queues, concurrency=plan.concurrency, pool=plan.pool)
    os.execv(argv[0], argv)
    return 0  # not reached


def _web(args: argparse.Namespace) -> int:
    from stack.supervisor import web_argv
    from tasks.settings import get_settings

    s = get_settings()
    if problem := exposure_problem(args.host or s.host, auth_enabled=s.auth_enabled, allow_open=s.allow_open):
        print(f"pixelmill: {problem}", file=sys.stderr)
        return 2
    argv = web_argv(host=args.host or s.host, port=args.port or s.port)
    os.execv(argv[0], argv)
    return 0  # not reached


def exposure_problem(host: str, *, auth_enabled: bool, allow_open: bool) -> str | None:
    """Why the web must not listen on ``host``: with auth off, whoever reaches it can use it (submit,
    read every result, register webhooks), so only loopback — unless the operator says otherwise."""
    import ipaddress

    if auth_enabled or allow_open or host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host.strip("[]")).is_loopback:
            return None
    except ValueError:
        pass  # a host name: it may resolve to anything
    return (f"refusing to listen on {host} with auth off: anyone who can reach it could use this service. "
            "Turn auth on (PIXELMILL_AUTH_ENABLED=1 and `pixelmill keys create --tenant …`), listen on "
            "127.0.0.1, or set PIXELMILL_ALLOW_OPEN=1 if something in front of it (a proxy with a login, "
            "a port published only on loopback) keeps others out.")


def _flower(args: argparse.Namespace) -> int:
    from tasks.settings import get_settings

    auth = get_settings().flower_auth
    if not auth or ":" not in auth:
        print("pixelmill: Flower shows every task's arguments and can revoke them: set "
              "PIXELMILL_FLOWER_AUTH=user:password to run it", file=sys.stderr)
        return 2
    os.environ["FLOWER_BASIC_AUTH"] = auth  # not on the command line, where `ps` would show it
    argv = [sys.executable, "-m", "celery", "-A", "tasks.celery_app", "flower",
            f"--address={args.host}", f"--port={args.port}"]
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


def _webhooks(args: argparse.Namespace) -> int:
    from client.listen import ListenOptions, run_listen

    events = frozenset(e.strip() for e in args.events.split(",") if e.strip())
    return run_listen(ListenOptions(url=args.url, api_key=args.api_key, forward_to=args.forward_to, events=events))


def _tiny_model(args: argparse.Namespace) -> int:
    from tasks.settings import get_settings
    from workers.tiny_model import build_tiny_library

    library = build_tiny_library(args.path or get_settings().models_dir)
    print(f"tiny random-weight model library built in {library}: checkpoints tiny and tiny-single, ControlNets "
          f"canny, tile and depth, LoRA tiny-style, depth model tiny-depth.\nUse PIXELMILL_MODELS_DIR={library} "
          "PIXELMILL_DIFFUSION_MODEL=tiny")
    return 0


def _models(args: argparse.Namespace) -> int:
    return MODELS_COMMANDS[args.models_command](args)


def _models_convert(args: argparse.Namespace) -> int:
    import logging

    from tasks.engine_backend import convert_ahead

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = service_cli.settings_with_model(args.model, doing="convert")
    if settings is None:
        return 2
    done = convert_ahead(settings)
    if not done["ok"]:
        print(f"pixelmill: {done['model']} does not run on OpenVINO here ({done['reason'] or done['backend']}); "
              f"CPU workers will run it on {done['backend']}", file=sys.stderr)
        return 1
    meta = done["meta"] or {}
    parts = ", ".join(f"{name} {part['seconds']:.0f} s" for name, part in meta.get("parts", {}).items())
    print(f"{done['model']}: OpenVINO {meta.get('openvino')} conversion in {done['folder']} "
          f"({meta.get('bytes', 0) / 2**30:.2f} GiB; converted in {parts}); loaded, parity-checked and compiled "
          f"({done['backend']}) in {done['seconds']:.0f} s")
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
        if args.expires_in_days is not None and args.expires_in_days <= 0:
            print("--expires-in-days must be more than 0")
            return 2
        expires_at = time.time() + args.expires_in_days * 86400 if args.expires_in_days else None
        key, plaintext = tenants.create_key(tenant=args.tenant, name=args.name, admin=args.admin,
                                            expires_at=expires_at)
        kind = "admin key" if key.admin else "key"
        until = f", expires {_when(key.expires_at)}" if key.expires_at else ""
        print(f"{kind} id {key.id} for tenant {key.tenant}{until}:\n{plaintext}\n"
              "(store it now: it is not shown again)")
    elif args.action == "list":
        for key in tenants.list_keys(args.tenant):
            state = ("revoked" if key.revoked_at else "expired" if key.is_expired()
                     else "active" if tenants.is_usable(key) else "dead (its creator is revoked or expired)")
            extra = "".join((" admin" if key.admin else "",
                             f" expires {_when(key.expires_at)}" if key.expires_at else "",
                             f" created by {key.created_by}" if key.created_by else ""))
            print(f"{key.id}  {key.name or '-':20}  {state}{extra}")
    else:
        if not args.key_id:
            print("give the key to revoke with --id")
            return 2
        tenants.revoke(tenant=args.tenant, key_id=args.key_id)
        print(f"revoked {args.key_id}")
    return 0


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(timestamp))


def _policy(args: argparse.Namespace) -> int:
    from safety.policy import Action, AuditPolicy
    from tasks.services import get_services

    rt = get_services()
    current = rt.audit_policy(args.tenant)
    if args.threshold is not None or args.action:
        current = AuditPolicy(threshold=current.threshold if args.threshold is None else args.threshold,
                              action=Action(args.action) if args.action else current.action)
        rt.tenants.save_policy(args.tenant, current)
    if args.max_priority:
        rt.tenants.save_max_priority(args.tenant, args.max_priority)
    quality = _quality_policy(rt, args)
    highest = rt.tenants.max_priority(args.tenant, default=rt.settings.max_priority)
    print(f"tenant {args.tenant}: threshold {current.threshold}, action {current.action.value}, "
          f"highest priority {highest}")
    if quality is None:
        print(f"tenant {args.tenant}: no quality policy (scores are recorded, nothing acts on them)")
    else:
        print(f"tenant {args.tenant}: quality {quality.metric} below {quality.threshold:g}: {quality.action.value}"
              + (f" (at most {quality.max_retries} regenerations)" if quality.action.value == "regenerate" else ""))
    return 0


def _quality_policy(rt, args: argparse.Namespace):
    """Set what the quality options say (starting from the tenant's policy); the policy now."""
    from safety.quality_policy import QualityAction, QualityPolicy

    if args.quality_metric == "off":
        rt.tenants.save_quality_policy(args.tenant, None)
    elif args.quality_metric == "default":
        rt.tenants.clear_quality_policy(args.tenant)
    elif args.quality_metric or args.quality_threshold is not None or args.quality_action \
            or args.quality_retries is not None:
        current = rt.quality_policy(args.tenant)
        metric = args.quality_metric or (current.metric if current else None)
        if metric is None:
            raise SystemExit("the tenant has no quality policy yet: give --quality-metric (clipscore or sharpness)")
        try:
            policy = QualityPolicy(
                metric=metric,
                threshold=args.quality_threshold if args.quality_threshold is not None
                else (current.threshold if current else 0.0),
                action=QualityAction(args.quality_action) if args.quality_action
                else (current.action if current else QualityAction.FLAG),
                max_retries=args.quality_retries if args.quality_retries is not None
                else (current.max_retries if current else 2))
        except ValueError as e:
            raise SystemExit(f"pixelmill policy: {e}") from e
        rt.tenants.save_quality_policy(args.tenant, policy)
    return rt.quality_policy(args.tenant)


COMMANDS = {"flower": _flower, "up": _up, "worker": _worker, "web": _web, "redis": _redis, "submit": _submit, "tiny-model": _tiny_model,
            "keys": _keys, "policy": _policy, "reaper": _reaper, **service_cli.COMMANDS, "models": _models, "webhooks": _webhooks}
MODELS_COMMANDS = {"convert": _models_convert, "list": models_cli.run, "add": models_cli.run,
                   "pull": models_cli.run}  # `pixelmill models <command>`

if __name__ == "__main__":
    sys.exit(main())
