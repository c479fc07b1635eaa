"""Shared fixtures: a private redis-server per session on a free port, real Celery workers
as subprocesses, the tiny diffusion model built and loaded offline, a factory-built app."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stack.redis_server import RedisServer, free_port
from stack.supervisor import plan_worker

ROOT = Path(__file__).resolve().parent.parent
SESSION_DIR = Path(tempfile.mkdtemp(prefix="pixelmill-tests-"))
REDIS_PORT = free_port()
GPU_MAX_BATCH = 4  # the gpu worker's batch limit in tests (PIXELMILL_GPU_MAX_BATCH)


def pytest_configure(config: pytest.Config) -> None:
    # Set before anything imports tasks.*: every process of the test session (and the worker
    # subprocesses, which inherit the environment) talks to the private Redis.
    os.environ["PIXELMILL_REDIS_URL"] = f"redis://127.0.0.1:{REDIS_PORT}/0"
    os.environ["PIXELMILL_DATA_DIR"] = str(SESSION_DIR / "data")
    # The tiny model library (workers/tiny_model.py build_tiny_library); the default model is its
    # checkpoint, given as a path inside the library (so jobs record it as "tiny").
    os.environ["PIXELMILL_MODELS_DIR"] = str(SESSION_DIR / "models")
    os.environ["PIXELMILL_DIFFUSION_MODEL"] = str(SESSION_DIR / "models" / "tiny")
    # Face restoration with the tiny library's restorer and its YuNet-compatible detector, which finds
    # the red squares workers.tiny_faces.draw_tiny_face draws.
    os.environ["PIXELMILL_FACE_RESTORER"] = "tiny-restorer"
    os.environ["PIXELMILL_FACE_DETECTOR"] = "tiny-yunet"
    # CLIPScore in audit with the tiny library's CLIP (workers.tiny_model.build_tiny_clip).
    os.environ["PIXELMILL_CLIP_MODEL"] = "tiny-clip"
    os.environ["PIXELMILL_GPU_MAX_BATCH"] = str(GPU_MAX_BATCH)
    # Several worker processes and the test process share a small CPU: one torch thread each
    # (two OpenMP threads per process on an oversubscribed machine ran the tiny model ~5× slower).
    os.environ["PIXELMILL_TORCH_THREADS"] = "1"
    # Plain torch fp32 on CPU workers, as the tests that compare a worker's image with one made in
    # the test process expect; tests/integration/test_openvino_backend.py starts its own workers.
    os.environ["PIXELMILL_CPU_BACKEND"] = "torch"
    os.environ["PIXELMILL_CPU_PRECISION"] = "f32"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ["PIXELMILL_MAX_OUTPUT_PIXELS"] = "5000000"  # small, so a test can trip it cheaply
    # One tenant submits for the whole session: its per-minute limit must not trip across tests
    # (the tests of the limit build their own app with a small one).
    os.environ["PIXELMILL_RATE_LIMIT_PER_MINUTE"] = "100000"
    # Webhooks: test receivers listen on loopback, and retries must fit in a test's time.
    os.environ["PIXELMILL_WEBHOOK_ALLOW_PRIVATE"] = "1"
    os.environ["PIXELMILL_WEBHOOK_TIMEOUT_S"] = "2"
    os.environ["PIXELMILL_WEBHOOK_MAX_ATTEMPTS"] = "4"
    os.environ["PIXELMILL_WEBHOOK_BACKOFF_BASE_S"] = "0.2"
    os.environ["PIXELMILL_WEBHOOK_BACKOFF_MAX_S"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.pop("PIXELMILL_CONFIG", None)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(data_dir=SESSION_DIR / "redis", port=REDIS_PORT).start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer):
    import redis

    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """The tiny library (a checkpoint in both layouts, ControlNets, a LoRA, a depth model) built
    once into PIXELMILL_MODELS_DIR; returns the default checkpoint's folder."""
    from workers.tiny_model import build_tiny_library

    library = Path(os.environ["PIXELMILL_MODELS_DIR"])
    if not (library / "depth" / "tiny-depth" / "config.json").exists():
        build_tiny_library(library)
    return Path(os.environ["PIXELMILL_DIFFUSION_MODEL"])


def start_worker(*, queues: str = "cpu,gpu,io", concurrency: int = 2, name: str = "test",
                 extra_env: dict[str, str] | None = None, pool: str = "prefork") -> subprocess.Popen:
    log = open(SESSION_DIR / f"worker-{name}-{time.monotonic_ns()}.log", "wb")
    argv = [sys.executable, "-m", "celery", "-A", "tasks.celery_app", "worker", "--queues", queues,
            "--concurrency", str(concurrency), "--pool", pool, "--hostname", f"{name}-{os.getpid()}@%h",
            "--loglevel", "INFO", "--without-gossip", "--without-mingle"]
    return subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **(extra_env or {})}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_worker_ready(proc: subprocess.Popen, *, timeout_s: float = 60, name: str | None = None) -> None:
    """Until a worker answers a ping (the one started with ``name``, when given)."""
    from tasks.celery_app import app

    destination = [f"{name}-{os.getpid()}@{socket.gethostname()}"] if name else None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}; see logs in {SESSION_DIR}")
        if app.control.ping(timeout=0.5, destination=destination):
            return
    raise RuntimeError(f"worker not ready after {timeout_s} s; see logs in {SESSION_DIR}")


@pytest.fixture(scope="session")
def workers(redis_server: RedisServer, tiny_model: Path) -> Iterator[subprocess.Popen]:
    """Real Celery workers as `make run` starts them (stack.supervisor.plan_worker): prefork
    (2 processes) for cpu, one batching threads-pool process for gpu (the tiny model resident and
    warmed up), and a threads worker for io (webhook delivery), so a slow receiver never holds a stage."""
    started = []
    try:
        for name, queues in (("test", "cpu"), ("gpu", "gpu"), ("io", "io")):
            plan = plan_worker(queues, gpu_max_batch=GPU_MAX_BATCH)
            started.append((name, start_worker(queues=queues, concurrency=plan.concurrency, pool=plan.pool,
                                               name=name, extra_env=plan.env)))
        for name, proc in started:
            wait_worker_ready(proc, name=name, timeout_s=120)
        yield started[0][1]
    finally:
        for _, proc in reversed(started):
            stop_worker(proc)


def declare_test_queue(name: str) -> str:
    """Let this process's Celery app send to ``name``, a queue only tests use (the app knows only
    cpu, gpu and io): the stages a test routes there wait until it consumes them, or for ever."""
    from kombu import Queue

    from tasks.celery_app import app

    if name not in app.amqp.queues:
        app.amqp.queues.add(Queue(name))
    return name


def routes_to(queue: str) -> dict[str, str]:
    """A ``routes`` setting that sends every stage of every engine, and the webhook dispatch, to
    ``queue`` (declared here): a test's jobs then wait there, out of the session workers' reach."""
    from tasks.pipeline import DEFAULT_ROUTES

    declare_test_queue(queue)
    stages = {key.split(":")[0] for key in DEFAULT_ROUTES}
    engines = {key.split(":")[1] for key in DEFAULT_ROUTES}
    return {f"{stage}:{engine}": queue for stage in stages for engine in engines}


def stop_worker(proc: subprocess.Popen, *, timeout_s: float = 20) -> None:
    """Warm shutdown (SIGTERM), then SIGKILL of the whole process group if it lingers."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def app(redis_server: RedisServer):
    from web import create_app

    flask_app = create_app()
    flask_app.config["TESTING"] = True
    return flask_app


@pytest.fixture
def client(app):
    return app.test_client()


# --- images -------------------------------------------------------------------------------

def photo(name: str = "astronaut", *, size: int | None = None) -> np.ndarray:
    """A real photo shipped with scikit-image, RGB uint8."""
    from skimage import data

    image = getattr(data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    image = image[..., :3]
    if size:
        pil = Image.fromarray(image)
        pil.thumbnail((size, size), Image.Resampling.LANCZOS)
        image = np.asarray(pil)
    return image


def encode(image: np.ndarray, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def wait_for_job(fetch, job_id: str, *, timeout_s: float = 120) -> dict:
    """Poll until the job is terminal; ``fetch(job_id)`` returns the API payload."""
    deadline = time.monotonic() + timeout_s
    job = fetch(job_id)
    while job["status"] not in {"succeeded", "failed", "blocked", "canceled"}:
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['status']} after {timeout_s} s: {job}")
        time.sleep(0.2)
        job = fetch(job_id)
    return job
