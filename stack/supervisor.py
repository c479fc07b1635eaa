"""``pixelmill up``: Redis (when none is configured), a cpu, a gpu-queue and an io worker,
and the web server, as separate processes. Ctrl-C stops every one of them cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from stack.lock import FolderInUse, FolderLock
from stack.redis_server import RedisServer, RedisServerError
from tasks.priority import base_of

STOP_GRACE_S = 20.0
# A threads-pool worker crashes ("Unrecoverable error") when Celery cancels its running tasks
# on a broker connection loss; webhook deliveries and stages are idempotent, so let them finish.
THREADS_WORKER_ENV = {"PIXELMILL_CANCEL_TASKS_ON_CONNECTION_LOSS": "0"}


@dataclass(frozen=True)
class WorkerPlan:
    """How a worker for some queues runs: its pool, concurrency and extra environment."""

    queues: str
    pool: str
    concurrency: int
    env: dict[str, str]


def plan_worker(queues: str, *, concurrency: int | None = None, gpu_max_batch: int = 1) -> WorkerPlan:
    """The pool for a set of queues.

    - io alone: threads (webhook deliveries wait on the network, not the CPU);
    - gpu alone with batching on (gpu_max_batch > 1): one process, a threads pool of
      gpu_max_batch + 1 (one spare for encode), so generate tasks meet in the batcher; the model
      is loaded once in that process, before it consumes;
    - anything else: prefork (one process per slot; gpu: 1, loaded in the child after fork).

    A priority level counts as its queue: `gpu.high` alone is a gpu worker (tasks.priority).
    """
    names = [q.strip() for q in queues.split(",") if q.strip()]
    bases = {base_of(name) for name in names}
    gpu = "gpu" in bases
    preload = {"PIXELMILL_PRELOAD_MODELS": "1"} if gpu else {}
    if bases == {"io"}:
        return WorkerPlan(queues, "threads", concurrency or 8, dict(THREADS_WORKER_ENV))
    if bases == {"gpu"} and gpu_max_batch > 1:
        return WorkerPlan(queues, "threads", concurrency or gpu_max_batch + 1, {**THREADS_WORKER_ENV, **preload})
    return WorkerPlan(queues, "prefork", concurrency or (1 if gpu else 2), preload)


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    argv: list[str]
    env: dict[str, str]


def worker_argv(*, queues: str, concurrency: int, pool: str = "prefork", name: str | None = None) -> list[str]:
    node = name or queues.replace(",", "-")
    return [
        sys.executable, "-m", "celery", "-A", "tasks.celery_app", "worker",
        "--queues", queues, "--concurrency", str(concurrency), "--pool", pool,
        "--hostname", f"{node}-{os.getpid()}@%h", "--loglevel", "INFO", "--without-gossip", "--without-mingle",
    ]


# gthread: a live viewer (Server-Sent Events, web/live.py) holds one thread for as long as it
# watches, blocked on a queue: idle, with no CPU, a small stack, and one Redis subscription per
# process whatever the number of viewers. 64 threads per process lets web/live.py stream to 48
# viewers (MAX_STREAMS_PER_PROCESS) and keep 16 for pages and the API; 2 processes = 96 viewers.
# gevent would take thousands but monkey-patches sockets under redis-py, Celery and torch.
WEB_THREADS = 64


def web_argv(*, host: str, port: int, workers: int = 2) -> list[str]:
    return [
        sys.executable, "-m", "gunicorn", "--bind", f"{host}:{port}", "--workers", str(workers),
        "--worker-class", "gthread", "--threads", str(WEB_THREADS),
        "--timeout", "120", "--graceful-timeout", "10", "--access-logfile", "-",
        "web:create_app()",
    ]


def worker_spec(name: str, plan: WorkerPlan, env: dict[str, str]) -> ProcessSpec:
    return ProcessSpec(name, worker_argv(queues=plan.queues, concurrency=plan.concurrency, pool=plan.pool),
                       {**env, **plan.env})


def stack_specs(*, host: str, port: int, cpu_concurrency: int, env: dict[str, str]) -> list[ProcessSpec]:
    from tasks.autotune import pool_max_batch
    from tasks.settings import get_settings

    gpu_max_batch = pool_max_batch(get_settings())  # the autotune plan's, unless set explicitly
    return [
        worker_spec("cpu", plan_worker("cpu", concurrency=cpu_concurrency), env),
        worker_spec("gpu", plan_worker("gpu", gpu_max_batch=gpu_max_batch), env),
        worker_spec("io", plan_worker("io"), env),
        ProcessSpec("web", web_argv(host=host, port=port), env),
        ProcessSpec("reaper", [sys.executable, "-m", "stack.cli", "reaper"], env),
    ]


def run_stack(*, host: str, port: int, cpu_concurrency: int, data_dir: Path) -> int:
    try:  # one stack per data folder: its blobs and its Redis' append-only file
        folder_lock = FolderLock(data_dir).acquire(what="pixelmill up", url=f"http://{host}:{port}/")
    except FolderInUse as e:
        print(f"pixelmill: {e}", file=sys.stderr, flush=True)
        return 1
    env = dict(os.environ)
    redis_server = None
    if not env.get("PIXELMILL_REDIS_URL"):
        redis_server = RedisServer(data_dir=data_dir / "redis").start()
        env["PIXELMILL_REDIS_URL"] = redis_server.url
        folder_lock.update(redis_url=redis_server.url)
        print(f"pixelmill: started Redis at {redis_server.url} (data in {redis_server.data_dir})", flush=True)
    env.setdefault("PIXELMILL_DATA_DIR", str(data_dir.resolve()))

    children: list[tuple[ProcessSpec, subprocess.Popen]] = []
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        for spec in stack_specs(host=host, port=port, cpu_concurrency=cpu_concurrency, env=env):
            # Each child gets its own process group so Ctrl-C reaches us once, and we stop them in order.
            children.append((spec, subprocess.Popen(spec.argv, env=spec.env, start_new_session=True)))
        print(f"pixelmill: serving on http://{host}:{port}/  (Ctrl-C stops everything)", flush=True)
        return supervise(children, should_stop=lambda: stopping, redis_server=redis_server,
                         redis_url=env["PIXELMILL_REDIS_URL"])
    finally:
        print("pixelmill: stopping…", flush=True)
        stop_all([proc for _, proc in children])  # the current processes, restarted ones included
        if redis_server:
            redis_server.stop()
        folder_lock.release()
        print("pixelmill: stopped", flush=True)


def supervise(children: list[tuple[ProcessSpec, subprocess.Popen]], *, should_stop,
              redis_server: RedisServer | None = None, redis_url: str | None = None,
              max_restarts: int = 5, window_s: float = 60.0) -> int:
    """Restart a child that exits (a worker can die on a broker reconnect, a kombu bug with the
    threads pool), as a process manager would; give up, and stop the stack, if one keeps dying.
    The embedded Redis is restarted too, on the same port and data, with backoff, never given up
    on: the stack cannot work without it. Every restart is counted where /healthz and the
    dashboard show it (tasks.heartbeat.record_restart)."""
    restarts: dict[str, list[float]] = {}
    redis_backoff = RedisBackoff()
    while not should_stop():
        if redis_server is not None and redis_server.has_exited() and redis_backoff.is_due():
            code = redis_server.process.returncode
            try:
                redis_server.start()
            except RedisServerError as e:
                print(f"pixelmill: Redis exited ({code}) and did not start again: {e}; "
                      f"next try in {redis_backoff.failed():.0f} s", flush=True)
            else:
                redis_backoff.started()
                print(f"pixelmill: Redis exited with {code}; restarted it at {redis_server.url}", flush=True)
                _count_restart(redis_url, "redis")
        for i, (spec, proc) in enumerate(children):
            if proc.poll() is None:
                continue
            recent = [t for t in restarts.get(spec.name, []) if time.monotonic() - t < window_s]
            if len(recent) >= max_restarts:
                print(f"pixelmill: {spec.name} keeps exiting ({proc.returncode}); stopping the stack", flush=True)
                return 1
            print(f"pixelmill: {spec.name} exited with {proc.returncode}; restarting it", flush=True)
            restarts[spec.name] = [*recent, time.monotonic()]
            children[i] = (spec, subprocess.Popen(spec.argv, env=spec.env, start_new_session=True))
            _count_restart(redis_url, spec.name)
        time.sleep(0.5)
    return 0


@dataclass
class RedisBackoff:
    """0.5 s, 1 s, 2 s … at most 10 s between tries to start Redis again."""

    delay_s: float = 0.0
    next_at: float = 0.0

    def is_due(self) -> bool:
        return time.monotonic() >= self.next_at

    def failed(self) -> float:
        self.delay_s = min(10.0, max(0.5, self.delay_s * 2))
        self.next_at = time.monotonic() + self.delay_s
        return self.delay_s

    def started(self) -> None:
        self.delay_s, self.next_at = 0.0, 0.0


def _count_restart(redis_url: str | None, name: str) -> None:
    if redis_url:
        import redis

        from tasks.heartbeat import record_restart

        client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
        try:
            record_restart(client, name)
        finally:
            client.close()


def stop_all(processes: list[subprocess.Popen]) -> None:
    """SIGTERM (Celery's warm shutdown) to all, wait, then SIGKILL the stragglers."""
    for proc in processes:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in processes:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
