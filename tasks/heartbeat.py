"""Worker heartbeats: every worker process says, every few seconds, what it serves and what it
holds (model, dtype, device, memory, the stages it is running), in a Redis key with a short TTL,
and renews the leases of those stages (tasks.leases).

A process that dies stops refreshing its key and drops out of ``fetch_workers`` within
``TTL_S``. The dashboard, ``/api/v1/stats`` and ``/metrics`` read these keys.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from tasks import leases
from tasks.store import store_key

log = logging.getLogger(__name__)

INTERVAL_S = 5.0
TTL_S = 20


@dataclass(frozen=True)
class WorkerInfo:
    hostname: str
    pid: int
    queues: list[str]
    pool: str
    concurrency: int
    state: str  # "warming" while models load and warm up, then "ready"
    device: str | None = None
    dtype: str | None = None
    model: str | None = None
    memory: dict[str, int] = field(default_factory=dict)
    batching: dict[str, int] | None = None
    backend: str | None = None  # what runs diffusion: "openvino-bf16", "torch-f32", "torch-fp16" (GPU) …
    converting: dict[str, Any] | None = None  # an OpenVINO conversion in progress (part, step/steps, elapsed_s)
    plan: dict[str, Any] | None = None  # the autotune plan a gpu worker runs with (tasks.autotune)
    queue_dtypes: dict[str, str] | None = None  # the dtype each queue's diffusion stages run at (when set per queue)
    started_at: float = 0.0
    seen_at: float = 0.0
    incarnation: str = ""  # new at every process start (a restarted worker may reuse hostname and pid)
    running: list[list[str]] = field(default_factory=list)  # [job id, stage] of each stage in flight

    @classmethod
    def from_json(cls, raw: str | bytes) -> WorkerInfo:
        data = json.loads(raw)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def worker_key(hostname: str, pid: int) -> str:
    return store_key("worker", f"{hostname}:{pid}")


def fetch_workers(client: redis.Redis) -> list[WorkerInfo]:
    """The worker processes seen in the last ``TTL_S`` seconds, by hostname then pid."""
    keys = list(client.scan_iter(match=store_key("worker", "*"), count=500))
    infos = [WorkerInfo.from_json(raw) for raw in client.mget(keys) if raw is not None] if keys else []
    return sorted(infos, key=lambda w: (w.hostname, w.pid))


def memory_in_use(device: str | None) -> dict[str, int]:
    """Resident memory of this process, and on CUDA what torch has allocated and reserved."""
    memory: dict[str, int] = {}
    try:
        with open("/proc/self/statm") as f:
            memory["rss_bytes"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        memory["rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if device and device.startswith("cuda"):
        import torch

        if torch.cuda.is_initialized():
            memory["cuda_allocated_bytes"] = int(torch.cuda.memory_allocated(device))
            memory["cuda_reserved_bytes"] = int(torch.cuda.memory_reserved(device))
    return memory


class Heartbeat:
    """A daemon thread that publishes ``describe()`` every ``INTERVAL_S`` seconds."""

    def __init__(self, client: redis.Redis, describe: Callable[[], dict[str, Any]], *,
                 hostname: str, lease_ttl_s: int, interval_s: float = INTERVAL_S, ttl_s: int = TTL_S) -> None:
        self.client = client
        self.lease_ttl_s = lease_ttl_s
        self.describe = describe
        self.hostname = hostname
        self.pid = os.getpid()
        self.interval_s = interval_s
        self.ttl_s = ttl_s
        self.started_at = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pixelmill-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        try:
            self.client.delete(worker_key(self.hostname, self.pid))
        except redis.RedisError:
            pass

    def beat(self) -> None:
        """Publish now (also called on a state change, so the dashboard sees it at once)."""
        fields = self.describe()
        try:
            running = leases.renew(self.client, ttl_s=self.lease_ttl_s)
            info = WorkerInfo(hostname=self.hostname, pid=self.pid, started_at=self.started_at, seen_at=time.time(),
                              memory=memory_in_use(fields.get("device")),
                              incarnation=leases.current_holder().incarnation,
                              running=[list(item) for item in running], **fields)
            self.client.set(worker_key(self.hostname, self.pid), json.dumps(asdict(info)), ex=self.ttl_s)
        except redis.RedisError as e:  # Redis away: the next beat tries again
            log.debug("heartbeat not sent: %s", e)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.beat()


def record_restart(client: redis.Redis, name: str) -> None:
    """Count a restart of a stack process (the supervisor's), for /healthz and the dashboard.
    Best effort: a Redis that is still coming back is not worth failing a restart over."""
    try:
        with client.pipeline(transaction=False) as pipe:
            pipe.hincrby(store_key("restarts"), name, 1)
            pipe.hset(store_key("restarts"), f"{name}:at", time.time())
            pipe.execute()
    except redis.RedisError as e:
        log.warning("could not record the restart of %s: %s", name, e)


def fetch_restarts(client: redis.Redis) -> dict[str, dict[str, float]]:
    """{process name: {"count": n, "last_at": epoch seconds}} of every restart counted."""
    raw = {k.decode(): float(v) for k, v in client.hgetall(store_key("restarts")).items()}
    return {name: {"count": int(count), "last_at": raw.get(f"{name}:at", 0.0)}
            for name, count in raw.items() if not name.endswith(":at")}
