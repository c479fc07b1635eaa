"""A private pixelmill cluster of real processes for fault injection: its own redis-server
(AOF everysec), optionally a RabbitMQ vhost as broker, Celery workers, gunicorn, the reaper.
Everything is reached over the network, as in production."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests

from tests.conftest import ROOT
from stack.redis_server import RedisServer, free_port

TERMINAL = {"succeeded", "failed", "blocked", "canceled"}


def rabbitmq_available() -> bool:
    if not shutil.which("rabbitmqctl"):
        return False
    return subprocess.run(["rabbitmqctl", "status"], capture_output=True, timeout=30).returncode == 0


# Short limits, so that a lost message returns in seconds; `defaults=False` keeps `make run`'s own
# (at least one test of each kind of fault runs with those: tests/faults/test_defaults.py).
SHORT_LIMITS = {
    # Kept in order (visibility > hard > soft) and short, so a lost message returns quickly.
    "PIXELMILL_TASK_SOFT_TIME_LIMIT": "10",
    "PIXELMILL_TASK_TIME_LIMIT": "12",
    "PIXELMILL_VISIBILITY_TIMEOUT": "15",
    "PIXELMILL_UNACKED_RESTORE_INTERVAL_S": "2",
    "PIXELMILL_WEBHOOK_BACKOFF_BASE_S": "0.5",
    "PIXELMILL_WEBHOOK_BACKOFF_MAX_S": "2",
    "PIXELMILL_WEBHOOK_TIMEOUT_S": "2",
    "PIXELMILL_REAPER_INTERVAL_S": "3",
}


class Cluster:
    def __init__(self, root: Path, *, broker: str, model: Path, short_limits: bool = True, **settings: str) -> None:
        self.root, self.broker = root, broker
        self.redis = RedisServer(data_dir=root / "redis").start()
        self.vhost = None
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIXELMILL_")}
        env.update({
            "PIXELMILL_REDIS_URL": self.redis.url,
            "PIXELMILL_DATA_DIR": str(root / "data"),
            "PIXELMILL_DIFFUSION_MODEL": str(model),
            "PIXELMILL_PRELOAD_MODELS": "1",  # as gpu workers do: load before taking work
            "PIXELMILL_WEBHOOK_ALLOW_PRIVATE": "1",  # the event receiver below is on loopback
            "HF_HUB_OFFLINE": "1",
            **(SHORT_LIMITS if short_limits else {}),
        })
        if broker == "rabbitmq":
            self.vhost = f"pixelmill-test-{uuid.uuid4().hex[:8]}"
            _rabbitmqctl("add_vhost", self.vhost)
            _rabbitmqctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
            env["PIXELMILL_BROKER_URL"] = f"amqp://guest:guest@127.0.0.1:5672/{self.vhost}"
        env.update({f"PIXELMILL_{k.upper()}": str(v) for k, v in settings.items()})
        self.env = env
        self.processes: list[subprocess.Popen] = []
        self.replaced: set[subprocess.Popen] = set()
        self.base_url: str | None = None
        self.receiver: EventReceiver | None = None

    def listen_for_events(self, *, delay_s: float = 0.0) -> "EventReceiver":
        """A webhook receiver on loopback; jobs submitted from now on report job.completed to it.
        It answers each request after ``delay_s``, so that deliveries can be caught in flight."""
        self.receiver = EventReceiver(delay_s=delay_s)
        return self.receiver

    # --- processes ------------------------------------------------------------------------
    def spawn(self, name: str, argv: list[str], *, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.root / f"{name}-{len(self.processes)}.log", "wb")
        proc = subprocess.Popen(argv, cwd=ROOT, env={**self.env, **(extra_env or {})}, stdout=log,
                                stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.processes.append(proc)
        return proc

    def start_worker(self, *, name: str = "w", queues: str = "cpu,gpu", concurrency: int = 1,
                     pool: str = "prefork", extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        proc = self.spawn(f"worker-{name}", extra_env=extra_env, argv=[
            sys.executable, "-m", "celery", "-A", "tasks.celery_app", "worker", "--queues", queues,
            "--concurrency", str(concurrency), "--pool", pool, "--loglevel", "INFO",
            "--hostname", f"{name}-{uuid.uuid4().hex[:6]}@%h", "--without-gossip", "--without-mingle",
        ])
        self.wait_log(proc, "ready.", timeout_s=60)
        return proc

    def start_io_worker(self) -> subprocess.Popen:
        """Webhook deliveries run here, as in `make run`: never on a stage worker."""
        from stack.supervisor import THREADS_WORKER_ENV

        return self.start_worker(name="io", queues="io", concurrency=4, pool="threads", extra_env=THREADS_WORKER_ENV)

    def start_reaper(self) -> subprocess.Popen:
        """As in `make run`: expires late jobs, re-enqueues stuck ones, drains the event outbox."""
        return self.spawn("reaper", [sys.executable, "-m", "stack.cli", "reaper"])

    def start_web(self) -> str:
        port = free_port()
        self.spawn("web", [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                           "--threads", "4", "--timeout", "60", "web:create_app()"])
        self.base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.base_url}/healthz", timeout=2).ok:
                    return self.base_url
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"web did not start; see {self.root}")

    def wait_log(self, proc: subprocess.Popen, text: str, *, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        target = self._log_of(proc)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode}: {target.read_text()[-3000:]}")
            if text in target.read_text(errors="replace"):
                return
            time.sleep(0.2)
        raise RuntimeError(f"{text!r} not seen in {target} within {timeout_s} s")

    def _log_of(self, proc: subprocess.Popen) -> Path:
        index = self.processes.index(proc)
        return next(self.root.glob(f"*-{index}.log"))

    @staticmethod
    def warm_stop(proc: subprocess.Popen) -> None:
        """SIGTERM to the worker's main process only, as a process manager sends it."""
        proc.send_signal(signal.SIGTERM)

    @staticmethod
    def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (a prefork worker's pool children too)."""
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    def supervise(self) -> list[str]:
        """Restart any worker that exited, as a process manager (compose, systemd, k8s) does;
        returns the names of those restarted."""
        restarted = []
        for proc in list(self.processes):
            if proc in self.replaced or proc.poll() in (None, 0) or "--queues" not in proc.args:
                continue
            self.replaced.add(proc)
            queues = proc.args[proc.args.index("--queues") + 1]
            if queues == "io":
                self.start_io_worker()
            else:
                self.start_worker(name="restarted", queues=queues, pool=proc.args[proc.args.index("--pool") + 1])
            restarted.append(queues)
        return restarted

    def restart_redis(self, *, down_s: float = 0.0, while_down=None) -> None:
        self.redis.stop()
        if while_down:
            while_down()
        time.sleep(down_s)
        self.redis.start()

    def stop_stage_workers(self) -> None:
        for proc in self.processes:
            if proc.poll() is None and "--queues" in proc.args and proc.args[proc.args.index("--queues") + 1] != "io":
                self.warm_stop(proc)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.kill(proc)
                    proc.wait()

    def stop(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                self.kill(proc, signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill(proc)
                proc.wait()
        self.redis.stop()
        if self.receiver:
            self.receiver.close()
        if self.vhost:
            _rabbitmqctl("delete_vhost", self.vhost)

    # --- the API --------------------------------------------------------------------------
    def submit(self, image: bytes, **params) -> dict:
        import json

        data = {"params": json.dumps(params)}
        if self.receiver:
            data.update(webhook_url=self.receiver.url, webhook_events="job.completed")
        response = requests.post(f"{self.base_url}/api/v1/jobs", files={"image": ("p.png", image)},
                                 data=data, timeout=30)
        assert response.status_code == 202, response.text
        return response.json()

    def job(self, job_id: str) -> dict:
        return requests.get(f"{self.base_url}/api/v1/jobs/{job_id}", timeout=10).json()

    def wait_all(self, job_ids: list[str], *, timeout_s: float = 120) -> dict[str, dict]:
        deadline = time.monotonic() + timeout_s
        jobs: dict[str, dict] = {}
        while time.monotonic() < deadline:
            jobs = {job_id: self.job(job_id) for job_id in job_ids}
            if all(job["status"] in TERMINAL for job in jobs.values()):
                return jobs
            time.sleep(0.5)
        stuck = {i: (j["status"], j["stage"]) for i, j in jobs.items() if j["status"] not in TERMINAL}
        raise AssertionError(f"{len(stuck)} jobs not finished after {timeout_s} s: {stuck}; logs in {self.root}")

    def wait_for(self, job_id: str, predicate, *, timeout_s: float = 60) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if predicate(job):
                return job
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} never reached the awaited state: {self.job(job_id)}")


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


class EventReceiver:
    """Counts distinct job.completed events (by webhook-id) per job, as a deduping receiver would."""

    def __init__(self, *, delay_s: float = 0.0) -> None:
        import json
        import threading
        from collections import defaultdict
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.completed: dict[str, set[str]] = defaultdict(set)
        self.requests = 0  # every POST that arrived, answered or not
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.requests += 1
                time.sleep(delay_s)
                if body["type"] == "job.completed":
                    receiver.completed[body["data"]["id"]].add(self.headers["webhook-id"])
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_completed(self, job_ids: list[str], *, timeout_s: float = 150) -> dict[str, int]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not all(self.completed.get(i) for i in job_ids):
            time.sleep(0.2)
        time.sleep(1)  # let any duplicate arrive too
        return {i: len(self.completed.get(i, ())) for i in job_ids}

    def close(self) -> None:
        self.server.shutdown()
