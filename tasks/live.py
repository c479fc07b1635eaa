"""Live updates of jobs over Redis pub/sub: what the job store publishes. The web's hub
(web/live_hub.py) subscribes and fans them out to every viewer of the Server-Sent Events.

Channels: ``pixelmill:live:job:<job id>`` and, for batch members, ``pixelmill:live:batch:<batch id>``;
and per tenant, ``pixelmill:live:tenant:<tenant>``, which carries the tenant's webhook events
(events, below) for ``GET /api/v1/events`` (``pixelmill webhooks listen``).
Messages are compact JSON objects with a ``type`` (docs/live.md):

- ``job``: a committed transition — status, stage, error, links once finished, and the job's
  stored record, so a web process can render the public payload without reading Redis again.
  Published by the transition's own script (``stage_job``, ``tasks.transition``), so it goes
  out exactly when the change commits, in commit order, and never for a change that did not.
- ``progress``: a denoising step (stage, step, steps), in save_progress's pipeline.
- ``preview``: a new preview image was stored (in the same pipeline, or ``JobStore.save_preview``).
- on the tenant channel only: webhook events as the outbox holds them (``tasks.events.JobEvent`` as
  JSON: id, type, subject …, and the job's record as its ``snapshot``), published by the same transition
  script as it commits: job.started and the terminal event of each job, and batch.completed by the
  job that completes its batch. Cheap when nobody listens: two PUBLISHes per job (three for the
  last of a batch) inside the round trip the transition makes anyway, to a channel without
  subscribers; the record is not serialised again (``AroundRecord``).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis

from tasks.jobs import Job, JobStatus
from tasks.present import current_stage
from tasks.events import JobEvent
from tasks.transition import COMPLETES, AroundRecord, Writes

log = logging.getLogger(__name__)

PREFIX = "pixelmill:live"
PREVIEW_TTL_S = 120  # a preview is only worth showing while its job runs
PREVIEW_MAX_BYTES = 256 * 1024
_BATCH_IDS_MAX = 4096
_batch_ids: dict[str, str | None] = {}  # job id -> batch id (never changes), per process


def channel_for(kind: str, subject_id: str) -> str:
    """Every pub/sub channel of live updates: ``pixelmill:live:<job|batch|tenant>:<id>``."""
    if kind not in ("job", "batch", "tenant"):
        raise ValueError(f"live channels are per 'job', 'batch' or 'tenant', not {kind!r}")
    return f"{PREFIX}:{kind}:{subject_id}"


# --- publishing (the job store calls these) --------------------------------------------------

def job_message(job: Job) -> dict[str, Any]:
    """The ``job`` message without its ``record`` (the transition script adds the record it writes)."""
    message: dict[str, Any] = {
        "type": "job", "job_id": job.id, "batch_id": job.batch_id, "status": job.status.value,
        "stage": current_stage(job), "error": job.error, "updated_at": job.updated_at,
    }
    if job.status is JobStatus.SUCCEEDED:
        message["links"] = {"result": f"/api/v1/jobs/{job.id}/result"}
    return message


def stage_job(pipe: Writes, job: Job) -> None:
    """Add the ``job`` message to a transition (``tasks.transition``). Never raises: a
    message that cannot be built is logged and skipped, and the transition goes on."""
    _remember_batch(job.id, job.batch_id)
    try:
        message = AroundRecord.member(job_message(job), "record")
        for channel in _channels(job.id, job.batch_id):
            pipe.publish(channel, message)
    except Exception:  # noqa: BLE001 - a live update must never fail a state change
        log.warning("live: could not publish the transition of job %s", job.id, exc_info=True)


def stage_events(pipe: Writes, tenant: str, events: list[JobEvent], batch_event: JobEvent | None) -> None:
    """Add a transition's webhook events to it, published on the tenant's channel (the batch event
    only if this job completes its batch). Never raises, as ``stage_job``."""
    try:
        channel = channel_for("tenant", tenant)
        for event in events:
            pipe.publish(channel, event.around_snapshot())
        if batch_event is not None:
            with pipe.when(COMPLETES):
                pipe.publish(channel, batch_event.to_json())
    except Exception:  # noqa: BLE001 - a live update must never fail a state change
        log.warning("live: could not publish the events of tenant %s", tenant, exc_info=True)


def stage_progress(pipe: redis.client.Pipeline, job_id: str, *, batch_id: str | None, stage: str, step: int,
                   steps: int) -> None:
    _stage(pipe, job_id, batch_id, {"type": "progress", "job_id": job_id, "batch_id": batch_id, "stage": stage,
                                    "step": step, "steps": steps, "at": time.time()})


def stage_preview(pipe: redis.client.Pipeline, job_id: str, *, batch_id: str | None, step: int | None = None,
                  steps: int | None = None) -> None:
    _stage(pipe, job_id, batch_id, {"type": "preview", "job_id": job_id, "batch_id": batch_id, "step": step,
                                    "steps": steps, "at": time.time()})


def batch_of(client: redis.Redis, job_id: str, job_key: str) -> str | None:
    """The batch a job belongs to (it never changes), remembered per process: progress is
    reported many times per job by the worker that already moved the job into its stage."""
    try:
        return _batch_ids[job_id]
    except KeyError:
        pass
    try:
        raw = client.get(job_key)
    except redis.RedisError:
        return None  # not remembered: the next report asks again
    batch_id = json.loads(raw).get("batch_id") if raw else None
    _remember_batch(job_id, batch_id)
    return batch_id


def _remember_batch(job_id: str, batch_id: str | None) -> None:
    if len(_batch_ids) >= _BATCH_IDS_MAX:
        _batch_ids.clear()
    _batch_ids[job_id] = batch_id


def _stage(pipe: redis.client.Pipeline, job_id: str, batch_id: str | None, message: dict[str, Any]) -> None:
    data = json.dumps(message, separators=(",", ":"))
    for channel in _channels(job_id, batch_id):
        pipe.publish(channel, data)


def _channels(job_id: str, batch_id: str | None) -> list[str]:
    return [channel_for("job", job_id), channel_for("batch", batch_id)] if batch_id else [channel_for("job", job_id)]


# --- the hub (web processes) -----------------------------------------------------------------
