"""What every stage does around its work: skip when already done, record start and finish,
turn errors into a failed job with a message a user can act on."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis
from celery import Task
from celery.exceptions import Ignore, SoftTimeLimitExceeded

from safety.errors import SafetyError
from safety.validate import decode_png, encode_png
from tasks.errors import JobNotFound, PixelmillError
from tasks.jobs import Job, JobStatus
from tasks.runtime import Runtime, get_runtime
from workers.errors import EngineError

log = logging.getLogger(__name__)

# Transient faults are retried with backoff; everything else fails the job at once.
TRANSIENT = (redis.ConnectionError, redis.TimeoutError)
MAX_TRANSIENT_RETRIES = 5


@dataclass
class StageResult:
    outputs: dict[str, str] = field(default_factory=dict)
    cached: bool = False
    end: JobStatus | None = None
    audit: dict[str, Any] | None = None


StageWork = Callable[[Job, Runtime], StageResult]


def run_stage(task: Task, job_id: str, stage: str, work: StageWork) -> None:
    rt = get_runtime()
    try:
        job = rt.store.fetch(job_id)
    except JobNotFound:
        log.warning("%s: job %s no longer exists; dropping", stage, job_id)
        raise Ignore() from None
    if job.status.is_terminal():
        log.info("%s: job %s is already %s; stopping its chain", stage, job_id, job.status.value)
        raise Ignore()
    if job.stages[stage].done:
        log.info("%s: job %s already did this stage (re-delivery); moving on", stage, job_id)
        return

    job = rt.store.start_stage(job_id, stage, queue=task.request.delivery_info.get("routing_key"),
                               worker=task.request.hostname)
    try:
        result = work(job, rt)
    except TRANSIENT as e:
        if task.request.retries < MAX_TRANSIENT_RETRIES:
            raise task.retry(exc=e, countdown=min(2 ** task.request.retries, 30)) from e
        _fail(rt, job_id, code="unavailable", message=f"{stage} could not reach Redis after retries: {e}")
    except SoftTimeLimitExceeded:
        _fail(rt, job_id, code="timeout",
              message=f"{stage} took longer than {rt.settings.task_soft_time_limit} s; "
                      "try fewer steps or a smaller size")
    except (EngineError, SafetyError, PixelmillError) as e:
        _fail(rt, job_id, code=getattr(e, "code", "stage_failed"), message=f"{stage} failed: {e}")
    except Exception as e:  # noqa: BLE001 — any other fault still ends the job with a message
        log.exception("%s: unexpected error on job %s", stage, job_id)
        _fail(rt, job_id, code="internal_error", message=f"{stage} failed unexpectedly: {type(e).__name__}: {e}")
    else:
        rt.store.finish_stage(job_id, stage, outputs=result.outputs, cached=result.cached,
                              end=result.end, audit=result.audit)
        return
    raise Ignore()  # the job has failed: stop the chain here


def _fail(rt: Runtime, job_id: str, *, code: str, message: str) -> None:
    try:
        rt.store.fail(job_id, code=code, message=message)
    except PixelmillError as e:
        log.warning("could not mark job %s failed: %s", job_id, e)


def load_image(rt: Runtime, ref: str) -> np.ndarray:
    return decode_png(rt.blobs.fetch(ref))


def save_image(rt: Runtime, image: np.ndarray) -> str:
    return rt.blobs.save(encode_png(image), ext="png")
