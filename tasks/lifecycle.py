"""A worker process's life: learn what it serves, load and warm its models before it takes
work (in the child after fork for prefork pools — CUDA is never touched in the parent), then
say what it holds in a heartbeat until it stops."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from tasks.celery_app import STAGE_MODULES, modules_for
from tasks.heartbeat import Heartbeat
from tasks.priority import base_of, consume_order
from tasks.services import get_services

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerContext:
    hostname: str
    queues: tuple[str, ...]
    pool: str  # "prefork", "threads", "solo", …
    concurrency: int

    @property
    def batches_generate(self) -> bool:
        """One process runs many generate tasks at once (a threads pool on the gpu queue), so
        they can share pipeline calls. A prefork child runs one task at a time: nothing to batch."""
        return self.pool == "threads" and self.serves_gpu and self.concurrency > 1

    @property
    def serves_gpu(self) -> bool:
        """It consumes the gpu queue or one of its levels (`gpu.high` …)."""
        return "gpu" in {base_of(queue) for queue in self.queues}

    @property
    def runs_stages(self) -> bool:
        """False for a worker of the io queue alone: it delivers webhooks and loads no engine."""
        return STAGE_MODULES in modules_for(list(self.queues))


_context: WorkerContext | None = None
_heartbeat: Heartbeat | None = None
_state = "warming"


def pool_name(pool_cls: Any) -> str:
    """"prefork", "threads", "solo", … from what Celery's worker holds (an alias or a class)."""
    if isinstance(pool_cls, str):  # an alias from the configuration
        return pool_cls
    module = getattr(pool_cls, "__module__", "")
    return {"celery.concurrency.prefork": "prefork", "celery.concurrency.thread": "threads",
            "celery.concurrency.solo": "solo", "celery.concurrency.gevent": "gevent",
            "celery.concurrency.eventlet": "eventlet"}.get(module, module or "unknown")


def on_worker_init(*, hostname: str, queues: list[str], pool_cls: Any, concurrency: int) -> None:
    """In the worker's main process, before any pool exists."""
    global _context
    _context = WorkerContext(hostname=hostname, queues=tuple(sorted(queues)), pool=pool_name(pool_cls),
                             concurrency=concurrency)
    if _context.pool != "prefork":  # this very process runs the tasks: load here, before consuming
        start_process()


def context() -> WorkerContext | None:
    return _context


def start_process() -> None:
    """Load and warm this process's models, with a heartbeat saying "warming" then "ready"."""
    global _heartbeat, _state
    if _heartbeat is not None:  # solo pools send both signals
        return
    hostname = _context.hostname if _context else "unknown"
    if not _runs_stages():
        _heartbeat = Heartbeat(get_services().redis, describe, hostname=hostname,
                               lease_ttl_s=get_services().settings.stage_lease_s).start()
        _state = "ready"
        return
    from tasks import malloc
    from tasks.worker_runtime import get_worker_runtime

    malloc.tune()  # image buffers reused job after job, not mapped afresh (tasks.malloc)
    rt = get_worker_runtime()
    if rt.settings.torch_threads:
        import torch

        torch.set_num_threads(rt.settings.torch_threads)
    if _context is not None and _context.serves_gpu:
        rt.adopt_plan()  # the autotune plan of this device (dtype, max batch), before anything loads
    _heartbeat = Heartbeat(rt.redis, describe, hostname=hostname, lease_ttl_s=rt.settings.stage_lease_s).start()
    try:
        rt.warm_up(batching=bool(_context and _context.batches_generate),
                   queues=consume_order(_context.queues) if _context else None)  # the model at each queue's dtype
    finally:
        _state = "ready"
        _heartbeat.beat()


def stop_process() -> None:
    if _heartbeat is not None:
        _heartbeat.stop()


def describe() -> dict[str, Any]:
    """What this process serves and holds, for its heartbeat."""
    ctx = _context
    fields: dict[str, Any] = {
        "queues": list(ctx.queues) if ctx else [],
        "pool": ctx.pool if ctx else "unknown",
        "concurrency": ctx.concurrency if ctx else 1,
        "state": _state,
    }
    if not _runs_stages():
        return fields
    from tasks.worker_runtime import get_worker_runtime

    rt = get_worker_runtime()
    loaded = rt.loaded_diffusion()
    if loaded is not None:
        fields.update(device=loaded.device, dtype=loaded.dtype_name, model=loaded.engine.model)
        backend = getattr(loaded.engine, "backend", None)
        if backend is not None:
            fields["backend"] = backend.label
    from workers.openvino_backend import conversion_status

    if (converting := conversion_status()) is not None:
        fields["converting"] = converting
    batcher = rt.generate_batcher()
    if batcher is not None:
        fields["batching"] = {"max_batch": batcher.max_batch, "max_wait_ms": round(batcher.max_wait_s * 1000)}
    if rt.plan is not None:
        fields["plan"] = rt.plan  # the autotune plan in use (tasks.autotune)
    if rt.settings.queue_dtypes and ctx is not None:  # the dtype each queue's diffusion stages run at
        fields["queue_dtypes"] = {queue: rt.dtype_for(queue) for queue in consume_order(ctx.queues)}
    return fields


def _runs_stages() -> bool:
    return _context is None or _context.runs_stages
