"""Submitting work: validate the upload, store the original, write the job, enqueue its first stage.

Nothing here waits on a worker. With the Redis broker (the default) the job record and its first
stage's message are written in one transaction; with another broker the message is published
after, and if it cannot be the job is marked failed. Either way no job is left half-written, and
the error goes back to the caller.
"""

from __future__ import annotations

import logging
import secrets
import threading
from dataclasses import dataclass

from kombu.exceptions import OperationalError

from safety.errors import InputRejected
from safety.validate import UploadLimits, validate_image
from tasks.errors import PixelmillError
from tasks.jobs import Batch, Job, JobParams, new_id
from tasks.models import check_params
from tasks.pipeline import enqueue, handoff
from tasks.settings import STAGES
from tasks.priority import level_allowed
from tasks.quality import apply_quality
from tasks.scoring import check_quality
from tasks.services import Services
from tasks.webhooks.models import Subscription

log = logging.getLogger(__name__)


class QueueUnavailable(PixelmillError):
    code = "queue_unavailable"
    status = 503


class BatchTooLarge(PixelmillError):
    code = "bad_request"
    status = 400


_decode_slots: dict[int, threading.BoundedSemaphore] = {}
_decode_slots_lock = threading.Lock()


def decode_slots(concurrency: int) -> threading.BoundedSemaphore:
    """The process-wide turns at decoding an upload (``decode_concurrency``): every request thread
    of this process shares them, so parallel batches of large images wait instead of holding
    threads × max_pixels of pixels at once."""
    with _decode_slots_lock:
        return _decode_slots.setdefault(concurrency, threading.BoundedSemaphore(concurrency))


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes
    source: dict | None = None  # Job.source: {"kind": "upload"} when None; a data URI says so


@dataclass(frozen=True)
class RemoteInput:
    """An input image given by URL (already past the outbound guard): the job is written without
    an input, and the io queue fetches it before the chain runs (tasks.inputs)."""

    name: str
    url: str


def upload_limits(rt: Services) -> UploadLimits:
    s = rt.settings
    return UploadLimits(max_bytes=s.max_upload_bytes, max_side=s.max_side, max_pixels=s.max_pixels)


def with_seed(params: JobParams) -> JobParams:
    """A job always records the seed it ran with, so it can be reproduced."""
    if params.seed is not None:
        return params
    return params.model_copy(update={"seed": secrets.randbelow(2**32)})


def enforce_limits(rt: Services, *, tenant: str, jobs: int, priority: str) -> None:
    """Per-tenant submission rate and unfinished-job cap (429 with Retry-After beyond), and the
    tenant's highest priority (422), in one round trip. A batch is one submission for the rate and
    ``jobs`` unfinished jobs for the cap; a batch larger than the cap itself could never pass, so it
    is refused for good (400, saying how many fit) rather than told to retry."""
    limit = rt.settings.max_active_jobs
    if jobs > 1 and jobs > limit >= 1:
        raise BatchTooLarge(f"a batch of {jobs} files is more than your cap on unfinished jobs "
                            f"(PIXELMILL_MAX_ACTIVE_JOBS={limit}): send at most {limit} per batch")
    highest = rt.tenants.check_limits(tenant, per_minute=rt.settings.rate_limit_per_minute, adding=jobs, limit=limit)
    check_priority(tenant, priority=priority, highest=highest or rt.settings.max_priority)


class PriorityNotAllowed(PixelmillError):
    code = "priority_not_allowed"
    status = 422


def check_priority(tenant: str, *, priority: str, highest: str) -> None:
    if not level_allowed(priority, highest):
        raise PriorityNotAllowed(f"priority {priority!r} is above what this tenant may ask for ({highest!r}); "
                                 f"send priority={highest} or lower, or ask the admin "
                                 f"(`pixelmill policy --tenant {tenant} --max-priority {priority}`)")


def submit_job(rt: Services, *, tenant: str, upload: Upload | RemoteInput, params: JobParams,
               deadline_s: float | None = None, webhook: Subscription | None = None) -> Job:
    params = check_params(rt.settings, apply_quality(params, rt.settings.quality_levels))  # 422 if unusable
    check_quality(rt, tenant=tenant, params=params)  # 422 if its policy needs CLIP and there is none
    enforce_limits(rt, tenant=tenant, jobs=1, priority=params.priority)
    job = _prepare(rt, tenant=tenant, upload=upload, params=with_seed(params), deadline_s=deadline_s)
    if webhook is not None:  # before the job exists, so its first event already finds it
        rt.webhooks.save_subscription(job.id, webhook)
    first = handoff(job, STAGES[0], rt.settings)  # queued with the record when the broker is its Redis
    rt.store.create(job, handoff=first)
    if first is None:
        _enqueue(rt, [job])
    return job


def submit_batch(rt: Services, *, tenant: str, uploads: list[Upload | RemoteInput], params: JobParams,
                 deadline_s: float | None = None, webhook: Subscription | None = None) -> tuple[Batch, list[Job]]:
    """N jobs under one batch id. Every upload is validated before any job is written."""
    params = check_params(rt.settings, apply_quality(params, rt.settings.quality_levels))  # 422 if unusable
    check_quality(rt, tenant=tenant, params=params)  # 422 if its policy needs CLIP and there is none
    enforce_limits(rt, tenant=tenant, jobs=len(uploads), priority=params.priority)
    batch_id = new_id()
    jobs = [
        _prepare(rt, tenant=tenant, upload=upload, params=with_seed(params), batch_id=batch_id, deadline_s=deadline_s)
        for upload in uploads
    ]
    batch = Batch(id=batch_id, tenant=tenant, job_ids=[job.id for job in jobs])
    if webhook is not None:  # the batch's webhook hears its jobs' events and batch.completed
        rt.webhooks.save_subscription(batch.id, webhook)
    firsts = [handoff(job, STAGES[0], rt.settings) for job in jobs]
    rt.store.create_batch(batch, jobs, handoffs=firsts)
    _enqueue(rt, [job for job, first in zip(jobs, firsts, strict=True) if first is None])
    return batch, jobs


def _prepare(rt: Services, *, tenant: str, upload: Upload | RemoteInput, params: JobParams,
             batch_id: str | None = None, deadline_s: float | None = None) -> Job:
    if isinstance(upload, RemoteInput):  # fetched and validated on the io queue (tasks.inputs)
        return Job.create(tenant=tenant, params=params, input_ref="", input_name=upload.name, batch_id=batch_id,
                          deadline_s=deadline_s or rt.settings.default_job_deadline_s,
                          source={"kind": "url", "url": upload.url})
    try:
        with decode_slots(rt.settings.decode_concurrency):
            clean = validate_image(upload.data, limits=upload_limits(rt))
    except InputRejected as e:
        if batch_id is None:
            raise
        raise InputRejected(e.code, f"{upload.name}: {e} (nothing in this batch was queued)", status=e.status) from e
    ref = rt.blobs.save(clean.png, ext="png")
    return Job.create(tenant=tenant, params=params, input_ref=ref, input_name=upload.name, batch_id=batch_id,
                      deadline_s=deadline_s or rt.settings.default_job_deadline_s,
                      source=upload.source or {"kind": "upload"})


def _enqueue(rt: Services, jobs: list[Job]) -> None:
    for i, job in enumerate(jobs):
        try:
            enqueue(job, rt.settings)
        except OperationalError as e:
            log.error("could not enqueue job %s: %s", job.id, e)
            for unqueued in jobs[i:]:
                rt.store.fail(unqueued.id, code="queue_unavailable", message="the job queue was unavailable; submit again")
            raise QueueUnavailable("the job queue is unavailable right now; try again in a minute") from e
